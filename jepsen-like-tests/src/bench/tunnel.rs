//! `membrane-lab bench tunnel`: node-to-node encryption against the paths it is measured by,
//! between endpoint namespaces on two lab hosts, in one run:
//!
//! - `kernel vxlan`: the textbook plaintext overlay (bridge + static VXLAN device per host);
//! - `membrane vxlan`: Membrane's own overlay with encryption off;
//! - `membrane encrypted`: the same cluster after `membrane encrypt enable` (the leg is
//!   reported as failed, with the reason, when the cluster cannot encrypt);
//! - `boringtun`: user-space WireGuard (`boringtun-cli` in each host namespace, configured
//!   with `wg` over its UAPI socket), the peer to beat;
//!
//! with the raw cipher's single-core seal rate (the tunnel's default ChaCha20-Poly1305, in
//! this process) as the limit. Each leg gets single-stream and 4-stream iperf3 throughput,
//! a 64-byte TCP ping-pong (p50/p99), and CPU seconds per GB moved: the CPU time of the
//! leg's user-space tunnel processes (the agents, or boringtun) from /proc/PID/stat plus the
//! machine's softirq time from /proc/stat, over the bytes iperf3 delivered. Both CPU regimes
//! (idle, and two `nice -n 19` busy loops) and all legs are interleaved in every run; the
//! tables show medians over runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use super::flags::count;
use super::stats::{median, micros};
use super::system::{add_bridge, attach, link_mtu, which};
use crate::netns::nsenter;
use crate::traffic::{tcp_connect, TcpEchoServer};
use crate::{ip_in, Cluster, Lab};

/// `bench tunnel`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Runs of all legs and both regimes, interleaved; the figures are medians over runs.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = count::<usize>)]
    pub runs: usize,
    /// 64-byte round trips per leg and run.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = count::<usize>)]
    pub round_trips: usize,
    /// Seconds of each iperf3 run (single stream, then 4 streams).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = count::<u32>)]
    pub seconds: u32,
    /// The boringtun-cli binary (default: on PATH, or target/tools/bin/boringtun-cli).
    #[arg(long, value_name = "PATH")]
    pub boringtun: Option<PathBuf>,
    /// Only the kernel VXLAN and boringtun legs, no Membrane cluster.
    #[arg(long)]
    pub baseline_only: bool,
    /// Only the idle regime.
    #[arg(long)]
    pub idle_only: bool,
}

const ECHO_PORT: u16 = 7310;
const IPERF_PORT: u16 = 5211;
const WG_PORT: u16 = 51820;
/// Linux reports CPU times in /proc in USER_HZ ticks, 100 per second on every architecture.
const TICKS_PER_SEC: f64 = 100.0;
const DEFAULT_MTU: u32 = 1420;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Regime {
    Idle,
    Busy,
}

impl Regime {
    fn label(self) -> &'static str {
        match self {
            Regime::Idle => "idle",
            Regime::Busy => "2 busy loops",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Leg {
    KernelVxlan,
    MembraneVxlan,
    MembraneEncrypted,
    Boringtun,
}

impl Leg {
    fn label(self) -> &'static str {
        match self {
            Leg::KernelVxlan => "kernel vxlan",
            Leg::MembraneVxlan => "membrane vxlan",
            Leg::MembraneEncrypted => "membrane encrypted",
            Leg::Boringtun => "boringtun",
        }
    }
}

/// Where a leg's traffic goes and which processes do its tunnelling.
struct Path {
    leg: Leg,
    client_ns: String,
    server_ns: String,
    server_ip: Ipv4Addr,
    pids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    one_gbps: f64,
    four_gbps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_s_per_gb: f64,
}

/// Kills a child we started (iperf3 server, boringtun, busy loop) when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two `nice -n 19` busy loops: the "busy" regime.
struct Busy {
    _loops: Vec<Reap>,
}

impl Busy {
    fn start() -> anyhow::Result<Busy> {
        let mut v = Vec::new();
        for _ in 0..2 {
            let c = Command::new("nice")
                .args(["-n", "19", "sh", "-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .context("cannot start a busy loop")?;
            v.push(Reap(c));
        }
        Ok(Busy { _loops: v })
    }
}

/// Builds the legs, runs them interleaved in both regimes, and prints the tables.
pub fn run(opts: &Args) -> anyhow::Result<()> {
    crate::require_root()?;
    which("iperf3").context("iperf3 is not installed: run scripts/deps.sh")?;
    let boringtun = match &opts.boringtun {
        Some(p) => Ok(p.clone()),
        None => which("boringtun-cli").or_else(|_| {
            let p = PathBuf::from("target/tools/bin/boringtun-cli");
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "boringtun-cli not found: scripts/bench.sh tunnel installs it into target/tools"
                ))
            }
        }),
    };

