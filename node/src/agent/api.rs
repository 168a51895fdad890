//! The local agent API (Unix socket) that the CLI talks to.

use std::sync::Arc;

use membrane_consensus::registry::{EndpointRecord, IdentityRecord, LabelSet, TokenRecord};
use membrane_consensus::{Command, Response as RegistryResponse};
use membrane_crypto::token::JoinToken;
use membrane_proto::v1 as pb;
use membrane_proto::v1::agent_server::Agent;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use crate::endpoints::plugin_service::{detail as endpoint_detail, mac_string};
use crate::endpoints::{EndpointManager, EndpointsSlot};
use crate::registry::client::RegistryClient;
use crate::registry::query::{Query, QueryResult};
use crate::state::NodeIdentity;

/// Token defaults, as kubeadm: one hour, and (stricter than kubeadm) a single use.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
pub const DEFAULT_TOKEN_USES: u32 = 1;

pub struct AgentApi {
    pub client: Arc<RegistryClient>,
    pub gossip: crate::cluster::gossip::GossipSlot,
    pub me: NodeIdentity,
    /// `sha256:HEX` of the cluster CA, for printing join commands.
    pub ca_hash: String,
    /// Set once the datapath is up.
    pub endpoints: EndpointsSlot,
    /// Flow events of this node's datapath (silent until the datapath is up).
    pub monitor: crate::observe::monitor::Monitor,
    /// The policy slice: import, get, delete, wait, explain.
    pub policy: crate::policy::api::PolicyApi,
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

fn identity_info(rec: &IdentityRecord) -> pb::IdentityInfo {
    pb::IdentityInfo {
        id: rec.id,
        labels: rec.labels.to_strings(),
        references: rec.references,
    }
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

fn parse_labels(labels: &[String]) -> Result<LabelSet, Status> {
    LabelSet::parse(labels).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn member_event(kind: &str, m: &membrane_gossip::NodeMeta, at_unix_ms: i64) -> pb::MemberEvent {
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

fn keyring_response(
    ring: &membrane_consensus::registry::GossipKeyring,
) -> pb::GossipKeyringResponse {
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

/// Builds the command a new node runs to join through `addr`.
pub fn join_command(addr: &str, token: &str, ca_hash: &str) -> String {
    format!("membrane agent --join {addr} --token {token} --ca-hash {ca_hash}")
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn status(&self, _: Request<pb::Empty>) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.client.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
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
        Ok(Response::new(pb::StatusResponse {
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
                let c = g.counters();
                let ring = g.keyring();
                pb::GossipCounters {
                    sent: c.sent,
                    received: c.received,
                    dropped_truncated: c.dropped_truncated,
                    dropped_unknown_key: c.dropped_unknown_key,
                    // Garbage that does not even carry our version is forged too, to an operator.
                    dropped_forged: c.dropped_forged + c.dropped_unknown_version,
                    dropped_replay: c.dropped_replay,
                    dropped_malformed: c.dropped_malformed,
                    key_ids: ring.ids(),
                    primary_key: ring.primary().unwrap_or(0),
                }
            }),
        }))
    }

    async fn node_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::NodeListResponse>, Status> {
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
                raft_role: if voters.contains(&n.id) {
                    "voter"
                } else if learners.contains(&n.id) {
                    "learner"
                } else {
                    "none"
                }
                .into(),
                id: n.id,
                name: n.name,
                rpc_addr: n.rpc_addr.to_string(),
                pod_cidr: n.pod_cidr.to_string(),
                tls_key_sha256: n.tls_key_sha256.to_string(),
                x25519_public: n.x25519_public.to_string(),
                joined_at_unix: n.joined_at,
                gossip_state: match self.gossip.get() {
                    Some(g) => g
                        .state_of(n.id)
                        .map(|st| st.as_str())
                        .unwrap_or("unknown")
                        .to_string(),
                    None => "unknown".to_string(),
                },
            })
            .collect();
        Ok(Response::new(pb::NodeListResponse { nodes }))
    }

