//! The demo: a 3-node cluster in namespaces, shown the way an operator would see it, with
//! two endpoints per node attached by `membrane-cni` and traffic between all of them.

use std::time::Duration;

use anyhow::Context;

use crate::endpoint::{check_pair, EchoServers, Endpoint, Proto};
use crate::Cluster;

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Builds the cluster, prints `membrane status` from each host and a few registry
/// operations, attaches endpoints and shows which reach which; with `keep`, waits for Ctrl-C before tearing everything down.
pub fn run(keep: bool) -> anyhow::Result<()> {
    crate::require_root()?;
    step("Creating 3 hosts (network namespaces on one bridge), `membrane init` on h1, joining h2 and h3 with tokens");
    let c = Cluster::start("demo", 3).context("starting the cluster")?;
    // Give gossip a moment to hear from everyone, so the listings show liveness too.
    let _ = c.wait_all_alive(std::time::Duration::from_secs(10));
    for i in 1..=3 {
        let h = c.lab().host(i);
        step(&format!(
            "membrane status   (on {} {}, netns {})",
            h.name(),
            h.ip(),
            h.netns()
        ));
        print!("{}", c.cli(i, &["status"])?);
    }
    step("membrane node list   (on h2)");
    print!("{}", c.cli(2, &["node", "list"])?);
    step("membrane identity allocate app=web tier=frontend   (on h3; the write is forwarded to the leader)");
    print!(
        "{}",
        c.cli(3, &["identity", "allocate", "app=web", "tier=frontend"])?
    );
    step("membrane identity allocate tier=frontend app=web   (on h1; same labels, same identity)");
    print!(
        "{}",
        c.cli(1, &["identity", "allocate", "tier=frontend", "app=web"])?
    );
    step("membrane token list   (on h1)");
    print!("{}", c.cli(1, &["token", "list"])?);

    step("Attaching two endpoints (network namespaces) to each node with membrane-cni ADD: app=web and app=db");
    let mut eps: Vec<Endpoint> = Vec::new();
    for i in 1..=3 {
        for (name, app) in [("web", "app=web"), ("db", "app=db")] {
            let ep = c
                .add_endpoint(i, name, &[app])
                .with_context(|| format!("membrane-cni ADD {name} on h{i}"))?;
            println!("  h{i} {:<14} {:<12} {app}", ep.netns, ep.ip);
            eps.push(ep);
        }
    }
    // Let every node's registry copy and ipcache catch up with the last ADD before showing them.
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let _ = c.wait_endpoints_listed(&refs, Duration::from_secs(10));
    let _ = crate::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let cache = c.bpf_ipcache(1)?;
        Ok(eps.iter().all(|e| {
            let cidr = format!("{}/32", e.ip);
            cache.iter().any(|x| x["cidr"] == cidr.as_str())
        }))
    });
    step("membrane endpoint list   (on h2; every node's endpoints, from the registry)");
    print!("{}", c.cli(2, &["endpoint", "list"])?);
    step("membrane bpf ipcache list   (on h1; read from the kernel map)");
    print!("{}", c.cli(1, &["bpf", "ipcache", "list"])?);

    step("TCP and UDP echo between every pair of endpoints (same node: BPF redirect; across nodes: VXLAN set up by BPF)");
    let _servers = EchoServers::start(&refs)?;
    let label = |e: &Endpoint| format!("h{}-{}", e.host, e.netns.rsplit('-').next().unwrap_or(""));
    print!("  {:<9}", "from\\to");
    for to in &eps {
        print!("{:<9}", label(to));
    }
    println!();
    let mut failed = 0;
    for from in &eps {
        print!("  {:<9}", label(from));
        for to in &eps {
            if from.netns == to.netns {
                print!("{:<9}", "-");
                continue;
            }
            let tcp = check_pair(from, to, Proto::Tcp, Duration::from_secs(3)).is_ok();
            let udp = check_pair(from, to, Proto::Udp, Duration::from_secs(3)).is_ok();
            failed += usize::from(!tcp) + usize::from(!udp);
            let cell = format!(
                "{}/{}",
                if tcp { "T" } else { "x" },
                if udp { "U" } else { "x" }
            );
            print!("{cell:<9}");
        }
        println!();
    }
    println!("  T = TCP echo ok, U = UDP echo ok, x = failed; {failed} of 60 failed");

    if keep {
        let bin = crate::membrane_binary()?;
        println!("\nThe cluster keeps running. Talk to it with:");
        for i in 1..=3 {
            println!(
                "  {} --socket {} status",
                bin.display(),
                c.lab().host(i).socket().display()
            );
        }
        println!(
            "Agent logs are in {}. Press Ctrl-C to tear it down.",
            c.lab().dir().display()
        );
        wait_for_signal()?;
    }
    step("Tearing down: stopping agents, deleting namespaces");
    drop(c);
    println!("done");
    Ok(())
}

/// Blocks until SIGINT or SIGTERM, so that Drop still runs and cleans up.
fn wait_for_signal() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    set.wait()?;
    Ok(())
}
