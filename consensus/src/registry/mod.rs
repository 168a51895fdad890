//! The registry: the cluster's replicated source of truth, as a pure state machine.
//!
//! Every node applies the same committed [`Command`]s in the same order and so holds the
//! same [`Registry`]. `apply` does no IO and reads no clock: any time a command depends on
//! (a token's expiry, a join time) is carried inside the command, stamped by the node that
//! proposed it. A command that is refused returns [`Response::Err`] and leaves the registry
//! exactly as it was.
//!
//! What it holds: the cluster's settings and CA, nodes (with their pod CIDR), join tokens
//! (hashed), security identities (label set <-> number, reference counted), and endpoints
//! (address from their node's pod CIDR, identity from their labels).

mod endpoint;
mod error;
mod gossip_keys;
mod identity;
pub mod ipam;
mod labels;
mod pod_cidr;
mod policy;

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use endpoint::{
    validate_container_id, validate_ifname, validate_netns, EndpointRecord, NewEndpoint,
};
pub use error::RegistryError;
pub use gossip_keys::{GossipKey, GossipKeyring, MAX_GOSSIP_KEYS};
pub use identity::{IdentityRecord, IDENTITY_FIRST_LOCAL, IDENTITY_MAX_LOCAL};
pub use labels::LabelSet;
pub use policy::{NewPolicy, PolicyRecord, MAX_POLICIES, MAX_POLICY_BYTES};

use endpoint::EndpointTable;
use identity::IdentityTable;
use policy::PolicyTable;

/// Cluster-wide settings fixed by `membrane init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// 1-255; occupies bits 16-23 of every identity so meshed clusters never collide.
    pub cluster_id: u8,
    pub name: String,
    /// The pool that node pod CIDRs are cut from.
    pub pod_pool: Ipv4Net,
    /// Prefix length of each node's share of the pool.
    pub node_prefix_len: u8,
    /// The cluster CA. Its key lives here so that any node can sign a joining node's
    /// certificate; the registry is only ever reachable by holders of a node certificate.
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub created_at: i64,
}

impl ClusterConfig {
    /// Checks the settings before they are committed.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.cluster_id == 0 {
            return Err(RegistryError::InvalidClusterConfig(
                "cluster id must be between 1 and 255".into(),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(RegistryError::InvalidClusterConfig(
                "cluster name is empty".into(),
            ));
        }
        pod_cidr::validate(self.pod_pool, self.node_prefix_len)
    }
}

/// A node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    pub name: String,
    pub rpc_addr: String,
    /// Hex SHA-256 of the public key in the node's TLS certificate.
    pub tls_key_sha256: String,
    /// The node's X25519 public key for the datapath tunnel, hex.
    pub x25519_public: String,
    pub pod_cidr: Ipv4Net,
    pub joined_at: i64,
}

/// What a node tells the registry about itself when it is admitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub rpc_addr: String,
    pub tls_key_sha256: String,
    pub x25519_public: String,
}

/// A join token as stored: the secret never is, only the hash of the whole token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub description: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
}

/// The state of a token at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenState {
    Valid,
    Expired,
    Used,
    Revoked,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Expired => "expired",
            TokenState::Used => "used",
            TokenState::Revoked => "revoked",
        }
    }
}