    async fn node_remove(
        &self,
        req: Request<pb::NodeRemoveRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = req.into_inner().id;
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
        Ok(Response::new(pb::Empty {}))
    }

    type WatchMembersStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::MemberEvent, Status>> + Send>>;

    async fn watch_members(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::WatchMembersStream>, Status> {
        use tokio_stream::StreamExt;
        let gossip = self.gossip.get().cloned().ok_or_else(|| {
            Status::unavailable("gossip is not running yet; try again in a moment")
        })?;
        // Snapshot and subscription taken together, so no change falls between them.
        let (members, rx) = gossip.subscribe_with_snapshot();
        let now = crate::clock::unix_now_ms();
        let initial: Vec<Result<pb::MemberEvent, Status>> = members
            .into_values()
            .map(|(state, meta)| Ok(member_event(state.as_str(), &meta, now)))
            .collect();
        let updates = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| {
            let e = e.ok()?;
            let (kind, meta) = match &e {
                membrane_gossip::MemberEvent::Up(m) => ("up", m),
                membrane_gossip::MemberEvent::Down(m) => ("down", m),
                membrane_gossip::MemberEvent::Changed(m) => ("changed", m),
            };
            Some(Ok(member_event(kind, meta, crate::clock::unix_now_ms())))
        });
        Ok(Response::new(Box::pin(
            tokio_stream::iter(initial).chain(updates),
        )))
    }

    type MonitorStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::FlowEventMessage, Status>> + Send>,
    >;

