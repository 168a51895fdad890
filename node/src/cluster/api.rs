//! The cluster calls of the local API: status, nodes, member events, join tokens, the
//! gossip keyring and its rotation, and identities (the registry's label sets; they have no
//! wing of their own, and like tokens they are registry records the CLI manages directly).
//!
//! [`ClusterApi`] holds the handles these calls need; the conversions to the proto messages
//! and the checks of the requests are the pure functions below it.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use membrane_consensus::registry::{GossipKeyring, IdentityRecord, LabelSet, TokenRecord};
use membrane_consensus::{Command, Response as RegistryResponse};
use membrane_crypto::token::JoinToken;
use membrane_gossip::{CountersSnapshot, MemberEvent, NodeMeta};
use membrane_proto::v1 as pb;
use openraft::ServerState;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::cluster::gossip::GossipSlot;
use crate::registry::client::RegistryClient;
use crate::registry::query::{Query, QueryResult};
use crate::state::NodeIdentity;

/// Token defaults, as kubeadm: one hour, and (stricter than kubeadm) a single use.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
pub const DEFAULT_TOKEN_USES: u32 = 1;
/// The longest TTL a token may have.
const MAX_TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;

/// The stream of `membrane node watch`.
pub type MemberStream = Pin<Box<dyn Stream<Item = Result<pb::MemberEvent, Status>> + Send>>;

/// What the cluster slice of the local API reads and writes.
pub struct ClusterApi {
    pub client: Arc<RegistryClient>,
    pub gossip: GossipSlot,
    pub me: NodeIdentity,
    /// `sha256:HEX` of the cluster CA, for printing join commands.
    pub ca_hash: String,
}

