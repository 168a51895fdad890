//! Getting a private key out of this node's Raft storage once the registry forgot it.
//!
//! A cluster created before issue 11 kept the CA key in the registry: in the `Bootstrap` log
//! entry and in every snapshot. Once `ForgetLegacyCaKey` is applied, a new snapshot and a
//! log purge up to it remove the last live copies; but sled is log-structured and keeps
//! overwritten and deleted values in its file until it reuses the space, which may be never
//! (verified: a deleted value stays in `raft/db`). So the database is rewritten: exported
//! into a new directory holding only live data, swapped in, and the old files zeroed and
//! unlinked. sled must be closed for that, so it happens at agent start, asked for by
//! [`request_rewrite`] (the agent then restarts itself).
//!
//! The test for "holds a key" is the PEM label: no other private key is PEM in the registry
//! (gossip keys are hex), so `PRIVATE KEY` in the storage files is the CA key.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The byte string whose presence means a PEM private key (PKCS#8 or SEC1).
const PEM_LABEL: &[u8] = b"PRIVATE KEY-----";

/// Errors of the rewrite; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("cannot {what} {path}: {source}; free space and permissions of the state directory?")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot rewrite the Raft database {path}: {source}; the old database is left in place"
    )]
    Sled { path: PathBuf, source: sled::Error },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ScrubError {
    let path = path.to_path_buf();
    move |source| ScrubError::Io { what, path, source }
}

/// Whether any file under `dir` (recursively) contains a PEM private key label.
pub fn holds_private_key(dir: &Path) -> std::io::Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if holds_private_key(&entry.path())? {
                return Ok(true);
            }
        } else if ty.is_file() && file_holds(&entry.path(), PEM_LABEL)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Streams the file in chunks, keeping an overlap so a label across two chunks is found.
fn file_holds(path: &Path, needle: &[u8]) -> std::io::Result<bool> {
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        let keep = needle.len().saturating_sub(1).min(carry.len());
        carry.drain(..carry.len() - keep);
    }
}

fn marker(raft_dir: &Path) -> PathBuf {
    sibling(raft_dir, "rewrite-requested")
}

fn sibling(raft_dir: &Path, suffix: &str) -> PathBuf {
    let name = raft_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "raft".into());
    raft_dir.with_file_name(format!("{name}.{suffix}"))
}

/// Asks the next agent start to rewrite the database in `raft_dir`.
pub fn request_rewrite(raft_dir: &Path) -> Result<(), ScrubError> {
    let m = marker(raft_dir);
    fs::write(&m, b"").map_err(io("write", &m))
}

/// At agent start, before the store is opened: finishes or undoes an interrupted rewrite,
/// then rewrites the database if it was asked for. Returns whether it rewrote.
pub fn rewrite_if_requested(raft_dir: &Path) -> Result<bool, ScrubError> {
    let new = sibling(raft_dir, "rewrite");
    let old = sibling(raft_dir, "old");
    // Interrupted between the two renames: the old database is the one to keep.
    if old.exists() && !raft_dir.exists() {
        fs::rename(&old, raft_dir).map_err(io("restore", &old))?;
    }
    if old.exists() {
        wipe_dir(&old)?;
    }
    if new.exists() {
        fs::remove_dir_all(&new).map_err(io("remove", &new))?;
    }
    let m = marker(raft_dir);
    if !m.exists() {
        return Ok(false);
    }
    if !raft_dir.exists() {
        fs::remove_file(&m).map_err(io("remove", &m))?;
        return Ok(false);
    }
    copy_live_data(raft_dir, &new)?;
    // Files beside sled's own (the vote marker) travel as they are.
    for entry in fs::read_dir(raft_dir).map_err(io("list", raft_dir))? {
        let entry = entry.map_err(io("list", raft_dir))?;
        let name = entry.file_name();
        let is_sled = matches!(name.to_str(), Some("conf" | "db" | "blobs"))
            || name.to_string_lossy().starts_with("snap.");
        if !is_sled && entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let to = new.join(&name);
            fs::copy(entry.path(), &to).map_err(io("copy", &to))?;
        }
    }
    sync_dir(&new)?;
    fs::rename(raft_dir, &old).map_err(io("rename", raft_dir))?;
    fs::rename(&new, raft_dir).map_err(io("rename", &new))?;
    if let Some(parent) = raft_dir.parent() {
        sync_dir(parent)?;
    }
    wipe_dir(&old)?;
    fs::remove_file(&m).map_err(io("remove", &m))?;
    info!(path = %raft_dir.display(), "Raft database rewritten without stale pages");
    Ok(true)
}

