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
//! - `cluster`: the settings and CA certificate fixed by `membrane init`, the bootstrap, and
//!   the pre-issue-11 CA key still found in old registries (`ForgetLegacyCaKey` clears it).
//! - `token`: join tokens (hashed), their creation, revocation and use at admission
//!   (constant-time; an unknown id and a wrong secret are one error).
//! - `admission`: the rules a joining node passes ([`Registry::precheck_admission`] on the
//!   local copy before proposing, the same again at apply) and the one step that records
//!   node, certificate and token use ([`Command::AdmitSignedNode`]).
//! - `node`: nodes, each with a pod CIDR (cut by `pod_cidr`), and their removal.
//! - `cert`: node certificate records and revocation; [`Registry::authorize_peer`] tells
//!   the transport whether a TLS peer is a current node.
//! - `identity`: security identities (label set <-> number, reference counted; labels in
//!   `labels`, at most [`MAX_LABELS_PER_SET`]), the reserved numbers, and references
//!   taken through a node's API (counted per node, under a quota). References that
//!   endpoints hold are never released through the API.
//! - `endpoint`: endpoints, with an address from their node's pod CIDR ([`ipam`]) and the
//!   identity of their labels.
//! - `policy`: network policies under one cluster-wide revision.
//! - `gossip_keys`: the gossip keyring and its rotation.
//! - `ca_rotation`: replacing the cluster CA in phases (trust both, sign with the new,
//!   retire the old), each finished by every node before the next.
//! - `encryption`: the cluster's encryption setting and the tunnel key epochs (publish,
//!   report installed, activate, retire), rotated without a key ever used before every node
//!   installed it.
//!
//! Around the commands: `command` (batch items, re-stamping `now` with the leader's clock),
//! `limits` ([`Command::check_limits`]: a log entry that cannot be applied is refused before
//! it is proposed), `legacy` (frozen pre-issue-11 shapes, to read old snapshots).
//!
//! This file holds the [`Registry`] state, the [`Command`]s and [`Response`]s, and the
//! dispatch from one to the other. Commands are flat: a batch holds [`BatchItem`]s, which
//! cannot be batches, so applying a log entry never recurses.

mod admission;
mod ca_rotation;
mod cert;
mod cluster;
mod command;
mod encryption;
mod endpoint;
mod error;
mod gossip_keys;
mod identity;
pub mod ipam;
mod labels;
pub(crate) mod legacy;
mod limits;
mod node;
mod pod_cidr;
mod policy;
mod token;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use ca_rotation::{CaRotation, CaRotationPhase};
pub use cert::CertRecord;
pub use cluster::ClusterConfig;
pub use command::StampItems;
pub use encryption::{Encryption, TunnelEpoch};
pub use endpoint::{
    validate_container_id, validate_ifname, validate_netns, EndpointRecord, FreedAddresses,
    NewEndpoint,
};
pub use error::RegistryError;
pub use gossip_keys::{GossipKey, GossipKeyring, MAX_GOSSIP_KEYS};
pub use identity::{
    reserved_identity_name, IdentityRecord, IDENTITY_FIRST_LOCAL, IDENTITY_HEALTH, IDENTITY_HOST,
    IDENTITY_INIT, IDENTITY_MAX_LOCAL, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN, IDENTITY_UNMANAGED,
    IDENTITY_WORLD, MAX_API_IDENTITIES_PER_NODE, RESERVED_IDENTITIES,
};
pub use labels::{LabelSet, MAX_LABELS_PER_SET};
pub use limits::{MAX_BATCH_ITEMS, MAX_COMMAND_BYTES};
pub use node::{KeyError, NewNode, NodeRecord, Sha256, X25519Public};
pub use policy::{NewPolicy, PolicyRecord, MAX_POLICIES, MAX_POLICY_BYTES};
pub use token::{TokenRecord, TokenState};

use endpoint::EndpointTable;
use identity::IdentityTable;
use policy::PolicyTable;

