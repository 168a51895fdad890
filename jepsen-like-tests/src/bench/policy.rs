//! `membrane-lab bench policy`: what a large policy costs a connection, for Membrane's BPF
//! policy map and, in the same run, for the iptables chains that iptables-based systems
//! generate (one rule per allowed peer and port).
//!
//! - Membrane: a 1-node cluster with a server endpoint (app=server) and a client endpoint
//!   (app=client) attached by `membrane-cni`. For N rules, one policy selects app=server and
//!   allows N-2 (identity, port) pairs of other identities (app=peer-k, allocated in the
//!   registry so that their selectors resolve), then, last, app=client on the two server
//!   ports: N policy-map entries for the server, checked with bpftool.
//! - iptables: two namespaces on a plain Linux bridge in the same host namespace (no BPF),
//!   the same MTU, and in the server's namespace a chain with the same N rules
//!   (`-s <peer ip> -p tcp --dport <port> -j ACCEPT`, the client's last, then DROP), jumped
//!   to from INPUT for packets from eth0. Two variants: with the conntrack shortcut first
//!   (`--ctstate ESTABLISHED,RELATED -j ACCEPT`, as iptables-based systems install it, so
//!   only a connection's first packet walks the chain), and without it (every packet walks
//!   it: the per-packet cost the shortcut hides).
//!
//! For each setup and rule count it measures (a) new connections per second, each one
//! connect + one 64-byte request/response + close, sequentially for `--seconds`, with the
//! per-connection latency, and (b) 64-byte ping-pong latency on one persistent connection.
//! Rule count 0 (no policy, no rules) is each side's own baseline; "added" latency is the
//! difference to it. Setups and rule counts are interleaved within each run; figures are
//! medians over runs.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use membrane_proto::v1::agent_client::AgentClient;
use membrane_proto::v1::IdentityRequest;
use serde_json::Value;

use super::stats::Summary;
use crate::traffic::{tcp_connect, TcpEchoServer};
use crate::{in_netns, ip_in, netns_path, Cluster, Lab};

struct Options {
    rules: Vec<usize>,
    seconds: u32,
    runs: usize,
    round_trips: usize,
    peers: usize,
    iptables: String,
}

fn parse(args: &[&str]) -> anyhow::Result<Options> {
    let mut o = Options {
        rules: vec![10, 1000, 10_000],
        seconds: 2,
        runs: 5,
        round_trips: 10_000,
        peers: 100,
        iptables: "iptables-restore".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut text = || -> anyhow::Result<&str> {
            it.next()
                .copied()
                .ok_or_else(|| anyhow!("{a} needs a value"))
        };
        let num = |s: &str| -> anyhow::Result<usize> {
            s.replace('_', "").parse().map_err(|e| anyhow!("{a}: {e}"))
        };
        match *a {
            "--rules" => {
                o.rules = text()?
                    .split(',')
                    .map(num)
                    .collect::<anyhow::Result<_>>()?
            }
            "--seconds" => o.seconds = u32::try_from(num(text()?)?)?,
            "--runs" => o.runs = num(text()?)?,
            "--round-trips" => o.round_trips = num(text()?)?,
            "--peers" => o.peers = num(text()?)?,
            "--iptables" => o.iptables = text()?.to_string(),
            other => bail!(
                "unknown option {other}; known: --rules N,N,... --seconds N --runs N --round-trips N --peers N --iptables iptables-restore|iptables-legacy-restore|iptables-nft-restore"
            ),
        }
    }
    if o.runs == 0 || o.seconds == 0 || o.round_trips == 0 || o.peers == 0 {
        bail!("--runs, --seconds, --round-trips and --peers must be at least 1");
    }
    if let Some(n) = o.rules.iter().find(|&&n| n < 2) {
        bail!("--rules: {n} is too few: the client alone takes 2 (its two ports)");
    }
    // Ports of other peers are 10000, 10002, ...: keep them below 65536.
    let most = o.rules.iter().max().copied().unwrap_or(0);
    if (most - 2).div_ceil(o.peers) > 27_000 {
        bail!(
            "--rules {most} with --peers {}: too many ports per peer; raise --peers",
            o.peers
        );
    }
    o.rules.sort_unstable();
    o.rules.dedup();
    Ok(o)
}

