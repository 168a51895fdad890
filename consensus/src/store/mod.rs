//! openraft storage (storage-v2) on one sled database per node.
//!
//! Layout of the database, all values encoded with bincode:
//!
//! | tree       | key                    | value                                   |
//! |------------|------------------------|-----------------------------------------|
//! | `logs`     | log index, big-endian  | `Entry<TypeConfig>`                     |
//! | `meta`     | `vote`                 | `Vote<NodeId>`                          |
//! | `meta`     | `committed`            | `Option<LogId<NodeId>>`                 |
//! | `meta`     | `last_purged`          | `LogId<NodeId>`                         |
//! | `snapshot` | `current`              | snapshot meta + data (one value)        |
//!
//! Beside sled's files, an empty file `membrane-vote-saved` records that a vote was once
//! saved, so that a database that sled "recovered" to empty is refused (see
//! [`StoreError::Lost`]).
//!
//! Big-endian keys make sled's byte order the log order, so ranges and "last entry" are
//! plain tree scans.
//!
//! The state machine (the [`Registry`]) lives in memory and is *not* written on every
//! apply: durability comes from the persisted snapshot plus the log. On restart the state
//! machine is restored from the last snapshot, and openraft re-applies the log after it up to
//! the saved committed log id ([`RaftLogStorage::save_committed`]). This keeps apply cheap
//! and makes a snapshot the only place where the whole registry is written.
//!
//! Every value read back from disk is decoded without `unwrap`: a damaged database turns into
//! a [`StoreError`] (at [`open`]) or a `StorageError` (at run time) that names the path and
//! says what to do, never a panic.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::registry::{Registry, Response};
use crate::{NodeId, TypeConfig};

/// sled's page cache size. The sled default is about 1 GiB, far more than the registry needs
/// and enough to crowd out the workloads on a small node.
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

const LOGS_TREE: &str = "logs";
const META_TREE: &str = "meta";
const SNAPSHOT_TREE: &str = "snapshot";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current";
/// A file next to sled's, created once the first vote is on disk. See [`StoreError::Lost`].
const VOTE_MARKER_FILE: &str = "membrane-vote-saved";

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
    let path = dir.to_path_buf();
    let io = |op: &'static str| {
        let path = path.clone();
        move |source| StoreError::Io { path, op, source }
    };
    let logs = db
        .open_tree(LOGS_TREE)
        .map_err(io("opening the log tree"))?;
    let meta = db
        .open_tree(META_TREE)
        .map_err(io("opening the meta tree"))?;
    let snapshot = db
        .open_tree(SNAPSHOT_TREE)
        .map_err(io("opening the snapshot tree"))?;

    let vote_marker = path.join(VOTE_MARKER_FILE).exists();
    let log_store = LogStore {
        path: path.clone(),
        db: db.clone(),
        logs,
        meta,
        vote_marker: Arc::new(AtomicBool::new(vote_marker)),
    };
    // Decode what openraft reads first now, so that damage shows at startup with the path
    // in the message rather than as a Raft storage failure later.
    let vote = log_store.read_meta::<Vote<NodeId>>(KEY_VOTE, "the saved vote")?;
    if vote.is_none() && vote_marker {
        return Err(StoreError::Lost { path });
    }
    log_store.read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, "the committed log id")?;
    log_store.read_meta::<LogId<NodeId>>(KEY_LAST_PURGED, "the last purged log id")?;
    log_store.last_entry_log_id()?;

    let stored = read_stored_snapshot(&path, &snapshot)?;
    let state = match &stored {
        Some(s) => {
            let payload: SnapshotPayload = decode(&s.data)
                .map_err(|source| corrupt(&path, "the state machine snapshot", source))?;
            SmState {
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                registry: payload.registry,
            }
        }
        None => SmState::default(),
    };
    tracing::info!(
        path = %path.display(),
        snapshot_last_log_id = ?stored.as_ref().and_then(|s| s.meta.last_log_id),
        "opened Raft state"
    );
    let sm = StateMachineStore {
        path,
        db,
        snapshot,
        state: Arc::new(RwLock::new(state)),
        snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
        snapshot_seq: Arc::new(AtomicU64::new(0)),
    };
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

