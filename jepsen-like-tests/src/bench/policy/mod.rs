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
//!
//! Here the driver (flags, the interleaved runs); `membrane` and `iptables` set each side's
//! N rules, `workload` measures, `report` prints the tables.

mod iptables;
mod membrane;
mod report;
mod workload;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::flags::{count, number};
use super::stats::mad;
use super::system::{link_mtu, which};
use crate::Cluster;
use iptables::{iptables_rules, plain_bridge, restore, version, PLAIN_NET};
use membrane::{allocate_peers, policy_map_entries, set_membrane_policy};
use workload::{client_sysctls, measure, median, Sample, Setup};

/// `bench policy`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Rule counts to measure, each at least 2 (the client's two ports); 0, no policy and no
    /// rules, is always measured as each side's baseline.
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "10,1000,10000",
        value_parser = rule_count
    )]
    pub rules: Vec<usize>,
    /// Seconds of new connections per setup, rule count and run.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = count::<u32>)]
    pub seconds: u32,
    /// Runs of all setups and rule counts, interleaved; the figures are the medians over runs.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = count::<usize>)]
    pub runs: usize,
    /// 64-byte ping-pong round trips per setup, rule count and run.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = count::<usize>)]
    pub round_trips: usize,
    /// Peer identities the other rules are spread over.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = count::<usize>)]
    pub peers: usize,
    /// The reference system's restore program: iptables-restore, iptables-legacy-restore or
    /// iptables-nft-restore.
    #[arg(long, value_name = "PROGRAM", default_value = "iptables-restore")]
    pub iptables: String,
}

/// A rule count of `--rules`: the client's rule alone takes 2 entries.
fn rule_count(s: &str) -> Result<usize, String> {
    let n = number(s)?;
    if n < 2 {
        return Err(format!(
            "{n} is too few: the client alone takes 2 (its two ports)"
        ));
    }
    Ok(n)
}

impl Args {
    /// The flags checked against each other, rule counts in order and each once.
    fn checked(mut self) -> anyhow::Result<Args> {
        // Ports of other peers are 10000, 10002, ...: keep them below 65536.
        let most = self.rules.iter().max().copied().unwrap_or(0);
        if (most - 2).div_ceil(self.peers) > 27_000 {
            bail!(
                "--rules {most} with --peers {}: too many ports per peer; raise --peers",
                self.peers
            );
        }
        self.rules.sort_unstable();
        self.rules.dedup();
        Ok(self)
    }
}

/// Pause between changing a setup's rules and measuring it.
const SETTLE: Duration = Duration::from_millis(500);
/// Ports of the other peers' rules: FIRST_PEER_PORT + 2j, never adjacent, so no two of them
/// can share a port-prefix block and each stays one entry.
const FIRST_PEER_PORT: u16 = 10_000;

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

/// Builds the setups, runs them interleaved, and prints the tables.
pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::require_root()?;
    let opts = args.clone().checked()?;
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
                let s = measure(setup, opts.seconds, opts.round_trips)
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
    report::print_tables(&counts, &kinds, &med, &map_entries, noise);
    eprintln!("\nbenchmark took {:.0} s", started.elapsed().as_secs_f64());
    drop(membrane);
    drop(plain);
    drop(cluster);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::flags::parse;
    use super::membrane::policy_yaml;
    use super::*;

    #[test]
    fn flags_default_as_documented_and_rule_counts_come_sorted_once() {
        let a: Args = parse::<Args>(&[]).unwrap().checked().unwrap();
        assert_eq!(a.rules, [10, 1000, 10_000]);
        assert_eq!(
            (a.seconds, a.runs, a.round_trips, a.peers),
            (2, 5, 10_000, 100)
        );
        assert_eq!(a.iptables, "iptables-restore");
        let a: Args = parse::<Args>(&[
            "--rules",
            "10_000,10,10",
            "--iptables",
            "iptables-nft-restore",
        ])
        .unwrap()
        .checked()
        .unwrap();
        assert_eq!(a.rules, [10, 10_000]);
        assert_eq!(a.iptables, "iptables-nft-restore");
        assert!(parse::<Args>(&["--rules", "10,1"]).is_err());
        assert!(parse::<Args>(&["--peers", "0"]).is_err());
        assert!(parse::<Args>(&["--seconds"]).is_err());
        // 100,000 other rules over one peer is more ports than a peer has.
        let a: Args = parse(&["--rules", "100002", "--peers", "1"]).unwrap();
        assert!(a.checked().is_err());
    }

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
