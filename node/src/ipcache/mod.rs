//! Keeps the BPF ipcache in step with the registry.
//!
//! [`desired::desired_ipcache`] is pure: from the registry's local copy it computes what the
//! ipcache of node `me` must hold; [`apply::apply_ipcache`] writes the difference
//! ([`crate::diff::diff`]) into the map. The agent's reconcile loop (agent/reconcile.rs)
//! runs [`sync_once`] whenever the registry changes, and every few seconds regardless, so an
//! entry changed behind the agent's back is put right.

pub mod apply;
pub mod desired;

pub use apply::{apply_ipcache, sync_once, IpcacheMap};
pub use desired::{desired_ipcache, node_ip};

/// Reserved identities (Cilium's numbers).
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// A remote node's pod CIDR as a whole: the address is on that node, its endpoint is not
/// (yet) known here.
pub const IDENTITY_UNKNOWN: u32 = 0;