    let mut failed: BTreeMap<Leg, String> = BTreeMap::new();
    let cluster = if opts.baseline_only {
        for leg in [Leg::MembraneVxlan, Leg::MembraneEncrypted] {
            failed.insert(leg, "not run (--baseline-only)".into());
        }
        None
    } else {
        eprintln!("starting a 2-node Membrane cluster with an endpoint on each node...");
        match Cluster::start("bench-tun", 2) {
            Ok(c) => Some(Box::new(c)),
            Err(e) => {
                let why = one_line(&format!("cluster did not start: {e:#}"));
                failed.insert(Leg::MembraneVxlan, why.clone());
                failed.insert(Leg::MembraneEncrypted, why);
                None
            }
        }
    };
    let lab_holder;
    let lab: &Lab = match &cluster {
        Some(c) => c.lab(),
        None => {
            lab_holder = Lab::new("bench-tun", 2)?;
            &lab_holder
        }
    };
    let mut paths = Vec::new();
    let mut mtu = DEFAULT_MTU;
    if let Some(c) = &cluster {
        let endpoints = c
            .add_endpoint(1, "ta", &["app=bench-a"])
            .and_then(|a| Ok((c.add_endpoint(2, "tb", &["app=bench-b"])?, a)))
            .and_then(|(b, a)| Ok((link_mtu(&a.netns, "eth0")?, a, b)));
        match endpoints {
            Ok((m, a, b)) => {
                mtu = m;
                let pids: Vec<u32> = [1, 2]
                    .iter()
                    .filter_map(|&i| lab.pid(i).ok().flatten())
                    .collect();
                for leg in [Leg::MembraneVxlan, Leg::MembraneEncrypted] {
                    paths.push(Path {
                        leg,
                        client_ns: a.netns.clone(),
                        server_ns: b.netns.clone(),
                        server_ip: b.ip,
                        pids: pids.clone(),
                    });
                }
            }
            Err(e) => {
                let why = one_line(&format!("endpoints not added: {e:#}"));
                failed.insert(Leg::MembraneVxlan, why.clone());
                failed.insert(Leg::MembraneEncrypted, why);
            }
        }
    }
    paths.insert(0, kernel_vxlan(lab, mtu)?);
    let _boringtun_procs = match boringtun.and_then(|bin| boringtun_path(lab, &bin, mtu)) {
        Ok((path, procs)) => {
            paths.push(path);
            procs
        }
        Err(e) => {
            failed.insert(Leg::Boringtun, one_line(&format!("{e:#}")));
            Vec::new()
        }
    };
    let regimes: &[Regime] = if opts.idle_only {
        &[Regime::Idle]
    } else {
        &[Regime::Idle, Regime::Busy]
    };
    eprintln!(
        "endpoint MTU {mtu}; {} runs x {} regimes; {} s iperf3 (1 and 4 streams) and {} round trips per leg",
        opts.runs,
        regimes.len(),
        opts.seconds,
        opts.round_trips
    );

    let mut samples: BTreeMap<(Regime, Leg), Vec<Sample>> = BTreeMap::new();
    let mut limits: BTreeMap<Regime, Vec<f64>> = BTreeMap::new();
    for run in 1..=opts.runs {
        for &regime in regimes {
            let _busy = match regime {
                Regime::Busy => Some(Busy::start()?),
                Regime::Idle => None,
            };
            limits.entry(regime).or_default().push(cipher_limit_gbps());
            for p in &paths {
                if failed.contains_key(&p.leg) {
                    continue;
                }
                let r = measure_leg(cluster.as_deref(), p, opts);
                match r {
                    Ok(s) => {
                        eprintln!(
                            "run {run} {:<12} {:<18} {:>6.2} / {:>6.2} Gbit/s  p50 {:>6.1} us  p99 {:>6.1} us  {:>6.2} CPU s/GB",
                            regime.label(),
                            p.leg.label(),
                            s.one_gbps,
                            s.four_gbps,
                            s.p50_us,
                            s.p99_us,
                            s.cpu_s_per_gb
                        );
                        samples.entry((regime, p.leg)).or_default().push(s);
                    }
                    Err(e) => {
                        let why = one_line(&format!("{e:#}"));
                        eprintln!(
                            "run {run} {} {}: FAILED: {why}",
                            regime.label(),
                            p.leg.label()
                        );
                        failed.insert(p.leg, why);
                    }
                }
            }
        }
    }
    print_tables(regimes, &samples, &limits, &failed);
    drop(_boringtun_procs);
    drop(cluster);
    Ok(())
}

