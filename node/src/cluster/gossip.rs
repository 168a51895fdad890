//! Runs this node's gossip, fed by the registry: the keyring comes from Raft, seeds are the
//! registered nodes, and what gossip learns about liveness feeds the autopilot.
//!
//! Every datagram is sealed for one member under a key only it and this node can derive
//! (the cluster key mixed with their X25519 keys), so the members table fed to gossip is
//! the registry's node list: id, `x25519_public`, gossip address. A removed node leaves the
//! table within a tick (250 ms) of this node applying the removal, and its datagrams are
//! dropped as from an unknown sender from then on. The replay high-water marks live in the
//! state directory (`gossip-replay`), so a restart does not reopen the replay windows.
//!
//! Gossip starts once the local registry copy holds the keyring (at once on a restart; a few
//! hundred ms after a first join, when Raft has caught up), so the agent's start never waits
//! for it. Convention: a node gossips on its RPC address with the port + 1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use membrane_consensus::registry::{GossipKeyring, NodeRecord};
use membrane_crypto::seal::Keyring;
use membrane_gossip::{Gossip, GossipConfig, MemberEvent, NodeMeta, NodeSecret, PeerTable, Peers};
use tracing::{info, warn};

use crate::registry::client::RegistryClient;
use crate::state::NodeIdentity;

/// The gossip handle once it runs.
pub type GossipSlot = Arc<OnceLock<Arc<Gossip>>>;

/// The gossip address that goes with an RPC address (same IP, port + 1).
pub fn gossip_addr_of(mut a: SocketAddr) -> Option<SocketAddr> {
    a.set_port(a.port().checked_add(1)?);
    Some(a)
}

/// Converts the registry's keyring into the sealing keyring.
pub fn keyring_of(ring: &GossipKeyring) -> Option<Keyring> {
    let keys: Vec<(u32, [u8; 32])> = ring
        .keys()
        .iter()
        .filter_map(|k| Some((k.id, k.bytes().ok()?)))
        .collect();
    Keyring::new(keys, ring.primary())
}

/// The members table for gossip: every registered node with a gossip address.
pub fn peer_table<'a>(nodes: impl IntoIterator<Item = &'a NodeRecord>) -> PeerTable {
    let mut t = PeerTable::new();
    for n in nodes {
        if let Some(addr) = gossip_addr_of(n.rpc_addr) {
            t.insert(n.id, n.x25519_public.0, addr);
        }
    }
    t
}

/// What this node's gossip needs besides the registry.
pub struct GossipSetup {
    pub me: NodeIdentity,
    pub listen: Option<SocketAddr>,
    /// This node's X25519 secret (`keys/x25519.key`).
    pub secret: NodeSecret,
    /// Where the replay high-water marks are kept.
    pub replay_state: PathBuf,
}

/// Which nodes are down and since when, as gossip reports it. Shared between the gossip
/// event loop (writer) and the autopilot (reader).
#[derive(Clone, Default)]
pub struct Liveness(Arc<RwLock<BTreeMap<u64, Instant>>>);

impl Liveness {
    pub fn set_down(&self, id: u64) {
        self.0
            .write()
            .expect("liveness lock")
            .entry(id)
            .or_insert_with(Instant::now);
    }
    pub fn set_up(&self, id: u64) {
        self.0.write().expect("liveness lock").remove(&id);
    }
    /// How long each down node has been down.
    pub fn down_for(&self) -> BTreeMap<u64, Duration> {
        self.0
            .read()
            .expect("liveness lock")
            .iter()
            .map(|(id, since)| (*id, since.elapsed()))
            .collect()
    }
}

