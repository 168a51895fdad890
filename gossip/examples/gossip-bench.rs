//! Gossip benchmark: convergence and failure-detection time for N in-process nodes over real
//! UDP sockets on loopback, beside memberlist's defaults as the reference.
//!
//! cargo run --release -p membrane-gossip --example gossip-bench [-- 10 50 100]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use membrane_crypto::seal::Keyring;
use membrane_gossip::{Gossip, GossipConfig, MemberState, NodeMeta};

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free loopback port")
}

async fn run(n: usize) -> (Option<Duration>, Option<Duration>) {
    let ring = Keyring::new([(1, [42u8; 32])], 1).expect("keyring");
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let start = Instant::now();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let meta = NodeMeta { id: i as u64 + 1, name: format!("n{}", i + 1), health: "ok".into(), ..Default::default() };
        let mut config = GossipConfig::new(meta, *a, *a, ring.clone(), "bench");
        // Three seeds, as a real cluster would have its first three nodes.
        config.seeds = addrs.iter().take(3).filter(|s| *s != a).copied().collect();
        nodes.push(Gossip::start(config).await.expect("gossip starts"));
    }
    let everyone = |nodes: &[Gossip], expect: usize| {
        nodes.iter().all(|g| g.members().values().filter(|(s, _)| *s == MemberState::Alive).count() == expect)
    };
    let mut converged = None;
    while start.elapsed() < Duration::from_secs(30) {
        if everyone(&nodes, n - 1) {
            converged = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the failure detector learn the intervals, then kill the last node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim_id = n as u64;
    let victim = nodes.pop().expect("a node");
    victim.shutdown().await;
    let killed = Instant::now();
    let mut detected = None;
    while killed.elapsed() < Duration::from_secs(30) {
        if nodes.iter().all(|g| g.state_of(victim_id) == Some(MemberState::Down)) {
            detected = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for g in nodes {
        g.shutdown().await;
    }
    (converged, detected)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 50, 100] } else { sizes };
    println!("| nodes | converged (all see all) | death detected by all | memberlist default detection (probe 1 s + suspicion 4*log10(N) s) |");
    println!("|---|---|---|---|");
    for n in sizes {
        let (c, d) = run(n).await;
        let fmt = |d: Option<Duration>| d.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "not within 30 s".into());
        let memberlist = 1.0 + 4.0 * (n as f64).log10().max(1.0);
        println!("| {n} | {} | {} | ~{memberlist:.1} s |", fmt(c), fmt(d));
    }
}
