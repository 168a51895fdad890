//! The registry: the cluster's replicated source of truth, as a pure state machine.
//!
//! Every node applies the same committed [`Command`]s in the same order and so holds the
//! same [`Registry`]. `apply` does no IO and reads no clock: any time a command depends on
//! (a token's expiry, a join time) is carried inside the command, stamped by the node that
//! proposed it. A command that is refused returns [`Response::Err`] and leaves the registry
//! exactly as it was.
//!
//! What it holds, one module per concern, each with its records, its command handlers (an
//! `impl Registry` block) and their tests:
//!
//! - `cluster`: the settings and CA fixed by `membrane init`, and the bootstrap.
//! - `token`: join tokens (hashed), their creation, revocation and use at admission.
//! - `node`: nodes, admitted with a token, each with a pod CIDR (cut by `pod_cidr`).
//! - `identity`: security identities (label set <-> number, reference counted; labels in
//!   `labels`) and the reserved numbers.
//! - `endpoint`: endpoints, with an address from their node's pod CIDR ([`ipam`]) and the
//!   identity of their labels.
//! - `policy`: network policies under one cluster-wide revision.
//! - `gossip_keys`: the gossip keyring and its rotation.
//!
//! This file holds the [`Registry`] state, the [`Command`]s and [`Response`]s, and the
//! dispatch from one to the other.

mod cluster;
mod endpoint;
mod error;
mod gossip_keys;
mod identity;
pub mod ipam;
mod labels;
mod node;
mod pod_cidr;
mod policy;
mod token;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cluster::ClusterConfig;
pub use endpoint::{
    validate_container_id, validate_ifname, validate_netns, EndpointRecord, NewEndpoint,
};
pub use error::RegistryError;
pub use gossip_keys::{GossipKey, GossipKeyring, MAX_GOSSIP_KEYS};
pub use identity::{
    reserved_identity_name, IdentityRecord, IDENTITY_FIRST_LOCAL, IDENTITY_HEALTH, IDENTITY_HOST,
    IDENTITY_INIT, IDENTITY_MAX_LOCAL, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN, IDENTITY_UNMANAGED,
    IDENTITY_WORLD, RESERVED_IDENTITIES,
};
pub use labels::LabelSet;
pub use node::{KeyError, NewNode, NodeRecord, Sha256, X25519Public};
pub use policy::{NewPolicy, PolicyRecord, MAX_POLICIES, MAX_POLICY_BYTES};
pub use token::{TokenRecord, TokenState};

use endpoint::EndpointTable;
use identity::IdentityTable;
use policy::PolicyTable;

/// A typed change to the registry. Proposed by one node, committed through Raft, applied by
/// every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates the cluster: settings, the first node (id 1) and the first join token.
    Bootstrap {
        config: ClusterConfig,
        first_node: NewNode,
        first_token: TokenRecord,
        gossip_key: GossipKey,
    },
    CreateToken {
        token: TokenRecord,
    },
    RevokeToken {
        id: String,
    },
    /// Admits a node that presented a join token. `presented_hash` is the hash of the token
    /// it presented (the secret itself never enters the log); `now` is the proposer's clock.
    AdmitNode {
        token_id: String,
        presented_hash: String,
        node: NewNode,
        now: i64,
    },
    /// Removes a node, frees its pod CIDR, and removes its endpoints (releasing their
    /// identity references). Its id is never given out again.
    RemoveNode {
        id: u64,
    },
    AllocateIdentity {
        labels: LabelSet,
    },
    ReleaseIdentity {
        labels: LabelSet,
    },
    /// Registers an endpoint: allocates its address from its node's pod CIDR and takes a
    /// reference on the identity of its labels. Idempotent for the same (node, container
    /// id, ifname) and netns: the existing record is returned and no reference is taken.
    AddEndpoint {
        endpoint: NewEndpoint,
    },
    /// Removes an endpoint and releases its identity reference; unknown endpoints are fine.
    RemoveEndpoint {
        node_id: u64,
        container_id: String,
        ifname: String,
    },
    /// Stores policies (new ones added, same-named ones replaced) under one new revision;
    /// all or none.
    PutPolicies {
        policies: Vec<NewPolicy>,
        now: i64,
    },
    /// Deletes a policy under a new revision.
    DeletePolicy {
        name: String,
    },
    /// Gossip key rotation: install (accepted by all), use (sent with), remove.
    InstallGossipKey {
        key: GossipKey,
    },
    UseGossipKey {
        id: u32,
    },
    RemoveGossipKey {
        id: u32,
    },
    /// Several independent commands in one log entry, applied in order, each with its own
    /// response (a refused one changes nothing, and does not stop the others). Agents batch
    /// concurrent writes this way so that one Raft round trip carries many of them.
    Batch(Vec<Command>),
}

