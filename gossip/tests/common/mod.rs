//! Helpers shared by the gossip tests: real UDP sockets on 127.0.0.1, bounded waits.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use membrane_crypto::seal::Keyring;
use membrane_gossip::{
    Gossip, GossipConfig, MemberEvent, MemberState, NodeMeta, NodeSecret, PeerTable, Peers,
};
use tokio::sync::broadcast;

/// Node `id`'s X25519 secret in these tests.
pub fn secret(id: u64) -> NodeSecret {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&id.to_be_bytes());
    b[31] = 0x5a;
    NodeSecret::from_bytes(b)
}

/// The members table every test node shares unless a test gives it its own: ids map to
/// keys derived from the id, so tests running at once (same ids, other ports) agree.
pub fn members() -> &'static Peers {
    static MEMBERS: OnceLock<Peers> = OnceLock::new();
    MEMBERS.get_or_init(Peers::default)
}

/// Lists node `id` at `addr` in `table`, keeping its other addresses.
pub fn list(table: &mut PeerTable, id: u64, addr: SocketAddr) {
    if table.public_of(id).is_none() {
        table.insert(id, secret(id).public(), addr);
    } else {
        table.alias(addr, id);
    }
}

/// Registers node `id` at `addr` in the shared table.
pub fn register(id: u64, addr: SocketAddr) {
    members().update(|t| list(t, id, addr));
}

pub fn config(
    id: u64,
    addr: SocketAddr,
    seeds: &[SocketAddr],
    ring: Keyring,
    peers: Peers,
) -> GossipConfig {
    let mut config = GossipConfig::new(meta(id), addr, addr, ring, "test", secret(id), peers);
    config.seeds = seeds.to_vec();
    config
}

/// A loopback address whose port was free a moment ago (chitchat must know the address it
/// advertises before it binds, so port 0 will not do).
pub fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback port")
}

/// The test cluster's key: id 1.
pub fn ring() -> Keyring {
    Keyring::single(1, [7; 32])
}

pub fn meta(id: u64) -> NodeMeta {
    NodeMeta {
        id,
        name: format!("n{id}"),
        rpc_addr: format!("127.0.0.1:{}", 7000 + id),
        pod_cidr: format!("10.128.{id}.0/24"),
        version: "0.1.0-test".into(),
        health: "ok".into(),
        keyring: String::new(),
        policy_revision: String::new(),
    }
}

/// Node `id`, registered in the shared members table.
pub async fn node_at(id: u64, addr: SocketAddr, seeds: &[SocketAddr], ring: Keyring) -> Gossip {
    register(id, addr);
    Gossip::start(config(id, addr, seeds, ring, members().clone()))
        .await
        .expect("gossip starts")
}

/// `n` nodes with ids 1..=n seeded with node 1, not waited for.
pub async fn cluster(n: u64) -> (Vec<Gossip>, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        register(i as u64 + 1, *a);
    }
    for (i, a) in addrs.iter().enumerate() {
        let g = Gossip::start(config(
            i as u64 + 1,
            *a,
            &addrs[..1],
            ring(),
            members().clone(),
        ))
        .await
        .expect("gossip starts");
        nodes.push(g);
    }
    (nodes, addrs)
}

pub fn alive_count(g: &Gossip) -> usize {
    g.members()
        .values()
        .filter(|(s, _)| *s == MemberState::Alive)
        .count()
}

pub fn all_see_all(nodes: &[Gossip]) -> bool {
    nodes.iter().all(|g| alive_count(g) == nodes.len() - 1)
}

/// Polls `f` every 10 ms until it holds (the time it took) or `timeout` passes (`None`).
pub async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

pub async fn converge(nodes: &[Gossip]) {
    let took = wait_for(Duration::from_secs(15), || all_see_all(nodes)).await;
    assert!(
        took.is_some(),
        "no convergence within 15 s: {:?}",
        nodes.iter().map(|g| g.members()).collect::<Vec<_>>()
    );
}

/// Everything a receiver holds right now.
pub fn drain(rx: &mut broadcast::Receiver<MemberEvent>) -> Vec<MemberEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

pub async fn shutdown_all(nodes: Vec<Gossip>) {
    for g in nodes {
        g.shutdown().await;
    }
}
