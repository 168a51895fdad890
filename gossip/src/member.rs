//! The running membership: chitchat over the sealed transport, and a view of it by node id
//! with events when nodes come, go or change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use membrane_crypto::seal::Keyring;
use tokio::sync::broadcast;
use tracing::{debug, info};

use crate::meta::NodeMeta;
use crate::transport::{CountersSnapshot, SealedTransport};

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("cannot start gossip on {addr}: {reason}")]
    Start { addr: SocketAddr, reason: String },
}

/// Settings of one node's gossip. See ALGORITHM.md for why the defaults are what they are.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub meta: NodeMeta,
    pub listen_addr: SocketAddr,
    pub advertise_addr: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub keyring: Keyring,
    /// Name of the cluster; nodes of another cluster ignore each other.
    pub cluster: String,
    /// This process's start time in ms (sealing epoch and chitchat generation).
    pub epoch: u64,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// How long chitchat keeps a dead node's state before forgetting it.
    pub dead_node_grace: Duration,
}

impl GossipConfig {
    /// Settings with the defaults: a 200 ms round and phi 8, so a silent node is declared
    /// down about 8 mean heartbeat intervals (~1.6-2.5 s) after its last heartbeat.
    pub fn new(meta: NodeMeta, listen_addr: SocketAddr, advertise_addr: SocketAddr, keyring: Keyring, cluster: &str) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        GossipConfig {
            meta,
            listen_addr,
            advertise_addr,
            seeds: Vec::new(),
            keyring,
            cluster: cluster.to_string(),
            epoch,
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(48 * 3600),
        }
    }
}

/// Liveness of a node as this node's gossip sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Down => "down",
        }
    }
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    Up(NodeMeta),
    Down(NodeMeta),
    Changed(NodeMeta),
}

type View = BTreeMap<u64, (MemberState, NodeMeta)>;

/// A node's running gossip. Dropping it stops nothing: call [`Gossip::shutdown`].
pub struct Gossip {
    handle: ChitchatHandle,
    transport: SealedTransport,
    view: Arc<RwLock<View>>,
    events: broadcast::Sender<MemberEvent>,
    watcher: tokio::task::JoinHandle<()>,
    node_id: u64,
}

impl Gossip {
    /// Binds the socket and starts gossiping with the seeds.
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        let node_id = config.meta.id;
        let transport = SealedTransport::new(node_id, config.epoch, config.keyring.clone());
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.to_string(), config.epoch, config.advertise_addr),
            cluster_id: config.cluster.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen_addr,
            seed_nodes: config.seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 100,
                max_interval: config.gossip_interval * 10,
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.dead_node_grace,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let mut meta = config.meta.clone();
        meta.keyring = NodeMeta::keyring_summary(config.keyring.primary().unwrap_or(0), &config.keyring.ids());
        let handle = spawn_chitchat(chitchat_config, meta.to_key_values(), &transport)
            .await
            .map_err(|e| GossipError::Start { addr: config.listen_addr, reason: format!("{e:#}") })?;
        let view: Arc<RwLock<View>> = Arc::default();
        let (events, _) = broadcast::channel(1024);
        let watcher = tokio::spawn(watch(handle.chitchat(), view.clone(), events.clone(), config.gossip_interval / 2));
        info!(node_id, listen = %config.listen_addr, seeds = config.seeds.len(), "gossip started");
        Ok(Gossip { handle, transport, view, events, watcher, node_id })
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Every node this node has heard of, with its state and metadata.
    pub fn members(&self) -> BTreeMap<u64, (MemberState, NodeMeta)> {
        self.view.read().expect("view lock").clone()
    }

    /// State of one node; this node is always alive to itself.
    pub fn state_of(&self, id: u64) -> Option<MemberState> {
        if id == self.node_id {
            return Some(MemberState::Alive);
        }
        self.view.read().expect("view lock").get(&id).map(|(s, _)| *s)
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.transport.counters().snapshot()
    }

    /// Installs a new keyring (rotation) and tells the others which keys this node holds.
    pub async fn set_keyring(&self, keyring: Keyring) {
        let summary = NodeMeta::keyring_summary(keyring.primary().unwrap_or(0), &keyring.ids());
        self.transport.set_keyring(keyring);
        self.handle.with_chitchat(|c| c.self_node_state().set("keyring", &summary)).await;
    }

    pub fn keyring(&self) -> Keyring {
        self.transport.keyring()
    }

    /// Publishes new metadata for this node.
    pub async fn set_meta(&self, meta: NodeMeta) {
        let kv = meta.to_key_values();
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                for (k, v) in &kv {
                    state.set(k, v);
                }
            })
            .await;
    }

    /// Gossips with `addr` now (a node learnt from elsewhere, e.g. the registry).
    pub fn gossip_with(&self, addr: SocketAddr) {
        let _ = self.handle.gossip(addr);
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        self.watcher.abort();
        let _ = self.handle.shutdown().await;
    }
}

/// Polls chitchat's state and turns differences into events. Polling (every half round)
/// rather than chitchat's watchers because it also catches metadata changes, and a node
/// known under several generations (it restarted) is folded into one entry by node id.
async fn watch(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    view: Arc<RwLock<View>>,
    events: broadcast::Sender<MemberEvent>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let next: View = {
            let c = chitchat.lock().await;
            let me = c.self_chitchat_id().clone();
            let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
            let mut next: View = BTreeMap::new();
            for (cid, state) in c.node_states() {
                if *cid == me {
                    continue;
                }
                let Ok(id) = cid.node_id.parse::<u64>() else { continue };
                let alive = live.contains(cid);
                let meta = NodeMeta::from_key_values(id, state.key_values());
                let entry = (if alive { MemberState::Alive } else { MemberState::Down }, meta);
                match next.get(&id) {
                    // Prefer a live generation over a dead one.
                    Some((MemberState::Alive, _)) if !alive => {}
                    _ => {
                        next.insert(id, entry);
                    }
                }
            }
            next
        };
        let previous = std::mem::replace(&mut *view.write().expect("view lock"), next.clone());
        for (id, (state, meta)) in &next {
            let event = match previous.get(id) {
                None if *state == MemberState::Alive => Some(MemberEvent::Up(meta.clone())),
                None => Some(MemberEvent::Down(meta.clone())),
                Some((s, _)) if s != state => Some(match state {
                    MemberState::Alive => MemberEvent::Up(meta.clone()),
                    MemberState::Down => MemberEvent::Down(meta.clone()),
                }),
                Some((_, m)) if m != meta => Some(MemberEvent::Changed(meta.clone())),
                _ => None,
            };
            if let Some(e) = event {
                debug!(node_id = id, event = ?e, "membership changed");
                let _ = events.send(e);
            }
        }
    }
}
