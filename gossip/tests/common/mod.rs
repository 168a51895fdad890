//! Helpers shared by the gossip tests: real UDP sockets on 127.0.0.1, bounded waits.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use membrane_crypto::seal::Keyring;
use membrane_gossip::{Gossip, GossipConfig, MemberEvent, MemberState, NodeMeta};
use tokio::sync::broadcast;

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

pub async fn node_at(id: u64, addr: SocketAddr, seeds: &[SocketAddr], ring: Keyring) -> Gossip {
    let mut config = GossipConfig::new(meta(id), addr, addr, ring, "test");
    config.seeds = seeds.to_vec();
    Gossip::start(config).await.expect("gossip starts")
}

/// `n` nodes with ids 1..=n seeded with node 1, not waited for.
pub async fn cluster(n: u64) -> (Vec<Gossip>, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for i in 0..n as usize {
        let mut config = GossipConfig::new(meta(i as u64 + 1), addrs[i], addrs[i], ring(), "test");
        config.seeds = vec![addrs[0]];
        let g = Gossip::start(config).await.expect("gossip starts");
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
