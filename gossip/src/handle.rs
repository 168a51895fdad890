//! The running gossip of one node: chitchat over the sealed transport, the membership view
//! by node id, and the event stream.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chitchat::{spawn_chitchat, Chitchat, ChitchatHandle, ChitchatId, NodeState};
use membrane_crypto::replay::ReplayGuard;
use membrane_crypto::seal::Keyring;
use tokio::sync::{broadcast, watch, Mutex};
use tracing::{debug, info, warn};

use crate::config::GossipConfig;
use crate::error::GossipError;
use crate::events::{self, LiveNode, MemberEvent, MemberState, Members};
use crate::meta::{keys, NodeMeta};
use crate::peers::Peers;
use crate::persist;
use crate::transport::{CountersSnapshot, SealedTransport};

/// Events buffered per subscriber; one that falls further behind gets `Lagged` and should
/// re-read [`Gossip::members`].
const EVENT_BUFFER: usize = 1024;

/// How often down nodes that chitchat has forgotten are pruned from the view when nothing
/// else changes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often the replay high-water marks are saved while gossip arrives.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The view and the event channel, updated together under one lock so that a snapshot and a
/// subscription taken together miss nothing and repeat nothing.
struct Shared {
    members: Members,
    events: broadcast::Sender<MemberEvent>,
}

/// A node's running gossip. Dropping it stops nothing: call [`Gossip::shutdown`].
pub struct Gossip {
    handle: ChitchatHandle,
    transport: SealedTransport,
    shared: Arc<RwLock<Shared>>,
    watcher: tokio::task::JoinHandle<()>,
    saver: Option<tokio::task::JoinHandle<()>>,
    replay_state: Option<PathBuf>,
    node_id: u64,
    listen_addr: SocketAddr,
}

impl Gossip {
    /// Binds the UDP socket and starts gossiping with the seeds. Returns at once; members
    /// appear as they are heard from.
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        config.validate()?;
        let node_id = config.meta.id;
        let replay = match &config.replay_state {
            Some(path) => match persist::load(path) {
                Ok(marks) => {
                    info!(node_id, senders = marks.len(), path = %path.display(), "gossip replay windows resumed");
                    ReplayGuard::resume(marks)
                }
                Err(error) => {
                    // Refusing to gossip would make this node look dead; starting fresh only
                    // reopens the windows, as before this file existed.
                    warn!(node_id, %error, "gossip replay state unreadable; starting with empty windows (the file is rewritten within a second)");
                    ReplayGuard::new()
                }
            },
            None => ReplayGuard::new(),
        };
        let transport = SealedTransport::new(
            node_id,
            config.epoch,
            config.keyring.clone(),
            config.secret.clone(),
            config.peers.clone(),
            replay,
        );
        let mut meta = config.meta.clone();
        meta.keyring = keyring_summary(&config.keyring);
        let handle = spawn_chitchat(config.chitchat_config(), meta.to_key_values(), &transport)
            .await
            .map_err(|e| GossipError::Start {
                addr: config.listen_addr,
                reason: format!("{e:#}"),
            })?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(RwLock::new(Shared {
            members: Members::new(),
            events,
        }));
        let chitchat = handle.chitchat();
        let live = chitchat.lock().await.live_nodes_watcher();
        let watcher = tokio::spawn(watch_members(chitchat, live, shared.clone()));
        let saver = config
            .replay_state
            .clone()
            .map(|path| tokio::spawn(save_marks(transport.clone(), path)));
        info!(
            node_id,
            listen = %config.listen_addr,
            advertise = %config.advertise_addr,
            seeds = config.seeds.len(),
            gossip_interval_ms = config.gossip_interval.as_millis() as u64,
            phi_threshold = config.phi_threshold,
            primary_key = config.keyring.primary().unwrap_or(0),
            "gossip started"
        );
        Ok(Gossip {
            handle,
            transport,
            shared,
            watcher,
            saver,
            replay_state: config.replay_state.clone(),
            node_id,
            listen_addr: config.listen_addr,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Membership events from now on. Pair with [`Gossip::members`], or use
    /// [`Gossip::subscribe_with_snapshot`] to miss nothing in between.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.read().events.subscribe()
    }

    /// The current members and the events that follow exactly from them.
    pub fn subscribe_with_snapshot(&self) -> (Members, broadcast::Receiver<MemberEvent>) {
        let s = self.read();
        (s.members.clone(), s.events.subscribe())
    }

    /// Every other node this node has seen alive, with its state and metadata. Down nodes
    /// stay until chitchat forgets them (the dead-node grace period).
    pub fn members(&self) -> Members {
        self.read().members.clone()
    }

    /// One node's state and metadata.
    pub fn member(&self, id: u64) -> Option<(MemberState, NodeMeta)> {
        self.read().members.get(&id).cloned()
    }

    /// State of one node; this node is always alive to itself, a node never seen is `None`.
    pub fn state_of(&self, id: u64) -> Option<MemberState> {
        if id == self.node_id {
            return Some(MemberState::Alive);
        }
        self.read().members.get(&id).map(|(s, _)| *s)
    }

    /// Packet counters of the gossip socket.
    pub fn counters(&self) -> CountersSnapshot {
        self.transport.counters().snapshot()
    }

    /// Installs a new keyring (a rotation step) and publishes which key ids this node holds,
    /// so a rotation can wait for every node before the next step.
    pub async fn set_keyring(&self, keyring: Keyring) {
        let summary = keyring_summary(&keyring);
        info!(node_id = self.node_id, primary = keyring.primary().unwrap_or(0), keys = ?keyring.ids(), "gossip keyring set");
        self.transport.set_keyring(keyring);
        self.handle
            .with_chitchat(|c| c.self_node_state().set(keys::KEYRING, &summary))
            .await;
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Keyring {
        self.transport.keyring()
    }

    /// The members this node gossips with; replace its table when the registry's node list
    /// changes (the next datagram uses it).
    pub fn peers(&self) -> &Peers {
        self.transport.peers()
    }

    /// Saves the replay high-water marks now (the agent calls this on its way out; gossip
    /// also saves every second and at [`Gossip::shutdown`]).
    pub fn save_replay_state(&self) {
        if let Some(path) = &self.replay_state {
            save_now(&self.transport, path);
        }
    }

    /// Publishes new metadata for this node. `meta.id` and `meta.keyring` are ignored: the id
    /// is fixed at start, the keyring summary follows [`Gossip::set_keyring`].
    pub async fn set_meta(&self, meta: NodeMeta) {
        let kv: Vec<(String, String)> = meta
            .to_key_values()
            .into_iter()
            .filter(|(k, _)| k != keys::KEYRING)
            .collect();
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                for (k, v) in &kv {
                    // Setting an unchanged value bumps nothing in chitchat.
                    state.set(k, v);
                }
            })
            .await;
    }