impl TokenRecord {
    /// Judges the token at `now` (unix seconds). Revocation wins, then use count, then time.
    pub fn state(&self, now: i64) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if self.uses >= self.max_uses {
            TokenState::Used
        } else if now >= self.expires_at {
            TokenState::Expired
        } else {
            TokenState::Valid
        }
    }
}

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

    /// The cluster settings, once bootstrapped.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    pub fn node(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| n.name == name)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// The gossip keyring, once bootstrapped.
    pub fn gossip_keyring(&self) -> Option<&GossipKeyring> {
        self.gossip_keyring.as_ref()
    }

    pub fn identities(&self) -> impl Iterator<Item = &IdentityRecord> {
        self.identities.iter()
    }

    pub fn identity_by_labels(&self, labels: &LabelSet) -> Option<&IdentityRecord> {
        self.identities.by_labels(labels)
    }

    pub fn identity(&self, id: u32) -> Option<&IdentityRecord> {
        self.identities.get(id)
    }

    /// Every endpoint of every node, by (node, container id, ifname).
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.iter()
    }

    /// The endpoints of one node.
    pub fn endpoints_on(&self, node_id: u64) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.on_node(node_id)
    }

    pub fn endpoint(
        &self,
        node_id: u64,
        container_id: &str,
        ifname: &str,
    ) -> Option<&EndpointRecord> {
        self.endpoints.get(node_id, container_id, ifname)
    }

    /// Every stored policy, by name.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRecord> {
        self.policies.iter()
    }

    pub fn policy(&self, name: &str) -> Option<&PolicyRecord> {
        self.policies.get(name)
    }

    /// The policy revision: bumped by every policy change, 0 before the first.
    pub fn policy_revision(&self) -> u64 {
        self.policies.revision()
    }

    fn put_policies(
        &mut self,
        policies: Vec<NewPolicy>,
        now: i64,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        self.policies
            .check(&policies)
            .map_err(RegistryError::InvalidPolicy)?;
        Ok(Response::PolicyRevision(self.policies.put(policies, now)))
    }

    fn delete_policy(&mut self, name: &str) -> Result<Response, RegistryError> {
        self.config()?;
        let revision = self
            .policies
            .delete(name)
            .ok_or_else(|| RegistryError::PolicyNotFound {
                name: name.to_string(),
            })?;
        Ok(Response::PolicyRevision(revision))
    }

    fn config(&self) -> Result<&ClusterConfig, RegistryError> {
        self.cluster.as_ref().ok_or(RegistryError::NotBootstrapped)
    }

    fn bootstrap(
        &mut self,
        config: ClusterConfig,
        first_node: NewNode,
        first_token: TokenRecord,
        gossip_key: GossipKey,
    ) -> Result<Response, RegistryError> {
        if let Some(c) = &self.cluster {
            return Err(RegistryError::AlreadyBootstrapped {
                id: c.cluster_id,
                name: c.name.clone(),
            });
        }
        config.validate()?;
        validate_token(&first_token)?;
        let keyring = GossipKeyring::new(gossip_key)?;
        let pod_cidr =
            pod_cidr::allocate(config.pod_pool, config.node_prefix_len, self.used_cidrs())?;
        let node = NodeRecord {
            id: 1,
            name: first_node.name,
            rpc_addr: first_node.rpc_addr,
            tls_key_sha256: first_node.tls_key_sha256,
            x25519_public: first_node.x25519_public,
            pod_cidr,
            joined_at: config.created_at,
        };
        self.identities = IdentityTable::new(config.cluster_id);
        self.cluster = Some(config);
        self.nodes.insert(1, node.clone());
        self.next_node_id = 2;
        self.tokens.insert(first_token.id.clone(), first_token);
        self.gossip_keyring = Some(keyring);
        Ok(Response::Node(node))
    }

    /// Changes the keyring on a copy, so a refused change leaves it as it was.
    fn with_keyring(
        &mut self,
        change: impl FnOnce(&mut GossipKeyring) -> Result<(), RegistryError>,
    ) -> Result<Response, RegistryError> {
        let mut ring = self
            .gossip_keyring
            .clone()
            .ok_or(RegistryError::NotBootstrapped)?;
        change(&mut ring)?;
        self.gossip_keyring = Some(ring);
        Ok(Response::Ok)
    }

    fn create_token(&mut self, token: TokenRecord) -> Result<Response, RegistryError> {
        self.config()?;
        validate_token(&token)?;
        if self.tokens.contains_key(&token.id) {
            return Err(RegistryError::TokenExists { id: token.id });
        }
        self.tokens.insert(token.id.clone(), token);
        Ok(Response::Ok)
    }

    fn revoke_token(&mut self, id: &str) -> Result<Response, RegistryError> {
        let token = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| RegistryError::TokenNotFound { id: id.to_string() })?;
        token.revoked = true;
        Ok(Response::Ok)
    }

    fn admit_node(
        &mut self,
        token_id: &str,
        presented_hash: &str,
        new: NewNode,
        now: i64,
    ) -> Result<Response, RegistryError> {
        let config = self.config()?.clone();
        let token = self
            .tokens
            .get(token_id)
            .ok_or_else(|| RegistryError::TokenNotFound {
                id: token_id.to_string(),
            })?;
        // Checked before the state so a wrong secret reveals nothing about the token.
        if token.secret_hash != presented_hash {
            return Err(RegistryError::TokenSecretMismatch {
                id: token_id.to_string(),
            });
        }
        match token.state(now) {
            TokenState::Valid => {}
            TokenState::Expired => {
                return Err(RegistryError::TokenExpired {
                    id: token_id.into(),
                })
            }
            TokenState::Revoked => {
                return Err(RegistryError::TokenRevoked {
                    id: token_id.into(),
                })
            }
            TokenState::Used => {
                return Err(RegistryError::TokenUsedUp {
                    id: token_id.into(),
                    uses: token.uses,
                })
            }
        }
        if let Some(existing) = self.node_by_name(&new.name) {
            return Err(RegistryError::NodeNameTaken {
                name: new.name,
                id: existing.id,
            });
        }
        let pod_cidr =
            pod_cidr::allocate(config.pod_pool, config.node_prefix_len, self.used_cidrs())?;
        // Every check passed: from here on the command cannot fail.
        let id = self.next_node_id.max(2);
        self.next_node_id = id + 1;
        if let Some(token) = self.tokens.get_mut(token_id) {
            token.uses += 1;
        }
        let node = NodeRecord {
            id,
            name: new.name,
            rpc_addr: new.rpc_addr,
            tls_key_sha256: new.tls_key_sha256,
            x25519_public: new.x25519_public,
            pod_cidr,
            joined_at: now,
        };
        self.nodes.insert(id, node.clone());
        Ok(Response::Node(node))
    }

    fn remove_node(&mut self, id: u64) -> Result<Response, RegistryError> {
        self.nodes
            .remove(&id)
            .ok_or(RegistryError::NodeNotFound { id })?;
        for ep in self.endpoints.remove_node(id) {
            // The reference was taken when the endpoint was added, so it is there.
            let _ = self.identities.release(&ep.labels);
        }
        Ok(Response::Ok)
    }

    fn add_endpoint(&mut self, new: NewEndpoint) -> Result<Response, RegistryError> {
        self.config()?;
        let invalid = RegistryError::InvalidEndpoint;
        endpoint::validate_container_id(&new.container_id).map_err(invalid)?;
        endpoint::validate_ifname(&new.ifname).map_err(invalid)?;
        endpoint::validate_netns(&new.netns).map_err(invalid)?;
        let node = self
            .nodes
            .get(&new.node_id)
            .ok_or(RegistryError::NodeNotFound { id: new.node_id })?;
        let pod_cidr = node.pod_cidr;
        if let Some(existing) = self
            .endpoints
            .get(new.node_id, &new.container_id, &new.ifname)
        {
            if existing.netns != new.netns {
                return Err(RegistryError::EndpointConflict(format!(
                    "container {:?} already has interface {:?} in network namespace {}; delete it first or use the same namespace",
                    new.container_id, new.ifname, existing.netns
                )));
            }
            return Ok(Response::Endpoint {
                endpoint: existing.clone(),
                created: false,
            });
        }
        if let Some(other) = self
            .endpoints
            .on_node(new.node_id)
            .find(|e| e.netns == new.netns && e.ifname == new.ifname)
        {
            return Err(RegistryError::EndpointConflict(format!(
                "interface {:?} in network namespace {} already belongs to container {:?}; pick another interface name",
                new.ifname, new.netns, other.container_id
            )));
        }
        let ipv4 = ipam::allocate(pod_cidr, &self.endpoints.addresses_on(new.node_id)).ok_or(
            RegistryError::EndpointAddressesExhausted {
                node_id: new.node_id,
                cidr: pod_cidr.to_string(),
                capacity: ipam::capacity(pod_cidr),
            },
        )?;
        // Last fallible step; it changes nothing when it fails.
        let (identity, _) = self.identities.allocate(new.labels.clone())?;
        let rec = EndpointRecord {
            node_id: new.node_id,
            id: self.endpoints.next_id(new.node_id),
            container_id: new.container_id,
            ifname: new.ifname,
            netns: new.netns,
            ipv4,
            identity: identity.id,
            labels: new.labels,
            created_at: new.now,
        };
        self.endpoints.insert(rec.clone());
        Ok(Response::Endpoint {
            endpoint: rec,
            created: true,
        })
    }

    fn remove_endpoint(
        &mut self,
        node_id: u64,
        container_id: &str,
        ifname: &str,
    ) -> Option<EndpointRecord> {
        let ep = self.endpoints.remove(node_id, container_id, ifname)?;
        let _ = self.identities.release(&ep.labels);
        Some(ep)
    }

    fn allocate_identity(&mut self, labels: LabelSet) -> Result<Response, RegistryError> {
        self.config()?;
        let (identity, created) = self.identities.allocate(labels)?;
        Ok(Response::Identity { identity, created })
    }

    fn release_identity(&mut self, labels: &LabelSet) -> Result<Response, RegistryError> {
        self.config()?;
        let (id, references) = self.identities.release(labels)?;
        Ok(Response::Released {
            id,
            references,
            removed: references == 0,
        })
    }

    fn used_cidrs(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.nodes.values().map(|n| n.pod_cidr)
    }
}

fn validate_token(token: &TokenRecord) -> Result<(), RegistryError> {
    if token.max_uses == 0 {
        return Err(RegistryError::InvalidToken(
            "a token must allow at least one use".into(),
        ));
    }
    if token.expires_at <= token.created_at {
        return Err(RegistryError::InvalidToken(
            "a token must expire after it is created".into(),
        ));
    }
    if token.secret_hash.len() != 64 || !token.secret_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RegistryError::InvalidToken(
            "the token hash must be 64 hex characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