fn encode<T: Serialize>(path: &Path, what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(value).map_err(|source| StoreError::Encode {
        path: path.to_path_buf(),
        what,
        source,
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

fn corrupt(path: &Path, what: impl Into<String>, source: bincode::Error) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
        source,
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

// ---------------------------------------------------------------------------------------------
// Log storage
// ---------------------------------------------------------------------------------------------

/// The Raft log, vote and committed pointer in sled. Cheap to clone: clones share the same
/// database, which is how openraft's log readers see entries as soon as `append` returns.
#[derive(Clone)]
pub struct LogStore {
    path: PathBuf,
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// Whether [`VOTE_MARKER_FILE`] exists.
    vote_marker: Arc<AtomicBool>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    fn io(&self, op: &'static str) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(self.io("reading Raft metadata"))?
        else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|source| corrupt(&self.path, what, source))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        what: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode(&self.path, what, value)?;
        self.meta
            .insert(key, bytes)
            .map_err(self.io("writing Raft metadata"))?;
        Ok(())
    }

    /// Creates [`VOTE_MARKER_FILE`] durably (file and directory entry).
    fn write_vote_marker(&self) -> Result<(), StoreError> {
        let io = |source: std::io::Error| StoreError::Io {
            path: self.path.clone(),
            op: "writing the vote marker",
            source: sled::Error::Io(source),
        };
        let file = std::fs::File::create(self.path.join(VOTE_MARKER_FILE)).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

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

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
        decode(value).map_err(|source| {
            let what = match <[u8; 8]>::try_from(key) {
                Ok(k) => format!("log entry {}", u64::from_be_bytes(k)),
                Err(_) => format!("log entry with malformed key {key:?}"),
            };
            corrupt(&self.path, what, source)
        })
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        match self
            .logs
            .last()
            .map_err(self.io("reading the last log entry"))?
        {
            Some((k, v)) => Ok(Some(self.decode_entry(&k, &v)?.log_id)),
            None => Ok(None),
        }
    }

    fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) if *i < start => return Ok(Vec::new()),
            Bound::Excluded(i) if *i <= start => return Ok(Vec::new()),
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.logs.range((Bound::Included(index_key(start)), end)) {
            let (k, v) = kv.map_err(self.io("reading log entries"))?;
            out.push(self.decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    /// Removes every entry with index in `range` (sled has no range delete).
    fn remove_range<RB: RangeBounds<[u8; 8]>>(&self, range: RB) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.logs.range(range).keys() {
            batch.remove(key.map_err(self.io("scanning log entries to remove"))?);
        }
        self.logs
            .apply_batch(batch)
            .map_err(self.io("removing log entries"))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.entries(range)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let read = || -> Result<LogState<TypeConfig>, StoreError> {
            let last_purged_log_id =
                self.read_meta::<LogId<NodeId>>(KEY_LAST_PURGED, "the last purged log id")?;
            let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        read().map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let sub = || ErrorSubject::Vote;
        self.write_meta(KEY_VOTE, "vote", vote)
            .map_err(|e| e.into_storage(sub(), ErrorVerb::Write))?;
        // A vote must be on disk before it is answered, or a restarted node could vote twice
        // in one term.
        self.flush()
            .await
            .map_err(|e| e.into_storage(sub(), ErrorVerb::Write))?;
        if !self.vote_marker.load(Ordering::Relaxed) {
            self.write_vote_marker()
                .map_err(|e| e.into_storage(sub(), ErrorVerb::Write))?;
            self.vote_marker.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE, "the saved vote")
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Saved without a flush: losing the latest value only means re-applying less on
    /// restart, and sled persists writes in order, so it is never ahead of the flushed log.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(KEY_COMMITTED, "committed log id", &committed)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, "the committed log id")
            .map(Option::flatten)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in entries {
            let bytes = encode(&self.path, "log entry", &entry)
                .map_err(|e| e.into_storage(ErrorSubject::Log(entry.log_id), ErrorVerb::Write))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
            last = Some(entry.log_id);
        }
        // Readable by log readers from here on (one atomic batch: no hole on a crash).
        self.logs
            .apply_batch(batch)
            .map_err(self.io("appending log entries"))
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        // Durable before `append` returns, not only before the callback fires. openraft 0.9
        // may count entries towards a quorum once `append` returns: with a flush deferred to
        // the callback (group commit across appends), killing every node could lose an
        // acknowledged write — `jepsen-like-tests` t41 caught exactly that. Throughput comes
        // from the agents batching many writes into one entry instead.
        tracing::trace!(last_log_id = ?last, "log entries appended");
        let flushed = self.flush().await;
        callback.log_io_completed(flushed.map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(since = %log_id, "truncating log");
        self.remove_range(index_key(log_id.index)..)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(upto = %log_id, "purging log");
        // Record the purge point first: a crash in between leaves extra entries below it,
        // which is harmless, never a hole.
        self.write_meta(KEY_LAST_PURGED, "last purged log id", &log_id)
            .and_then(|()| self.remove_range(..=index_key(log_id.index)))
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// The in-memory state machine: the registry and the Raft bookkeeping that goes with it.
#[derive(Clone, Debug, Default)]
struct SmState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    registry: Registry,
}

/// The snapshot's data: what [`SmState`] holds, in a form that outlives versions of this
/// struct's private layout.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    registry: Registry,
}

/// The current snapshot as kept in sled: meta and data in one value, so they never disagree.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

fn read_stored_snapshot(
    path: &Path,
    tree: &sled::Tree,
) -> Result<Option<StoredSnapshot>, StoreError> {
    let bytes = tree
        .get(KEY_CURRENT_SNAPSHOT)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            op: "reading the snapshot",
            source,
        })?;
    match bytes {
        None => Ok(None),
        Some(b) => decode(&b)
            .map(Some)
            .map_err(|source| corrupt(path, "the stored snapshot", source)),
    }
}

/// The registry state machine. Clones share state; the snapshot builder is such a clone.
#[derive(Clone)]
pub struct StateMachineStore {
    path: PathBuf,
    db: sled::Db,
    snapshot: sled::Tree,
    state: Arc<RwLock<SmState>>,
    /// Serialises snapshot writes so that a snapshot built from older state never replaces a
    /// newer one installed from the leader meanwhile.
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
    /// Makes snapshot ids unique within a process run.
    snapshot_seq: Arc<AtomicU64>,
}

impl Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A cheap, clonable read handle on the registry as applied on this node. Reads see the
/// local state machine: for a read that must reflect every committed write, call
/// `Raft::ensure_linearizable` first.
#[derive(Clone)]
pub struct RegistryHandle {
    state: Arc<RwLock<SmState>>,
}

impl Debug for RegistryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHandle")
            .field("last_applied", &self.last_applied())
            .finish_non_exhaustive()
    }
}

