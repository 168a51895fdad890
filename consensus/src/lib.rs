//! Membrane's consensus layer: the cluster registry replicated with Raft.
//!
//! - [`registry`]: the registry state machine as pure logic. Commands go in, a response
//!   comes out; no IO, no clock, no randomness, so every node applying the same log ends in
//!   the same state. Unit-tested directly.
//! - [`store`]: openraft's log storage and state machine storage on sled (IO at the edge).
//! - [`network`]: openraft's network over tonic with mutual TLS, and the gRPC service that
//!   receives Raft RPCs from peers.
//! - [`codec`]: bounded bincode, the one decoder of everything read from disk or the wire.
//!
//! The contract with openraft: log entries are readable as soon as `append` returns and
//! durable (sled flushed) before its callback fires; the committed index is saved so a
//! restarted node re-applies its own log; snapshots carry the whole registry.
//!
//! The contract with proposers: a log entry that cannot be applied is refused before it is
//! proposed ([`Command::check_limits`]), never after it is committed, because a committed
//! entry is re-applied on every node at every restart.

pub mod codec;
pub mod network;
pub mod registry;
pub mod store;

pub use registry::{Command, Registry, RegistryError, Response};

/// Raft node ids. Allocated by the registry, never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft type configuration for the registry.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// A running Raft node of the registry.
pub type Raft = openraft::Raft<TypeConfig>;
