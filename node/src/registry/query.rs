//! Registry reads that must be fresh: named queries answered by the leader after it has
//! confirmed its leadership (read index), so a read never misses an acknowledged write.

use std::collections::BTreeSet;

use membrane_consensus::registry::{IdentityRecord, NodeRecord, Registry, TokenRecord};
use serde::{Deserialize, Serialize};

/// A read of the registry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Query {
    Nodes,
    Tokens,
    Identities,
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum QueryResult {
    Nodes {
        nodes: Vec<NodeRecord>,
        voters: BTreeSet<u64>,
        learners: BTreeSet<u64>,
    },
    Tokens(Vec<TokenRecord>),
    Identities(Vec<IdentityRecord>),
}

/// Answers `query` from a registry and the Raft membership it belongs to.
pub fn answer(
    query: &Query,
    registry: &Registry,
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
) -> QueryResult {
    match query {
        Query::Nodes => QueryResult::Nodes {
            nodes: registry.nodes().cloned().collect(),
            voters,
            learners,
        },
        Query::Tokens => QueryResult::Tokens(registry.tokens().cloned().collect()),
        Query::Identities => QueryResult::Identities(registry.identities().cloned().collect()),
    }
}