/// Locks for reading. A poisoned lock means `Registry::apply` panicked mid-command; the
/// state is still readable, and the Raft node has stopped by then, so reads go on.
fn read_state(state: &RwLock<SmState>) -> RwLockReadGuard<'_, SmState> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_state(state: &RwLock<SmState>) -> RwLockWriteGuard<'_, SmState> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

impl RegistryHandle {
    /// Runs `f` on the registry under a read lock. Keep `f` short: applies wait for it.
    pub fn read<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&read_state(&self.state).registry)
    }

    /// A copy of the whole registry.
    pub fn snapshot(&self) -> Registry {
        self.read(Registry::clone)
    }

    /// The last log id applied to the registry on this node.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        read_state(&self.state).last_applied
    }

    /// The last membership applied on this node.
    pub fn membership(&self) -> StoredMembership<NodeId, openraft::BasicNode> {
        read_state(&self.state).membership.clone()
    }
}

impl StateMachineStore {
    /// A read handle on the registry; stays valid after the store is handed to openraft.
    pub fn registry(&self) -> RegistryHandle {
        RegistryHandle {
            state: self.state.clone(),
        }
    }

    /// Persists `stored` as the current snapshot unless a newer one is already there.
    async fn save_snapshot(&self, stored: &StoredSnapshot) -> Result<bool, StoreError> {
        let _guard = self.snapshot_write.lock().await;
        if let Some(current) = read_stored_snapshot(&self.path, &self.snapshot)? {
            if current.meta.last_log_id > stored.meta.last_log_id {
                return Ok(false);
            }
        }
        let bytes = encode(&self.path, "snapshot", stored)?;
        self.snapshot
            .insert(KEY_CURRENT_SNAPSHOT, bytes)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                op: "writing the snapshot",
                source,
            })?;
        // Flushed before returning: openraft purges the log up to the snapshot afterwards.
        self.db
            .flush_async()
            .await
            .map_err(|source| StoreError::Flush {
                path: self.path.clone(),
                source,
            })?;
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (payload, meta) = {
            let state = read_state(&self.state);
            let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match state.last_applied {
                Some(l) => format!(
                    "{}-{}-{}-{seq}",
                    l.leader_id.term, l.leader_id.node_id, l.index
                ),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            let payload = bincode::serialize(&SnapshotPayload {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
                registry: state.registry.clone(),
            });
            (payload, meta)
        };
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = payload
            .map_err(|source| StoreError::Encode {
                path: self.path.clone(),
                what: "snapshot",
                source,
            })
            .map_err(|e| e.into_storage(subject(), ErrorVerb::Write))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored)
            .await
            .map_err(|e| e.into_storage(subject(), ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let state = read_state(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = write_state(&self.state);
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Ok,
                EntryPayload::Normal(cmd) => state.registry.apply(cmd),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Ok
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let payload: SnapshotPayload = decode(&data)
            .map_err(|source| StoreError::BadSnapshot { source })
            .map_err(|e| e.into_storage(subject(), ErrorVerb::Read))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored)
            .await
            .map_err(|e| e.into_storage(subject(), ErrorVerb::Write))?;
        let mut state = write_state(&self.state);
        // The meta is authoritative for the Raft bookkeeping; the payload carries the registry.
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.registry = payload.registry;
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = read_stored_snapshot(&self.path, &self.snapshot)
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