/// Server ports: new connections (one request each) and the persistent ping-pong.
const CONN_PORT: u16 = 7400;
const RR_PORT: u16 = 7401;
/// Pause between changing a setup's rules and measuring it.
const SETTLE: Duration = Duration::from_millis(500);
/// Bytes per request and per response.
const MSG: usize = super::stats::RR_MESSAGE;
/// Ports of the other peers' rules: FIRST_PEER_PORT + 2j, never adjacent, so no two of them
/// can share a port-prefix block and each stays one entry.
const FIRST_PEER_PORT: u16 = 10_000;
/// The chain the iptables variants fill.
const CHAIN: &str = "MEMBRANE-BENCH";
/// The plain bridge's subnet, and where the fabricated peer addresses of the iptables rules
/// live (no such hosts exist: the rules only need to be there to be walked).
const PLAIN_NET: [u8; 3] = [10, 212, 0];

/// The other (peer, port) pairs of an N-rule policy: N-2 of them, spread over at most
/// `peers` peers (peer j gets ports FIRST_PEER_PORT, +2, ...), peer-major order.
fn other_pairs(n: usize, peers: usize) -> Vec<(usize, u16)> {
    let others = n.saturating_sub(2);
    let used = others.min(peers);
    let mut pairs: Vec<(usize, u16)> = (0..others)
        .map(|k| (k % used, FIRST_PEER_PORT + 2 * (k / used) as u16))
        .collect();
    pairs.sort_unstable();
    pairs
}

/// The fabricated address of peer j for the iptables rules (10.213.0.0/16).
fn peer_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, (j / 250) as u8, (j % 250 + 1) as u8)
}

/// The policy YAML for N entries: the other peers first, the client's rule last.
fn policy_yaml(n: usize, peers: usize) -> String {
    let mut by_peer: Vec<(usize, Vec<u16>)> = Vec::new();
    for (j, port) in other_pairs(n, peers) {
        match by_peer.last_mut() {
            Some((last, ports)) if *last == j => ports.push(port),
            _ => by_peer.push((j, vec![port])),
        }
    }
    let mut y = String::from(
        "apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench\nspec:\n  endpointSelector:\n    matchLabels: {app: server}\n  ingress:\n",
    );
    let ports = |ps: &[u16]| {
        ps.iter()
            .map(|p| format!("{{port: {p}, protocol: TCP}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (j, ps) in &by_peer {
        y += &format!(
            "  - fromEndpoints: [{{matchLabels: {{app: peer-{j}}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
            ports(ps)
        );
    }
    y += &format!(
        "  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
        ports(&[CONN_PORT, RR_PORT])
    );
    y
}

/// The iptables-restore input: no rules at all for n = 0, else the chain.
fn iptables_rules(n: usize, peers: usize, client: Ipv4Addr, ct_shortcut: bool) -> String {
    let mut r =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if n > 0 {
        r += &format!(":{CHAIN} - [0:0]\n");
        if ct_shortcut {
            r += "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
        }
        // Only what comes from the endpoint's interface, as Membrane's ingress policy.
        r += &format!("-A INPUT -i eth0 -j {CHAIN}\n");
        for (j, port) in other_pairs(n, peers) {
            r += &format!(
                "-A {CHAIN} -s {}/32 -p tcp -m tcp --dport {port} -j ACCEPT\n",
                peer_ip(j)
            );
        }
        for port in [CONN_PORT, RR_PORT] {
            r += &format!("-A {CHAIN} -s {client}/32 -p tcp -m tcp --dport {port} -j ACCEPT\n");
        }
        r += &format!("-A {CHAIN} -j DROP\n");
    }
    r += "COMMIT\n";
    r
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Membrane,
    IptablesCt,
    IptablesNoCt,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Membrane => "Membrane",
            Kind::IptablesCt => "iptables, conntrack shortcut",
            Kind::IptablesNoCt => "iptables, no shortcut",
        }
    }
}

