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
    let failed = matrix(&eps);
    println!("  T = TCP echo ok, U = UDP echo ok, x = no answer; {failed} of 60 failed");

    step(
        "membrane policy import db.yaml   (db accepts only app=web, on TCP 7000), then policy wait",
    );
    let rev = c.policy_apply(DEMO_POLICY)?;
    print!("{DEMO_POLICY}");
    println!("  revision {rev} is enforced by every node");
    step("The same matrix under the policy: into db only web's TCP gets through; web stays open (no policy selects it)");
    let failed = matrix(&eps);
    println!("  {failed} of 60 refused by policy (they time out: the datapath drops them)");
    step("membrane policy explain --from app=db --to app=db --port 7000/TCP   (on h1)");
    print!(
        "{}",
        c.cli(
            1,
            &["policy", "explain", "--from", "app=db", "--to", "app=db", "--port", "7000/TCP"]
        )?
    );
    step("membrane policy explain --from app=web --to app=db --port 7000/TCP   (on h1)");
    print!(
        "{}",
        c.cli(
            1,
            &["policy", "explain", "--from", "app=web", "--to", "app=db", "--port", "7000/TCP"]
        )?
    );
    step("membrane monitor --type drop   (on h1, while a db on h2 tries the db on h1)");
    if let (Some(from), Some(to)) = (
        eps.iter().find(|e| e.host == 2 && e.netns.ends_with("db")),
        eps.iter().find(|e| e.host == 1 && e.netns.ends_with("db")),
    ) {
        for line in monitor_while(&c, 1, || {
            let _ = check_pair(from, to, Proto::Tcp, Duration::from_secs(1));
        })? {
            println!("  {line}");
        }
    }

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

/// db accepts TCP 7000 from web only.
const DEMO_POLICY: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
"#;

/// Prints the TCP/UDP reachability matrix of `eps` (checked in parallel, 2 s each) and
/// returns how many checks failed.
fn matrix(eps: &[Endpoint]) -> usize {
    let label = |e: &Endpoint| format!("h{}-{}", e.host, e.netns.rsplit('-').next().unwrap_or(""));
    let results: Vec<Vec<Option<(bool, bool)>>> = std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = eps
            .iter()
            .map(|from| {
                eps.iter()
                    .map(|to| {
                        (from.netns != to.netns).then(|| {
                            s.spawn(move || {
                                let t = Duration::from_secs(2);
                                (
                                    check_pair(from, to, Proto::Tcp, t).is_ok(),
                                    check_pair(from, to, Proto::Udp, t).is_ok(),
                                )
                            })
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|h| h.map(|h| h.join().unwrap_or((false, false))))
                    .collect()
            })
            .collect()
    });
    print!("  {:<9}", "from\\to");
    for to in eps {
        print!("{:<9}", label(to));
    }
    println!();
    let mut failed = 0;
    for (from, row) in eps.iter().zip(&results) {
        print!("  {:<9}", label(from));
        for cell in row {
            match cell {
                None => print!("{:<9}", "-"),
                Some((tcp, udp)) => {
                    failed += usize::from(!tcp) + usize::from(!udp);
                    let cell = format!(
                        "{}/{}",
                        if *tcp { "T" } else { "x" },
                        if *udp { "U" } else { "x" }
                    );
                    print!("{cell:<9}");
                }
            }
        }
        println!();
    }
    failed
}

/// Runs `membrane monitor --type drop` against host `i` while `traffic` runs, and returns
/// the lines it printed.
fn monitor_while(c: &Cluster, i: usize, traffic: impl FnOnce()) -> anyhow::Result<Vec<String>> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(crate::membrane_binary()?)
        .arg("--socket")
        .arg(c.lab().host(i).socket())
        .args(["monitor", "--type", "drop"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start membrane monitor")?;
    let stdout = child.stdout.take().context("monitor has no stdout")?;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    // Let the subscription start before the traffic.
    std::thread::sleep(Duration::from_millis(500));
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let out = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(out)
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
