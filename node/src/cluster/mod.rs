//! Cluster membership as the agent runs it: gossip (liveness and node metadata), the
//! autopilot that keeps Raft's voters and learners in step with the registry, and gossip key
//! rotation.

pub mod api;
pub mod autopilot;
pub mod gossip;
pub mod rotation;