fn measure_leg(cluster: Option<&Cluster>, p: &Path, o: &Args) -> anyhow::Result<Sample> {
    if p.leg == Leg::MembraneEncrypted {
        let c = cluster.ok_or_else(|| anyhow!("no cluster"))?;
        set_encryption(c, p, true)?;
        let before = sealed_packets(c)?;
        let s = measure(p, o);
        let after = sealed_packets(c);
        let off = set_encryption(c, p, false);
        let s = s?;
        let after = after?;
        off?;
        if after <= before {
            bail!(
                "`membrane encrypt status` counted no sealed packet during the run ({before} -> {after}): traffic did not go through the tunnel"
            );
        }
        return Ok(s);
    }
    measure(p, o)
}

/// `membrane encrypt enable|disable`, then waits until a ping-pong gets across again.
fn set_encryption(c: &Cluster, p: &Path, on: bool) -> anyhow::Result<()> {
    let verb = if on { "enable" } else { "disable" };
    c.cli(1, &["encrypt", verb])
        .with_context(|| format!("`membrane encrypt {verb}` failed"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let _server = TcpEchoServer::start(&p.server_ns, p.server_ip, ECHO_PORT + 1)?;
    let to = SocketAddr::new(IpAddr::V4(p.server_ip), ECHO_PORT + 1);
    loop {
        let ok = tcp_connect(&p.client_ns, to, Duration::from_secs(2))
            .and_then(|mut conn| {
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                super::stats::ping_pong(&mut conn, 10)
            })
            .is_ok();
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no traffic across 30 s after `membrane encrypt {verb}`");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sum of every `sealed_packets` figure in node 1's `encrypt status -o json`.
fn sealed_packets(c: &Cluster) -> anyhow::Result<u64> {
    let v = c
        .cli_json(1, &["encrypt", "status"])
        .context("`membrane encrypt status` failed")?;
    fn walk(v: &Value, sum: &mut u64) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "sealed_packets" {
                        *sum += x.as_u64().unwrap_or(0);
                    } else {
                        walk(x, sum);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, sum)),
            _ => {}
        }
    }
    let mut sum = 0;
    walk(&v, &mut sum);
    Ok(sum)
}

fn measure(p: &Path, o: &Args) -> anyhow::Result<Sample> {
    let cpu0 = cpu_seconds(&p.pids)?;
    let (one_gbps, one_bytes) = iperf(p, o.seconds, 1)?;
    let (four_gbps, four_bytes) = iperf(p, o.seconds, 4)?;
    let cpu = cpu_seconds(&p.pids)? - cpu0;
    let rr = {
        let _server = TcpEchoServer::start(&p.server_ns, p.server_ip, ECHO_PORT)?;
        let to = SocketAddr::new(IpAddr::V4(p.server_ip), ECHO_PORT);
        let mut conn = tcp_connect(&p.client_ns, to, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        super::stats::ping_pong(&mut conn, o.round_trips)?
    };
    let gb = (one_bytes + four_bytes) / 1e9;
    Ok(Sample {
        one_gbps,
        four_gbps,
        p50_us: micros(rr.p50),
        p99_us: micros(rr.p99),
        cpu_s_per_gb: if gb > 0.0 { cpu / gb } else { f64::NAN },
    })
}

/// CPU seconds so far of `pids` (user + system, all threads) plus the machine's softirq
/// time, where the kernel does most of its encapsulation and receive work.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat (did the process exit?)"))?;
        ticks += proc_cpu_ticks(&stat).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    }
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    ticks += softirq_ticks(&stat).ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    Ok(ticks as f64 / TICKS_PER_SEC)
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; the command name in
/// parentheses may contain spaces, so count from the last ')').
fn proc_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The softirq column of /proc/stat's aggregate `cpu` line.
fn softirq_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(7)?.parse().ok()
}

