//! This node's way to the registry: writes batched and forwarded to the leader, fresh reads
//! through the read index, and the local copy for everything that may lag by a moment.

pub mod client;
pub mod query;

pub use client::{ClientError, RegistryClient};
pub use query::{Query, QueryResult};