/// The outcome of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// For entries that carry no command (blank and membership entries) and for commands
    /// with nothing to report.
    Ok,
    Node(NodeRecord),
    Identity {
        identity: IdentityRecord,
        created: bool,
    },
    Released {
        id: u32,
        references: u64,
        removed: bool,
    },
    /// `created` is false when the endpoint was already registered (a repeated add).
    Endpoint {
        endpoint: EndpointRecord,
        created: bool,
    },
    /// The endpoint that was removed, if there was one.
    EndpointRemoved(Option<EndpointRecord>),
    /// The policy revision a change was stored under.
    PolicyRevision(u64),
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    Err(RegistryError),
}

impl Response {
    /// Turns a refusal into an `Err`, for callers that want `?`.
    pub fn into_result(self) -> Result<Response, RegistryError> {
        match self {
            Response::Err(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// The registry's whole state. Cloned into snapshots; restored from them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    cluster: Option<ClusterConfig>,
    nodes: BTreeMap<u64, NodeRecord>,
    tokens: BTreeMap<String, TokenRecord>,
    identities: IdentityTable,
    /// Next node id to hand out; ids are never reused, even after a node is removed.
    next_node_id: u64,
    gossip_keyring: Option<GossipKeyring>,
    endpoints: EndpointTable,
    policies: PolicyTable,
}

impl Registry {
    /// Applies one command. Deterministic; a refused command changes nothing.
    pub fn apply(&mut self, cmd: Command) -> Response {
        let result = match cmd {
            Command::Bootstrap {
                config,
                first_node,
                first_token,
                gossip_key,
            } => self.bootstrap(config, first_node, first_token, gossip_key),
            Command::InstallGossipKey { key } => self.with_keyring(|k| k.install(key)),
            Command::UseGossipKey { id } => self.with_keyring(|k| k.use_key(id)),
            Command::RemoveGossipKey { id } => self.with_keyring(|k| k.remove(id)),
            Command::CreateToken { token } => self.create_token(token),
            Command::RevokeToken { id } => self.revoke_token(&id),
            Command::AdmitNode {
                token_id,
                presented_hash,
                node,
                now,
            } => self.admit_node(&token_id, &presented_hash, node, now),
            Command::RemoveNode { id } => self.remove_node(id),
            Command::AllocateIdentity { labels } => self.allocate_identity(labels),
            Command::ReleaseIdentity { labels } => self.release_identity(&labels),
            Command::AddEndpoint { endpoint } => self.add_endpoint(endpoint),
            Command::RemoveEndpoint {
                node_id,
                container_id,
                ifname,
            } => Ok(Response::EndpointRemoved(self.remove_endpoint(
                node_id,
                &container_id,
                &ifname,
            ))),
            Command::PutPolicies { policies, now } => self.put_policies(policies, now),
            Command::DeletePolicy { name } => self.delete_policy(&name),
            Command::Batch(cmds) => Ok(Response::Batch(
                cmds.into_iter().map(|c| self.apply(c)).collect(),
            )),
        };
        result.unwrap_or_else(Response::Err)
    }
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