/// A typed change to the registry. Proposed by one node, committed through Raft, applied by
/// every node.
///
/// Commands are flat by type: the parameter `B` is what a [`Command::Batch`] holds. A log
/// entry is a `Command` (its batch holds [`BatchItem`]s), and a `BatchItem` is a
/// `Command<NotNested>`, whose `Batch` can never be built nor decoded. A batch nested in a
/// batch, which would recurse on apply (and overflowed every node's stack), is refused by the
/// decoder at the inner batch's variant tag. The bincode bytes are those of the recursive
/// enum this replaced, so existing logs and snapshots decode unchanged.
///
/// Variant order is the wire format: only append new variants at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command<B = Vec<BatchItem>> {
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
    /// Superseded by [`Command::AdmitSignedNode`], which also records the certificate.
    AdmitNode {
        token_id: String,
        presented_hash: String,
        node: NewNode,
        now: i64,
    },
    /// Removes a node, frees its pod CIDR, removes its endpoints (releasing their identity
    /// references) and its API identity references, drops its certificate record and revokes
    /// its TLS key. Its id is never given out again.
    RemoveNode {
        id: u64,
    },
    AllocateIdentity {
        labels: LabelSet,
    },
    /// Drops one reference; refused when that would drop a reference an endpoint holds.
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
    Batch(B),
    /// Admits a node whose certificate the proposer has already signed: checks the token,
    /// that `node_id` is the next id the registry hands out, the certificate's key and the
    /// node's address, then records node, certificate and token use in one step. A failure
    /// changes nothing (the token is not spent). `now` is the leader's clock.
    AdmitSignedNode {
        token_id: String,
        presented_hash: Sha256,
        node: NewNode,
        node_id: u64,
        cert: CertRecord,
        now: i64,
    },
    /// Records a renewed certificate of a current node (same TLS key).
    RecordCertificate {
        node_id: u64,
        cert: CertRecord,
    },
    /// Takes one reference on the identity of `labels` on behalf of node `node_id`'s API
    /// (counted per node, under [`MAX_API_IDENTITIES_PER_NODE`]).
    AllocateIdentityFor {
        labels: LabelSet,
        node_id: u64,
    },
    /// Drops one reference that node `node_id`'s API took with
    /// [`Command::AllocateIdentityFor`]; never one held by anyone else.
    ReleaseIdentityFor {
        labels: LabelSet,
        node_id: u64,
    },
    /// Clears [`ClusterConfig::legacy_ca_key_pem`] once the key lives on the voters' disks.
    ForgetLegacyCaKey,
    /// Starts replacing the cluster CA with `new_ca_cert_pem` (whose key the proposing voter
    /// holds); see `ca_rotation`. `now` is the leader's clock.
    BeginCaRotation {
        new_ca_cert_pem: String,
        now: i64,
    },
    /// Node `node_id` has finished rotation phase `phase`.
    ReportCaRotation {
        node_id: u64,
        phase: CaRotationPhase,
    },
    /// Moves the rotation on from phase `from`, once every current node has finished it.
    AdvanceCaRotation {
        from: CaRotationPhase,
    },
    /// Ends the rotation once every node trusts the new CA only.
    FinishCaRotation,
    /// Removes an endpoint as [`Command::RemoveEndpoint`] does, and lets its address rest
    /// from `now` (the leader's clock) for [`ipam::ADDRESS_REUSE_GRACE_SECS`] before IPAM
    /// hands it out again. What agents send since issue 12.
    RemoveEndpointAt {
        node_id: u64,
        container_id: String,
        ifname: String,
        now: i64,
    },
    // Issue 12: transparent encryption and tunnel key epochs (see `encryption`).
    /// Turns node-to-node encryption on or off for the cluster.
    SetEncryption {
        enabled: bool,
    },
    /// Begins a new key epoch (number = last + 1); refused while one is pending.
    BeginTunnelEpoch {
        now: i64,
    },
    /// Node `node_id`'s X25519 public key for `epoch`.
    PublishTunnelKey {
        node_id: u64,
        epoch: u32,
        public: X25519Public,
    },
    /// The peers whose `epoch` keys node `node_id` installed receive sessions for.
    ReportTunnelEpoch {
        node_id: u64,
        epoch: u32,
        peers: BTreeSet<u64>,
    },
    /// Senders switch to `epoch`; refused unless every publisher installed every other.
    ActivateTunnelEpoch {
        epoch: u32,
        now: i64,
    },
    /// Erases an epoch older than the active one.
    RetireTunnelEpoch {
        epoch: u32,
    },
}

/// What a batch inside a batch holds: nothing. Uninhabited, so a nested batch cannot be
/// built, and its derived `Deserialize` fails at once on any input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotNested {}

