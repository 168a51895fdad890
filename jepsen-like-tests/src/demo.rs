//! The demo: a 3-node cluster in namespaces, shown the way an operator would see it.

use anyhow::Context;

use crate::Cluster;

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Builds the cluster, prints `membrane status` from each host and a few registry
/// operations; with `keep`, waits for Ctrl-C before tearing everything down.
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
