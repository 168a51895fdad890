// Gossip benchmark: convergence and failure-detection time for N in-process nodes over real
// UDP sockets on loopback, printed as a markdown table beside memberlist's defaults.
//
//   cargo bench -p membrane-gossip                      (10, 50 and 100 nodes)
//   cargo run --release -p membrane-gossip --example gossip-bench -- 10 50 100
//
// Per size: start N nodes (seeded with the first three, as a cluster's first nodes), time
// until every node sees every other alive; idle 3 s (the detectors learn real intervals, and
// any down event meanwhile is a false down); stop one node and time until the first and
// until the last of the others marks it down. Every wait is bounded (30 s); the run stops
// by itself.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use membrane_crypto::seal::Keyring;
use membrane_gossip::{Gossip, GossipConfig, MemberEvent, MemberState, NodeMeta};

const LIMIT: Duration = Duration::from_secs(30);

struct Run {
    converged: Option<Duration>,
    first_detect: Option<Duration>,
    all_detect: Option<Duration>,
    false_downs: usize,
}

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback port")
}

async fn run(n: usize) -> Run {
    let ring = Keyring::single(1, [42u8; 32]);
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let start = Instant::now();
    let mut nodes = Vec::new();
    for i in 0..n {
        let meta = NodeMeta {
            id: i as u64 + 1,
            name: format!("n{}", i + 1),
            rpc_addr: format!("127.0.0.1:{}", 20_000 + i),
            pod_cidr: format!("10.{}.{}.0/24", 128 + i / 256, i % 256),
            version: "bench".into(),
            health: "ok".into(),
            keyring: String::new(),
            policy_revision: String::new(),
        };
        let a = addrs[i];
        let mut config = GossipConfig::new(meta, a, a, ring.clone(), "bench");
        config.seeds = addrs.iter().take(3).filter(|s| **s != a).copied().collect();
        let gossip = Gossip::start(config).await.expect("gossip starts");
        nodes.push(gossip);
    }
    let mut converged = None;
    while start.elapsed() < LIMIT {
        let done = nodes
            .iter()
            .all(|g| (1..=n as u64).all(|id| g.state_of(id) == Some(MemberState::Alive)));
        if done {
            converged = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut subs: Vec<_> = nodes.iter().map(|g| g.subscribe()).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim_id = n as u64;
    let victim = nodes.pop().expect("a node");
    subs.pop();
    let killed = Instant::now();
    victim.shutdown().await;
    let (mut first_detect, mut all_detect) = (None, None);
    while killed.elapsed() < LIMIT {
        let down = nodes
            .iter()
            .filter(|g| g.state_of(victim_id) == Some(MemberState::Down))
            .count();
        if down > 0 && first_detect.is_none() {
            first_detect = Some(killed.elapsed());
        }
        if down == nodes.len() {
            all_detect = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut false_downs = 0;
    for rx in &mut subs {
        while let Ok(e) = rx.try_recv() {
            if matches!(e, MemberEvent::Down(ref m) if m.id != victim_id) {
                false_downs += 1;
            }
        }
    }
    for g in nodes {
        g.shutdown().await;
    }
    Run {
        converged,
        first_detect,
        all_detect,
        false_downs,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; only numbers are sizes.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .filter(|n| *n >= 2)
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 50, 100]
    } else {
        sizes
    };
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "> 30 s".into())
    };
    let defaults = GossipConfig::new(
        NodeMeta::default(),
        free_addr(),
        free_addr(),
        Keyring::single(1, [0; 32]),
        "x",
    );
    println!(
        "Membrane gossip: interval {} ms, phi threshold {}, in-process nodes on loopback ({} cores).\n",
        defaults.gossip_interval.as_millis(),
        defaults.phi_threshold,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    println!("| nodes | converged (all see all) | death seen by first | death seen by all | false downs | memberlist LAN suspicion timeout 4·max(1,log10 N)·1 s | memberlist expected detection (probe ≤ 1 s + ack 0.5 s + suspicion) |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let r = run(n).await;
        let suspicion = 4.0 * (n as f64).log10().max(1.0);
        println!(
            "| {n} | {} | {} | {} | {} | {suspicion:.1} s | ~{:.1}-{:.1} s |",
            fmt(r.converged),
            fmt(r.first_detect),
            fmt(r.all_detect),
            r.false_downs,
            suspicion + 0.5,
            suspicion + 1.5,
        );
    }
}
