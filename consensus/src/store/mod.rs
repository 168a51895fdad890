//! openraft storage (storage-v2) on one sled database per node.
//!
//! Layout of the database, all values encoded with bincode through the bounded
//! [`codec`](crate::codec) (the same bytes as `bincode::serialize`):
//!
//! | tree       | key                    | value                                   |
//! |------------|------------------------|-----------------------------------------|
//! | `logs`     | log index, big-endian  | `Entry<TypeConfig>`                     |
//! | `meta`     | `vote`                 | `Vote<NodeId>`                          |
//! | `meta`     | `committed`            | `Option<LogId<NodeId>>`                 |
//! | `meta`     | `last_purged`          | `LogId<NodeId>`                         |
//! | `snapshot` | `current`              | snapshot meta + data (one value)        |
//!
//! The snapshot data starts with a format number (see `state_machine`); data written
//! before issue 11 has none and is read through the frozen pre-issue-11 registry.
//!
//! Beside sled's files, an empty file `membrane-vote-saved` records that a vote was once
//! saved, so that a database that sled "recovered" to empty is refused (see
//! [`StoreError::Lost`]).
//!
//! Big-endian keys make sled's byte order the log order, so ranges and "last entry" are
//! plain tree scans.
//!
//! The state machine (the [`Registry`](crate::Registry)) lives in memory and is *not*
//! written on every apply: durability comes from the persisted snapshot plus the log. On
//! restart the state machine is restored from the last snapshot, and openraft re-applies the
//! log after it up to the saved committed log id
//! ([`RaftLogStorage::save_committed`](openraft::storage::RaftLogStorage::save_committed)).
//! This keeps apply cheap and makes a snapshot the only place where the whole registry is
//! written.
//!
//! Every value read back from disk is decoded without `unwrap`: a damaged database turns into
//! a [`StoreError`] (at [`open`]) or a `StorageError` (at run time) that names the path and
//! says what to do, never a panic.
//!
//! The two halves share one database but no state:
//! - [`log`]: [`LogStore`], openraft's `RaftLogStorage` (the log, the vote, the committed
//!   pointer; the `logs` and `meta` trees).
//! - [`state_machine`]: [`StateMachineStore`], openraft's `RaftStateMachine` (apply into the
//!   registry, snapshots; the `snapshot` tree), and [`RegistryHandle`] for local reads.

mod log;
mod state_machine;

use std::path::{Path, PathBuf};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::{de::DeserializeOwned, Serialize};

use crate::NodeId;

pub use log::LogStore;
pub use state_machine::{RegistryHandle, StateMachineStore};

/// sled's page cache size. The sled default is about 1 GiB, far more than the registry needs
/// and enough to crowd out the workloads on a small node.
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

const LOGS_TREE: &str = "logs";
const META_TREE: &str = "meta";
const SNAPSHOT_TREE: &str = "snapshot";

/// What to tell an operator whose state directory cannot be used.
const REMEDY: &str = "restore it from backup, or remove it and rejoin the node to the cluster";

/// Errors of the Raft store. Run-time failures inside openraft's traits are converted to
/// openraft's `StorageError` (which stops the Raft node); these are the ones a caller of
/// [`open`] sees, and the source of the messages inside those `StorageError`s.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the directory: not a sled database, damaged, or no permission.
    #[error("Raft state at {path} is unreadable (damaged, or not a database this version of membrane wrote): {source}; {REMEDY}")]
    Open { path: PathBuf, source: sled::Error },
    /// The directory has content, but not that of a sled database.
    #[error("{path} does not hold Raft state: {reason}; point the agent at the right data directory, {REMEDY}")]
    NotAStore { path: PathBuf, reason: String },
    /// The vote is gone although this directory has saved one before: sled recovers a damaged
    /// database by dropping what follows the damage, possibly everything. A node that forgot
    /// its vote could vote twice in one term, so it must not start.
    #[error("Raft state at {path} has lost its saved vote (the database was damaged and recovered empty or partly); {REMEDY}")]
    Lost { path: PathBuf },
    /// Another process (or another store in this process) has the database open.
    #[error("Raft state at {path} is in use by another process: {source}; stop the other membrane agent using this directory, or give this agent a data directory of its own")]
    Locked { path: PathBuf, source: sled::Error },
    /// sled panicked while opening the directory (it does on some kinds of damage).
    #[error(
        "Raft state at {path} is unreadable: the storage engine failed on it ({message}); {REMEDY}"
    )]
    OpenPanicked { path: PathBuf, message: String },
    /// A value in the database does not decode.
    #[error("Raft state at {path} is corrupt: cannot decode {what}: {source}; {REMEDY}")]
    Corrupt {
        path: PathBuf,
        what: String,
        source: bincode::Error,
    },
    /// A read or write on the open database failed.
    #[error("Raft state at {path}: {op} failed: {source}; check the disk, then {REMEDY}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: sled::Error,
    },
    /// Flushing to disk failed, so the write may not be durable.
    #[error("Raft state at {path}: flushing to disk failed: {source}; check the disk (full? read-only?)")]
    Flush { path: PathBuf, source: sled::Error },
    /// A value could not be encoded. Only a bug can cause this.
    #[error("cannot encode {what} for the Raft state at {path}: {source}")]
    Encode {
        path: PathBuf,
        what: &'static str,
        source: bincode::Error,
    },
    /// A snapshot received from the leader does not decode.
    #[error("received snapshot does not decode: {source}; the leader will send it again")]
    BadSnapshot { source: bincode::Error },
}

