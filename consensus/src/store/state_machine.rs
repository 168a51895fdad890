//! The state machine half of the store: openraft's `RaftStateMachine` applying committed
//! entries to the in-memory [`Registry`], and snapshots in the `snapshot` tree.
//!
//! Apply writes nothing to disk; a snapshot is the only place the whole registry is written,
//! and the one it was restored from at [`open`](super::open) is where a restart begins.

use std::fmt::Debug;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{decode, Disk, StorageResult, StoreError};
use crate::codec;
use crate::registry::legacy::{RegistryV0, RegistryV1, RegistryV2};
use crate::registry::{Registry, Response};
use crate::{NodeId, TypeConfig};

const KEY_CURRENT_SNAPSHOT: &[u8] = b"current";

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

/// [`SnapshotPayload`] as written before issue 11 (no format number; the frozen registry).
#[derive(Serialize, Deserialize)]
struct SnapshotPayloadV0 {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub registry: RegistryV0,
}

/// [`SnapshotPayload`] in format 1 (issue 11, before CA rotation; the frozen registry).
#[derive(Serialize, Deserialize)]
struct SnapshotPayloadV1 {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub registry: RegistryV1,
}

/// [`SnapshotPayload`] in format 2 (CA rotation, before issue 12; the frozen registry).
#[derive(Serialize, Deserialize)]
struct SnapshotPayloadV2 {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub registry: RegistryV2,
}

/// First byte of a versioned payload. An unversioned (pre-issue-11) payload begins with the
/// `Option` tag of `last_applied`, 0 or 1, so the two cannot be confused.
const SNAPSHOT_MAGIC: u8 = 0xFF;
/// The payload format this code writes: magic, this number (u32 LE), the payload.
/// 1: issue 11; 2: the registry holds a CA rotation; 3: resting endpoint addresses.
const SNAPSHOT_FORMAT: u32 = 3;