    async fn monitor(
        &self,
        req: Request<pb::MonitorRequest>,
    ) -> Result<Response<Self::MonitorStream>, Status> {
        use std::sync::atomic::Ordering;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        use tokio_stream::StreamExt;
        let req = req.into_inner();
        let filter = crate::observe::monitor::Filter::from_request(&req).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown monitor type {}; use drop, policy, trace or all",
                req.r#type
            ))
        })?;
        let stats = self.monitor.stats().clone();
        let rx = self.monitor.subscribe();
        let events = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| {
            let msg = match e {
                Ok(m) => (*m).clone(),
                // This subscriber fell behind: tell it how much it missed and go on.
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    stats.lagged.fetch_add(n, Ordering::Relaxed);
                    crate::observe::monitor::lost_notice(n)
                }
            };
            filter.matches(&msg).then_some(Ok(msg))
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn gossip_keyring(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::GossipKeyringResponse>, Status> {
        let ring = self
            .client
            .local(|r| r.gossip_keyring().cloned())
            .ok_or_else(|| Status::unavailable("no keyring yet"))?;
        Ok(Response::new(keyring_response(&ring)))
    }

    async fn gossip_rotate_key(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::GossipKeyringResponse>, Status> {
        let gossip = self.gossip.get().cloned().ok_or_else(|| {
            Status::unavailable("gossip is not running yet; try again in a moment")
        })?;
        let ring = crate::cluster::rotation::rotate(&self.client, &gossip).await?;
        Ok(Response::new(keyring_response(&ring)))
    }

    async fn token_create(
        &self,
        req: Request<pb::TokenCreateRequest>,
    ) -> Result<Response<pb::TokenCreateResponse>, Status> {
        let req = req.into_inner();
        let ttl = if req.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL_SECS
        } else {
            req.ttl_seconds
        };
        if ttl > 365 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "token TTL is longer than a year; pick a shorter --ttl",
            ));
        }
        let max_uses = if req.max_uses == 0 {
            DEFAULT_TOKEN_USES
        } else {
            req.max_uses
        };
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
        Ok(Response::new(pb::TokenCreateResponse {
            join_command: join_command(&self.me.rpc_addr, &full, &self.ca_hash),
            token: full,
            id: token.id().to_string(),
            expires_at_unix: expires_at,
            max_uses,
        }))
    }

    async fn token_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::TokenListResponse>, Status> {
        let QueryResult::Tokens(tokens) = self.client.query(Query::Tokens).await? else {
            return Err(Status::internal("unexpected answer to a token query"));
        };
        let now = crate::clock::unix_now();
        Ok(Response::new(pb::TokenListResponse {
            tokens: tokens.iter().map(|t| token_info(t, now)).collect(),
        }))
    }

    async fn token_revoke(
        &self,
        req: Request<pb::TokenRevokeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = req.into_inner().id;
        // Accept a whole token too: people paste what they have.
        let id = id.split('.').next().unwrap_or_default().to_string();
        self.client.write(Command::RevokeToken { id }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn identity_allocate(
        &self,
        req: Request<pb::IdentityRequest>,
    ) -> Result<Response<pb::IdentityResponse>, Status> {
        let labels = parse_labels(&req.into_inner().labels)?;
        match self
            .client
            .write(Command::AllocateIdentity { labels })
            .await?
        {
            RegistryResponse::Identity { identity, created } => {
                Ok(Response::new(pb::IdentityResponse {
                    identity: Some(identity_info(&identity)),
                    created,
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected registry response {other:?}"
            ))),
        }
    }

    async fn identity_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::IdentityListResponse>, Status> {
        let QueryResult::Identities(ids) = self.client.query(Query::Identities).await? else {
            return Err(Status::internal("unexpected answer to an identity query"));
        };
        Ok(Response::new(pb::IdentityListResponse {
            identities: ids.iter().map(identity_info).collect(),
        }))
    }

    async fn identity_release(
        &self,
        req: Request<pb::IdentityRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let labels = parse_labels(&req.into_inner().labels)?;
        match self
            .client
            .write(Command::ReleaseIdentity { labels })
            .await?
        {
            RegistryResponse::Released {
                id,
                references,
                removed,
            } => Ok(Response::new(pb::ReleaseResponse {
                references,
                removed,
                id,
            })),
            other => Err(Status::internal(format!(
                "unexpected registry response {other:?}"
            ))),
        }
    }

    async fn endpoint_list(
        &self,
        req: Request<pb::EndpointListRequest>,
    ) -> Result<Response<pb::EndpointListResponse>, Status> {
        let local_only = req.into_inner().local_only;
        let endpoints = self
            .all_endpoints()
            .into_iter()
            .filter(|e| !local_only || e.node_id == self.me.node_id)
            .collect();
        Ok(Response::new(pb::EndpointListResponse { endpoints }))
    }

    async fn endpoint_get(
        &self,
        req: Request<pb::EndpointGetRequest>,
    ) -> Result<Response<pb::EndpointDetail>, Status> {
        let key = req.into_inner().key;
        let key = key.trim();
        if key.is_empty() {
            return Err(Status::invalid_argument(
                "give an endpoint number of this node, a container id or an IPv4 address",
            ));
        }
        let all = self.all_endpoints();
        let me = self.me.node_id;
        let found = if let Ok(ip) = key.parse::<std::net::Ipv4Addr>() {
            all.into_iter().find(|e| e.ipv4 == ip.to_string())
        } else if let Ok(id) = key.parse::<u32>() {
            all.into_iter().find(|e| e.node_id == me && e.id == id)
        } else {
            // A container id: this node's first, then any node's.
            let mut matching: Vec<pb::EndpointDetail> =
                all.into_iter().filter(|e| e.container_id == key).collect();
            matching.sort_by_key(|e| e.node_id != me);
            matching.into_iter().next()
        };
        found.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "no endpoint {key:?} (an endpoint number is looked up on this node only; see `membrane endpoint list`)"
            ))
        })
    }

    async fn bpf_ipcache_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::BpfIpcacheResponse>, Status> {
        let manager = self.endpoint_manager()?;
        let entries = manager
            .datapath()
            .bpf()
            .ipcache()
            .map_err(|e| Status::internal(format!("cannot read the ipcache map: {e}")))?;
        Ok(Response::new(pb::BpfIpcacheResponse {
            entries: entries
                .into_iter()
                .map(|(cidr, v)| pb::BpfIpcacheEntry {
                    cidr: cidr.to_string(),
                    identity: v.identity,
                    tunnel_endpoint: v
                        .tunnel_endpoint()
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                    flags: v.flags,
                })
                .collect(),
        }))
    }

    async fn policy_import(
        &self,
        req: Request<pb::PolicyImportRequest>,
    ) -> Result<Response<pb::PolicyImportResponse>, Status> {
        Ok(Response::new(
            crate::policy::api::import(&self.policy, req.into_inner()).await?,
        ))
    }

    async fn policy_get(
        &self,
        req: Request<pb::PolicyGetRequest>,
    ) -> Result<Response<pb::PolicyGetResponse>, Status> {
        Ok(Response::new(crate::policy::api::get(
            &self.policy,
            req.into_inner(),
        )?))
    }

    async fn policy_delete(
        &self,
        req: Request<pb::PolicyDeleteRequest>,
    ) -> Result<Response<pb::PolicyRevisionResponse>, Status> {
        Ok(Response::new(
            crate::policy::api::delete(&self.policy, req.into_inner()).await?,
        ))
    }

    async fn policy_wait(
        &self,
        req: Request<pb::PolicyWaitRequest>,
    ) -> Result<Response<pb::PolicyWaitResponse>, Status> {
        Ok(Response::new(
            crate::policy::api::wait(&self.policy, req.into_inner()).await?,
        ))
    }

    async fn policy_explain(
        &self,
        req: Request<pb::PolicyExplainRequest>,
    ) -> Result<Response<pb::PolicyExplainResponse>, Status> {
        Ok(Response::new(crate::policy::api::explain(
            &self.policy,
            req.into_inner(),
        )?))
    }

    async fn bpf_endpoint_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::BpfEndpointResponse>, Status> {
        let manager = self.endpoint_manager()?;
        let dp = manager.datapath();
        let entries = dp
            .bpf()
            .endpoints()
            .map_err(|e| Status::internal(format!("cannot read the endpoints map: {e}")))?;
        Ok(Response::new(pb::BpfEndpointResponse {
            entries: entries
                .into_iter()
                .map(|(ip, v)| pb::BpfEndpointEntry {
                    ipv4: ip.to_string(),
                    endpoint_id: v.endpoint_id,
                    ifindex: v.ifindex,
                    identity: v.identity,
                    mac: mac_string(&v.mac),
                    host_mac: mac_string(&v.host_mac),
                })
                .collect(),
            pin_dir: dp.pin_dir.display().to_string(),
        }))
    }
}

