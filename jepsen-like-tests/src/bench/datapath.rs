//! `membrane-lab bench datapath`: TCP throughput (iperf3) and request/response latency
//! (64-byte TCP ping-pong) between endpoints, for Membrane's BPF datapath and, in the same
//! run on the same lab hosts, the plain kernel paths it replaces:
//!
//! - same node: two Membrane endpoints on one agent (BPF redirect between veths) vs two
//!   namespaces on a plain Linux bridge with no BPF;
//! - across nodes: Membrane endpoints on two agents (VXLAN encapsulation set from BPF) vs a
//!   plain kernel VXLAN (a bridge and a static VXLAN device in each host, the endpoint veth
//!   enslaved to the bridge, flood entry to the other host), no BPF.
//!
//! The baselines use the same MTU as Membrane's endpoints, and runs of the four setups are
//! interleaved so that noise from other load on the machine hits them alike; the figures
//! are the medians over runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::flags::count;
use super::stats::{median_of, micros, Summary};
use super::system::{add_bridge, attach, link_mtu, which};
use crate::netns::nsenter;
use crate::traffic::{tcp_connect, TcpEchoServer};
use crate::{ip_in, Cluster, Lab};

/// `bench datapath`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Runs of all setups, interleaved; the figures are the medians over runs.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = count::<usize>)]
    pub runs: usize,
    /// 64-byte round trips per setup and run.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = count::<usize>)]
    pub round_trips: usize,
    /// Seconds of iperf3 per setup and run.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = count::<u32>)]
    pub seconds: u32,
    /// Only the plain kernel baselines, no Membrane cluster.
    #[arg(long)]
    pub baseline_only: bool,
}

/// Port of the ping-pong echo server and of iperf3, inside the server namespace.
const ECHO_PORT: u16 = 7300;
const IPERF_PORT: u16 = 5201;
/// MTU of the baselines when no Membrane endpoint tells us its own.
const DEFAULT_MTU: u32 = 1450;

/// One pair of namespaces to measure between.
struct Setup {
    name: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    gbps: f64,
    p50_us: f64,
    p99_us: f64,
    tps: f64,
}

/// Either a cluster (Membrane and baselines) or a bare lab (baselines only).
enum World {
    Cluster(Box<Cluster>),
    Lab(Box<Lab>),
}

impl World {
    fn lab(&self) -> &Lab {
        match self {
            World::Cluster(c) => c.lab(),
            World::Lab(l) => l,
        }
    }
}

