//! The node-to-node RPC surface beside Raft: joining a cluster (client side and the join
//! service), the cluster service that followers forward writes and reads to, and the
//! bootstrap of a cluster's first node.

pub mod bootstrap;
pub mod ca_service;
pub mod ca_source;
pub mod cluster_service;
pub mod join;
pub mod join_service;
pub mod rate_limit;

pub use join::JoinArgs;
