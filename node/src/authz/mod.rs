//! Who may call what over the node RPC server: the caller's certificate is mapped to a
//! current registry node (id and key), and each Raft RPC and registry command is allowed by
//! the caller's role. The role table is docs/security.md, "Who may call what"; the rules
//! that implement it are all in [`rules`].
//!
//! - [`identify`] (pure): certificate facts + the trust view -> [`Caller`] or [`Denial`].
//! - [`Authenticator`]: the tonic interceptor on the Raft and Cluster services; it puts the
//!   [`Caller`] into the request extensions.
//! - [`RaftGate`]: the [`RaftAuthorizer`] handed to `RaftService`.
//! - [`join_trust`]: the member keys a node received when it joined, trusted only until its
//!   own registry copy is bootstrapped.

pub mod join_trust;
pub mod rules;

use std::collections::BTreeSet;
use std::sync::Arc;

use membrane_consensus::network::{RaftAuthorizer, Rpc};
use membrane_consensus::registry::{Registry, Sha256};
use membrane_consensus::NodeId;
use membrane_crypto::ca::{cert_peer_of_der, CertPeer};
use membrane_crypto::token::hashes_equal;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::registry::RegistryClient;
pub use join_trust::JoinTrust;

/// How many ids past this copy's next admission id are taken as "admitted since": a lagging
/// node is behind by a few joins, not by hundreds, and a certificate minted for a far id
/// (with a stolen CA key) is refused outright.
pub const ADMITTED_SINCE_WINDOW: u64 = 8;

/// What an authenticated caller is to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A voter of the current Raft membership.
    Voter,
    /// A learner of the current Raft membership.
    Learner,
    /// In the registry but not (yet) in the Raft membership: a node that has just joined.
    Member,
    /// Known only from this node's join-time trust: this node's registry copy is empty.
    JoinTrusted,
    /// An id this node's registry copy has not handed out yet: a node admitted in entries
    /// this node has not applied. Only replication may come from it (so a lagging node can
    /// catch up with a leader it has not heard of); its key cannot be checked until then.
    AdmittedSinceOurCopy,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Member => "member not yet in the Raft membership",
            Role::JoinTrusted => "member known from join-time trust",
            Role::AdmittedSinceOurCopy => "node admitted after this node's registry copy",
        })
    }
}

/// The authenticated caller of a node RPC, left in the request extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub node_id: NodeId,
    pub role: Role,
}

/// Why a caller or a request was refused. Every message says why, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("this RPC needs a node certificate issued by the cluster CA; join the cluster first")]
    NoCertificate,
    #[error("the client certificate is not a node certificate ({0})")]
    NotANodeCertificate(String),
    #[error("node {id} is not a current member of this cluster (never admitted, or removed): its certificate is refused; a removed node must be added again with a new join token")]
    NotAMember { id: NodeId },
    #[error("the certificate of node {id} holds a different key than the one the registry recorded at its admission (a stale or copied certificate); remove the node and join it again")]
    KeyMismatch { id: NodeId },
    #[error("this node has not caught up with the registry yet, and node {id} was not a member when it joined; only the members listed at join time are trusted until then")]
    NotJoinTrusted { id: NodeId },
    #[error("{rpc:?} claims to come from node {claimed}, but the certificate is node {caller}'s")]
    Impersonation {
        rpc: Rpc,
        claimed: NodeId,
        caller: NodeId,
    },
    #[error("Bootstrap is never accepted over the network; a cluster is created by `membrane init` on its first node")]
    BootstrapOverRpc,
    #[error("{command} names node {named}, but the caller is node {caller}; a node may change only its own endpoints")]
    ForeignNode {
        command: &'static str,
        named: NodeId,
        caller: NodeId,
    },
    #[error("{command} is accepted only from a voter; node {id} is a {role}. Run the command on a voter (`membrane status` lists them)")]
    NeedsVoter {
        command: &'static str,
        id: NodeId,
        role: Role,
    },
    #[error("node {id} ({role}) may not use the Cluster service before this node has caught up with the registry")]
    NotYetMember { id: NodeId, role: Role },
}

impl From<Denial> for Status {
    fn from(d: Denial) -> Status {
        match d {
            Denial::NoCertificate => Status::unauthenticated(d.to_string()),
            _ => Status::permission_denied(d.to_string()),
        }
    }
}

/// What a node trusts callers by: its registry copy with the Raft membership, or, while that
/// copy is not bootstrapped, the member keys it received when it joined.
pub enum TrustView<'a> {
    Registry {
        registry: &'a Registry,
        voters: &'a BTreeSet<NodeId>,
        learners: &'a BTreeSet<NodeId>,
    },
    JoinTime(&'a JoinTrust),
}