/// One pair of namespaces to measure between, with servers running in the server one.
struct Setup {
    client_ns: String,
    server_ip: Ipv4Addr,
    _conn_server: ConnServer,
    _rr_server: TcpEchoServer,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    conn_per_s: f64,
    conn_p50_us: f64,
    conn_p99_us: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
}

/// Builds the setups, runs them interleaved, and prints the tables.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    crate::require_root()?;
    let opts = parse(args)?;
    which(&opts.iptables).with_context(|| {
        format!(
            "{} is not installed: apt-get install iptables",
            opts.iptables
        )
    })?;
    let started = Instant::now();
    eprintln!("starting a 1-node Membrane cluster with a server and a client endpoint...");
    let cluster = Cluster::start("bench-pol", 1)?;
    let server = cluster.add_endpoint(1, "srv", &["app=server"])?;
    let client = cluster.add_endpoint(1, "cli", &["app=client"])?;
    let mtu = link_mtu(&server.netns, "eth0")?;
    let lab = cluster.lab();
    let (plain_client, plain_server) = plain_bridge(lab, mtu)?;
    let plain_client_ip = Ipv4Addr::new(PLAIN_NET[0], PLAIN_NET[1], PLAIN_NET[2], 2);
    let plain_server_ip = Ipv4Addr::new(PLAIN_NET[0], PLAIN_NET[1], PLAIN_NET[2], 3);
    for ns in [&client.netns, &plain_client] {
        client_sysctls(ns)?;
    }
    let membrane = Setup::new(&client.netns, &server.netns, server.ip)?;
    let plain = Setup::new(&plain_client, &plain_server, plain_server_ip)?;

    let most = opts.rules.iter().max().copied().unwrap_or(2);
    let peers = opts.peers.min(most.saturating_sub(2)).max(1);
    eprintln!(
        "allocating {peers} peer identities (app=peer-0..{})...",
        peers - 1
    );
    allocate_peers(&lab.host(1).socket(), peers)?;
    eprintln!(
        "endpoint MTU {mtu}; {} ({}); {} runs; per setup {} s of new connections and {} round trips",
        opts.iptables,
        version(&opts.iptables),
        opts.runs,
        opts.seconds,
        opts.round_trips
    );

    let policy_file = lab.dir().join("bench-policy.yaml");
    let mut counts = vec![0];
    counts.extend(&opts.rules);
    let kinds = [Kind::Membrane, Kind::IptablesCt, Kind::IptablesNoCt];
    // samples[count index][kind index]
    let mut samples = vec![vec![Vec::<Sample>::new(); kinds.len()]; counts.len()];
    let mut map_entries = vec![None; counts.len()];
    let mut policy_present = false;
    for run in 1..=opts.runs {
        // Alternate the order of rule counts and of setups from run to run, so that a trend
        // in the machine's load (other builds) does not always favour the same ones.
        let mut count_order: Vec<usize> = (0..counts.len()).collect();
        if run % 2 == 0 {
            count_order.reverse();
        }
        for ci in count_order {
            let n = counts[ci];
            let mut order: Vec<usize> = (0..kinds.len()).collect();
            if run % 2 == 0 {
                order.reverse();
            }
            for ki in order {
                let kind = kinds[ki];
                if n == 0 && kind == Kind::IptablesNoCt {
                    continue; // the same no-rule baseline as IptablesCt
                }
                let setup = match kind {
                    Kind::Membrane => {
                        let t = Instant::now();
                        set_membrane_policy(
                            &cluster,
                            &policy_file,
                            n,
                            opts.peers,
                            &mut policy_present,
                        )?;
                        if run == 1 {
                            let entries = policy_map_entries(lab.host(1).bpf_pin_dir())?;
                            eprintln!(
                                "policy of {n} rules enforced in {:.1} s; policy map holds {entries} entries",
                                t.elapsed().as_secs_f64()
                            );
                            if n > 0 && entries < n {
                                bail!(
                                    "the policy map holds {entries} entries, expected at least {n}"
                                );
                            }
                            map_entries[ci] = Some(entries);
                        }
                        &membrane
                    }
                    Kind::IptablesCt | Kind::IptablesNoCt => {
                        let rules = iptables_rules(
                            n,
                            opts.peers,
                            plain_client_ip,
                            kind == Kind::IptablesCt,
                        );
                        restore(&opts.iptables, &plain_server, &rules)?;
                        &plain
                    }
                };
                // Let the agent finish what a policy change sets off (logs, gossip of the
                // enforced revision) before measuring; the same pause for iptables.
                std::thread::sleep(SETTLE);
                let s = measure(setup, &opts)
                    .with_context(|| format!("measuring {} with {n} rules", kind.name()))?;
                eprintln!(
                    "run {run} {n:>6} rules {:<29} {:>7.0} conn/s (p50 {:>6.1} us p99 {:>7.1} us)  rr p50 {:>6.1} us p99 {:>6.1} us",
                    kind.name(), s.conn_per_s, s.conn_p50_us, s.conn_p99_us, s.rr_p50_us, s.rr_p99_us
                );
                samples[ci][ki].push(s);
                if n == 0 && kind == Kind::IptablesCt {
                    samples[ci][ki + 1].push(s);
                }
            }
        }
    }
    restore(
        &opts.iptables,
        &plain_server,
        &iptables_rules(0, 1, plain_client_ip, false),
    )?;

    let med: Vec<Vec<Sample>> = samples
        .iter()
        .map(|per_kind| per_kind.iter().map(|v| median(v)).collect())
        .collect();
    // Noise of Membrane's figures: the spread of its no-policy runs.
    let base_runs = &samples[0][0];
    let noise = (
        mad(&base_runs.iter().map(|s| s.conn_p50_us).collect::<Vec<_>>()),
        mad(&base_runs.iter().map(|s| s.rr_p50_us).collect::<Vec<_>>()),
    );
    print_tables(&counts, &kinds, &med, &map_entries, noise);
    eprintln!("\nbenchmark took {:.0} s", started.elapsed().as_secs_f64());
    drop(membrane);
    drop(plain);
    drop(cluster);
    Ok(())
}

