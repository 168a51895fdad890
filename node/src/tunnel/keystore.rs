//! This node's tunnel epoch secrets and its boot counter, on disk under `STATE/tunnel/`.
//!
//! - `epoch-N.key`: the 32-byte X25519 secret of epoch N (mode 0600, written through a
//!   temporary file, fsynced and renamed, so a crash leaves the old file or the new one).
//!   Erased (overwritten with zeros, then unlinked) once the epoch is retired.
//! - `boot`: a counter incremented at every agent start, before any packet is sealed. It
//!   goes into the key derivation: a restarted sender starts its packet counter from 0 again,
//!   so the same (key, nonce) pair must never come back; a new boot gives a new key.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("cannot use the tunnel key directory {path}: {source}; check that the state directory is writable (run as root)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({reason}); if the agent is stopped, delete it and start again (a secret is regenerated, a boot counter restarts above the old value only if you write a larger one)")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the boot counter in {path} has reached its maximum; the tunnel cannot derive new keys"
    )]
    BootExhausted { path: PathBuf },
}

/// The tunnel's files in the state directory.
#[derive(Debug)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// Opens (creating, mode 0700) `dir`.
    pub fn open(dir: &Path) -> Result<Keystore, KeystoreError> {
        let io = |source| KeystoreError::Io {
            path: dir.into(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Keystore { dir: dir.into() })
    }

    fn epoch_path(&self, epoch: u32) -> PathBuf {
        self.dir.join(format!("epoch-{epoch}.key"))
    }

    /// Increments the boot counter and returns the new value (1 at the first start).
    pub fn next_boot(&self) -> Result<u32, KeystoreError> {
        let path = self.dir.join("boot");
        let old = match fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse::<u32>()
                .map_err(|e| KeystoreError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(KeystoreError::Io { path, source }),
        };
        let boot = old
            .checked_add(1)
            .ok_or_else(|| KeystoreError::BootExhausted { path: path.clone() })?;
        write_atomic(&path, format!("{boot}\n").as_bytes())?;
        Ok(boot)
    }

    /// Stores the secret of `epoch` (replacing one there).
    pub fn store(&self, epoch: u32, secret: &[u8; 32]) -> Result<(), KeystoreError> {
        write_atomic(&self.epoch_path(epoch), secret)
    }

    /// Every stored epoch secret.
    pub fn load(&self) -> Result<BTreeMap<u32, Zeroizing<[u8; 32]>>, KeystoreError> {
        let io = |source| KeystoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(epoch) = name
                .to_str()
                .and_then(|n| n.strip_prefix("epoch-"))
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let bytes = Zeroizing::new(fs::read(&path).map_err(|source| KeystoreError::Io {
                path: path.clone(),
                source,
            })?);
            let secret: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeystoreError::Corrupt {
                        path: path.clone(),
                        reason: format!("{} bytes, a secret has 32", bytes.len()),
                    })?;
            out.insert(epoch, Zeroizing::new(secret));
        }
        Ok(out)
    }

    /// Erases the secret of `epoch`: zeros over the file, then unlink. Absent is fine.
    pub fn erase(&self, epoch: u32) -> Result<(), KeystoreError> {
        let path = self.epoch_path(epoch);
        let io = |source| KeystoreError::Io {
            path: path.clone(),
            source,
        };
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => {
                f.write_all(&[0u8; 32]).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        fs::remove_file(&path).map_err(io)?;
        sync_dir(&self.dir).map_err(io)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    crate::state::write_private_atomic(path, bytes).map_err(|source| KeystoreError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_private_and_erased() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::open(&tmp.path().join("tunnel")).unwrap();
        assert!(ks.load().unwrap().is_empty());
        ks.store(3, &[7; 32]).unwrap();
        ks.store(4, &[8; 32]).unwrap();
        ks.store(4, &[9; 32]).unwrap();
        let got = ks.load().unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(*got[&4], [9; 32]);
        let mode = fs::metadata(ks.epoch_path(3)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&ks.dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        ks.erase(3).unwrap();
        ks.erase(3).unwrap();
        assert_eq!(
            ks.load().unwrap().keys().copied().collect::<Vec<_>>(),
            vec![4]
        );
    }

    #[test]
    fn a_corrupt_secret_is_an_error_not_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::open(tmp.path()).unwrap();
        fs::write(ks.epoch_path(1), b"short").unwrap();
        let err = ks.load().unwrap_err().to_string();
        assert!(err.contains("5 bytes"), "{err}");
    }

    #[test]
    fn the_boot_counter_grows_at_every_start_and_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::open(tmp.path()).unwrap();
        assert_eq!(ks.next_boot().unwrap(), 1);
        assert_eq!(ks.next_boot().unwrap(), 2);
        let again = Keystore::open(tmp.path()).unwrap();
        assert_eq!(again.next_boot().unwrap(), 3);
        fs::write(tmp.path().join("boot"), b"garbage").unwrap();
        assert!(matches!(
            again.next_boot(),
            Err(KeystoreError::Corrupt { .. })
        ));
        fs::write(tmp.path().join("boot"), format!("{}", u32::MAX)).unwrap();
        assert!(matches!(
            again.next_boot(),
            Err(KeystoreError::BootExhausted { .. })
        ));
    }
}
