//! Runs this node's gossip, fed by the registry: the keyring comes from Raft, seeds are the
//! registered nodes, and what gossip learns about liveness feeds the autopilot.
//!
//! Gossip starts once the local registry copy holds the keyring (at once on a restart; a few
//! hundred ms after a first join, when Raft has caught up), so the agent's start never waits
//! for it. Convention: a node gossips on its RPC address with the port + 1.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use membrane_consensus::registry::GossipKeyring;
use membrane_crypto::seal::Keyring;
use membrane_gossip::{Gossip, GossipConfig, MemberEvent, NodeMeta};
use tracing::{info, warn};

use crate::cluster::autopilot::Liveness;
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

/// Starts gossip in the background and keeps it in step with the registry.
pub fn spawn(
    client: Arc<RegistryClient>,
    me: NodeIdentity,
    listen: Option<SocketAddr>,
    liveness: Liveness,
) -> GossipSlot {
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
        let mut config = GossipConfig::new(meta, listen, advertise, ring, &me.cluster_name);
        config.seeds = seeds;
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

/// Applies keyring changes committed in the registry (rotation) to the transport.
async fn keep_keyring_in_step(
    client: Arc<RegistryClient>,
    gossip: Arc<Gossip>,
    mut current: GossipKeyring,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
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
