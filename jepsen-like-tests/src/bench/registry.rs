//! `membrane-lab bench registry`: identity allocations against a 3-node Membrane cluster and,
//! in the same run, the equivalent create-if-absent writes against a 3-member etcd, both in
//! the same lab namespaces, both fsync'ing every write.
//!
//! Membrane's clients use each agent's local API (the Unix socket the CLI and orchestrator
//! plugins use); followers forward writes to the leader. etcd's clients use its gRPC API
//! with every member as an endpoint; its followers forward to its leader too. Each op
//! creates a new key: an identity for a fresh label set, or a Txn `create_revision == 0 ->
//! put` in etcd.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use membrane_proto::v1::agent_client::AgentClient;
use membrane_proto::v1::IdentityRequest;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use super::flags::count;
use super::stats::Summary;
use super::system::which;
use crate::{in_netns, wait_until, Cluster, Lab};

/// `bench registry`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Concurrent clients of each system.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = count::<usize>)]
    pub clients: usize,
    /// Operations per system, shared among the clients (at least one each).
    #[arg(long, value_name = "N", default_value_t = 3000, value_parser = count::<usize>)]
    pub ops: usize,
    /// Where the clients send: every node (followers forward to the leader), or the leader.
    #[arg(long, value_enum, default_value_t = Via::All)]
    pub via: Via,
}

/// The nodes the benchmark's clients talk to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Every node; followers forward writes to the leader.
    All,
    /// The leader only.
    Leader,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if self.ops < self.clients {
            bail!(
                "--ops {} is fewer than --clients {}: every client needs at least one op",
                self.ops,
                self.clients
            );
        }
        Ok(())
    }
}

/// Runs both systems and prints a markdown table.
pub fn run(opts: &Args) -> anyhow::Result<()> {
    crate::require_root()?;
    opts.check()?;
    let leader_only = opts.via == Via::Leader;
    let etcd_bin = which("etcd")
        .context("etcd is not installed: run scripts/deps.sh etcd (Debian's etcd-server)")?;
    eprintln!("starting a 3-node Membrane cluster and a 3-member etcd in the same lab...");
    let cluster = Cluster::start("bench", 3)?;
    let etcd = EtcdCluster::start(cluster.lab(), &etcd_bin)?;

    // Warm-up both, then measure.
    let (sockets, endpoints) = if leader_only {
        let leader = cluster
            .leader_seen_by(1)?
            .ok_or_else(|| anyhow!("membrane has no leader"))? as usize;
        (
            vec![cluster.lab().host(leader).socket()],
            vec![etcd.leader(cluster.lab())?],
        )
    } else {
        (
            (1..=3).map(|i| cluster.lab().host(i).socket()).collect(),
            etcd.endpoints.clone(),
        )
    };
    let via = if leader_only { "leader" } else { "all nodes" };
    let netns = cluster.lab().host(1).netns().to_string();
    let (clients, ops) = (opts.clients, opts.ops);
    let (m, e) = in_netns(&netns, move || -> anyhow::Result<(Summary, Summary)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            membrane_workload(&sockets, clients, clients * 4, "warm").await?;
            let m = membrane_workload(&sockets, clients, ops, "run").await?;
            etcd_workload(&endpoints, clients, clients * 4, "warm").await?;
            let e = etcd_workload(&endpoints, clients, ops, "run").await?;
            Ok((m, e))
        })
    })??;
    drop(etcd);

    println!("| system | clients (to {via}) | ops | errors | ops/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in [
        ("membrane (identity allocate)", &m),
        ("etcd 3.4 (txn create-if-absent)", &e),
    ] {
        println!(
            "| {name} | {clients} | {} | {} | {:.0} | {:.2} | {:.2} |",
            s.ops,
            s.errors,
            s.ops_per_sec(),
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3
        );
    }
    println!(
        "\nratio membrane/etcd: throughput {:.2}x, p50 latency {:.2}x, p99 latency {:.2}x",
        m.ops_per_sec() / e.ops_per_sec(),
        m.p50.as_secs_f64() / e.p50.as_secs_f64(),
        m.p99.as_secs_f64() / e.p99.as_secs_f64()
    );
    Ok(())
}

