//! The encryption tunnel on the agent's side: the device loop that seals and opens packets
//! (`device`), what the tunnel should hold (`view`, pure), what this node does next about
//! keys (`plan`, pure), this node's epoch secrets and boot counter on disk (`keystore`), and
//! the loop that drives them (`control`). docs/encryption.md says how it works and how to
//! operate it.

pub mod api;
pub mod control;
pub mod device;
pub mod keystore;
pub mod plan;
pub mod view;

#[cfg(test)]
mod test_support;

/// Seconds a superseded epoch stays accepted after the next one was activated: two report
/// rounds and more, so that every node has switched before the old keys go.
pub const RETIRE_GRACE_SECS: i64 = 30;