/// Builds the setups, runs them interleaved, and prints the tables.
pub fn run(opts: &Args) -> anyhow::Result<()> {
    crate::require_root()?;
    which("iperf3").context("iperf3 is not installed: run scripts/deps.sh")?;
    let mut setups = Vec::new();
    let world = if opts.baseline_only {
        eprintln!("building the plain kernel baselines only (--baseline-only)...");
        World::Lab(Box::new(Lab::new("bench-dp", 2)?))
    } else {
        eprintln!("starting a 2-node Membrane cluster with three endpoints...");
        World::Cluster(Box::new(Cluster::start("bench-dp", 2)?))
    };
    let mut mtu = DEFAULT_MTU;
    if let World::Cluster(c) = &world {
        let a = c.add_endpoint(1, "ma", &["app=bench-a"])?;
        let b = c.add_endpoint(1, "mb", &["app=bench-b"])?;
        let x = c.add_endpoint(2, "mc", &["app=bench-c"])?;
        mtu = link_mtu(&a.netns, "eth0")?;
        setups.push(Setup {
            name: "membrane same node",
            client_ns: a.netns.clone(),
            server_ns: b.netns.clone(),
            server_ip: b.ip,
        });
        setups.push(Setup {
            name: "membrane cross node",
            client_ns: a.netns.clone(),
            server_ns: x.netns.clone(),
            server_ip: x.ip,
        });
    }
    let lab = world.lab();
    setups.push(plain_bridge(lab, mtu)?);
    setups.push(plain_vxlan(lab, mtu)?);
    eprintln!(
        "endpoint MTU {mtu}; {} runs of {} s iperf3 and {} round trips per setup",
        opts.runs, opts.seconds, opts.round_trips
    );

    let mut samples: Vec<Vec<Sample>> = setups.iter().map(|_| Vec::new()).collect();
    for run in 1..=opts.runs {
        for (k, s) in setups.iter().enumerate() {
            let sample = measure(s, opts).with_context(|| format!("measuring {}", s.name))?;
            eprintln!(
                "run {run} {:<20} {:>6.2} Gbit/s  p50 {:>6.1} us  p99 {:>6.1} us  {:>8.0} tx/s",
                s.name, sample.gbps, sample.p50_us, sample.p99_us, sample.tps
            );
            samples[k].push(sample);
        }
    }
    let medians: Vec<Sample> = samples.iter().map(|v| median(v)).collect();
    println!("\n| setup | TCP throughput (iperf3) | p50 RTT | p99 RTT | transactions/s |");
    println!("|---|---|---|---|---|");
    for (s, m) in setups.iter().zip(&medians) {
        println!(
            "| {} | {:.2} Gbit/s | {:.1} us | {:.1} us | {:.0} |",
            s.name, m.gbps, m.p50_us, m.p99_us, m.tps
        );
    }
    let find = |name: &str| {
        setups
            .iter()
            .position(|s| s.name == name)
            .map(|k| medians[k])
    };
    if let (Some(ms), Some(mx)) = (find("membrane same node"), find("membrane cross node")) {
        let (Some(bs), Some(bx)) = (find("plain bridge"), find("plain vxlan")) else {
            bail!("baselines missing");
        };
        println!("\n| Membrane / plain | throughput | p50 RTT | p99 RTT | transactions/s |");
        println!("|---|---|---|---|---|");
        for (label, m, b) in [
            ("same node (vs bridge)", ms, bs),
            ("cross node (vs kernel VXLAN)", mx, bx),
        ] {
            println!(
                "| {label} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                m.gbps / b.gbps,
                m.p50_us / b.p50_us,
                m.p99_us / b.p99_us,
                m.tps / b.tps
            );
        }
        println!("\n(throughput and transactions/s: higher is better; RTT: lower is better)");
    }
    drop(world);
    Ok(())
}

fn median(v: &[Sample]) -> Sample {
    Sample {
        gbps: median_of(v, |s| s.gbps),
        p50_us: median_of(v, |s| s.p50_us),
        p99_us: median_of(v, |s| s.p99_us),
        tps: median_of(v, |s| s.tps),
    }
}

fn measure(s: &Setup, o: &Args) -> anyhow::Result<Sample> {
    let gbps = iperf(s, o.seconds)?;
    let rr = ping_pong(s, o.round_trips)?;
    Ok(Sample {
        gbps,
        p50_us: micros(rr.p50),
        p99_us: micros(rr.p99),
        tps: rr.ops_per_sec(),
    })
}

/// 64-byte messages echoed over one TCP connection (TCP_NODELAY on both ends), one at a
/// time: each round trip is one transaction, as in netperf's TCP_RR.
fn ping_pong(s: &Setup, round_trips: usize) -> anyhow::Result<Summary> {
    let _server = TcpEchoServer::start(&s.server_ns, s.server_ip, ECHO_PORT)?;
    let to = SocketAddr::new(IpAddr::V4(s.server_ip), ECHO_PORT);
    let mut conn = tcp_connect(&s.client_ns, to, Duration::from_secs(5))?;
    super::stats::ping_pong(&mut conn, round_trips)
}

