//! Endpoints of this node: add, delete, check, restore after a restart, and the deletes
//! that `membrane-cni` queued while the agent was down.
//!
//! The order of an add (docs/datapath.md, "Add, in order"): the registry first (address and
//! identity, one command), then the veth pair, then the BPF programs and map entries; the
//! add returns only when all of it is live. Each step undoes the earlier ones when it fails,
//! so a refused or failed add leaves no veth, address or identity reference behind. Adds and
//! deletes are serialised: they are rare next to packets, and one at a time makes the
//! idempotency rules (same request, same answer) simple to keep.

pub mod api;
pub mod conntrack_flush;
pub mod plugin_service;
pub mod validate;

use validate::ifname_or_default;
pub use validate::{check_netns, validate_add, AddRequest, DEFAULT_IFNAME};
pub mod proto;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::Ipv4Net;
use membrane_consensus::registry::{ipam, EndpointRecord, NewEndpoint};
use membrane_consensus::{Command, RegistryError, Response};
use membrane_ebpf::{EndpointValue, IpcacheValue};
use tracing::{info, warn};

use crate::datapath::NodeDatapath;
use crate::netdev::{self, EndpointLink, EndpointLinkSpec, NetdevError};
use crate::registry::client::{ClientError, RegistryClient};
use crate::state::NodeIdentity;

/// The endpoint manager once the datapath runs (the local API and metrics start earlier).
pub type EndpointsSlot = Arc<std::sync::OnceLock<Arc<EndpointManager>>>;

/// How long an add waits for this node's registry copy to apply its own write.
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(10);
/// How often queued deletes are looked for.
const QUEUE_POLL: Duration = Duration::from_secs(2);

/// Why an endpoint operation failed. Each maps to one gRPC code (plugin.proto).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NoSuchNetns(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ClientError> for EndpointError {
    fn from(e: ClientError) -> Self {
        let msg = e.to_string();
        match e {
            ClientError::Refused(
                RegistryError::InvalidEndpoint(_) | RegistryError::InvalidLabels(_),
            ) => EndpointError::Invalid(msg),
            ClientError::Refused(RegistryError::EndpointConflict(_)) => {
                EndpointError::Conflict(msg)
            }
            ClientError::Refused(
                RegistryError::EndpointAddressesExhausted { .. }
                | RegistryError::IdentitySpaceExhausted { .. },
            ) => EndpointError::Exhausted(msg),
            ClientError::Refused(_) => EndpointError::Internal(msg),
            ClientError::NoLeader(_) | ClientError::NotLeader | ClientError::Forward(_) => {
                EndpointError::Unavailable(msg)
            }
            ClientError::Raft(_) | ClientError::Decode(_) => EndpointError::Internal(msg),
        }
    }
}

impl From<NetdevError> for EndpointError {
    fn from(e: NetdevError) -> Self {
        let msg = e.to_string();
        match e {
            NetdevError::HostNameTaken { .. } | NetdevError::ContainerNameTaken { .. } => {
                EndpointError::Conflict(msg)
            }
            NetdevError::NoSuchNetns { .. } => EndpointError::NoSuchNetns(msg),
            NetdevError::Invalid { .. } => EndpointError::Invalid(msg),
            _ => EndpointError::Internal(msg),
        }
    }
}

