//! The policy calls of the local API: import, get, delete, wait, explain.
//!
//! Parsing and validation happen here, on the node that receives the import, so a bad
//! file is refused with its file, line and field before anything reaches the registry;
//! the registry then stores each policy's canonical YAML under one new revision.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use membrane_consensus::registry::{LabelSet, NewPolicy};
use membrane_consensus::{Command, Response as RegistryResponse};
use membrane_gossip::MemberState;
use membrane_proto::v1 as pb;
use tonic::Status;

use std::sync::{Arc, OnceLock};

use crate::cluster::gossip::GossipSlot;
use crate::policy::apply::PolicySync;
use crate::policy::desired::identities_of;
use crate::policy::{self, Peer, Verdict};
use crate::registry::RegistryClient;

/// Default and largest wait of `policy wait`.
/// The policy sync once the datapath runs (the local API starts earlier).
pub type PolicySlot = Arc<OnceLock<Arc<PolicySync>>>;

/// What the policy slice of the local API reads and writes.
pub struct PolicyApi {
    pub client: Arc<RegistryClient>,
    pub gossip: GossipSlot,
    /// This node's id: its enforced revision comes from its own datapath, not gossip.
    pub node_id: u64,
    pub sync: PolicySlot,
}

const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn revision_of(resp: RegistryResponse) -> Result<u64, Status> {
    match resp {
        RegistryResponse::PolicyRevision(r) => Ok(r),
        RegistryResponse::Err(e) => Err(crate::registry::client::ClientError::Refused(e).into()),
        other => Err(Status::internal(format!(
            "unexpected registry answer {other:?}"
        ))),
    }
}

pub async fn import(
    api: &PolicyApi,
    req: pb::PolicyImportRequest,
) -> Result<pb::PolicyImportResponse, Status> {
    let file = if req.file.is_empty() {
        "-"
    } else {
        req.file.as_str()
    };
    let parsed = policy::parse_policies(file, &req.source)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut policies = Vec::with_capacity(parsed.len());
    for p in &parsed {
        let source = policy::to_yaml(std::slice::from_ref(p))
            .map_err(|e| Status::internal(e.to_string()))?;
        policies.push(NewPolicy {
            name: p.metadata.name.clone(),
            source,
        });
    }
    let names = policies.iter().map(|p| p.name.clone()).collect();
    let revision = revision_of(
        api.client
            .write(Command::PutPolicies {
                policies,
                now: crate::clock::unix_now(),
            })
            .await?,
    )?;
    Ok(pb::PolicyImportResponse { revision, names })
}

pub fn get(api: &PolicyApi, req: pb::PolicyGetRequest) -> Result<pb::PolicyGetResponse, Status> {
    let (records, revision) = api.client.local(|r| {
        (
            r.policies().cloned().collect::<Vec<_>>(),
            r.policy_revision(),
        )
    });
    let policies: Vec<pb::PolicyInfo> = records
        .into_iter()
        .filter(|p| req.name.is_empty() || p.name == req.name)
        .map(|p| pb::PolicyInfo {
            name: p.name,
            revision: p.revision,
            updated_at_unix: p.updated_at,
            yaml: p.source,
        })
        .collect();
    if !req.name.is_empty() && policies.is_empty() {
        return Err(Status::not_found(format!(
            "no policy is named {:?}; `membrane policy get` lists them",
            req.name
        )));
    }
    Ok(pb::PolicyGetResponse { policies, revision })
}

pub async fn delete(
    api: &PolicyApi,
    req: pb::PolicyDeleteRequest,
) -> Result<pb::PolicyRevisionResponse, Status> {
    if req.name.is_empty() {
        return Err(Status::invalid_argument(
            "give the name of the policy to delete",
        ));
    }
    let revision = revision_of(
        api.client
            .write(Command::DeletePolicy { name: req.name })
            .await?,
    )?;
    Ok(pb::PolicyRevisionResponse { revision })
}

