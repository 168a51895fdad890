//! Keeps the BPF ipcache in step with the registry.
//!
//! [`desired::desired_ipcache`] is pure: from the registry's local copy it computes what the
//! ipcache of node `me` must hold; [`apply::apply_ipcache`] writes the difference
//! ([`crate::diff::diff`]) into the map. The agent's reconcile loop (agent/reconcile.rs)
//! runs [`sync_once`] whenever the registry changes, and every few seconds regardless, so an
//! entry changed behind the agent's back is put right.

pub mod api;
pub mod apply;
pub mod desired;

pub use apply::{apply_ipcache, sync_once, IpcacheMap};
pub use desired::{desired_ipcache, node_ip};

// The reserved identities the ipcache writes; their one home is the registry. UNKNOWN
// marks a remote node's pod CIDR as a whole: the address is on that node, its endpoint is
// not (yet) known here.
pub use membrane_consensus::registry::{
    IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN, IDENTITY_WORLD,
};