impl From<EndpointError> for tonic::Status {
    fn from(e: EndpointError) -> Self {
        let msg = e.to_string();
        match e {
            EndpointError::Invalid(_) => tonic::Status::invalid_argument(msg),
            EndpointError::NoSuchNetns(_) => tonic::Status::not_found(msg),
            EndpointError::Conflict(_) => tonic::Status::already_exists(msg),
            EndpointError::Exhausted(_) => tonic::Status::resource_exhausted(msg),
            EndpointError::Unavailable(_) => tonic::Status::unavailable(msg),
            EndpointError::Mismatch(_) => tonic::Status::failed_precondition(msg),
            EndpointError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

/// A live endpoint of this node: its registry record and its links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub record: EndpointRecord,
    pub host_ifname: String,
    pub link: EndpointLink,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Endpoints of this node.
pub struct EndpointManager {
    client: Arc<RegistryClient>,
    datapath: Arc<NodeDatapath>,
    me: NodeIdentity,
    /// Endpoints whose links, programs and map entries are live, by (container id, ifname).
    live: Mutex<BTreeMap<(String, String), LocalEndpoint>>,
    /// One add or delete at a time.
    ops: tokio::sync::Mutex<()>,
    /// Installs each endpoint's policy before the endpoint is handed out.
    policy: Arc<crate::policy::apply::PolicySync>,
    /// Bumped whenever the live set changes, so the sync loop notices.
    generation: std::sync::atomic::AtomicU64,
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("32 is a valid prefix length")
}

impl EndpointManager {
    pub fn new(
        client: Arc<RegistryClient>,
        datapath: Arc<NodeDatapath>,
        me: NodeIdentity,
        policy: Arc<crate::policy::apply::PolicySync>,
    ) -> EndpointManager {
        EndpointManager {
            client,
            datapath,
            me,
            live: Mutex::default(),
            ops: tokio::sync::Mutex::new(()),
            policy,
            generation: Default::default(),
        }
    }

    /// Changes whenever an endpoint goes live or away.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn datapath(&self) -> &NodeDatapath {
        &self.datapath
    }

    pub fn policy(&self) -> &Arc<crate::policy::apply::PolicySync> {
        &self.policy
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), LocalEndpoint>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live endpoint of (container id, ifname), if any.
    pub fn get_live(&self, container_id: &str, ifname: &str) -> Option<LocalEndpoint> {
        self.live()
            .get(&(container_id.to_string(), ifname.to_string()))
            .cloned()
    }

    /// The registry records of the live endpoints, as the policy sync takes them.
    pub fn live_records(&self) -> Vec<EndpointRecord> {
        self.list_live().into_iter().map(|e| e.record).collect()
    }

    /// Every live endpoint of this node.
    pub fn list_live(&self) -> Vec<LocalEndpoint> {
        self.live().values().cloned().collect()
    }

    fn gateway(&self) -> Result<Ipv4Addr, EndpointError> {
        let cidr = self
            .client
            .local(|r| r.node(self.me.node_id).map(|n| n.pod_cidr))
            .ok_or_else(|| {
                EndpointError::Unavailable(
                    "this node is not in its registry copy yet; try again in a moment".into(),
                )
            })?;
        Ok(ipam::gateway(cidr))
    }

    /// Adds an endpoint, or returns the live one for a repeated request.
    pub async fn add(&self, req: AddRequest) -> Result<LocalEndpoint, EndpointError> {
        let _op = self.ops.lock().await;
        if let Some(ep) = self.get_live(&req.container_id, &req.ifname) {
            if ep.record.netns != req.netns {
                return Err(EndpointError::Conflict(format!(
                    "container {:?} already has interface {:?} in network namespace {}; delete it first or use the same namespace",
                    req.container_id, req.ifname, ep.record.netns
                )));
            }
            return Ok(ep);
        }
        let gateway = self.gateway()?;
        let resp = self
            .client
            .write(Command::AddEndpoint {
                endpoint: NewEndpoint {
                    node_id: self.me.node_id,
                    container_id: req.container_id.clone(),
                    ifname: req.ifname.clone(),
                    netns: req.netns.clone(),
                    labels: req.labels.clone(),
                    now: crate::clock::unix_now(),
                },
            })
            .await?;
        let (record, created) = match resp {
            Response::Endpoint { endpoint, created } => (endpoint, created),
            Response::Err(e) => return Err(ClientError::Refused(e).into()),
            other => {
                return Err(EndpointError::Internal(format!(
                    "unexpected registry answer to AddEndpoint: {other:?}"
                )))
            }
        };
        match self.bring_up(&record, gateway).await {
            Ok(ep) => {
                self.wait_local_apply(&record).await;
                info!(
                    endpoint = record.id,
                    container_id = %record.container_id,
                    ipv4 = %record.ipv4,
                    identity = record.identity,
                    host_ifname = %ep.host_ifname,
                    created,
                    "endpoint ready"
                );
                Ok(ep)
            }
            Err(e) => {
                // Undo the registry step, so the address and the identity reference are
                // not held by an endpoint that does not exist.
                if let Err(undo) = self.deregister(&record).await {
                    warn!(container_id = %record.container_id, error = %undo, "cannot undo the registration of a failed endpoint; it will be retried by the next delete");
                }
                Err(e)
            }
        }
    }

    /// Links, programs and map entries for a registered endpoint.
    async fn bring_up(
        &self,
        record: &EndpointRecord,
        gateway: Ipv4Addr,
    ) -> Result<LocalEndpoint, EndpointError> {
        let host_ifname = netdev::host_ifname(&record.container_id, &record.ifname);
        let spec = EndpointLinkSpec {
            host_ifname: host_ifname.clone(),
            container_ifname: record.ifname.clone(),
            netns_path: PathBuf::from(&record.netns),
            address: record.ipv4,
            gateway,
            mtu: self.datapath.mtu,
        };
        let link = netdev::create_endpoint_link(&spec).await?;
        let ep = LocalEndpoint {
            record: record.clone(),
            host_ifname: host_ifname.clone(),
            link,
            gateway,
            mtu: self.datapath.mtu,
        };
        if let Err(e) = self.program(&ep) {
            let _ = self.unprogram(&ep);
            if let Err(del) = netdev::delete_link(&host_ifname).await {
                warn!(host_ifname = %host_ifname, error = %del, "cannot delete the veth of a failed endpoint");
            }
            return Err(e);
        }
        self.live().insert(
            (record.container_id.clone(), record.ifname.clone()),
            ep.clone(),
        );
        self.bump();
        Ok(ep)
    }

    /// Attaches the programs and writes the map entries of a live endpoint.
    fn program(&self, ep: &LocalEndpoint) -> Result<(), EndpointError> {
        let internal = |what: &str, e: membrane_ebpf::DatapathError| {
            EndpointError::Internal(format!("{what} for {}: {e}", ep.host_ifname))
        };
        let value = EndpointValue::new(
            ep.link.host_ifindex,
            ep.record.identity,
            ep.record.id,
            ep.link.container_mac,
            ep.link.host_mac,
        );
        // Policy first: the endpoint's first packet must meet its policy.
        let value = self
            .policy
            .install_endpoint(&ep.record, value)
            .map_err(|e| internal("cannot install the endpoint's policy", e))?;
        let mut bpf = self.datapath.bpf();
        bpf.attach_endpoint(&ep.host_ifname)
            .map_err(|e| internal("cannot attach the endpoint programs", e))?;
        bpf.upsert_endpoint(ep.record.ipv4, &value)
            .map_err(|e| internal("cannot write the endpoints map", e))?;
        bpf.upsert_ipcache(
            host32(ep.record.ipv4),
            &IpcacheValue::local(ep.record.identity),
        )
        .map_err(|e| internal("cannot write the ipcache", e))?;
        Ok(())
    }

    /// Removes the map entries of an endpoint and unpins its program links.
    fn unprogram(&self, ep: &LocalEndpoint) -> Result<(), EndpointError> {
        let internal = |e: membrane_ebpf::DatapathError| EndpointError::Internal(e.to_string());
        {
            let mut bpf = self.datapath.bpf();
            bpf.remove_endpoint(ep.record.ipv4).map_err(internal)?;
            bpf.remove_ipcache(host32(ep.record.ipv4))
                .map_err(internal)?;
            bpf.detach_endpoint(&ep.host_ifname).map_err(internal)?;
        }
        self.policy
            .remove_endpoint(ep.record.id)
            .map_err(internal)?;
        Ok(())
    }

    /// Waits (bounded) until this node's registry copy has the endpoint, so the ipcache
    /// sync never takes out the entry that the add just wrote.
    async fn wait_local_apply(&self, record: &EndpointRecord) {
        let deadline = tokio::time::Instant::now() + LOCAL_APPLY_WAIT;
        while tokio::time::Instant::now() < deadline {
            let here = self.client.local(|r| {
                r.endpoint(record.node_id, &record.container_id, &record.ifname)
                    .is_some()
            });
            if here {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        warn!(container_id = %record.container_id, "this node's registry copy has not applied the endpoint yet");
    }

    async fn deregister(&self, record: &EndpointRecord) -> Result<(), EndpointError> {
        self.client
            // The leader re-stamps `now`; the address rests from then (ipam grace).
            .write(Command::RemoveEndpointAt {
                node_id: record.node_id,
                container_id: record.container_id.clone(),
                ifname: record.ifname.clone(),
                now: crate::clock::unix_now(),
            })
            .await?
            .into_result()
            .map_err(|e| EndpointError::Internal(e.to_string()))?;
        Ok(())
    }

    /// Removes this node's conntrack entries naming `ip` (as source or destination).
    fn flush_conntrack(&self, ip: Ipv4Addr) -> Result<usize, EndpointError> {
        let addrs = [ip].into();
        let removed =
            conntrack_flush::flush_addresses(&mut *self.datapath.bpf(), &addrs).map_err(|e| {
                EndpointError::Internal(format!(
                    "cannot remove the conntrack entries of {ip}: {e}; retry the delete"
                ))
            })?;
        info!(ipv4 = %ip, removed, "conntrack entries of a deleted endpoint removed");
        Ok(removed)
    }

    /// Deletes an endpoint. Unknown endpoints are fine (returns false).
    pub async fn del(&self, container_id: &str, ifname: &str) -> Result<bool, EndpointError> {
        let ifname = ifname_or_default(ifname);
        let _op = self.ops.lock().await;
        let host_ifname = netdev::host_ifname(container_id, ifname);
        let live = self
            .live()
            .remove(&(container_id.to_string(), ifname.to_string()));
        if let Some(ep) = &live {
            self.unprogram(ep)?;
            self.bump();
        }
        let link_deleted = netdev::delete_link(&host_ifname).await?;
        let record = self
            .client
            .local(|r| r.endpoint(self.me.node_id, container_id, ifname).cloned());
        let record = record.or_else(|| live.map(|l| l.record));
        let Some(record) = record else {
            return Ok(link_deleted);
        };
        // Also clear the map entries and links when the endpoint was never live here (a
        // restart between the registry write and the veth).
        {
            let mut bpf = self.datapath.bpf();
            let _ = bpf.remove_endpoint(record.ipv4);
            let _ = bpf.remove_ipcache(host32(record.ipv4));
            let _ = bpf.detach_endpoint(&host_ifname);
        }
        // With the veth gone nothing re-opens them: the address's flows end here, before
        // the registry frees it for another endpoint.
        self.flush_conntrack(record.ipv4)?;
        self.deregister(&record).await?;
        info!(endpoint = record.id, container_id = %container_id, ipv4 = %record.ipv4, "endpoint deleted");
        Ok(true)
    }

    /// CNI CHECK: the endpoint exists and is what was set up.
    pub async fn check(
        &self,
        container_id: &str,
        ifname: &str,
        netns: &str,
    ) -> Result<LocalEndpoint, EndpointError> {
        let ifname = ifname_or_default(ifname);
        let ep = self.get_live(container_id, ifname).ok_or_else(|| {
            EndpointError::Mismatch(format!(
                "container {container_id:?} has no live endpoint with interface {ifname:?} on this node"
            ))
        })?;
        if !netns.is_empty() && netns != ep.record.netns {
            return Err(EndpointError::Mismatch(format!(
                "the endpoint was set up in {}, not {netns}",
                ep.record.netns
            )));
        }
        match netdev::link_by_name(&ep.host_ifname).await? {
            Some((index, _, _)) if index == ep.link.host_ifindex => {}
            _ => {
                return Err(EndpointError::Mismatch(format!(
                    "the host side {} of the endpoint is missing or was replaced",
                    ep.host_ifname
                )))
            }
        }
        let inside = netdev::container_link(Path::new(&ep.record.netns), ifname).await?;
        match inside {
            Some((_, mac, addrs))
                if mac == ep.link.container_mac && addrs.contains(&host32(ep.record.ipv4)) => {}
            Some(_) => {
                return Err(EndpointError::Mismatch(format!(
                    "{ifname} in {} no longer has address {}/32 or its MAC changed",
                    ep.record.netns, ep.record.ipv4
                )))
            }
            None => {
                return Err(EndpointError::Mismatch(format!(
                    "{ifname} is missing from {}",
                    ep.record.netns
                )))
            }
        }
        let in_map = self
            .datapath
            .bpf()
            .endpoints()
            .map_err(|e| EndpointError::Internal(e.to_string()))?
            .into_iter()
            .any(|(ip, _)| ip == ep.record.ipv4);
        if !in_map {
            return Err(EndpointError::Mismatch(format!(
                "the BPF endpoints map has no entry for {}",
                ep.record.ipv4
            )));
        }
        Ok(ep)
    }

    /// After a start: takes back the endpoints this node's registry copy lists. An endpoint
    /// whose veth is still there is re-attached and its map entries rewritten (the old
    /// programs kept forwarding meanwhile); one whose veth or namespace is gone is
    /// deregistered. Map entries of no registered endpoint are removed.
    pub async fn restore(&self) {
        let _op = self.ops.lock().await;
        let gateway = match self.gateway() {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "cannot restore endpoints yet");
                return;
            }
        };
        let records: Vec<EndpointRecord> = self
            .client
            .local(|r| r.endpoints_on(self.me.node_id).cloned().collect());
        let mut kept = std::collections::BTreeSet::new();
        for record in records {
            match self.restore_one(&record, gateway).await {
                Ok(Some(ep)) => {
                    kept.insert(record.ipv4);
                    self.live()
                        .insert((record.container_id.clone(), record.ifname.clone()), ep);
                    self.bump();
                    info!(endpoint = record.id, container_id = %record.container_id, "endpoint restored");
                }
                Ok(None) => {
                    info!(endpoint = record.id, container_id = %record.container_id, netns = %record.netns, "endpoint is gone (no veth or namespace); deregistering it");
                    if let Err(e) = self.flush_conntrack(record.ipv4) {
                        warn!(container_id = %record.container_id, error = %e, "cannot flush a vanished endpoint's conntrack entries");
                    }
                    if let Err(e) = self.deregister(&record).await {
                        warn!(container_id = %record.container_id, error = %e, "cannot deregister a vanished endpoint");
                    }
                }
                Err(e) => {
                    warn!(container_id = %record.container_id, error = %e, "cannot restore endpoint")
                }
            }
        }
        let mut bpf = self.datapath.bpf();
        if let Ok(entries) = bpf.endpoints() {
            for (ip, _) in entries {
                if !kept.contains(&ip) {
                    let _ = bpf.remove_endpoint(ip);
                }
            }
        }
    }

    async fn restore_one(
        &self,
        record: &EndpointRecord,
        gateway: Ipv4Addr,
    ) -> Result<Option<LocalEndpoint>, EndpointError> {
        let host_ifname = netdev::host_ifname(&record.container_id, &record.ifname);
        let Some((host_ifindex, host_mac, mtu)) = netdev::link_by_name(&host_ifname).await? else {
            let _ = self.datapath.bpf().detach_endpoint(&host_ifname);
            return Ok(None);
        };
        if check_netns(&record.netns).is_err() {
            let _ = netdev::delete_link(&host_ifname).await;
            return Ok(None);
        }
        let Some((container_ifindex, container_mac, _)) =
            netdev::container_link(Path::new(&record.netns), &record.ifname).await?
        else {
            let _ = netdev::delete_link(&host_ifname).await;
            return Ok(None);
        };
        let ep = LocalEndpoint {
            record: record.clone(),
            host_ifname,
            link: EndpointLink {
                host_ifindex,
                host_mac,
                container_ifindex,
                container_mac,
            },
            gateway,
            mtu,
        };
        self.program(&ep)?;
        Ok(Some(ep))
    }

    /// Completes the deletes `membrane-cni` queued while the agent was down, once.
    ///
    /// A delete queued before the endpoint of the same container id and ifname was added
    /// (again) is stale: the runtime has re-created the container since, so the delete is
    /// dropped rather than taking the new endpoint out.
    pub async fn drain_queue(&self, dir: &Path) {
        for (path, del) in crate::cni::queue::read_queue(dir) {
            let ifname = ifname_or_default(&del.ifname).to_string();
            let newer = self
                .client
                .local(|r| {
                    r.endpoint(self.me.node_id, &del.container_id, &ifname)
                        .map(|e| e.created_at)
                })
                // Strictly newer: an add needs the agent, and the delete was queued while
                // it was away, so an endpoint from the same second predates the delete.
                .is_some_and(|created| created > del.queued_at_unix);
            let done = if newer {
                info!(container_id = %del.container_id, ifname = %ifname, "queued delete is older than the endpoint; dropping it");
                true
            } else {
                match self.del(&del.container_id, &ifname).await {
                    Ok(_) => {
                        info!(container_id = %del.container_id, ifname = %ifname, "queued delete completed");
                        true
                    }
                    Err(e) => {
                        warn!(container_id = %del.container_id, error = %e, "queued delete failed; will retry");
                        false
                    }
                }
            };
            if done {
                if let Err(e) = crate::cni::queue::complete(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove a completed queued delete");
                }
            }
        }
    }

    /// [`Self::drain_queue`] every few seconds, forever: a delete can be queued while the
    /// agent runs but its socket is briefly gone (a restart in progress).
    pub async fn run_queue(self: Arc<Self>, dir: PathBuf) {
        loop {
            tokio::time::sleep(QUEUE_POLL).await;
            self.drain_queue(&dir).await;
        }
    }
}