pub async fn wait(
    api: &PolicyApi,
    req: pb::PolicyWaitRequest,
) -> Result<pb::PolicyWaitResponse, Status> {
    let timeout = match req.timeout_seconds {
        0 => DEFAULT_WAIT,
        s => Duration::from_secs(u64::from(s)).min(MAX_WAIT),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let nodes = node_revisions(api)?;
        let lagging: Vec<String> = nodes
            .iter()
            .filter(|n| n.state == "alive" && n.enforced < req.revision)
            .map(|n| format!("{} (node {}, at {})", n.name, n.node_id, n.enforced))
            .collect();
        if lagging.is_empty() {
            return Ok(pb::PolicyWaitResponse {
                revision: req.revision,
                nodes,
            });
        }
        if Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "policy revision {} is not enforced by {} after {timeout:?}; their agent logs say why",
                req.revision,
                lagging.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What every registered node enforces: this one from its own datapath, the others from
/// their gossip metadata.
fn node_revisions(api: &PolicyApi) -> Result<Vec<pb::NodePolicyRevision>, Status> {
    let me = api.node_id;
    let sync = api.sync.get();
    let gossip = api.gossip.get();
    let nodes: Vec<(u64, String)> = api
        .client
        .local(|r| r.nodes().map(|n| (n.id, n.name.clone())).collect());
    let members = gossip.map(|g| g.members()).unwrap_or_default();
    Ok(nodes
        .into_iter()
        .map(|(id, name)| {
            let (enforced, state) = if id == me {
                let enforced = sync
                    .map(|p| {
                        p.enforced_revision
                            .load(std::sync::atomic::Ordering::SeqCst)
                    })
                    .unwrap_or(0);
                (enforced, "alive")
            } else {
                match members.get(&id) {
                    Some((MemberState::Alive, meta)) => {
                        (meta.enforced_policy_revision().unwrap_or(0), "alive")
                    }
                    Some(_) => (0, "down"),
                    // Not heard of yet: treat as alive so a wait does not pass too early.
                    None => (0, "alive"),
                }
            };
            pb::NodePolicyRevision {
                node_id: id,
                name,
                enforced,
                state: state.to_string(),
            }
        })
        .collect())
}

/// Reads `--from`/`--to`: labels (`k=v,k=v`), an endpoint (number of this node, container
/// id, or an endpoint's IPv4 address) or an address outside the cluster.
fn peer(api: &PolicyApi, what: &str, text: &str) -> Result<Peer, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Status::invalid_argument(format!(
            "--{what} is empty; give labels (app=web,tier=fe), an endpoint or an address"
        )));
    }
    if text.contains('=') {
        let parts: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let labels = LabelSet::parse(&parts)
            .map_err(|e| Status::invalid_argument(format!("--{what}: {e}")))?;
        return Ok(Peer::Labels(labels));
    }
    let me = api.node_id;
    let found = api.client.local(|r| {
        let eps: Vec<_> = r.endpoints().cloned().collect();
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Some(
                eps.into_iter()
                    .find(|e| e.ipv4 == ip)
                    .map(|e| e.labels)
                    .ok_or(ip),
            );
        }
        if let Ok(id) = text.parse::<u32>() {
            return eps
                .into_iter()
                .find(|e| e.node_id == me && e.id == id)
                .map(|e| Ok(e.labels));
        }
        let mut matching: Vec<_> = eps.into_iter().filter(|e| e.container_id == text).collect();
        matching.sort_by_key(|e| e.node_id != me);
        matching.into_iter().next().map(|e| Ok(e.labels))
    });
    match found {
        Some(Ok(labels)) => Ok(Peer::Labels(labels)),
        Some(Err(ip)) => Ok(Peer::Address(ip)),
        None => Err(Status::not_found(format!(
            "--{what} {text:?} is neither labels (k=v) nor a known endpoint; see `membrane endpoint list`"
        ))),
    }
}

fn side(s: &policy::explain::SideVerdict) -> pb::PolicySide {
    pb::PolicySide {
        direction: s.direction.to_string(),
        verdict: verdict_name(s.verdict).into(),
        rule: s.rule.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        selected_by: s.selected_by.clone(),
        remote_identity: s.remote_identity,
        reason: s.reason.clone(),
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
    }
}

pub fn explain(
    api: &PolicyApi,
    req: pb::PolicyExplainRequest,
) -> Result<pb::PolicyExplainResponse, Status> {
    let from = peer(api, "from", &req.from)?;
    let to = peer(api, "to", &req.to)?;
    let (proto, port) = policy::parse_port_proto(&req.port)
        .map_err(|e| Status::invalid_argument(format!("--port: {e}")))?;
    let identities: BTreeMap<u32, LabelSet> = api.client.local(identities_of);
    // Before the datapath is up there is no cache: parse the registry's policies directly.
    let policies = match api.sync.get() {
        Some(p) => p.policies().1,
        None => std::sync::Arc::new(crate::policy::apply::stored_policies(&api.client)),
    };
    let e = policy::explain(&policies, &identities, &from, &to, proto, port);
    Ok(pb::PolicyExplainResponse {
        verdict: verdict_name(e.verdict).into(),
        sentence: e.sentence.clone(),
        egress: e.egress.as_ref().map(side),
        ingress: e.ingress.as_ref().map(side),
    })
}