/// Kills the one-off iperf3 server if the client never reached it.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `iperf3 -c` for `seconds` against a one-off `iperf3 -s -1`; received Gbit/s.
fn iperf(s: &Setup, seconds: u32) -> anyhow::Result<f64> {
    let server = nsenter(&s.server_ns)
        .args(["iperf3", "-s", "-1", "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 -s")?;
    let _server = Reap(server);
    // The server needs a moment to listen; a refused client exits at once, so retry.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = nsenter(&s.client_ns)
            .args(["iperf3", "-c", &s.server_ip.to_string()])
            .args([
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
            ])
            .stdin(Stdio::null())
            .output()
            .context("cannot run iperf3 -c")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        let err = v["error"].as_str().unwrap_or("").to_string();
        if Instant::now() > deadline || !err.contains("refused") {
            bail!(
                "iperf3 {} -> {} failed: {err} {}",
                s.client_ns,
                s.server_ip,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two namespaces on host 1 joined by a plain bridge (10.210.0.0/24), no BPF anywhere.
fn plain_bridge(lab: &Lab, mtu: u32) -> anyhow::Result<Setup> {
    let h1 = lab.host(1).netns().to_string();
    add_bridge(&h1, "plbr0")?;
    let a = lab.add_endpoint_netns(1, "pa")?;
    let b = lab.add_endpoint_netns(1, "pb")?;
    attach(&h1, "plva", "plbr0", &a, "10.210.0.2/24", mtu)?;
    attach(&h1, "plvb", "plbr0", &b, "10.210.0.3/24", mtu)?;
    Ok(Setup {
        name: "plain bridge",
        client_ns: a,
        server_ns: b,
        server_ip: Ipv4Addr::new(10, 210, 0, 3),
    })
}

/// One namespace on each of hosts 1 and 2 (10.211.0.0/24), each on a bridge with a static
/// kernel VXLAN device (VNI 4242, UDP 4789, so it never meets Membrane's 8472) whose flood
/// entry points at the other host: the textbook overlay, no BPF.
fn plain_vxlan(lab: &Lab, mtu: u32) -> anyhow::Result<Setup> {
    let mut names = Vec::new();
    for (i, other, addr) in [(1, 2, "10.211.0.2/24"), (2, 1, "10.211.0.3/24")] {
        let hns = lab.host(i).netns().to_string();
        let local = lab.host(i).ip().to_string();
        let remote = lab.host(other).ip().to_string();
        add_bridge(&hns, "plbr1")?;
        ip_in(
            &hns,
            &[
                "link",
                "add",
                "plvx1",
                "type",
                "vxlan",
                "id",
                "4242",
                "local",
                &local,
                "dstport",
                "4789",
                "dev",
                "eth0",
                "nolearning",
            ],
        )?;
        ip_in(&hns, &["link", "set", "plvx1", "master", "plbr1", "up"])?;
        crate::cmd::run(
            "bridge",
            &[
                "-n",
                &hns,
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "plvx1",
                "dst",
                &remote,
            ],
        )?;
        let ns = lab.add_endpoint_netns(i, if i == 1 { "pc" } else { "pd" })?;
        attach(&hns, "plvc", "plbr1", &ns, addr, mtu)?;
        names.push(ns);
    }
    Ok(Setup {
        name: "plain vxlan",
        client_ns: names[0].clone(),
        server_ns: names[1].clone(),
        server_ip: Ipv4Addr::new(10, 211, 0, 3),
    })
}

#[cfg(test)]
mod tests {
    use super::super::flags::parse;
    use super::*;

    #[test]
    fn flags_default_as_documented_and_reject_zero() {
        let a: Args = parse(&[]).unwrap();
        assert_eq!((a.runs, a.round_trips, a.seconds), (3, 20_000, 5));
        assert!(!a.baseline_only);
        let a: Args = parse(&["--runs", "1", "--round-trips", "200", "--seconds", "1"]).unwrap();
        assert_eq!((a.runs, a.round_trips, a.seconds), (1, 200, 1));
        assert!(parse::<Args>(&["--baseline-only"]).unwrap().baseline_only);
        assert!(parse::<Args>(&["--runs", "0"]).is_err());
        assert!(parse::<Args>(&["--rules", "10"]).is_err());
    }
}