/// Maps a verified certificate's facts to a caller, or refuses it.
pub fn identify(peer: &CertPeer, view: &TrustView<'_>) -> Result<Caller, Denial> {
    let id = peer.node_id;
    let key = Sha256(peer.spki_sha256);
    match view {
        TrustView::Registry {
            registry,
            voters,
            learners,
        } => {
            let next = registry.next_admission_id();
            if (next..next + ADMITTED_SINCE_WINDOW).contains(&id)
                && !registry.revoked().contains_key(&id)
            {
                return Ok(Caller {
                    node_id: id,
                    role: Role::AdmittedSinceOurCopy,
                });
            }
            authorize_peer(registry, id, &key)?;
            let role = if voters.contains(&id) {
                Role::Voter
            } else if learners.contains(&id) {
                Role::Learner
            } else {
                Role::Member
            };
            Ok(Caller { node_id: id, role })
        }
        TrustView::JoinTime(trust) => match trust.key(id) {
            Some(recorded) if keys_equal(recorded, &key) => Ok(Caller {
                node_id: id,
                role: Role::JoinTrusted,
            }),
            Some(_) => Err(Denial::KeyMismatch { id }),
            None => Err(Denial::NotJoinTrusted { id }),
        },
    }
}

/// Whether node `id` is a current registry node whose recorded key is `key`; a removed node
/// is revoked (its id and key stay in the registry's revocation list).
fn authorize_peer(registry: &Registry, id: NodeId, key: &Sha256) -> Result<(), Denial> {
    use membrane_consensus::RegistryError;
    match registry.authorize_peer(id, key) {
        Ok(_) => Ok(()),
        Err(RegistryError::NodeKeyMismatch { .. }) => Err(Denial::KeyMismatch { id }),
        Err(_) => Err(Denial::NotAMember { id }),
    }
}

/// Constant time, so timing tells nothing about how much of a key matched.
fn keys_equal(a: &Sha256, b: &Sha256) -> bool {
    hashes_equal(&a.to_string(), &b.to_string())
}

/// The interceptor on every node service but Join: authenticates the caller and leaves its
/// [`Caller`] in the request extensions.
#[derive(Clone)]
pub struct Authenticator {
    pub client: Arc<RegistryClient>,
    pub join_trust: Arc<JoinTrust>,
}

impl Authenticator {
    fn caller(&self, req: &Request<()>) -> Result<Caller, Denial> {
        let certs = req.peer_certs().ok_or(Denial::NoCertificate)?;
        let leaf = certs.first().ok_or(Denial::NoCertificate)?;
        let peer =
            cert_peer_of_der(leaf).map_err(|e| Denial::NotANodeCertificate(e.to_string()))?;
        let (voters, learners) = self.client.membership();
        self.client.local(|registry| {
            let view = if registry.cluster().is_some() {
                TrustView::Registry {
                    registry,
                    voters: &voters,
                    learners: &learners,
                }
            } else {
                TrustView::JoinTime(&self.join_trust)
            };
            identify(&peer, &view)
        })
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.caller(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Err(denial) => {
                tracing::warn!(peer = ?req.remote_addr(), reason = %denial, "node RPC refused");
                Err(denial.into())
            }
        }
    }
}

/// The caller left by [`Authenticator`]; a service reached without it is refused.
#[allow(clippy::result_large_err)]
pub fn caller_of(extensions: &tonic::Extensions) -> Result<Caller, Status> {
    extensions
        .get::<Caller>()
        .copied()
        .ok_or_else(|| Status::from(Denial::NoCertificate))
}

/// The Raft service's authorizer: [`rules::raft`] over the authenticated caller.
pub struct RaftGate;

impl RaftAuthorizer for RaftGate {
    fn authorize(
        &self,
        rpc: Rpc,
        claimed: NodeId,
        extensions: &tonic::Extensions,
    ) -> Result<(), Status> {
        let caller = caller_of(extensions)?;
        rules::raft(rpc, &caller, claimed).map_err(Status::from)
    }
}