/// Shares `total` ops among `clients` tasks, client k talking to `targets[k % len]`.
async fn run_clients<T, F, Fut>(targets: Vec<T>, clients: usize, total: usize, op: F) -> Summary
where
    T: Clone + Send + 'static,
    F: Fn(T, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let target = targets[k % targets.len()].clone();
        let (latencies, errors, op) = (latencies.clone(), errors.clone(), op.clone());
        let share = total / clients + usize::from(k < total % clients);
        tasks.push(tokio::task::spawn_local(async move {
            for i in 0..share {
                let t = Instant::now();
                match op(target.clone(), k, i).await {
                    Ok(()) => latencies.lock().await.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let lat = std::mem::take(&mut *latencies.lock().await);
    Summary::new(
        lat,
        errors.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
    )
}

async fn membrane_workload(
    sockets: &[std::path::PathBuf],
    clients: usize,
    total: usize,
    tag: &'static str,
) -> anyhow::Result<Summary> {
    let mut channels = Vec::new();
    for s in sockets {
        channels.push(crate::unix_channel(s).await?);
    }
    let local = tokio::task::LocalSet::new();
    Ok(local
        .run_until(run_clients(
            channels,
            clients,
            total,
            move |ch: Channel, k, i| async move {
                let labels = vec![format!("bench={tag}-{k}-{i}")];
                AgentClient::new(ch)
                    .identity_allocate(IdentityRequest { labels })
                    .await?;
                Ok(())
            },
        ))
        .await)
}

async fn etcd_workload(
    endpoints: &[String],
    clients: usize,
    total: usize,
    tag: &'static str,
) -> anyhow::Result<Summary> {
    use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
    let client = Client::connect(endpoints, None)
        .await
        .context("connecting to etcd")?;
    let local = tokio::task::LocalSet::new();
    Ok(local
        .run_until(run_clients(
            vec![client],
            clients,
            total,
            move |mut c: Client, k, i| async move {
                let key = format!("/identities/bench={tag}-{k}-{i}");
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, "1", None)]);
                c.txn(txn).await?;
                Ok(())
            },
        ))
        .await)
}

/// Three etcd members, one in each of the lab's first three hosts, data in the lab dir.
/// Killed on drop.
struct EtcdCluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl EtcdCluster {
    fn start(lab: &Lab, bin: &std::path::Path) -> anyhow::Result<EtcdCluster> {
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("e{i}=http://{}:2380", lab.host(i).ip()))
            .collect();
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            endpoints: Vec::new(),
        };
        for i in 1..=3 {
            let h = lab.host(i);
            let ip = h.ip();
            let log = std::fs::File::create(h.dir().join("etcd.log"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", h.netns()])
                .arg(bin)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(h.dir().join("etcd"))
                .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{ip}:2380"),
                ])
                .args(["--listen-client-urls", &format!("http://{ip}:2379")])
                .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
                .args(["--initial-cluster", &peers.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    lab.id(),
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd")?;
            cluster.children.push(child);
            cluster.endpoints.push(format!("http://{ip}:2379"));
        }
        let netns = lab.host(1).netns().to_string();
        let endpoints = cluster.endpoints.clone();
        wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
            let endpoints = endpoints.clone();
            in_netns(&netns, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut c = etcd_client::Client::connect(&endpoints, None).await?;
                    c.put("/bench/ready", "1", None).await?;
                    Ok::<_, anyhow::Error>(true)
                })
            })?
            .or(Ok(false))
        })
        .context("etcd did not become ready")?;
        Ok(cluster)
    }
}

impl EtcdCluster {
    /// The client URL of the current etcd leader.
    fn leader(&self, lab: &Lab) -> anyhow::Result<String> {
        let endpoints = self.endpoints.clone();
        in_netns(lab.host(1).netns(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                for ep in &endpoints {
                    let mut c = etcd_client::Client::connect([ep.as_str()], None).await?;
                    let st = c.status().await?;
                    if st.header().map(|h| h.member_id()) == Some(st.leader()) {
                        return Ok(ep.clone());
                    }
                }
                bail!("no etcd member says it leads")
            })
        })?
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::flags::parse;
    use super::*;

    #[test]
    fn flags_default_as_documented_and_need_a_share_per_client() {
        let a: Args = parse(&[]).unwrap();
        assert_eq!((a.clients, a.ops, a.via), (32, 3000, Via::All));
        assert!(a.check().is_ok());
        let a: Args = parse(&["--via", "leader", "--ops", "200"]).unwrap();
        assert_eq!((a.ops, a.via), (200, Via::Leader));
        assert!(a.check().is_ok());
        let a: Args = parse(&["--clients", "8", "--ops", "7"]).unwrap();
        assert!(a.check().is_err());
        assert!(parse::<Args>(&["--clients", "0"]).is_err());
        assert!(parse::<Args>(&["--via", "some"]).is_err());
        assert!(parse::<Args>(&["--via"]).is_err());
    }
}
