//! Gossip over real UDP on loopback: convergence, failure detection, authentication.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use membrane_crypto::seal::Keyring;
use membrane_gossip::{Gossip, GossipConfig, MemberState, NodeMeta};

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn keyring(byte: u8) -> Keyring {
    Keyring::new([(1, [byte; 32])], 1).unwrap()
}

async fn node(id: u64, addr: SocketAddr, seeds: &[SocketAddr], ring: Keyring) -> Gossip {
    let meta = NodeMeta { id, name: format!("n{id}"), rpc_addr: format!("127.0.0.1:{}", 7000 + id), health: "ok".into(), ..Default::default() };
    let mut config = GossipConfig::new(meta, addr, addr, ring, "test");
    config.seeds = seeds.to_vec();
    Gossip::start(config).await.unwrap()
}

async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_nodes_converge_and_a_dead_node_is_detected_within_3s() {
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes.push(node(i as u64 + 1, *a, &addrs[..1], keyring(7)).await);
    }
    let converged = wait_for(Duration::from_secs(10), || {
        nodes.iter().all(|n| n.members().values().filter(|(s, _)| *s == MemberState::Alive).count() == 3)
    })
    .await;
    assert!(converged.is_some(), "did not converge: {:?}", nodes[0].members());
    assert_eq!(nodes[1].members()[&3].1.name, "n3");

    let dead = nodes.pop().unwrap();
    dead.shutdown().await;
    let detected = wait_for(Duration::from_secs(6), || nodes.iter().all(|n| n.state_of(4) == Some(MemberState::Down))).await;
    let detected = detected.expect("node 4 was never marked down");
    assert!(detected < Duration::from_secs(3), "detected after {detected:?}");
    for n in nodes {
        assert_eq!(n.counters().dropped_forged, 0);
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_strangers_and_replays_are_dropped_and_counted() {
    let (a1, a2) = (free_addr(), free_addr());
    let n1 = node(1, a1, &[a2], keyring(7)).await;
    let n2 = node(2, a2, &[a1], keyring(7)).await;
    assert!(wait_for(Duration::from_secs(10), || n1.state_of(2) == Some(MemberState::Alive)).await.is_some());

    // A node with another key is never admitted.
    let a3 = free_addr();
    let stranger = node(3, a3, &[a1], keyring(9)).await;
    // Forged, truncated and replayed packets from a raw socket.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let valid = keyring(7).seal(5, 1, 1, b"not even chitchat").unwrap();
    raw.send_to(&valid, a1).unwrap();
    raw.send_to(&valid, a1).unwrap(); // replay
    let mut forged = valid.clone();
    *forged.last_mut().unwrap() ^= 1;
    raw.send_to(&forged, a1).unwrap();
    raw.send_to(&[1, 2, 3], a1).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = n1.counters();
    assert!(c.dropped_forged >= 1 && c.dropped_truncated >= 1 && c.dropped_replay >= 1, "{c:?}");
    assert!(c.dropped_forged >= 2, "the stranger's packets count as forged: {c:?}");
    assert!(n1.state_of(3).is_none(), "the stranger was admitted");
    assert!(n1.state_of(5).is_none());

    // Rotation: install key 2 everywhere, make it primary, remove key 1.
    let both = |primary| Keyring::new([(1, [7; 32]), (2, [8; 32])], primary).unwrap();
    n1.set_keyring(both(1)).await;
    n2.set_keyring(both(1)).await;
    n1.set_keyring(both(2)).await;
    n2.set_keyring(both(2)).await;
    let new_only = Keyring::new([(2, [8; 32])], 2).unwrap();
    n1.set_keyring(new_only.clone()).await;
    n2.set_keyring(new_only).await;
    let before = n1.counters().received;
    assert!(wait_for(Duration::from_secs(5), || n1.counters().received > before + 5).await.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(n1.state_of(2), Some(MemberState::Alive));
    assert!(wait_for(Duration::from_secs(5), || n1.members()[&2].1.parse_keyring() == Some((2, vec![2]))).await.is_some());
    for n in [n1, n2, stranger] {
        n.shutdown().await;
    }
}