impl AgentApi {
    pub(super) fn endpoint_manager(&self) -> Result<&Arc<EndpointManager>, Status> {
        self.endpoints.get().ok_or_else(|| {
            Status::unavailable(
                "the datapath is not up yet (the agent is starting); try again in a moment",
            )
        })
    }

    /// Every endpoint in this node's registry copy; this node's own with their live state.
    fn all_endpoints(&self) -> Vec<pb::EndpointDetail> {
        let manager = self.endpoints.get();
        let (records, names): (Vec<EndpointRecord>, std::collections::BTreeMap<u64, String>) =
            self.client.local(|r| {
                (
                    r.endpoints().cloned().collect(),
                    r.nodes().map(|n| (n.id, n.name.clone())).collect(),
                )
            });
        records
            .into_iter()
            .map(|rec| {
                let node_name = names.get(&rec.node_id).cloned().unwrap_or_default();
                if rec.node_id == self.me.node_id {
                    if let Some(ep) =
                        manager.and_then(|m| m.get_live(&rec.container_id, &rec.ifname))
                    {
                        return endpoint_detail(&ep, &node_name);
                    }
                }
                pb::EndpointDetail {
                    id: rec.id,
                    container_id: rec.container_id.clone(),
                    ifname: rec.ifname.clone(),
                    netns: rec.netns.clone(),
                    host_ifname: crate::netdev::host_ifname(&rec.container_id, &rec.ifname),
                    ipv4: rec.ipv4.to_string(),
                    mac: String::new(),
                    identity: rec.identity,
                    labels: rec.labels.to_strings(),
                    node_id: rec.node_id,
                    node_name,
                    state: if rec.node_id == self.me.node_id {
                        "not-ready"
                    } else {
                        "remote"
                    }
                    .into(),
                    created_at_unix: rec.created_at,
                }
            })
            .collect()
    }
}