impl ClusterApi {
    fn gossip(&self) -> Result<Arc<membrane_gossip::Gossip>, Status> {
        self.gossip
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("gossip is not running yet; try again in a moment"))
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, Status> {
        let m = self.client.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                node_id: *id,
                rpc_addr: node.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
            })
            .collect();
        // 0.9's metrics carry no commit index; ask the Raft core for it.
        let commit_index = self
            .client
            .raft()
            .with_raft_state(|st| st.committed.map(|l| l.index).unwrap_or(0))
            .await
            .map_err(|e| Status::unavailable(format!("raft is not running: {e}")))?;
        let pod_cidr = self
            .client
            .local(|r| r.node(self.me.node_id).map(|n| n.pod_cidr.to_string()))
            .unwrap_or_default();
        Ok(pb::StatusResponse {
            cluster_id: u32::from(self.me.cluster_id),
            cluster_name: self.me.cluster_name.clone(),
            node_id: self.me.node_id,
            node_name: self.me.node_name.clone(),
            raft_state: role_name(m.state).into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            commit_index,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members,
            pod_cidr,
            rpc_addr: self.me.rpc_addr.clone(),
            gossip: self.gossip.get().map(|g| {
                let ring = g.keyring();
                gossip_counters(&g.counters(), ring.ids(), ring.primary())
            }),
        })
    }

    pub async fn node_list(&self) -> Result<pb::NodeListResponse, Status> {
        let QueryResult::Nodes {
            nodes,
            voters,
            learners,
        } = self.client.query(Query::Nodes).await?
        else {
            return Err(Status::internal("unexpected answer to a node query"));
        };
        let nodes = nodes
            .into_iter()
            .map(|n| pb::NodeInfo {
                raft_role: raft_role(n.id, &voters, &learners).into(),
                id: n.id,
                name: n.name,
                rpc_addr: n.rpc_addr.to_string(),
                pod_cidr: n.pod_cidr.to_string(),
                tls_key_sha256: n.tls_key_sha256.to_string(),
                x25519_public: n.x25519_public.to_string(),
                joined_at_unix: n.joined_at,
                gossip_state: self
                    .gossip
                    .get()
                    .and_then(|g| g.state_of(n.id))
                    .map(|st| st.as_str())
                    .unwrap_or("unknown")
                    .to_string(),
            })
            .collect();
        Ok(pb::NodeListResponse { nodes })
    }

    pub async fn node_remove(&self, req: pb::NodeRemoveRequest) -> Result<pb::Empty, Status> {
        let id = req.id;
        let others = self
            .client
            .local(|r| r.nodes().filter(|n| n.id != id).count());
        if others == 0 {
            return Err(Status::failed_precondition(format!(
                "node {id} is the only node of the cluster; it cannot be removed"
            )));
        }
        // The registry is the source of truth: once the node is gone from it, the leader's
        // autopilot takes it out of the Raft membership (replacing it if it was a voter).
        self.client.write(Command::RemoveNode { id }).await?;
        // Then cut it off the gossip key too (it is already refused as a gossip sender).
        match self.gossip.get() {
            Some(g) => {
                crate::cluster::rotation::rotate_after_removal(&self.client, g, id)
                    .await
                    .map_err(|e| {
                        Status::new(
                            e.code(),
                            format!("node {id} was removed, but {}", e.message()),
                        )
                    })?;
            }
            None => {
                return Err(Status::unavailable(format!(
                    "node {id} was removed, but gossip is not running here, so the gossip key was not rotated; run `membrane gossip rotate-key`"
                )))
            }
        }
        Ok(pb::Empty {})
    }

    pub fn watch_members(&self) -> Result<MemberStream, Status> {
        let gossip = self.gossip()?;
        // Snapshot and subscription taken together, so no change falls between them.
        let (members, rx) = gossip.subscribe_with_snapshot();
        let now = crate::clock::unix_now_ms();
        let initial: Vec<Result<pb::MemberEvent, Status>> = members
            .into_values()
            .map(|(state, meta)| Ok(member_event(state.as_str(), &meta, now)))
            .collect();
        let updates = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| {
            let e = e.ok()?;
            let (kind, meta) = member_change(&e);
            Some(Ok(member_event(kind, meta, crate::clock::unix_now_ms())))
        });
        Ok(Box::pin(tokio_stream::iter(initial).chain(updates)))
    }

    pub fn gossip_keyring(&self) -> Result<pb::GossipKeyringResponse, Status> {
        let ring = self
            .client
            .local(|r| r.gossip_keyring().cloned())
            .ok_or_else(|| Status::unavailable("no keyring yet"))?;
        Ok(keyring_response(&ring))
    }

    pub async fn gossip_rotate_key(&self) -> Result<pb::GossipKeyringResponse, Status> {
        let gossip = self.gossip()?;
        let ring = crate::cluster::rotation::rotate(&self.client, &gossip).await?;
        Ok(keyring_response(&ring))
    }

    pub async fn token_create(
        &self,
        req: pb::TokenCreateRequest,
    ) -> Result<pb::TokenCreateResponse, Status> {
        let (ttl, max_uses) = token_limits(req.ttl_seconds, req.max_uses)?;
        let token = JoinToken::generate();
        let now = crate::clock::unix_now();
        let record = TokenRecord {
            id: token.id().to_string(),
            secret_hash: token.secret_hash(),
            description: req.description,
            created_at: now,
            expires_at: now + ttl as i64,
            max_uses,
            uses: 0,
            revoked: false,
        };
        let expires_at = record.expires_at;
        self.client
            .write(Command::CreateToken { token: record })
            .await?;
        let full = token.to_string();
        Ok(pb::TokenCreateResponse {
            join_command: join_command(&self.me.rpc_addr, &full, &self.ca_hash),
            token: full,
            id: token.id().to_string(),
            expires_at_unix: expires_at,
            max_uses,
        })
    }

    pub async fn token_list(&self) -> Result<pb::TokenListResponse, Status> {
        let QueryResult::Tokens(tokens) = self.client.query(Query::Tokens).await? else {
            return Err(Status::internal("unexpected answer to a token query"));
        };
        let now = crate::clock::unix_now();
        Ok(pb::TokenListResponse {
            tokens: tokens.iter().map(|t| token_info(t, now)).collect(),
        })
    }

    pub async fn token_revoke(&self, req: pb::TokenRevokeRequest) -> Result<pb::Empty, Status> {
        let id = token_id(&req.id).to_string();
        self.client.write(Command::RevokeToken { id }).await?;
        Ok(pb::Empty {})
    }

    pub async fn identity_allocate(
        &self,
        req: pb::IdentityRequest,
    ) -> Result<pb::IdentityResponse, Status> {
        let labels = parse_labels(&req.labels)?;
        match self
            .client
            .write(Command::AllocateIdentity { labels })
            .await?
        {
            RegistryResponse::Identity { identity, created } => Ok(pb::IdentityResponse {
                identity: Some(identity_info(&identity)),
                created,
            }),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn identity_list(&self) -> Result<pb::IdentityListResponse, Status> {
        let QueryResult::Identities(ids) = self.client.query(Query::Identities).await? else {
            return Err(Status::internal("unexpected answer to an identity query"));
        };
        Ok(pb::IdentityListResponse {
            identities: ids.iter().map(identity_info).collect(),
        })
    }

    pub async fn identity_release(
        &self,
        req: pb::IdentityRequest,
    ) -> Result<pb::ReleaseResponse, Status> {
        let labels = parse_labels(&req.labels)?;
        match self
            .client
            .write(Command::ReleaseIdentity { labels })
            .await?
        {
            RegistryResponse::Released {
                id,
                references,
                removed,
            } => Ok(pb::ReleaseResponse {
                references,
                removed,
                id,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(resp: &RegistryResponse) -> Status {
    Status::internal(format!("unexpected registry response {resp:?}"))
}

/// Builds the command a new node runs to join through `addr`.
pub fn join_command(addr: &str, token: &str, ca_hash: &str) -> String {
    format!("membrane agent --join {addr} --token {token} --ca-hash {ca_hash}")
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// A registry node's place in the Raft membership.
fn raft_role(id: u64, voters: &BTreeSet<u64>, learners: &BTreeSet<u64>) -> &'static str {
    if voters.contains(&id) {
        "voter"
    } else if learners.contains(&id) {
        "learner"
    } else {
        "none"
    }
}

fn gossip_counters(
    c: &CountersSnapshot,
    key_ids: Vec<u32>,
    primary: Option<u32>,
) -> pb::GossipCounters {
    pb::GossipCounters {
        sent: c.sent,
        received: c.received,
        dropped_truncated: c.dropped_truncated,
        dropped_unknown_key: c.dropped_unknown_key,
        // Garbage that does not even carry our version is forged too, to an operator.
        dropped_forged: c.dropped_forged + c.dropped_unknown_version,
        dropped_replay: c.dropped_replay,
        dropped_malformed: c.dropped_malformed,
        dropped_unknown_sender: c.dropped_unknown_sender,
        dropped_future_epoch: c.dropped_future_epoch,
        key_ids,
        primary_key: primary.unwrap_or(0),
    }
}

/// The TTL and number of uses of a new token: 0 asks for the default.
fn token_limits(ttl_seconds: u64, max_uses: u32) -> Result<(u64, u32), Status> {
    let ttl = if ttl_seconds == 0 {
        DEFAULT_TOKEN_TTL_SECS
    } else {
        ttl_seconds
    };
    if ttl > MAX_TOKEN_TTL_SECS {
        return Err(Status::invalid_argument(
            "token TTL is longer than a year; pick a shorter --ttl",
        ));
    }
    let max_uses = if max_uses == 0 {
        DEFAULT_TOKEN_USES
    } else {
        max_uses
    };
    Ok((ttl, max_uses))
}

/// The id part of what `token revoke` was given: people paste a whole token too.
fn token_id(given: &str) -> &str {
    given.split('.').next().unwrap_or_default()
}

fn token_info(t: &TokenRecord, now: i64) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        description: t.description.clone(),
        created_at_unix: t.created_at,
        expires_at_unix: t.expires_at,
        max_uses: t.max_uses,
        uses: t.uses,
        revoked: t.revoked,
        state: t.state(now).as_str().to_string(),
    }
}

fn identity_info(rec: &IdentityRecord) -> pb::IdentityInfo {
    pb::IdentityInfo {
        id: rec.id,
        labels: rec.labels.to_strings(),
        references: rec.references,
    }
}

fn parse_labels(labels: &[String]) -> Result<LabelSet, Status> {
    LabelSet::parse(labels).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The kind of a gossip change as `node watch` names it.
fn member_change(e: &MemberEvent) -> (&'static str, &NodeMeta) {
    match e {
        MemberEvent::Up(m) => ("up", m),
        MemberEvent::Down(m) => ("down", m),
        MemberEvent::Changed(m) => ("changed", m),
    }
}

fn member_event(kind: &str, m: &NodeMeta, at_unix_ms: i64) -> pb::MemberEvent {
    pb::MemberEvent {
        kind: kind.to_string(),
        node_id: m.id,
        name: m.name.clone(),
        rpc_addr: m.rpc_addr.clone(),
        pod_cidr: m.pod_cidr.clone(),
        version: m.version.clone(),
        health: m.health.clone(),
        at_unix_ms,
    }
}

fn keyring_response(ring: &GossipKeyring) -> pb::GossipKeyringResponse {
    pb::GossipKeyringResponse {
        keys: ring
            .keys()
            .iter()
            .map(|k| pb::GossipKeyInfo {
                id: k.id,
                primary: k.id == ring.primary(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_command_names_address_token_and_ca() {
        assert_eq!(
            join_command("10.0.0.1:7400", "abc.def", "sha256:00"),
            "membrane agent --join 10.0.0.1:7400 --token abc.def --ca-hash sha256:00"
        );
    }

    #[test]
    fn raft_roles() {
        let voters = BTreeSet::from([1]);
        let learners = BTreeSet::from([2]);
        assert_eq!(raft_role(1, &voters, &learners), "voter");
        assert_eq!(raft_role(2, &voters, &learners), "learner");
        assert_eq!(raft_role(3, &voters, &learners), "none");
        assert_eq!(role_name(ServerState::Leader), "leader");
        assert_eq!(role_name(ServerState::Shutdown), "shutdown");
    }

    #[test]
    fn gossip_counters_count_unknown_version_as_forged() {
        let c = CountersSnapshot {
            sent: 1,
            received: 2,
            dropped_truncated: 3,
            dropped_unknown_version: 4,
            dropped_unknown_key: 5,
            dropped_forged: 6,
            dropped_replay: 7,
            dropped_malformed: 8,
            send_failed: 9,
            dropped_unknown_sender: 10,
            dropped_future_epoch: 11,
        };
        let pb = gossip_counters(&c, vec![1, 2], Some(2));
        assert_eq!(pb.dropped_forged, 10);
        assert_eq!((pb.sent, pb.received), (1, 2));
        assert_eq!(pb.dropped_unknown_key, 5);
        assert_eq!(
            (pb.dropped_unknown_sender, pb.dropped_future_epoch),
            (10, 11)
        );
        assert_eq!(pb.key_ids, vec![1, 2]);
        assert_eq!(pb.primary_key, 2);
        assert_eq!(gossip_counters(&c, vec![], None).primary_key, 0);
    }

    #[test]
    fn token_limits_default_and_refuse_more_than_a_year() {
        assert_eq!(
            token_limits(0, 0).unwrap(),
            (DEFAULT_TOKEN_TTL_SECS, DEFAULT_TOKEN_USES)
        );
        assert_eq!(token_limits(60, 3).unwrap(), (60, 3));
        assert_eq!(
            token_limits(MAX_TOKEN_TTL_SECS, 1).unwrap().0,
            MAX_TOKEN_TTL_SECS
        );
        let e = token_limits(MAX_TOKEN_TTL_SECS + 1, 1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn token_id_takes_the_part_before_the_dot() {
        assert_eq!(token_id("abc123"), "abc123");
        assert_eq!(token_id("abc123.secret"), "abc123");
        assert_eq!(token_id(""), "");
    }

    #[test]
    fn labels_that_do_not_parse_are_invalid_arguments() {
        assert!(parse_labels(&["app=web".to_string()]).is_ok());
        let e = parse_labels(&["no-equals-sign".to_string()]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn member_events_carry_the_meta() {
        let meta = NodeMeta {
            id: 7,
            name: "n7".into(),
            ..Default::default()
        };
        let down = MemberEvent::Down(meta.clone());
        let (kind, m) = member_change(&down);
        let e = member_event(kind, m, 42);
        assert_eq!(
            (e.kind.as_str(), e.node_id, e.name.as_str()),
            ("down", 7, "n7")
        );
        assert_eq!(e.at_unix_ms, 42);
        assert_eq!(member_change(&MemberEvent::Up(meta.clone())).0, "up");
        assert_eq!(member_change(&MemberEvent::Changed(meta)).0, "changed");
    }
}