/// Starts gossip in the background and keeps it in step with the registry.
pub fn spawn(client: Arc<RegistryClient>, setup: GossipSetup, liveness: Liveness) -> GossipSlot {
    let GossipSetup {
        me,
        listen,
        secret,
        replay_state,
    } = setup;
    let slot: GossipSlot = Arc::default();
    let out = slot.clone();
    tokio::spawn(async move {
        let Some(advertise) = me.rpc_addr.parse().ok().and_then(gossip_addr_of) else {
            warn!(rpc_addr = %me.rpc_addr, "cannot derive a gossip address; gossip stays off");
            return;
        };
        let listen = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], advertise.port())));
        // Wait for the keyring to arrive through Raft.
        let (ring, registry_ring) = loop {
            if let Some(r) = client.local(|r| r.gossip_keyring().cloned()) {
                if let Some(k) = keyring_of(&r) {
                    break (k, r);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (seeds, meta) = client.local(|r| {
            let seeds: Vec<SocketAddr> = r
                .nodes()
                .filter(|n| n.id != me.node_id)
                .filter_map(|n| gossip_addr_of(n.rpc_addr))
                .collect();
            let pod_cidr = r
                .node(me.node_id)
                .map(|n| n.pod_cidr.to_string())
                .unwrap_or_default();
            (seeds, pod_cidr)
        });
        let meta = NodeMeta {
            id: me.node_id,
            name: me.node_name.clone(),
            rpc_addr: me.rpc_addr.clone(),
            pod_cidr: meta,
            version: env!("CARGO_PKG_VERSION").to_string(),
            health: "ok".into(),
            keyring: String::new(),
            policy_revision: String::new(),
        };
        let peers = Peers::new(client.local(|r| peer_table(r.nodes())));
        let mut config = GossipConfig::new(
            meta,
            listen,
            advertise,
            ring,
            &me.cluster_name,
            secret,
            peers,
        );
        config.seeds = seeds;
        config.replay_state = Some(replay_state);
        let gossip = match Gossip::start(config).await {
            Ok(g) => Arc::new(g),
            Err(e) => {
                warn!(error = %e, "gossip did not start");
                return;
            }
        };
        let _ = out.set(gossip.clone());
        tokio::spawn(track_liveness(gossip.clone(), liveness));
        keep_keyring_in_step(client, gossip, registry_ring).await;
    });
    slot
}

/// Feeds gossip's up/down events to the autopilot.
async fn track_liveness(gossip: Arc<Gossip>, liveness: Liveness) {
    let mut events = gossip.subscribe();
    loop {
        match events.recv().await {
            Ok(MemberEvent::Down(m)) => {
                info!(node_id = m.id, name = %m.name, "node down");
                liveness.set_down(m.id);
            }
            Ok(MemberEvent::Up(m)) => {
                info!(node_id = m.id, name = %m.name, "node up");
                liveness.set_up(m.id);
            }
            Ok(MemberEvent::Changed(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Rebuild from the current view rather than guess.
                for (id, (state, _)) in gossip.members() {
                    match state {
                        membrane_gossip::MemberState::Alive => liveness.set_up(id),
                        membrane_gossip::MemberState::Down => liveness.set_down(id),
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// Applies keyring changes committed in the registry (rotation) and node list changes
/// (joins, removals) to the transport.
async fn keep_keyring_in_step(
    client: Arc<RegistryClient>,
    gossip: Arc<Gossip>,
    mut current: GossipKeyring,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let table = client.local(|r| peer_table(r.nodes()));
        let ids = table.ids();
        if gossip.peers().replace(table) {
            info!(members = ?ids, "gossip members updated");
        }
        let Some(latest) = client.local(|r| r.gossip_keyring().cloned()) else {
            continue;
        };
        if latest == current {
            continue;
        }
        match keyring_of(&latest) {
            Some(k) => {
                gossip.set_keyring(k).await;
                info!(
                    primary = latest.primary(),
                    keys = latest.keys().len(),
                    "gossip keyring updated"
                );
                current = latest;
            }
            None => warn!("the registry's gossip keyring is unusable; keeping the current one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_consensus::registry::{Sha256, X25519Public};

    fn node(id: u64, rpc: &str) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            rpc_addr: rpc.parse().unwrap(),
            tls_key_sha256: Sha256([0; 32]),
            x25519_public: X25519Public([id as u8; 32]),
            pod_cidr: "10.128.0.0/24".parse().unwrap(),
            joined_at: 0,
        }
    }

    #[test]
    fn peer_table_lists_every_node_at_its_gossip_address() {
        let nodes = [
            node(1, "10.0.0.1:7700"),
            node(3, "10.0.0.3:7700"),
            node(4, "10.0.0.4:65535"),
        ];
        let t = peer_table(&nodes);
        // Port 65535 has no port + 1: that node cannot gossip and is left out.
        assert_eq!(t.ids(), vec![1, 3]);
        assert_eq!(t.id_at(&"10.0.0.3:7701".parse().unwrap()), Some(3));
        assert_eq!(t.id_at(&"10.0.0.3:7700".parse().unwrap()), None);
        assert_eq!(t.public_of(3), Some([3; 32]));
    }
}