impl StoreError {
    /// Wraps the error for openraft, with what was being done to what.
    fn into_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// How long `open` waits for another holder of the directory to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Shorthand for openraft's error type.
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Opens (or creates) the Raft state in `dir`: one sled database holding the log, the vote and
/// the state machine's snapshot. Fails with a clear [`StoreError`] if the directory is not a
/// usable database; never panics.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    // A store dropped a moment ago may still be releasing sled's lock (its flush thread ends
    // when the last handle goes), and an agent restarted by a supervisor may race the old
    // process's exit: wait a little before calling the directory busy.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let db = loop {
        match open_db(dir) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other?,
        }
    };
    let disk = Disk {
        path: dir.to_path_buf(),
        db,
    };
    let logs = disk.tree(LOGS_TREE, "opening the log tree")?;
    let meta = disk.tree(META_TREE, "opening the meta tree")?;
    let snapshot = disk.tree(SNAPSHOT_TREE, "opening the snapshot tree")?;

    let log_store = LogStore::open(disk.clone(), logs, meta)?;
    let sm = StateMachineStore::open(disk, snapshot)?;
    tracing::info!(
        path = %dir.display(),
        snapshot_last_log_id = ?sm.registry().last_applied(),
        "opened Raft state"
    );
    Ok((log_store, sm))
}

/// Opens sled with a bounded cache. sled panics on some kinds of damage instead of
/// returning an error; the panic is caught here so a bad directory is reported, not fatal.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    check_layout(dir)?;
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY_BYTES);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        // sled reports a held lock only as an IO error with this text.
        Ok(Err(source)) if source.to_string().contains("could not acquire lock") => {
            Err(StoreError::Locked {
                path: dir.to_path_buf(),
                source,
            })
        }
        Ok(Err(source)) => Err(StoreError::Open {
            path: dir.to_path_buf(),
            source,
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(StoreError::OpenPanicked {
                path: dir.to_path_buf(),
                message,
            })
        }
    }
}

/// Refuses a non-empty directory that lacks sled's `conf` and `db` files. sled would happily
/// start an empty database next to (or over) foreign files, and a node that silently lost its
/// log and vote could break Raft's guarantees; better to stop and say so.
fn check_layout(dir: &Path) -> Result<(), StoreError> {
    let not_a_store = |reason: String| StoreError::NotAStore {
        path: dir.to_path_buf(),
        reason,
    };
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Missing: sled creates it. Other failures (not a directory, no permission) are
        // reported by sled's open with its own message.
        Err(_) => return Ok(()),
    };
    if entries.next().is_none() {
        return Ok(());
    }
    for file in ["conf", "db"] {
        match std::fs::metadata(dir.join(file)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(not_a_store(format!("`{file}` is not a regular file"))),
            Err(e) => {
                return Err(not_a_store(format!(
                    "the directory is not empty but has no sled `{file}` file ({e})"
                )))
            }
        }
    }
    Ok(())
}

/// The open database and where it lives: what both halves of the store share. Every error
/// made here names the path.
#[derive(Clone)]
struct Disk {
    path: PathBuf,
    db: sled::Db,
}

impl Disk {
    fn tree(&self, name: &str, op: &'static str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(self.io(op))
    }

    fn io(&self, op: &'static str) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Encodes `value` with the bounded codec; a value over `limit` is refused here, before
    /// it is written, rather than being unreadable later.
    fn encode<T: Serialize>(
        &self,
        what: &'static str,
        value: &T,
        limit: u64,
    ) -> Result<Vec<u8>, StoreError> {
        crate::codec::encode(value, limit).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            what,
            source,
        })
    }

    fn corrupt(&self, what: impl Into<String>, source: bincode::Error) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
            source,
        }
    }

    /// Flushes every tree to disk.
    async fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Flush {
                path: self.path.clone(),
                source,
            })
    }
}

/// Decodes a value read from the database, within `limit` (see [`crate::codec`]).
fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, bincode::Error> {
    crate::codec::decode(bytes, limit)
}