/// A bootstrapped registry with nodes 1..=n; node i's TLS key hash is `[i; 32]`.
#[cfg(test)]
pub(crate) fn test_registry(n: u8) -> Registry {
    use membrane_consensus::registry::{
        ClusterConfig, GossipKey, NewNode, TokenRecord, X25519Public,
    };
    use membrane_consensus::Command;
    const HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let node = |i: u8| NewNode {
        name: format!("n{i}"),
        rpc_addr: std::net::SocketAddr::from(([10, 0, 0, i], 7700)),
        tls_key_sha256: Sha256([i; 32]),
        x25519_public: X25519Public([i; 32]),
    };
    let mut r = Registry::default();
    r.apply(Command::Bootstrap {
        config: ClusterConfig {
            cluster_id: 1,
            name: "t".into(),
            pod_pool: "10.128.0.0/16".parse().unwrap(),
            node_prefix_len: 24,
            ca_cert_pem: String::new(),
            legacy_ca_key_pem: String::new(),
            created_at: 0,
        },
        first_node: node(1),
        first_token: TokenRecord {
            id: "abcdef".into(),
            secret_hash: HASH.into(),
            description: String::new(),
            created_at: 0,
            expires_at: 3600,
            max_uses: 100,
            uses: 0,
            revoked: false,
        },
        gossip_key: GossipKey {
            id: 1,
            key_hex: "ab".repeat(32),
        },
    })
    .into_result()
    .unwrap();
    for i in 2..=n {
        r.apply(Command::AdmitNode {
            token_id: "abcdef".into(),
            presented_hash: HASH.into(),
            node: node(i),
            now: 1,
        })
        .into_result()
        .unwrap();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: NodeId, key: [u8; 32]) -> CertPeer {
        CertPeer {
            node_id: id,
            spki_sha256: key,
        }
    }

    #[test]
    fn t10_registry_nodes_are_identified_with_their_role() {
        let r = test_registry(3);
        let key = |id| r.node(id).unwrap().tls_key_sha256.0;
        let voters = BTreeSet::from([1, 2]);
        let learners = BTreeSet::from([3]);
        let view = TrustView::Registry {
            registry: &r,
            voters: &voters,
            learners: &learners,
        };
        assert_eq!(identify(&peer(1, key(1)), &view).unwrap().role, Role::Voter);
        assert_eq!(
            identify(&peer(3, key(3)), &view).unwrap().role,
            Role::Learner
        );
        let none = BTreeSet::new();
        let view = TrustView::Registry {
            registry: &r,
            voters: &none,
            learners: &none,
        };
        assert_eq!(
            identify(&peer(2, key(2)), &view).unwrap().role,
            Role::Member
        );
    }

    #[test]
    fn t11_unknown_removed_and_rekeyed_nodes_are_refused() {
        let mut r = test_registry(3);
        let key2 = r.node(2).unwrap().tls_key_sha256.0;
        let none = BTreeSet::new();
        // Node 2 presenting node 3's key: a certificate whose key is not the recorded one.
        let key3 = r.node(3).unwrap().tls_key_sha256.0;
        let view = TrustView::Registry {
            registry: &r,
            voters: &none,
            learners: &none,
        };
        assert_eq!(
            identify(&peer(2, key3), &view),
            Err(Denial::KeyMismatch { id: 2 })
        );
        // An id this copy has not handed out: a node admitted in entries not applied here,
        // which may only replicate to this node (rules::raft), nothing else.
        let next = r.next_admission_id();
        assert_eq!(
            identify(&peer(next, key2), &view).unwrap().role,
            Role::AdmittedSinceOurCopy
        );
        let far = next + ADMITTED_SINCE_WINDOW;
        assert_eq!(
            identify(&peer(far, key2), &view),
            Err(Denial::NotAMember { id: far })
        );
        // Removal: the same certificate that was accepted a moment ago is refused.
        assert!(identify(&peer(2, key2), &view).is_ok());
        r.apply(membrane_consensus::Command::RemoveNode { id: 2 });
        let view = TrustView::Registry {
            registry: &r,
            voters: &none,
            learners: &none,
        };
        assert_eq!(
            identify(&peer(2, key2), &view),
            Err(Denial::NotAMember { id: 2 })
        );
    }

    #[test]
    fn t12_join_time_trust_knows_only_the_members_it_was_given() {
        let trust = JoinTrust::from_hex_map([(1, hex::encode([7u8; 32]))].into()).unwrap();
        let view = TrustView::JoinTime(&trust);
        assert_eq!(
            identify(&peer(1, [7; 32]), &view).unwrap(),
            Caller {
                node_id: 1,
                role: Role::JoinTrusted
            }
        );
        assert_eq!(
            identify(&peer(1, [8; 32]), &view),
            Err(Denial::KeyMismatch { id: 1 })
        );
        assert_eq!(
            identify(&peer(2, [7; 32]), &view),
            Err(Denial::NotJoinTrusted { id: 2 })
        );
    }

    #[test]
    fn t13_denials_map_to_permission_denied_except_a_missing_certificate() {
        assert_eq!(
            Status::from(Denial::NoCertificate).code(),
            tonic::Code::Unauthenticated
        );
        let s = Status::from(Denial::NotAMember { id: 4 });
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("node 4"), "{}", s.message());
    }
}