    /// Publishes this node's health ("ok", or what is wrong).
    pub async fn set_health(&self, health: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(keys::HEALTH, health))
            .await;
    }

    /// This node's metadata as it gossips it.
    pub async fn local_meta(&self) -> NodeMeta {
        let id = self.node_id;
        self.handle
            .with_chitchat(|c| NodeMeta::from_key_values(id, c.self_node_state().key_values()))
            .await
    }

    /// The address the socket was asked to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Stops gossiping and releases the socket. The others see this node go down after the
    /// detection time (chitchat has no leave message).
    pub async fn shutdown(self) {
        self.watcher.abort();
        if let Some(s) = &self.saver {
            s.abort();
        }
        let (transport, path) = (self.transport, self.replay_state);
        let _ = self.handle.shutdown().await;
        // After the socket closed: nothing is accepted after this save.
        if let Some(path) = path {
            save_now(&transport, &path);
        }
        info!(node_id = self.node_id, "gossip stopped");
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn save_now(t: &SealedTransport, path: &std::path::Path) {
    let marks = t.replay_marks();
    if let Err(error) = persist::save(path, &marks) {
        warn!(path = %path.display(), %error, "cannot save the gossip replay state; a restart would reopen the replay windows");
    }
}

/// Saves the marks every [`SAVE_EVERY`] while datagrams are accepted (an idle node writes
/// nothing).
async fn save_marks(t: SealedTransport, path: PathBuf) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tick.tick().await;
        let received = t
            .counters()
            .received
            .load(std::sync::atomic::Ordering::Relaxed);
        if last == Some(received) {
            continue;
        }
        last = Some(received);
        let (t, path) = (t.clone(), path.clone());
        let _ = tokio::task::spawn_blocking(move || save_now(&t, &path)).await;
    }
}

fn keyring_summary(k: &Keyring) -> String {
    NodeMeta::keyring_summary(k.primary().unwrap_or(0), &k.ids())
}

/// Turns chitchat's live-node notifications into the view and events. chitchat notifies
/// after each gossip round in which the live set, or a live node's metadata version,
/// changed; heartbeats alone notify nothing, so an idle cluster costs nothing here.
async fn watch_members(
    chitchat: Arc<Mutex<Chitchat>>,
    mut live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    shared: Arc<RwLock<Shared>>,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            _ = prune.tick() => {}
        }
        let (me, known): (ChitchatId, HashSet<u64>) = {
            let c = chitchat.lock().await;
            (
                c.self_chitchat_id().clone(),
                c.node_states()
                    .keys()
                    .filter_map(|id| id.node_id.parse().ok())
                    .collect(),
            )
        };
        let nodes: Vec<LiveNode> = live
            .borrow_and_update()
            .iter()
            .filter(|(cid, _)| **cid != me)
            // A node id that is not a number is not one of ours: ignore it.
            .filter_map(|(cid, state)| {
                let id = cid.node_id.parse::<u64>().ok()?;
                Some(LiveNode {
                    generation: cid.generation_id,
                    meta: NodeMeta::from_key_values(id, state.key_values()),
                })
            })
            .collect();
        let mut s = shared.write().unwrap_or_else(|p| p.into_inner());
        let next = events::next_view(&s.members, nodes, |id| known.contains(&id));
        for e in events::diff(&s.members, &next) {
            match &e {
                MemberEvent::Up(m) => {
                    info!(node_id = m.id, name = %m.name, rpc_addr = %m.rpc_addr, "member up")
                }
                MemberEvent::Down(m) => info!(node_id = m.id, name = %m.name, "member down"),
                MemberEvent::Changed(m) => debug!(node_id = m.id, meta = ?m, "member changed"),
            }
            let _ = s.events.send(e);
        }
        s.members = next;
    }
}
