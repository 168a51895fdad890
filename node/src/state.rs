//! The node's state directory: what it holds and how it is read back.
//!
//! ```text
//! <state-dir>/
//!   keys/tls.key, keys/x25519.key   node keypairs (0600), created on first start
//!   keys/ca.key                     the cluster CA's private key: on voters only (0600)
//!   tls/ca.crt, tls/node.crt        cluster CA and this node's certificate
//!   node.json                       who this node is in which cluster
//!   bootstrap.json                  only between `membrane init` and the first agent start
//!   join-trust.json                 member key hashes from the join (crate::authz::join_trust)
//!   raft/                           Raft log, vote and snapshots (sled)
//! ```
//! Every read of a file that exists but cannot be understood is an error naming the file and
//! what to do; nothing here panics on bad disk contents.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use membrane_consensus::registry::{ClusterConfig, GossipKey, NewNode, TokenRecord};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state directory {path}: {source}; check that it exists and is writable by this user (run as root)")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({reason}); restore it from a backup, or remove the state directory and join the node again")]
    Corrupt { path: PathBuf, reason: String },
}

/// Who this node is; written once by `init` or by a successful join.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeIdentity {
    pub cluster_id: u8,
    pub cluster_name: String,
    pub node_id: u64,
    pub node_name: String,
    /// Address other nodes reach this node's RPC server on.
    pub rpc_addr: String,
}

/// Pending cluster creation, written by `membrane init` and consumed by the first agent start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bootstrap {
    pub config: ClusterConfig,
    pub first_node: NewNode,
    pub first_token: TokenRecord,
    pub gossip_key: GossipKey,
}

/// Paths inside a state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating with mode 0700 if needed) a state directory.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        let dir_err = |source| StateError::Dir {
            path: root.to_path_buf(),
            source,
        };
        if root.exists() && !root.is_dir() {
            return Err(StateError::Dir {
                path: root.to_path_buf(),
                source: std::io::Error::other("it is a file, not a directory"),
            });
        }
        fs::create_dir_all(root).map_err(dir_err)?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        for sub in ["tls", "keys"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|source| StateError::Dir {
                path: p.clone(),
                source,
            })?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("tls/ca.crt")
    }
    pub fn node_cert_path(&self) -> PathBuf {
        self.root.join("tls/node.crt")
    }
    /// The CA private key. Only voters hold it; it never enters the registry (issue 11).
    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join("keys/ca.key")
    }
    fn identity_path(&self) -> PathBuf {
        self.root.join("node.json")
    }
    fn bootstrap_path(&self) -> PathBuf {
        self.root.join("bootstrap.json")
    }

    /// This node's identity, or `None` before it was initialised or joined.
    pub fn identity(&self) -> Result<Option<NodeIdentity>, StateError> {
        read_json(&self.identity_path())
    }

    pub fn write_identity(&self, id: &NodeIdentity) -> Result<(), StateError> {
        write_json(&self.identity_path(), id)
    }

    pub fn bootstrap(&self) -> Result<Option<Bootstrap>, StateError> {
        read_json(&self.bootstrap_path())
    }

    pub fn write_bootstrap(&self, b: &Bootstrap) -> Result<(), StateError> {
        write_json(&self.bootstrap_path(), b)
    }

    /// Called once the bootstrap command is committed.
    pub fn remove_bootstrap(&self) -> Result<(), StateError> {
        let p = self.bootstrap_path();
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Write { path: p, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Reads the CA and node certificates (PEM).
    pub fn certificates(&self) -> Result<(String, String), StateError> {
        let ca = read_text(&self.ca_cert_path())?;
        let node = read_text(&self.node_cert_path())?;
        for (path, pem) in [(self.ca_cert_path(), &ca), (self.node_cert_path(), &node)] {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(StateError::Corrupt {
                    path,
                    reason: "no PEM certificate in it".into(),
                });
            }
        }
        Ok((ca, node))
    }

    /// Replaces this node's certificate (a renewal), atomically.
    pub fn write_node_cert(&self, node_pem: &str) -> Result<(), StateError> {
        write_file(&self.node_cert_path(), node_pem.as_bytes())
    }

    pub fn write_certificates(&self, ca_pem: &str, node_pem: &str) -> Result<(), StateError> {
        write_file(&self.ca_cert_path(), ca_pem.as_bytes())?;
        write_file(&self.node_cert_path(), node_pem.as_bytes())
    }
}