/// One command of a [`Command::Batch`]: any command but a batch.
pub type BatchItem = Command<NotNested>;

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
    /// The number of the tunnel key epoch just begun.
    TunnelEpoch(u32),
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
///
/// Snapshots written before issue 11 hold the first eight fields only; they are read
/// through `legacy::RegistryV0` (frozen) and converted. New fields go at the end, with a
/// new snapshot format number (see `store::state_machine`).
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
    /// The current certificate of each current node.
    #[serde(default)]
    certificates: BTreeMap<u64, CertRecord>,
    /// Removed nodes: id -> the TLS key hash they had, refused forever.
    #[serde(default)]
    revoked: BTreeMap<u64, Sha256>,
    /// References taken through the API: (node, identity) -> count.
    #[serde(default, with = "identity::refs_as_list")]
    api_identity_refs: BTreeMap<(u64, u32), u32>,
    /// A CA rotation under way (snapshot format 2 and later).
    #[serde(default)]
    ca_rotation: Option<CaRotation>,
    /// Endpoint addresses resting after their endpoint was removed (snapshot format 3).
    #[serde(default)]
    freed_addresses: FreedAddresses,
    /// The encryption setting and tunnel key epochs (snapshot format 3 and later).
    #[serde(default)]
    encryption: Encryption,
}

/// What a [`Command::Batch`] holds, applied: a list of flat commands, or (inside a batch)
/// nothing that can exist.
pub(crate) trait BatchPayload {
    fn apply_in(self, registry: &mut Registry) -> Response;
}

impl BatchPayload for Vec<BatchItem> {
    fn apply_in(self, registry: &mut Registry) -> Response {
        Response::Batch(
            self.into_iter()
                .map(|c| registry.apply_command(c))
                .collect(),
        )
    }
}

impl BatchPayload for NotNested {
    fn apply_in(self, _: &mut Registry) -> Response {
        match self {}
    }
}

impl Registry {
    /// Applies one command. Deterministic; a refused command changes nothing.
    pub fn apply(&mut self, cmd: Command) -> Response {
        self.apply_command(cmd)
    }

    /// Applies a command or a batch item: one body for both, so they cannot drift apart.
    fn apply_command<B: BatchPayload>(&mut self, cmd: Command<B>) -> Response {
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
            Command::Batch(items) => Ok(items.apply_in(self)),
            Command::AdmitSignedNode {
                token_id,
                presented_hash,
                node,
                node_id,
                cert,
                now,
            } => self.admit_signed_node(&token_id, &presented_hash, node, node_id, cert, now),
            Command::RecordCertificate { node_id, cert } => self.record_certificate(node_id, cert),
            Command::AllocateIdentityFor { labels, node_id } => {
                self.allocate_identity_for(labels, node_id)
            }
            Command::ReleaseIdentityFor { labels, node_id } => {
                self.release_identity_for(&labels, node_id)
            }
            Command::ForgetLegacyCaKey => self.forget_legacy_ca_key(),
            Command::BeginCaRotation {
                new_ca_cert_pem,
                now,
            } => self.begin_ca_rotation(new_ca_cert_pem, now),
            Command::ReportCaRotation { node_id, phase } => self.report_ca_rotation(node_id, phase),
            Command::AdvanceCaRotation { from } => self.advance_ca_rotation(from),
            Command::FinishCaRotation => self.finish_ca_rotation(),
            Command::RemoveEndpointAt {
                node_id,
                container_id,
                ifname,
                now,
            } => Ok(Response::EndpointRemoved(self.remove_endpoint_at(
                node_id,
                &container_id,
                &ifname,
                now,
            ))),
            Command::SetEncryption { enabled } => self.set_encryption(enabled),
            Command::BeginTunnelEpoch { now } => self.begin_tunnel_epoch(now),
            Command::PublishTunnelKey {
                node_id,
                epoch,
                public,
            } => self.publish_tunnel_key(node_id, epoch, public),
            Command::ReportTunnelEpoch {
                node_id,
                epoch,
                peers,
            } => self.report_tunnel_epoch(node_id, epoch, peers),
            Command::ActivateTunnelEpoch { epoch, now } => self.activate_tunnel_epoch(epoch, now),
            Command::RetireTunnelEpoch { epoch } => self.retire_tunnel_epoch(epoch),
        };
        result.unwrap_or_else(Response::Err)
    }
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