/// Encodes a snapshot payload in the current format.
fn encode_payload(payload: &SnapshotPayload) -> Result<Vec<u8>, bincode::Error> {
    let body = codec::encode(payload, codec::MAX_SNAPSHOT_BYTES)?;
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a snapshot payload of any format this code knows: the current one, or the
/// unversioned one written before issue 11 (converted).
fn decode_payload(data: &[u8]) -> Result<SnapshotPayload, bincode::Error> {
    let limit = codec::MAX_SNAPSHOT_BYTES;
    match data.split_first() {
        Some((&SNAPSHOT_MAGIC, rest)) => {
            let (version, body) = rest.split_at_checked(4).ok_or_else(|| {
                Box::new(bincode::ErrorKind::Custom(
                    "the snapshot ends inside its format number".into(),
                ))
            })?;
            let version = u32::from_le_bytes(version.try_into().unwrap_or_default());
            match version {
                SNAPSHOT_FORMAT => codec::decode(body, limit),
                2 => codec::decode::<SnapshotPayloadV2>(body, limit).map(|v2| SnapshotPayload {
                    last_applied: v2.last_applied,
                    membership: v2.membership,
                    registry: v2.registry.into(),
                }),
                1 => codec::decode::<SnapshotPayloadV1>(body, limit).map(|v1| SnapshotPayload {
                    last_applied: v1.last_applied,
                    membership: v1.membership,
                    registry: v1.registry.into(),
                }),
                other => Err(Box::new(bincode::ErrorKind::Custom(format!(
                    "snapshot format {other} is newer than this membrane reads ({SNAPSHOT_FORMAT}); upgrade this node"
                )))),
            }
        }
        _ => codec::decode::<SnapshotPayloadV0>(data, limit).map(|v0| SnapshotPayload {
            last_applied: v0.last_applied,
            membership: v0.membership,
            registry: v0.registry.into(),
        }),
    }
}

/// The current snapshot as kept in sled: meta and data in one value, so they never disagree.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

fn read_stored_snapshot(
    disk: &Disk,
    tree: &sled::Tree,
) -> Result<Option<StoredSnapshot>, StoreError> {
    let bytes = tree
        .get(KEY_CURRENT_SNAPSHOT)
        .map_err(disk.io("reading the snapshot"))?;
    match bytes {
        None => Ok(None),
        Some(b) => decode(&b, codec::MAX_SNAPSHOT_BYTES)
            .map(Some)
            .map_err(|source| disk.corrupt("the stored snapshot", source)),
    }
}

/// The registry state machine. Clones share state; the snapshot builder is such a clone.
#[derive(Clone)]
pub struct StateMachineStore {
    disk: Disk,
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
            .field("path", &self.disk.path)
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
    /// Restores the state machine from the persisted snapshot, if there is one.
    pub(super) fn open(disk: Disk, snapshot: sled::Tree) -> Result<Self, StoreError> {
        let state = match read_stored_snapshot(&disk, &snapshot)? {
            Some(s) => {
                let payload = decode_payload(&s.data)
                    .map_err(|source| disk.corrupt("the state machine snapshot", source))?;
                SmState {
                    last_applied: s.meta.last_log_id,
                    membership: s.meta.last_membership.clone(),
                    registry: payload.registry,
                }
            }
            None => SmState::default(),
        };
        Ok(StateMachineStore {
            disk,
            snapshot,
            state: Arc::new(RwLock::new(state)),
            snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A read handle on the registry; stays valid after the store is handed to openraft.
    pub fn registry(&self) -> RegistryHandle {
        RegistryHandle {
            state: self.state.clone(),
        }
    }

    /// Persists `stored` as the current snapshot unless a newer one is already there.
    async fn save_snapshot(&self, stored: &StoredSnapshot) -> Result<bool, StoreError> {
        let _guard = self.snapshot_write.lock().await;
        if let Some(current) = read_stored_snapshot(&self.disk, &self.snapshot)? {
            if current.meta.last_log_id > stored.meta.last_log_id {
                return Ok(false);
            }
        }
        let bytes = self
            .disk
            .encode("snapshot", stored, codec::MAX_SNAPSHOT_BYTES)?;
        self.snapshot
            .insert(KEY_CURRENT_SNAPSHOT, bytes)
            .map_err(self.disk.io("writing the snapshot"))?;
        // Flushed before returning: openraft purges the log up to the snapshot afterwards.
        self.disk.flush().await?;
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
            let payload = encode_payload(&SnapshotPayload {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
                registry: state.registry.clone(),
            });
            (payload, meta)
        };
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = payload
            .map_err(|source| StoreError::Encode {
                path: self.disk.path.clone(),
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
        let payload = decode_payload(&data)
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
        let stored = read_stored_snapshot(&self.disk, &self.snapshot)
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};

    use super::*;
    use crate::registry::{Command, LabelSet};
    use crate::store;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// A registry with something in every old field that a small cluster fills.
    fn old_registry() -> Registry {
        let mut r = crate::registry::test_support::bootstrapped();
        r.apply(Command::AllocateIdentity {
            labels: LabelSet::parse(&["app=web"]).expect("labels"),
        });
        r
    }

    /// Writes, into a fresh store directory, exactly what the code before issue 11 wrote: a
    /// snapshot whose data is the unversioned payload of the frozen registry, and a log entry
    /// after it, all with `bincode::serialize`.
    fn write_pre_issue_11_store(dir: &std::path::Path, registry: &Registry) {
        drop(store::open(dir).expect("create the store"));
        // The store just dropped may still hold sled's lock for a moment (see `open`).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for the sled lock");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("sled: {e}"),
            }
        };
        let membership = StoredMembership::new(
            Some(log_id(1)),
            Membership::new(vec![std::collections::BTreeSet::from([1])], None),
        );
        let payload = SnapshotPayloadV0 {
            last_applied: Some(log_id(3)),
            membership: membership.clone(),
            registry: registry.to_v0(),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3)),
                last_membership: membership,
                snapshot_id: "1-1-3-0".into(),
            },
            data: bincode::serialize(&payload).expect("encode payload"),
        };
        db.open_tree(super::super::SNAPSHOT_TREE)
            .expect("tree")
            .insert(
                KEY_CURRENT_SNAPSHOT,
                bincode::serialize(&stored).expect("encode"),
            )
            .expect("insert");
        let entry = Entry::<TypeConfig> {
            log_id: log_id(4),
            payload: EntryPayload::Normal(Command::RemoveNode { id: 9 }),
        };
        db.open_tree(super::super::LOGS_TREE)
            .expect("tree")
            .insert(
                4u64.to_be_bytes(),
                bincode::serialize(&entry).expect("encode"),
            )
            .expect("insert");
        db.flush().expect("flush");
    }

    #[tokio::test]
    async fn t30_a_store_written_before_issue_11_opens_and_is_rewritten_versioned() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let old = old_registry();
        write_pre_issue_11_store(dir.path(), &old);

        let (mut log, mut sm) = store::open(dir.path()).expect("the old store opens");
        assert_eq!(sm.registry().snapshot(), old);
        assert_eq!(sm.registry().last_applied(), Some(log_id(3)));
        use openraft::RaftLogReader;
        let entries = log.try_get_log_entries(4..5).await.expect("log reads");
        assert!(matches!(
            entries[0].payload,
            EntryPayload::Normal(Command::RemoveNode { id: 9 })
        ));

        // The next snapshot is written in the versioned format and reads back the same.
        let snap = sm.build_snapshot().await.expect("snapshot");
        let data = snap.snapshot.into_inner();
        assert_eq!(data[0], SNAPSHOT_MAGIC);
        assert_eq!(data[1..5], SNAPSHOT_FORMAT.to_le_bytes());
        drop((log, sm));
        let (_log, sm) = store::open(dir.path()).expect("reopens");
        assert_eq!(sm.registry().snapshot(), old);
    }

    #[test]
    fn t31_payload_formats() {
        let payload = SnapshotPayload {
            last_applied: Some(log_id(2)),
            membership: StoredMembership::default(),
            registry: old_registry(),
        };
        let bytes = encode_payload(&payload).expect("encode");
        assert_eq!(
            decode_payload(&bytes).expect("decode").registry,
            payload.registry
        );
        let mut future = bytes.clone();
        future[1..5].copy_from_slice(&(SNAPSHOT_FORMAT + 1).to_le_bytes());
        let err = decode_payload(&future).err().expect("refused").to_string();
        assert!(err.contains("upgrade this node"), "{err}");
        assert!(decode_payload(&[SNAPSHOT_MAGIC, 1]).is_err());
        // Format 1 (issue 11, no CA rotation field) reads back with no rotation.
        let v1 = SnapshotPayloadV1 {
            last_applied: Some(log_id(2)),
            membership: StoredMembership::default(),
            registry: payload.registry.to_v1(),
        };
        let mut format1 = vec![SNAPSHOT_MAGIC];
        format1.extend_from_slice(&1u32.to_le_bytes());
        format1.extend_from_slice(&bincode::serialize(&v1).expect("encode"));
        assert_eq!(
            decode_payload(&format1).expect("decode").registry,
            payload.registry
        );
        // Format 2 keeps a rotation under way.
        let mut rotating = payload.registry.clone();
        rotating.apply(Command::ForgetLegacyCaKey);
        rotating
            .apply(Command::BeginCaRotation {
                new_ca_cert_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
                    .into(),
                now: 3,
            })
            .into_result()
            .expect("begin");
        let bytes = encode_payload(&SnapshotPayload {
            registry: rotating.clone(),
            ..payload
        })
        .expect("encode");
        let back = decode_payload(&bytes).expect("decode").registry;
        assert!(back.ca_rotation().is_some());
        assert_eq!(back, rotating);
        // Format 2 (before resting addresses) reads back with the rotation and none resting.
        let v2 = SnapshotPayloadV2 {
            last_applied: Some(log_id(2)),
            membership: StoredMembership::default(),
            registry: rotating.to_v2(),
        };
        let mut format2 = vec![SNAPSHOT_MAGIC];
        format2.extend_from_slice(&2u32.to_le_bytes());
        format2.extend_from_slice(&bincode::serialize(&v2).expect("encode"));
        assert_eq!(decode_payload(&format2).expect("decode").registry, rotating);
        // Format 3 keeps resting addresses.
        let mut resting = rotating.clone();
        let added = resting.apply(Command::AddEndpoint {
            endpoint: crate::registry::NewEndpoint {
                node_id: 1,
                container_id: "c".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/c".into(),
                labels: crate::registry::LabelSet::parse(&["app=a"]).expect("labels"),
                now: 4,
            },
        });
        assert!(
            matches!(added, crate::registry::Response::Endpoint { .. }),
            "{added:?}"
        );
        resting.apply(Command::RemoveEndpointAt {
            node_id: 1,
            container_id: "c".into(),
            ifname: "eth0".into(),
            now: 5,
        });
        assert_eq!(resting.freed_addresses().len(), 1);
        let bytes = encode_payload(&SnapshotPayload {
            last_applied: Some(log_id(2)),
            membership: StoredMembership::default(),
            registry: resting.clone(),
        })
        .expect("encode");
        assert_eq!(decode_payload(&bytes).expect("decode").registry, resting);
        // An old payload with no previous log id starts with 0, one with a log id with 1.
        let v0 = SnapshotPayloadV0 {
            last_applied: None,
            membership: StoredMembership::default(),
            registry: payload.registry.to_v0(),
        };
        let old = bincode::serialize(&v0).expect("encode");
        assert_eq!(old[0], 0);
        assert_eq!(
            decode_payload(&old).expect("decode").registry,
            payload.registry
        );
    }
}