impl StateDir {
    /// The CA private key (PEM), or `None` on a node that does not hold it.
    pub fn ca_key(&self) -> Result<Option<String>, StateError> {
        let path = self.ca_key_path();
        match fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => read_text(&path).map(Some),
            Ok(pem) if pem.contains("PRIVATE KEY-----") => Ok(Some(pem)),
            Ok(_) => Err(StateError::Corrupt {
                path,
                reason: "no PEM private key in it".into(),
            }),
        }
    }

    /// Stores the CA private key (0600, atomically, fsync'd with its directory).
    pub fn write_ca_key(&self, pem: &str) -> Result<(), StateError> {
        write_file(&self.ca_key_path(), pem.as_bytes())
    }

    /// Deletes the CA private key; true if there was one. The file is overwritten with
    /// zeros before it is unlinked, so that the key does not linger in a block the
    /// filesystem reuses later (best effort: copy-on-write filesystems and SSD wear
    /// levelling may keep old blocks; see docs/security.md).
    pub fn remove_ca_key(&self) -> Result<bool, StateError> {
        shred(&self.ca_key_path())
    }

    /// The key of the CA a rotation is moving to (`keys/ca-next.key`), on voters between
    /// `membrane ca rotate` and the phase where the new CA starts signing.
    pub fn next_ca_key(&self) -> Result<Option<String>, StateError> {
        let path = self.next_ca_key_path();
        match fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => read_text(&path).map(Some),
            Ok(pem) if pem.contains("PRIVATE KEY-----") => Ok(Some(pem)),
            Ok(_) => Err(StateError::Corrupt {
                path,
                reason: "no PEM private key in it".into(),
            }),
        }
    }

    pub fn next_ca_key_path(&self) -> PathBuf {
        self.root.join("keys/ca-next.key")
    }

    pub fn write_next_ca_key(&self, pem: &str) -> Result<(), StateError> {
        write_file(&self.next_ca_key_path(), pem.as_bytes())
    }

    /// Deletes the next CA key like [`StateDir::remove_ca_key`]; true if there was one.
    pub fn remove_next_ca_key(&self) -> Result<bool, StateError> {
        shred(&self.next_ca_key_path())
    }

    /// Replaces the trusted CA certificates (`tls/ca.crt`, the signing CA first), atomically.
    pub fn write_ca_certs(&self, pem: &str) -> Result<(), StateError> {
        write_file(&self.ca_cert_path(), pem.as_bytes())
    }
}

/// Overwrites a file with zeros, then unlinks it; false if there was none.
fn shred(path: &Path) -> Result<bool, StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let len = match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
        Ok(m) => m.len(),
    };
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(err)?;
    f.write_all(&vec![0u8; len as usize]).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::remove_file(path).map_err(err)?;
    sync_parent(path).map_err(err)?;
    Ok(true)
}

fn read_text(path: &Path) -> Result<String, StateError> {
    fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::InvalidData => StateError::Corrupt {
            path: path.into(),
            reason: "not UTF-8 text".into(),
        },
        _ => StateError::Read {
            path: path.into(),
            source,
        },
    })
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.into(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.into(),
        source: std::io::Error::other(e),
    })?;
    write_file(path, &bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_private_atomic(path, bytes).map_err(|source| StateError::Write {
        path: path.into(),
        source,
    })
}

/// Writes through a temporary file, fsyncs and renames, so a crash leaves the old or the new
/// file, never half of one. Mode 0600: these files hold secrets (bootstrap.json has the CA
/// key; the tunnel keystore its epoch secrets).
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    // The rename itself is durable only once the directory is synced.
    sync_parent(path)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip_and_corrupt_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.identity().unwrap(), None);
        let id = NodeIdentity {
            cluster_id: 1,
            cluster_name: "c".into(),
            node_id: 3,
            node_name: "n3".into(),
            rpc_addr: "10.0.0.1:7700".into(),
        };
        dir.write_identity(&id).unwrap();
        assert_eq!(dir.identity().unwrap(), Some(id));
        let mode = fs::metadata(tmp.path().join("node.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(tmp.path().join("node.json"), b"{not json").unwrap();
        let err = dir.identity().unwrap_err().to_string();
        assert!(err.contains("node.json is corrupt"), "{err}");
    }

    #[test]
    fn t20_ca_key_is_private_and_removed_for_good() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.ca_key().unwrap(), None);
        assert!(!dir.remove_ca_key().unwrap(), "nothing to remove");
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        dir.write_ca_key(pem).unwrap();
        assert_eq!(dir.ca_key().unwrap().as_deref(), Some(pem));
        let mode = fs::metadata(dir.ca_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.remove_ca_key().unwrap());
        assert_eq!(dir.ca_key().unwrap(), None);
        assert!(!tmp.path().join("keys/ca.tmp").exists());
        fs::write(dir.ca_key_path(), b"garbage").unwrap();
        let err = dir.ca_key().unwrap_err().to_string();
        assert!(err.contains("ca.key is corrupt"), "{err}");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        fs::write(&file, b"x").unwrap();
        let err = StateDir::open(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
