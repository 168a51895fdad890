//! Deletes queued while the agent is down (see docs/cni.md, "The delete queue").
//!
//! A runtime that gets an error from DEL retries it forever and may refuse to remove the pod,
//! so when the agent is not running `membrane-cni` writes the delete here and succeeds; the
//! agent completes queued deletes when it starts. One JSON file per (container id, ifname),
//! named from a hash of both, so a repeated DEL rewrites the same file instead of adding one.
//!
//! Files are written atomically (temp file, fsync, rename, fsync of the directory): the agent
//! never reads half a file, and a queued delete survives a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the file format, so a future agent can tell old files from new ones.
pub const FORMAT_VERSION: u32 = 1;

/// Suffix of a queued delete; anything else in the directory (temp files) is not one.
const SUFFIX: &str = ".json";

/// One queued delete: what DelEndpoint would have been called with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDelete {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS; empty when the runtime gave none (allowed for DEL).
    #[serde(default)]
    pub netns: String,
    /// The network config's "name".
    #[serde(default)]
    pub network: String,
    /// When the delete was queued (seconds since the epoch). The agent must not apply it to
    /// an endpoint created after this: the runtime may re-add the same container id later.
    pub queued_at_unix: i64,
}

impl QueuedDelete {
    pub fn new(container_id: &str, ifname: &str, netns: &str, network: &str) -> Self {
        let queued_at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        QueuedDelete {
            version: FORMAT_VERSION,
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: netns.into(),
            network: network.into(),
            queued_at_unix,
        }
    }

    /// `del-<first 16 hex digits of SHA-256(container id, NUL, ifname)>.json`.
    pub fn file_name(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.container_id.as_bytes());
        h.update([0u8]);
        h.update(self.ifname.as_bytes());
        let digest = hex::encode(h.finalize());
        format!("del-{}{SUFFIX}", &digest[..16])
    }
}

/// Writes `del` into `dir` (created 0700 if missing) atomically; returns the file's path.
pub fn enqueue(dir: &Path, del: &QueuedDelete) -> io::Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(del.file_name());
    // Starts with '.' and lacks the suffix, so read_queue never takes it for a queued delete.
    let tmp = dir.join(format!(".{}.tmp.{}", del.file_name(), std::process::id()));
    let body = serde_json::to_vec_pretty(del).map_err(io::Error::other)?;
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        // The rename is durable only once the directory entry is on disk.
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// The queued deletes in `dir`, oldest first. A missing directory is an empty queue. Files
/// that cannot be read or parsed are skipped with a warning (they stay for an operator).
pub fn read_queue(dir: &Path) -> Vec<(PathBuf, QueuedDelete)> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the CNI delete queue");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(SUFFIX) {
            continue;
        }
        let path = entry.path();
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<QueuedDelete>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(del) => out.push((path, del)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping unreadable queued CNI delete")
            }
        }
    }
    out.sort_by(|a, b| (a.1.queued_at_unix, &a.0).cmp(&(b.1.queued_at_unix, &b.0)));
    out
}

/// Removes a queued delete once it is done; an already-removed file is fine.
pub fn complete(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_then_read_round_trips_and_repeats_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        let a = QueuedDelete::new("ctr-a", "eth0", "/run/netns/a", "membrane");
        let path = enqueue(&q, &a).unwrap();
        enqueue(&q, &a).unwrap();
        let b = QueuedDelete {
            queued_at_unix: a.queued_at_unix + 1,
            ..QueuedDelete::new("ctr-b", "eth0", "", "membrane")
        };
        enqueue(&q, &b).unwrap();
        let got = read_queue(&q);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (path.clone(), a));
        assert_eq!(got[1].1, b);
        complete(&path).unwrap();
        complete(&path).unwrap();
        assert_eq!(read_queue(&q).len(), 1);
    }

    #[test]
    fn missing_dir_temp_files_and_garbage_are_not_deletes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_queue(&dir.path().join("absent")).is_empty());
        fs::write(dir.path().join(".del-x.json.tmp.1"), b"{}").unwrap();
        fs::write(dir.path().join("del-broken.json"), b"{not json").unwrap();
        fs::write(dir.path().join("README"), b"hi").unwrap();
        assert!(read_queue(dir.path()).is_empty());
    }

    #[test]
    fn the_file_format_is_stable() {
        let d = QueuedDelete {
            version: 1,
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/n".into(),
            network: "membrane".into(),
            queued_at_unix: 5,
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"version":1,"container_id":"c","ifname":"eth0","netns":"/n",
                "network":"membrane","queued_at_unix":5})
        );
        assert!(d.file_name().starts_with("del-") && d.file_name().len() == 4 + 16 + 5);
    }
}
