// Gossip benchmark: convergence and failure-detection time for N in-process nodes over real
// UDP sockets on loopback, printed as a markdown table beside memberlist's defaults.
//
//   cargo bench -p membrane-gossip                      (10, 50 and 100 nodes)
//   cargo run --release -p membrane-gossip --example gossip-bench -- 10 50 100
//
// First, the cost of binding the sender (ALGORITHM.md, "Sender binding"): per datagram,
// sealing and opening with the shared cluster key (the code before) against the pair
// keyring (member lookup, cached pair keyring, seal, open), and the one-off derivation of a
// pair keyring (X25519 + HKDF), in the same run.
//
// Per size: start N nodes (seeded with the first three, as a cluster's first nodes), time
// until every node sees every other alive; idle 3 s (the detectors learn real intervals, and
// any down event meanwhile is a false down); stop one node and time until the first and
// until the last of the others marks it down. Every wait is bounded (30 s); the run stops
// by itself.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use membrane_crypto::seal::Keyring;
use membrane_gossip::{
    Gossip, GossipConfig, MemberEvent, MemberState, NodeMeta, NodeSecret, PeerTable, Peers,
};

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

fn secret(id: u64) -> NodeSecret {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&id.to_be_bytes());
    b[31] = 0x5a;
    NodeSecret::from_bytes(b)
}

/// Nanoseconds per iteration of `f`, best of 3 runs of `iters`.
fn per_op(iters: u32, mut f: impl FnMut(u32)) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Seal + open of one datagram: shared cluster key vs pair keyring; and a pair derivation.
fn crypto_cost() {
    let ring = Keyring::single(1, [42u8; 32]);
    let (a, b) = (secret(1), secret(2));
    let to: SocketAddr = "10.0.0.2:7701".parse().expect("address");
    let mut table = PeerTable::new();
    table.insert(2, b.public(), to);
    table.insert(1, a.public(), "10.0.0.1:7701".parse().expect("address"));
    let peers = Peers::new(table);
    // As the transport caches them: by peer, with the public key they were derived for.
    type PairCache = HashMap<u64, ([u8; 32], Arc<Keyring>)>;
    let cache: Mutex<PairCache> = Mutex::default();
    let pair = |local: &NodeSecret, me: u64, peer: u64| -> Arc<Keyring> {
        let public = peers.with(|t| t.public_of(peer)).expect("member");
        let mut c = cache.lock().expect("cache");
        if let Some((k, r)) = c.get(&(me * 1000 + peer)) {
            if *k == public {
                return r.clone();
            }
        }
        let r = Arc::new(ring.pairwise(&local.0, me, &public, peer).expect("pair"));
        c.insert(me * 1000 + peer, (public, r.clone()));
        r
    };
    println!(
        "Sender binding, per datagram (seal on one node + open on the other), {} cores:
",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| datagram | shared cluster key (before) | pair keyring (after) | ratio |");
    println!("|---|---|---|---|");
    for size in [512usize, 4096, 16384] {
        let msg = vec![7u8; size];
        let iters = 20_000;
        let before = per_op(iters, |i| {
            let p = ring.seal(1, 5, u64::from(i) + 1, &msg).expect("seal");
            std::hint::black_box(ring.open(&p).expect("open"));
        });
        let after = per_op(iters, |i| {
            let id = peers.with(|t| t.id_at(&to)).expect("member");
            let p = pair(&a, 1, id)
                .seal(1, 5, u64::from(i) + 1, &msg)
                .expect("seal");
            std::hint::black_box(pair(&b, 2, 1).open(&p).expect("open"));
        });
        println!(
            "| {size} B | {:.2} µs | {:.2} µs | {:.2} |",
            before / 1e3,
            after / 1e3,
            after / before
        );
    }
    let derive = per_op(2_000, |_| {
        std::hint::black_box(ring.pairwise(&a.0, 1, &b.public(), 2).expect("pair"));
    });
    println!(
        "
Deriving one pair keyring (X25519 + HKDF-SHA256, once per peer and key change): {:.1} µs
",
        derive / 1e3
    );
}

async fn run(n: usize) -> Run {
    let ring = Keyring::single(1, [42u8; 32]);
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let mut table = PeerTable::new();
    for (i, a) in addrs.iter().enumerate() {
        table.insert(i as u64 + 1, secret(i as u64 + 1).public(), *a);
    }
    let peers = Peers::new(table);
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
        let id = meta.id;
        let mut config =
            GossipConfig::new(meta, a, a, ring.clone(), "bench", secret(id), peers.clone());
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
        secret(1),
        Peers::default(),
    );
    crypto_cost();
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