fn print_tables(
    counts: &[usize],
    kinds: &[Kind],
    med: &[Vec<Sample>],
    entries: &[Option<usize>],
    noise: (f64, f64),
) {
    let base = &med[0];
    println!("\nMedians over runs. conn: connect + one 64-byte request/response + close, back to back; rr: 64-byte ping-pong on one connection. Added: vs the same side with no policy / no rules.\n");
    println!("| rules | setup | conn/s | conn p50 | conn p99 | rr p50 | rr p99 | added conn p50 | added rr p50 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (ci, &n) in counts.iter().enumerate() {
        for (ki, kind) in kinds.iter().enumerate() {
            if n == 0 && *kind == Kind::IptablesNoCt {
                continue;
            }
            let s = med[ci][ki];
            let b = base[ki];
            let label = if n == 0 {
                match kind {
                    Kind::Membrane => "Membrane, no policy".to_string(),
                    _ => "plain bridge, no rules".to_string(),
                }
            } else {
                kind.name().to_string()
            };
            let (ac, ar) = if n == 0 {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:+.1} us", s.conn_p50_us - b.conn_p50_us),
                    format!("{:+.1} us", s.rr_p50_us - b.rr_p50_us),
                )
            };
            println!(
                "| {} | {label} | {:.0} | {:.1} us | {:.1} us | {:.1} us | {:.1} us | {ac} | {ar} |",
                fmt_count(n),
                s.conn_per_s,
                s.conn_p50_us,
                s.conn_p99_us,
                s.rr_p50_us,
                s.rr_p99_us
            );
        }
    }

    println!("\n| rules | policy map entries | Membrane conn/s vs no policy | iptables (ct) conn/s vs no rules | added conn p50: Membrane / iptables (ct) / ratio | added rr p50: Membrane / iptables (no shortcut) / ratio |");
    println!("|---|---|---|---|---|---|");
    for (ci, &n) in counts.iter().enumerate().skip(1) {
        let m = med[ci][0];
        let ct = med[ci][1];
        let no = med[ci][2];
        let m_conn = m.conn_p50_us - base[0].conn_p50_us;
        let i_conn = ct.conn_p50_us - base[1].conn_p50_us;
        let m_rr = m.rr_p50_us - base[0].rr_p50_us;
        let i_rr = no.rr_p50_us - base[2].rr_p50_us;
        println!(
            "| {} | {} | {:.2}x | {:.2}x | {m_conn:+.1} / {i_conn:+.1} us / {} | {m_rr:+.1} / {i_rr:+.1} us / {} |",
            fmt_count(n),
            entries[ci].map_or("-".into(), |e| e.to_string()),
            m.conn_per_s / base[0].conn_per_s,
            ct.conn_per_s / base[1].conn_per_s,
            ratio(i_conn, m_conn, noise.0),
            ratio(i_rr, m_rr, noise.1),
        );
    }
    println!(
        "\nRun-to-run noise of Membrane's no-policy figures (median absolute deviation): conn p50 {:.1} us, rr p50 {:.1} us; a ratio '>Nx' means Membrane's added latency is within that noise.",
        noise.0, noise.1
    );
    if counts.len() > 2 {
        let first = med[1][0].conn_per_s;
        let last = med[counts.len() - 1][0].conn_per_s;
        println!(
            "\nMembrane conn/s at {} rules vs {} rules: {:+.1}% (goal: within 10%)",
            fmt_count(counts[counts.len() - 1]),
            fmt_count(counts[1]),
            (last / first - 1.0) * 100.0
        );
    }
}

