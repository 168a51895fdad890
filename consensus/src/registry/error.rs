//! Errors that the registry state machine returns for a command.
//!
//! They travel inside Raft responses (and across the wire to the node that proposed the
//! command), so they are plain serialisable values with messages that say what to do.

use serde::{Deserialize, Serialize};

/// Why the registry refused a command. A refused command changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RegistryError {
    #[error("the cluster is not initialised yet; run `membrane init` on the first node and start its agent")]
    NotBootstrapped,
    #[error("the cluster is already initialised (cluster {name:?}, id {id})")]
    AlreadyBootstrapped { id: u8, name: String },
    #[error("join token {id:?} does not exist; create one with `membrane token create`")]
    TokenNotFound { id: String },
    #[error("join token {id:?} has expired; create a new one with `membrane token create`")]
    TokenExpired { id: String },
    #[error("join token {id:?} has been revoked; create a new one with `membrane token create`")]
    TokenRevoked { id: String },
    #[error("join token {id:?} has been used {uses} time(s), its limit; create a new one with `membrane token create`")]
    TokenUsedUp { id: String, uses: u32 },
    #[error("the secret of join token {id:?} is wrong; copy the whole ID.SECRET printed by `membrane token create`")]
    TokenSecretMismatch { id: String },
    #[error("a join token with id {id:?} already exists")]
    TokenExists { id: String },
    #[error("invalid token settings: {0}")]
    InvalidToken(String),
    #[error("node name {name:?} is already taken by node {id}; pick another name or remove node {id} first")]
    NodeNameTaken { name: String, id: u64 },
    #[error("node {id} is not in the registry")]
    NodeNotFound { id: u64 },
    #[error("the pod CIDR pool {pool} has no free /{prefix} block left; remove dead nodes or re-create the cluster with a larger --pod-cidr")]
    PodCidrExhausted { pool: String, prefix: u8 },
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    #[error("no identity has the labels {labels}")]
    IdentityNotFound { labels: String },
    #[error("all {count} identity numbers of cluster {cluster_id} are in use; release unused identities")]
    IdentitySpaceExhausted { cluster_id: u8, count: u32 },
    #[error("gossip keyring: {0}")]
    InvalidGossipKey(String),
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    #[error("{0}")]
    EndpointConflict(String),
    #[error("node {node_id}'s pod CIDR {cidr} has no free address (it holds {capacity} endpoints); delete unused endpoints, or re-create the cluster with a larger --node-cidr-size")]
    EndpointAddressesExhausted {
        node_id: u64,
        cidr: String,
        capacity: u64,
    },
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    #[error("no policy is named {name:?}; `membrane policy get` lists them")]
    PolicyNotFound { name: String },
    #[error("invalid cluster settings: {0}")]
    InvalidClusterConfig(String),
    // Variants below were added for issue 11 (appended: the enum travels in responses).
    #[error("the join token is not valid for this cluster; create a new one with `membrane token create`")]
    JoinRefused,
    #[error("node {id} has been removed from the cluster and its certificate is revoked; to bring the machine back, wipe its state directory and join it again with a new token")]
    NodeRevoked { id: u64 },
    #[error("the TLS key presented for node {id} is not the one the registry recorded for it; the certificate is not node {id}'s (stolen or stale): remove and re-join the node if its keys were replaced")]
    NodeKeyMismatch { id: u64 },
    #[error("node id {id} is not the next free id (that is {next}); sign the certificate again for id {next} and retry")]
    NodeIdTaken { id: u64, next: u64 },
    #[error("rpc address {addr} cannot be used: {reason}; give the node's routable address with --advertise-addr")]
    InvalidRpcAddr { addr: String, reason: String },
    #[error("invalid certificate record: {0}")]
    InvalidCertificate(String),
    #[error("identity {id} ({labels}) has no reference left that the API may release: {held} are held by endpoints or by nodes' API; remove those endpoints, or release through the node that allocated it")]
    IdentityInUse { id: u32, labels: String, held: u64 },
    #[error("node {node_id} already holds {limit} identities through the API, its quota; release unused ones with `membrane identity release`")]
    IdentityQuotaExceeded { node_id: u64, limit: usize },
    #[error("node {node_id}'s API holds no reference on the identity of {labels}; only references taken by a node's API can be released through it")]
    IdentityNotHeld { node_id: u64, labels: String },
    #[error("the command is too large to be a log entry: {0}")]
    CommandTooLarge(String),
    #[error("CA rotation: {0}")]
    CaRotation(String),
    // Issue 12.
    #[error("encryption: {0}")]
    Encryption(String),
}
