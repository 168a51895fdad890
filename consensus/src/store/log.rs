//! The log half of the store: openraft's `RaftLogStorage` on the `logs` and `meta` trees.
//!
//! Entries are keyed by big-endian index, so sled's byte order is the log order. Writes that
//! openraft relies on for safety (the vote, appended entries) are flushed before the call
//! returns; the committed pointer is not (see `save_committed`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, Vote,
};
use serde::{de::DeserializeOwned, Serialize};

use super::{decode, Disk, StorageResult, StoreError};
use crate::{NodeId, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// A file next to sled's, created once the first vote is on disk. See [`StoreError::Lost`].
const VOTE_MARKER_FILE: &str = "membrane-vote-saved";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The Raft log, vote and committed pointer in sled. Cheap to clone: clones share the same
/// database, which is how openraft's log readers see entries as soon as `append` returns.
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    logs: sled::Tree,
    meta: sled::Tree,
    /// Whether [`VOTE_MARKER_FILE`] exists.
    vote_marker: Arc<AtomicBool>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.disk.path)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Takes over the open trees and decodes what openraft reads first, so that damage shows
    /// at startup with the path in the message rather than as a Raft storage failure later.
    pub(super) fn open(disk: Disk, logs: sled::Tree, meta: sled::Tree) -> Result<Self, StoreError> {
        let vote_marker = disk.path.join(VOTE_MARKER_FILE).exists();
        let store = LogStore {
            disk,
            logs,
            meta,
            vote_marker: Arc::new(AtomicBool::new(vote_marker)),
        };
        let vote = store.read_meta::<Vote<NodeId>>(KEY_VOTE, "the saved vote")?;
        if vote.is_none() && vote_marker {
            return Err(StoreError::Lost {
                path: store.disk.path.clone(),
            });
        }
        store.read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, "the committed log id")?;
        store.read_meta::<LogId<NodeId>>(KEY_LAST_PURGED, "the last purged log id")?;
        store.last_entry_log_id()?;
        Ok(store)
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(self.disk.io("reading Raft metadata"))?
        else {
            return Ok(None);
        };
        decode(&bytes, crate::codec::MAX_META_BYTES)
            .map(Some)
            .map_err(|source| self.disk.corrupt(what, source))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        what: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = self
            .disk
            .encode(what, value, crate::codec::MAX_META_BYTES)?;
        self.meta
            .insert(key, bytes)
            .map_err(self.disk.io("writing Raft metadata"))?;
        Ok(())
    }

    /// Creates [`VOTE_MARKER_FILE`] durably (file and directory entry).
    fn write_vote_marker(&self) -> Result<(), StoreError> {
        let path = &self.disk.path;
        let io = |source: std::io::Error| StoreError::Io {
            path: path.clone(),
            op: "writing the vote marker",
            source: sled::Error::Io(source),
        };
        let file = std::fs::File::create(path.join(VOTE_MARKER_FILE)).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
        decode(value, crate::codec::MAX_LOG_ENTRY_BYTES).map_err(|source| {
            let what = match <[u8; 8]>::try_from(key) {
                Ok(k) => format!("log entry {}", u64::from_be_bytes(k)),
                Err(_) => format!("log entry with malformed key {key:?}"),
            };
            self.disk.corrupt(what, source)
        })
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        match self
            .logs
            .last()
            .map_err(self.disk.io("reading the last log entry"))?
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
            let (k, v) = kv.map_err(self.disk.io("reading log entries"))?;
            out.push(self.decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    /// Removes every entry with index in `range` (sled has no range delete).
    fn remove_range<RB: RangeBounds<[u8; 8]>>(&self, range: RB) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.logs.range(range).keys() {
            batch.remove(key.map_err(self.disk.io("scanning log entries to remove"))?);
        }
        self.logs
            .apply_batch(batch)
            .map_err(self.disk.io("removing log entries"))
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
        self.disk
            .flush()
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
            let bytes = self
                .disk
                .encode("log entry", &entry, crate::codec::MAX_LOG_ENTRY_BYTES)
                .map_err(|e| e.into_storage(ErrorSubject::Log(entry.log_id), ErrorVerb::Write))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
            last = Some(entry.log_id);
        }
        // Readable by log readers from here on (one atomic batch: no hole on a crash).
        self.logs
            .apply_batch(batch)
            .map_err(self.disk.io("appending log entries"))
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        // Durable before `append` returns, not only before the callback fires. openraft 0.9
        // may count entries towards a quorum once `append` returns: with a flush deferred to
        // the callback (group commit across appends), killing every node could lose an
        // acknowledged write — `jepsen-like-tests` t41 caught exactly that. Throughput comes
        // from the agents batching many writes into one entry instead.
        tracing::trace!(last_log_id = ?last, "log entries appended");
        let flushed = self.disk.flush().await;
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