/// `iperf3 -c -P streams` for `seconds` against a one-off server: (Gbit/s, bytes) received.
fn iperf(p: &Path, seconds: u32, streams: u32) -> anyhow::Result<(f64, f64)> {
    let server = nsenter(&p.server_ns)
        .args(["iperf3", "-s", "-1", "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 -s")?;
    let _server = Reap(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = nsenter(&p.client_ns)
            .args(["iperf3", "-c", &p.server_ip.to_string()])
            .args(["-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string()])
            .args(["-P", &streams.to_string(), "-J"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run iperf3 -c")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let r = &v["end"]["sum_received"];
        if let (Some(bps), Some(bytes)) = (r["bits_per_second"].as_f64(), r["bytes"].as_f64()) {
            return Ok((bps / 1e9, bytes));
        }
        let err = v["error"].as_str().unwrap_or("").to_string();
        if Instant::now() > deadline || !err.contains("refused") {
            bail!(
                "iperf3 {} -> {} failed: {err} {}",
                p.client_ns,
                p.server_ip,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tunnel's default cipher sealing 1,420-byte packets on this thread for a second, in
/// Gbit/s of payload: the most one core can encrypt, the limit of any one-flow tunnel.
fn cipher_limit_gbps() -> f64 {
    use membrane_crypto::tunnel::CipherKind;
    let c = CipherKind::default().new_cipher(&[0x42; 32]);
    let mut buf = vec![0u8; 1420];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..64 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            n += 1;
            let tag = c
                .seal_in_place(&nonce, &[0u8; 28], std::hint::black_box(&mut buf))
                .expect("a 1420-byte packet");
            std::hint::black_box(tag);
        }
    }
    (n as f64 * 1420.0 * 8.0) / start.elapsed().as_secs_f64() / 1e9
}

/// The plain kernel VXLAN of `bench datapath` (VNI 4243 on UDP 4790 here, so it meets
/// neither Membrane's 8472 nor datapath's baseline).
fn kernel_vxlan(lab: &Lab, mtu: u32) -> anyhow::Result<Path> {
    let mut names = Vec::new();
    for (i, other, addr) in [(1, 2, "10.214.0.2/24"), (2, 1, "10.214.0.3/24")] {
        let hns = lab.host(i).netns().to_string();
        let (local, remote) = (
            lab.host(i).ip().to_string(),
            lab.host(other).ip().to_string(),
        );
        add_bridge(&hns, "tnbr1")?;
        ip_in(
            &hns,
            &[
                "link",
                "add",
                "tnvx1",
                "type",
                "vxlan",
                "id",
                "4243",
                "local",
                &local,
                "dstport",
                "4790",
                "dev",
                "eth0",
                "nolearning",
            ],
        )?;
        ip_in(&hns, &["link", "set", "tnvx1", "master", "tnbr1", "up"])?;
        crate::cmd::run(
            "bridge",
            &[
                "-n",
                &hns,
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "tnvx1",
                "dst",
                &remote,
            ],
        )?;
        let ns = lab.add_endpoint_netns(i, if i == 1 { "kva" } else { "kvb" })?;
        attach(&hns, "tnvc", "tnbr1", &ns, addr, mtu)?;
        names.push(ns);
    }
    Ok(Path {
        leg: Leg::KernelVxlan,
        client_ns: names[0].clone(),
        server_ns: names[1].clone(),
        server_ip: Ipv4Addr::new(10, 214, 0, 3),
        pids: Vec::new(),
    })
}

/// boringtun in each host namespace (TUN `mbtNNNNN-i`, 10.215.0.i/24), an endpoint namespace
/// behind each host on a routed veth (10.215.i.2/24), keys from `wg genkey`, peers set with
/// `wg set` over boringtun's UAPI socket. Returns the path and the boringtun processes.
fn boringtun_path(lab: &Lab, bin: &std::path::Path, mtu: u32) -> anyhow::Result<(Path, Vec<Reap>)> {
    which("wg").context(
        "wg is not installed (Debian's wireguard-tools): run scripts/deps.sh wireguard-tools",
    )?;
    let tag = std::process::id() % 100_000;
    let ifname = |i: usize| format!("mbt{tag}-{i}");
    let mut keys = Vec::new();
    for _ in 0..2 {
        let private = run_stdin("wg", &["genkey"], "")?;
        let public = run_stdin("wg", &["pubkey"], &private)?;
        keys.push((private.trim().to_string(), public.trim().to_string()));
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut procs = Vec::new();
    let mut pids = Vec::new();
    let mut endpoints = Vec::new();
    for i in [1usize, 2] {
        let other = 3 - i;
        let hns = lab.host(i).netns().to_string();
        let dev = ifname(i);
        let child = nsenter(&hns)
            .arg(bin)
            .args([
                "--foreground",
                "--disable-drop-privileges",
                "--log",
                "/dev/null",
            ])
            // As many workers as cores, like the agent's --tunnel-workers default.
            .args(["--threads", &threads.to_string()])
            .arg(&dev)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        pids.push(child.id());
        procs.push(Reap(child));
        let sock = format!("/var/run/wireguard/{dev}.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::path::Path::new(&sock).exists() {
            if Instant::now() > deadline {
                bail!("boringtun did not create {sock} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let keyfile = lab.dir().join(format!("wg{i}.key"));
        std::fs::write(&keyfile, &keys[i - 1].0)?;
        let peer_ep = format!("{}:{WG_PORT}", lab.host(other).ip());
        let allowed = format!("10.215.0.{other}/32,10.215.{other}.0/24");
        let out = nsenter(&hns)
            .args(["wg", "set", &dev, "private-key"])
            .arg(&keyfile)
            .args([
                "listen-port",
                &WG_PORT.to_string(),
                "peer",
                &keys[other - 1].1,
            ])
            .args(["allowed-ips", &allowed, "endpoint", &peer_ep])
            .output()
            .context("cannot run wg set")?;
        if !out.status.success() {
            bail!(
                "wg set {dev} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // The WireGuard MTU is the endpoint MTU: the inner packets are the same size as in
        // the other legs, the outer ones 60 bytes larger (the underlay has room).
        ip_in(&hns, &["link", "set", &dev, "mtu", &mtu.to_string(), "up"])?;
        ip_in(
            &hns,
            &["addr", "add", &format!("10.215.0.{i}/24"), "dev", &dev],
        )?;
        ip_in(
            &hns,
            &["route", "add", &format!("10.215.{other}.0/24"), "dev", &dev],
        )?;
        crate::cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &hns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        let ns = lab.add_endpoint_netns(i, if i == 1 { "bta" } else { "btb" })?;
        let m = mtu.to_string();
        ip_in(
            &hns,
            &[
                "link", "add", "tnbt", "mtu", &m, "type", "veth", "peer", "name", "eth0", "mtu",
                &m, "netns", &ns,
            ],
        )?;
        ip_in(
            &hns,
            &["addr", "add", &format!("10.215.{i}.1/24"), "dev", "tnbt"],
        )?;
        ip_in(&hns, &["link", "set", "tnbt", "up"])?;
        ip_in(
            &ns,
            &["addr", "add", &format!("10.215.{i}.2/24"), "dev", "eth0"],
        )?;
        ip_in(&ns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &ns,
            &["route", "add", "default", "via", &format!("10.215.{i}.1")],
        )?;
        endpoints.push(ns);
    }
    Ok((
        Path {
            leg: Leg::Boringtun,
            client_ns: endpoints[0].clone(),
            server_ns: endpoints[1].clone(),
            server_ip: Ipv4Addr::new(10, 215, 2, 2),
            pids,
        },
        procs,
    ))
}

fn run_stdin(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin for {program}"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An error as one table cell: whitespace runs (clap's multi-line usage) become one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn print_tables(
    regimes: &[Regime],
    samples: &BTreeMap<(Regime, Leg), Vec<Sample>>,
    limits: &BTreeMap<Regime, Vec<f64>>,
    failed: &BTreeMap<Leg, String>,
) {
    let legs = [
        Leg::KernelVxlan,
        Leg::MembraneVxlan,
        Leg::MembraneEncrypted,
        Leg::Boringtun,
    ];
    println!("\n| regime | leg | 1-stream TCP | 4-stream TCP | p50 RTT | p99 RTT | CPU s/GB |");
    println!("|---|---|---|---|---|---|---|");
    let mut m: BTreeMap<(Regime, Leg), Sample> = BTreeMap::new();
    for &r in regimes {
        for leg in legs {
            match samples.get(&(r, leg)) {
                Some(v) if !v.is_empty() => {
                    let s = Sample {
                        one_gbps: med(v, |s| s.one_gbps),
                        four_gbps: med(v, |s| s.four_gbps),
                        p50_us: med(v, |s| s.p50_us),
                        p99_us: med(v, |s| s.p99_us),
                        cpu_s_per_gb: med(v, |s| s.cpu_s_per_gb),
                    };
                    m.insert((r, leg), s);
                    println!(
                        "| {} | {} | {:.2} Gbit/s | {:.2} Gbit/s | {:.1} us | {:.1} us | {:.2} |",
                        r.label(),
                        leg.label(),
                        s.one_gbps,
                        s.four_gbps,
                        s.p50_us,
                        s.p99_us,
                        s.cpu_s_per_gb
                    );
                }
                _ => println!(
                    "| {} | {} | failed: {} | | | | |",
                    r.label(),
                    leg.label(),
                    failed
                        .get(&leg)
                        .map(String::as_str)
                        .unwrap_or("not measured")
                ),
            }
        }
        if let Some(l) = limits.get(&r) {
            println!(
                "| {} | raw cipher, one core | {:.2} Gbit/s | | | | |",
                r.label(),
                median(l.clone())
            );
        }
    }
    println!("\n| regime | encrypted / boringtun (1 / 4 streams) | encrypted / raw cipher (1 / 4 streams) | encrypted p99 / membrane vxlan p99 | boringtun / kernel vxlan (1 / 4 streams) |");
    println!("|---|---|---|---|---|");
    for &r in regimes {
        let e = m.get(&(r, Leg::MembraneEncrypted));
        let b = m.get(&(r, Leg::Boringtun));
        let v = m.get(&(r, Leg::MembraneVxlan));
        let k = m.get(&(r, Leg::KernelVxlan));
        let limit = limits.get(&r).map(|l| median(l.clone()));
        let two = |a: Option<&Sample>, b: Option<&Sample>| match (a, b) {
            (Some(a), Some(b)) => format!(
                "{:.2}x / {:.2}x ({:.2} / {:.2} vs {:.2} / {:.2} Gbit/s)",
                a.one_gbps / b.one_gbps,
                a.four_gbps / b.four_gbps,
                a.one_gbps,
                a.four_gbps,
                b.one_gbps,
                b.four_gbps
            ),
            _ => "-".into(),
        };
        let vs_limit = match (e, limit) {
            (Some(e), Some(l)) => format!(
                "{:.2}x / {:.2}x (limit {l:.2} Gbit/s)",
                e.one_gbps / l,
                e.four_gbps / l
            ),
            _ => format!(
                "- (limit {} Gbit/s)",
                limit.map(|l| format!("{l:.2}")).unwrap_or("-".into())
            ),
        };
        let p99 = match (e, v) {
            (Some(e), Some(v)) => format!(
                "{:.2}x ({:.1} vs {:.1} us)",
                e.p99_us / v.p99_us,
                e.p99_us,
                v.p99_us
            ),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {vs_limit} | {p99} | {} |",
            r.label(),
            two(e, b),
            two(b, k)
        );
    }
    println!("\n(goals: encrypted >= boringtun and >= 0.40x the raw cipher; encrypted p99 <= 1.5x plain VXLAN)");
    for (leg, why) in failed {
        println!("{} failed: {why}", leg.label());
    }
}

#[cfg(test)]
mod tests {
    use super::super::flags::parse;
    use super::*;

    #[test]
    fn flags_default_as_documented() {
        let a: Args = parse(&[]).unwrap();
        assert_eq!((a.runs, a.round_trips, a.seconds), (3, 10_000, 5));
        assert!(!a.baseline_only && !a.idle_only && a.boringtun.is_none());
        assert!(parse::<Args>(&["--runs", "0"]).is_err());
    }

    #[test]
    fn reads_proc_stat_formats() {
        let pid = "1234 (a name) with) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        assert_eq!(proc_cpu_ticks(pid), Some(300));
        assert_eq!(proc_cpu_ticks("garbage"), None);
        let stat = "cpu  100 5 200 9000 10 3 77 0 0 0\ncpu0 50 2 100 4500 5 1 40 0 0 0\n";
        assert_eq!(softirq_ticks(stat), Some(77));
        assert_eq!(softirq_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn cpu_of_this_process_is_readable() {
        assert!(cpu_seconds(&[std::process::id()]).unwrap() >= 0.0);
        assert!(cpu_seconds(&[u32::MAX]).is_err());
    }
}
