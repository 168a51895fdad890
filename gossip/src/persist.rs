//! The replay high-water marks on disk, so a restarted node does not accept old gossip
//! again (`membrane_crypto::replay` has the rules; this is only the file).
//!
//! One small text file, replaced atomically (written beside, fsync'd, renamed, directory
//! fsync'd), at most once a second while gossip arrives and once at shutdown:
//!
//! ```text
//! membrane gossip replay v1
//! <sender> <epoch> <counter> <margin>
//! ```

use std::io::Write;
use std::path::Path;

use membrane_crypto::replay::HighWater;

const HEADER: &str = "membrane gossip replay v1";

/// The file's text for `marks`, sorted by sender so equal states write equal files.
pub fn encode(marks: &[(u64, HighWater)]) -> String {
    let mut sorted: Vec<&(u64, HighWater)> = marks.iter().collect();
    sorted.sort_by_key(|(s, _)| *s);
    let mut out = String::from(HEADER);
    out.push('\n');
    for (s, m) in sorted {
        out.push_str(&format!("{s} {} {} {}\n", m.epoch, m.counter, m.margin));
    }
    out
}

/// Parses the file's text; says which line is wrong.
pub fn decode(text: &str) -> Result<Vec<(u64, HighWater)>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("the first line is not {HEADER:?}"));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", i + 2))?;
        let [sender, epoch, counter, margin] = n[..] else {
            return Err(format!(
                "line {}: expected 4 numbers, found {}",
                i + 2,
                n.len()
            ));
        };
        out.push((
            sender,
            HighWater {
                epoch,
                counter,
                margin,
            },
        ));
    }
    Ok(out)
}

/// Reads the marks; a missing file is no marks (first start).
pub fn load(path: &Path) -> Result<Vec<(u64, HighWater)>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => decode(&t).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the file with `marks`, atomically.
pub fn save(path: &Path, marks: &[(u64, HighWater)]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(encode(marks).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(e: u64, c: u64, g: u64) -> HighWater {
        HighWater {
            epoch: e,
            counter: c,
            margin: g,
        }
    }

    #[test]
    fn t10_round_trip_sorted() {
        let marks = vec![(3, m(5, 10, 256)), (1, m(u64::MAX, 0, 1))];
        let text = encode(&marks);
        assert!(text.starts_with(HEADER));
        let back = decode(&text).unwrap();
        assert_eq!(back, vec![(1, m(u64::MAX, 0, 1)), (3, m(5, 10, 256))]);
    }

    #[test]
    fn t11_bad_files_name_the_problem() {
        assert!(decode("").unwrap_err().contains("first line"));
        assert!(decode(&format!("{HEADER}\n1 2 3\n"))
            .unwrap_err()
            .contains("line 2"));
        assert!(decode(&format!("{HEADER}\n1 2 x 4\n"))
            .unwrap_err()
            .contains("line 2"));
    }

    #[test]
    fn t12_save_replaces_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gossip-replay");
        assert_eq!(load(&p).unwrap(), vec![]);
        save(&p, &[(1, m(1, 1, 256))]).unwrap();
        save(&p, &[(2, m(2, 2, 256))]).unwrap();
        assert_eq!(load(&p).unwrap(), vec![(2, m(2, 2, 256))]);
        assert!(!p.with_extension("tmp").exists());
        std::fs::write(&p, "garbage").unwrap();
        assert!(load(&p).unwrap_err().contains("gossip-replay"));
    }
}