/// iptables' added latency over Membrane's. A Membrane figure inside the run-to-run noise
/// (`noise`, at least 0.5 us) is no divisor: the ratio is then shown as a lower bound,
/// iptables' added latency over the noise.
fn ratio(iptables: f64, membrane: f64, noise: f64) -> String {
    let floor = noise.max(0.5);
    if iptables <= floor {
        "-".into()
    } else if membrane < floor {
        format!(">{:.0}x", iptables / floor)
    } else {
        format!("{:.1}x", iptables / membrane)
    }
}

/// Median absolute deviation: the run-to-run spread of one figure.
fn mad(xs: &[f64]) -> f64 {
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let m = med(&mut xs.to_vec());
    med(&mut xs.iter().map(|x| (x - m).abs()).collect())
}

fn fmt_count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{},000", n / 1000)
    } else {
        n.to_string()
    }
}

fn median(v: &[Sample]) -> Sample {
    let pick = |f: fn(&Sample) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs[xs.len() / 2]
    };
    Sample {
        conn_per_s: pick(|s| s.conn_per_s),
        conn_p50_us: pick(|s| s.conn_p50_us),
        conn_p99_us: pick(|s| s.conn_p99_us),
        rr_p50_us: pick(|s| s.rr_p50_us),
        rr_p99_us: pick(|s| s.rr_p99_us),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn measure(s: &Setup, o: &Options) -> anyhow::Result<Sample> {
    let conn = connection_rate(s, Duration::from_secs(u64::from(o.seconds)))?;
    let rr = ping_pong(s, o.round_trips)?;
    Ok(Sample {
        conn_per_s: conn.ops_per_sec(),
        conn_p50_us: us(conn.p50),
        conn_p99_us: us(conn.p99),
        rr_p50_us: us(rr.p50),
        rr_p99_us: us(rr.p99),
    })
}

/// New connections back to back for `length`, from one thread living in the client
/// namespace (so no per-connection namespace switch): connect, 64 bytes out, 64 back, close.
fn connection_rate(s: &Setup, length: Duration) -> anyhow::Result<Summary> {
    let to = SocketAddr::new(IpAddr::V4(s.server_ip), CONN_PORT);
    let one = move || -> std::io::Result<()> {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(&[0x42; MSG])?;
        let mut back = [0u8; MSG];
        c.read_exact(&mut back)?;
        Ok(())
    };
    let (lat, errors, elapsed, first_error) = in_netns(&s.client_ns, move || {
        // Warm-up: ARP, caches, the server's accept loop.
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(200) {
            let _ = one();
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        let start = Instant::now();
        while start.elapsed() < length {
            let t = Instant::now();
            match one() {
                Ok(()) => lat.push(t.elapsed()),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        (lat, errors, start.elapsed(), first_error)
    })?;
    let summary = Summary::new(lat, errors, elapsed);
    // A few refused or timed-out connects would bias the rate; many mean a broken setup.
    if errors * 100 > summary.ops.max(1) {
        bail!(
            "{errors} of {} connections failed: {}",
            errors + summary.ops,
            first_error.unwrap_or_default()
        );
    }
    Ok(summary)
}

/// 64-byte messages echoed over one TCP connection (TCP_NODELAY on both ends), one at a time,
/// as in `bench datapath`.
fn ping_pong(s: &Setup, round_trips: usize) -> anyhow::Result<Summary> {
    let to = SocketAddr::new(IpAddr::V4(s.server_ip), RR_PORT);
    let mut conn = tcp_connect(&s.client_ns, to, Duration::from_secs(5))?;
    super::stats::ping_pong(&mut conn, round_trips)
}

impl Setup {
    fn new(client_ns: &str, server_ns: &str, server_ip: Ipv4Addr) -> anyhow::Result<Setup> {
        Ok(Setup {
            client_ns: client_ns.into(),
            server_ip,
            _conn_server: ConnServer::start(server_ns, server_ip, CONN_PORT)?,
            _rr_server: TcpEchoServer::start(server_ns, server_ip, RR_PORT)?,
        })
    }
}

/// The connection-rate server: one thread, blocking accept, each connection served inline
/// (read 64 bytes, echo them, wait for the client's close), so that the client's sequential
/// connections never wait on a poll interval or a thread start. The client closes first, so
/// TIME_WAIT stays on its side, where tcp_tw_reuse recycles ports.
struct ConnServer {
    addr: SocketAddr,
    server_ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnServer {
    fn start(ns: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<ConnServer> {
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        let listener = in_netns(ns, move || TcpListener::bind(addr))?
            .with_context(|| format!("cannot listen on {addr} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    continue;
                };
                let _ = c.set_nodelay(true);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; MSG];
                if c.read_exact(&mut buf).is_ok() && c.write_all(&buf).is_ok() {
                    let _ = c.read(&mut buf); // the client's FIN
                }
            }
        });
        Ok(ConnServer {
            addr,
            server_ns: ns.into(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept from inside the server's namespace (over lo, which no
        // policy or rule covers).
        let addr = self.addr;
        let _ = in_netns(&self.server_ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lets the client namespace open tens of thousands of connections a minute: the whole
/// ephemeral range, and TIME_WAIT ports reused for new outgoing connections.
fn client_sysctls(ns: &str) -> anyhow::Result<()> {
    for kv in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .args(["--", "sysctl", "-q", "-w", kv])
            .stdin(Stdio::null())
            .output()
            .context("cannot run sysctl")?;
        if !out.status.success() {
            bail!(
                "sysctl {kv} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Imports the N-rule policy (or deletes it for N = 0) and waits until it is enforced.
fn set_membrane_policy(
    cluster: &Cluster,
    file: &std::path::Path,
    n: usize,
    peers: usize,
    present: &mut bool,
) -> anyhow::Result<()> {
    let v = if n == 0 {
        if !*present {
            return Ok(());
        }
        cluster.cli_json(1, &["policy", "delete", "bench"])?
    } else {
        std::fs::write(file, policy_yaml(n, peers))?;
        cluster.cli_json(1, &["policy", "import", &file.display().to_string()])?
    };
    *present = n > 0;
    let rev = v["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("no revision in {v}"))?;
    cluster.cli(1, &["policy", "wait", &rev.to_string(), "--timeout", "120"])?;
    // The agent enforces the revision once the map is written; conntrack entries of the
    // previous measurement do not matter (every measured connection is new, and the
    // ping-pong connection is opened after this).
    Ok(())
}

/// Entries in the policy map, read with bpftool (what the datapath really holds).
fn policy_map_entries(pin_dir: &std::path::Path) -> anyhow::Result<usize> {
    let pin = pin_dir.join("policy");
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .stdin(Stdio::null())
        .output()
        .context("cannot run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool map dump {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    v.as_array()
        .map(Vec::len)
        .ok_or_else(|| anyhow!("bpftool printed no array"))
}

/// Allocates app=peer-0..peers-1 through the agent's API, 64 at a time (the agent batches
/// concurrent writes into one Raft entry), so that the policy's selectors resolve.
fn allocate_peers(socket: &std::path::Path, peers: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = crate::unix_channel(socket).await?;
        let mut next = 0;
        while next < peers {
            let mut tasks = Vec::new();
            for j in next..(next + 64).min(peers) {
                let ch = ch.clone();
                tasks.push(tokio::spawn(async move {
                    AgentClient::new(ch)
                        .identity_allocate(IdentityRequest {
                            labels: vec![format!("app=peer-{j}")],
                        })
                        .await
                }));
            }
            for t in tasks {
                t.await?.map_err(|e| anyhow!("identity allocate: {e}"))?;
            }
            next += 64;
        }
        Ok(())
    })
}

/// `iptables-restore` (a whole filter table, atomically) in namespace `ns`.
fn restore(program: &str, ns: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(ns).display()))
        .args(["--", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn link_mtu(ns: &str, dev: &str) -> anyhow::Result<u32> {
    let v: Value = serde_json::from_str(&ip_in(ns, &["-j", "link", "show", dev])?)?;
    v[0]["mtu"]
        .as_u64()
        .map(|m| m as u32)
        .ok_or_else(|| anyhow!("no MTU for {dev} in {ns}"))
}

/// Two namespaces on host 1 on a plain Linux bridge (10.212.0.0/24, `mtu`), no BPF; returns
/// (client, server) namespace names.
fn plain_bridge(lab: &Lab, mtu: u32) -> anyhow::Result<(String, String)> {
    let h1 = lab.host(1).netns().to_string();
    ip_in(&h1, &["link", "add", "plbr2", "type", "bridge"])?;
    ip_in(&h1, &["link", "set", "plbr2", "up"])?;
    let mtu = mtu.to_string();
    let mut names = Vec::new();
    for (name, host_if, last) in [("pcli", "plvcli", 2), ("psrv", "plvsrv", 3)] {
        let ns = lab.add_endpoint_netns(1, name)?;
        ip_in(
            &h1,
            &[
                "link", "add", host_if, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &ns,
            ],
        )?;
        ip_in(&h1, &["link", "set", host_if, "master", "plbr2", "up"])?;
        let cidr = format!(
            "{}.{}.{}.{last}/24",
            PLAIN_NET[0], PLAIN_NET[1], PLAIN_NET[2]
        );
        ip_in(&ns, &["addr", "add", &cidr, "dev", "eth0"])?;
        ip_in(&ns, &["link", "set", "eth0", "up"])?;
        names.push(ns);
    }
    Ok((names[0].clone(), names[1].clone()))
}

fn which(program: &str) -> anyhow::Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{program} not found on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_hold_n_rules_with_the_client_last() {
        for n in [2, 10, 1000, 10_000] {
            let pairs = other_pairs(n, 100);
            assert_eq!(pairs.len(), n - 2);
            let distinct: std::collections::BTreeSet<_> = pairs.iter().collect();
            assert_eq!(distinct.len(), n - 2);
            let client = Ipv4Addr::new(10, 212, 0, 2);
            let rules = iptables_rules(n, 100, client, true);
            let accepts: Vec<&str> = rules
                .lines()
                .filter(|l| l.ends_with("-j ACCEPT") && l.starts_with("-A MEMBRANE"))
                .collect();
            assert_eq!(accepts.len(), n);
            assert!(accepts[n - 1].contains("10.212.0.2/32") && accepts[n - 1].contains("7401"));
            let yaml = policy_yaml(n, 100);
            assert_eq!(yaml.matches("protocol: TCP").count(), n);
            assert!(yaml.trim_end().ends_with("{port: 7401, protocol: TCP}]}]"));
        }
    }
}