/// Opens the old database and imports its live trees into a fresh one at `new`.
fn copy_live_data(from: &Path, new: &Path) -> Result<(), ScrubError> {
    let sled_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScrubError::Sled { path, source }
    };
    let old_db = sled::open(from).map_err(sled_err(from))?;
    let new_db = sled::open(new).map_err(sled_err(new))?;
    new_db.import(old_db.export());
    new_db.flush().map_err(sled_err(new))?;
    Ok(())
}

/// Overwrites every file under `dir` with zeros, then removes it.
fn wipe_dir(dir: &Path) -> Result<(), ScrubError> {
    fn zero_files(dir: &Path) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                zero_files(&entry.path())?;
            } else if ty.is_file() {
                let len = entry.metadata()?.len();
                let mut f = fs::OpenOptions::new().write(true).open(entry.path())?;
                let zeros = vec![0u8; 1 << 16];
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
                f.sync_all()?;
            }
        }
        Ok(())
    }
    if let Err(e) = zero_files(dir) {
        warn!(error = %e, path = %dir.display(), "could not zero the old database before removing it");
    }
    fs::remove_dir_all(dir).map_err(io("remove", dir))
}

fn sync_dir(dir: &Path) -> Result<(), ScrubError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n";

    #[test]
    fn t10_finds_a_label_across_chunk_boundaries_and_in_subdirectories() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!holds_private_key(&tmp.path().join("missing")).unwrap());
        fs::create_dir(tmp.path().join("sub")).unwrap();
        let mut bytes = vec![b'x'; (1 << 16) - 5];
        bytes.extend_from_slice(b"PRIVATE KEY-----");
        fs::write(tmp.path().join("sub/f"), &bytes).unwrap();
        assert!(holds_private_key(tmp.path()).unwrap());
        fs::write(tmp.path().join("sub/f"), vec![b'x'; 1 << 17]).unwrap();
        assert!(!holds_private_key(tmp.path()).unwrap());
    }

    #[test]
    fn t20_a_rewrite_drops_deleted_values_and_keeps_live_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let raft = tmp.path().join("raft");
        {
            let db = sled::open(&raft).unwrap();
            let t = db.open_tree("snapshot").unwrap();
            t.insert("s", KEY).unwrap();
            db.flush().unwrap();
            t.insert("s", b"clean".as_slice()).unwrap();
            db.open_tree("logs")
                .unwrap()
                .insert("1", b"one".as_slice())
                .unwrap();
            db.flush().unwrap();
        }
        fs::write(raft.join("membrane-vote-saved"), b"").unwrap();
        // sled keeps the overwritten value: the reason this module exists.
        assert!(holds_private_key(&raft).unwrap());
        assert!(!rewrite_if_requested(&raft).unwrap(), "not asked for");
        request_rewrite(&raft).unwrap();
        assert!(rewrite_if_requested(&raft).unwrap());
        assert!(!holds_private_key(&raft).unwrap());
        assert!(raft.join("membrane-vote-saved").exists());
        assert!(!sibling(&raft, "old").exists() && !marker(&raft).exists());
        let db = sled::open(&raft).unwrap();
        let s = db.open_tree("snapshot").unwrap().get("s").unwrap().unwrap();
        assert_eq!(&s[..], b"clean");
        let l = db.open_tree("logs").unwrap().get("1").unwrap().unwrap();
        assert_eq!(&l[..], b"one");
    }

    #[test]
    fn t21_an_interrupted_swap_keeps_the_old_database() {
        let tmp = tempfile::tempdir().unwrap();
        let raft = tmp.path().join("raft");
        {
            let db = sled::open(&raft).unwrap();
            db.insert("k", b"v".as_slice()).unwrap();
            db.flush().unwrap();
        }
        // Crash after the first rename, with a half-built new database.
        fs::rename(&raft, sibling(&raft, "old")).unwrap();
        fs::create_dir(sibling(&raft, "rewrite")).unwrap();
        assert!(!rewrite_if_requested(&raft).unwrap());
        let db = sled::open(&raft).unwrap();
        assert_eq!(&db.get("k").unwrap().unwrap()[..], b"v");
        assert!(!sibling(&raft, "rewrite").exists());
    }
}
