//! A Membrane cluster on a [`Lab`]: `membrane init` on host 1, agents joined with tokens on
//! the others, and typed reads of what the CLI prints as JSON.
//!
//! Everything goes through the real binary and its CLI, as an operator would, so the tests
//! built on this check the product, not a library call that the product might not make.

use std::process::Output;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::{wait_until, Lab};

/// Name of the cluster the lab creates.
pub const CLUSTER_NAME: &str = "lab";

/// A lab whose hosts run a Membrane cluster.
pub struct Cluster {
    lab: Lab,
    ca_hash: String,
    /// Extra arguments given to every agent (e.g. `--voters 5`).
    agent_args: Vec<String>,
}

/// What `membrane init` printed as JSON.
#[derive(Clone, Debug)]
pub struct InitInfo {
    /// `sha256:HEX` of the cluster CA.
    pub ca_hash: String,
    /// The first join token, `ID.SECRET`.
    pub token: String,
}

impl Cluster {
    /// Creates a lab of `hosts` hosts and runs `membrane init` on host 1 (agent not started).
    pub fn init(name_hint: &str, hosts: usize) -> anyhow::Result<(Cluster, InitInfo)> {
        Cluster::init_with(name_hint, hosts, &[])
    }

    /// Like [`Cluster::init`], with extra `membrane init` arguments (e.g.
    /// `--node-cidr-size 30`).
    pub fn init_with(
        name_hint: &str,
        hosts: usize,
        init_args: &[&str],
    ) -> anyhow::Result<(Cluster, InitInfo)> {
        // Agents pin their maps below /sys/fs/bpf/membrane; see Host::bpf_pin_dir.
        crate::require_root()?;
        crate::ensure_bpffs()?;
        let lab = Lab::new(name_hint, hosts)?;
        let h1 = lab.host(1).clone();
        let state_dir = h1.state_dir().display().to_string();
        let advertise = h1.rpc_addr().to_string();
        let mut args = vec![
            "init",
            "--state-dir",
            &state_dir,
            "--cluster-name",
            CLUSTER_NAME,
            "--name",
            h1.name(),
            "--advertise-addr",
            &advertise,
            "-o",
            "json",
        ];
        args.extend_from_slice(init_args);
        let out = run_ok(&membrane(&lab, 1, &args)?)?;
        let v = json(&out)?;
        let info = InitInfo {
            ca_hash: string(&v, "ca_hash")?,
            token: string(&v, "token")?,
        };
        Ok((
            Cluster {
                lab,
                ca_hash: info.ca_hash.clone(),
                agent_args: Vec::new(),
            },
            info,
        ))
    }

    /// A cluster of `hosts` nodes, all joined and with `min(hosts, 3)` voters.
    pub fn start(name_hint: &str, hosts: usize) -> anyhow::Result<Cluster> {
        Cluster::start_with(name_hint, hosts, &[])
    }

    /// Like [`Cluster::start`], with extra `membrane init` arguments.
    pub fn start_with(
        name_hint: &str,
        hosts: usize,
        init_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let (mut c, _) = Cluster::init_with(name_hint, hosts, init_args)?;
        c.agent_args = Vec::new();
        c.start_first()?;
        for i in 2..=hosts {
            let token = c.create_token(1)?;
            c.join(i, &token)?;
        }
        let voters = hosts.min(3);
        c.wait_for_voters(voters, Duration::from_secs(30))?;
        for i in 1..=hosts {
            c.wait_plugin_socket(i)?;
        }
        Ok(c)
    }

    /// The lab the cluster runs in.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// `sha256:HEX` of the cluster CA, as `--ca-hash` takes it.
    pub fn ca_hash(&self) -> &str {
        &self.ca_hash
    }

    /// Sets extra arguments for agents started from now on.
    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.agent_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts host 1's agent (after init) and waits until it leads.
    pub fn start_first(&self) -> anyhow::Result<()> {
        let h = self.lab.host(1);
        let mut args = vec![
            "--socket".to_string(),
            h.socket().display().to_string(),
            "agent".into(),
            "--state-dir".into(),
            h.state_dir().display().to_string(),
        ];
        args.extend(datapath_args(h));
        args.extend(self.agent_args.iter().cloned());
        self.lab.start(1, &args)?;
        self.wait_for_leader(1, Duration::from_secs(30))
    }

    /// The arguments that start host `i`'s agent joining through host 1 with `token`.
    pub fn join_args(&self, i: usize, token: &str, ca_hash: &str) -> Vec<String> {
        let h = self.lab.host(i);
        let mut args = vec![
            "--socket".to_string(),
            h.socket().display().to_string(),
            "agent".into(),
            "--state-dir".into(),
            h.state_dir().display().to_string(),
            "--name".into(),
            h.name().to_string(),
            "--advertise-addr".into(),
            h.rpc_addr().to_string(),
            "--join".into(),
            self.lab.host(1).rpc_addr().to_string(),
            "--token".into(),
            token.to_string(),
            "--ca-hash".into(),
            ca_hash.to_string(),
        ];
        args.extend(datapath_args(h));
        args.extend(self.agent_args.iter().cloned());
        args
    }

    /// Starts host `i`'s agent joining with `token` and waits until it serves its API.
    pub fn join(&self, i: usize, token: &str) -> anyhow::Result<()> {
        self.join_via(i, token, 1)
    }

    /// Like [`Cluster::join`], but through host `via`'s agent instead of host 1's.
    pub fn join_via(&self, i: usize, token: &str, via: usize) -> anyhow::Result<()> {
        let mut args = self.join_args(i, token, &self.ca_hash);
        if let Some(pos) = args.iter().position(|a| a == "--join") {
            args[pos + 1] = self.lab.host(via).rpc_addr().to_string();
        }
        self.lab.start(i, &args)?;
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            if !self.lab.is_running(i)? {
                bail!("agent on host {i} exited: {}", self.log_tail(i));
            }
            Ok(self.status(i).is_ok())
        })
        .with_context(|| format!("host {i} did not join; log: {}", self.log_tail(i)))
    }

    /// Creates a join token through host 1 with `uses` uses.
    pub fn create_token(&self, uses: u32) -> anyhow::Result<String> {
        let v = self.cli_json(1, &["token", "create", "--uses", &uses.to_string()])?;
        string(&v, "token")
    }

    /// Runs the CLI against host `i`'s agent; error if it exits non-zero.
    pub fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self.lab.cli(i, args)?;
        run_ok(&out).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs the CLI with `-o json` and parses what it prints.
    pub fn cli_json(&self, i: usize, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.lab.cli(i, &a)?;
        json(&run_ok(&out)?)
    }

    /// `membrane status -o json` on host `i`.
    pub fn status(&self, i: usize) -> anyhow::Result<Value> {
        self.cli_json(i, &["status"])
    }

    /// Waits until host `i` reports itself leader.
    pub fn wait_for_leader(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, Duration::from_millis(200), || {
            if !self.lab.is_running(i)? {
                bail!("agent on host {i} exited: {}", self.log_tail(i));
            }
            Ok(self
                .status(i)
                .map(|s| s["raft_state"] == "leader")
                .unwrap_or(false))
        })
        .with_context(|| format!("host {i} did not become leader; log: {}", self.log_tail(i)))
    }

    /// The Raft voters as host `i` sees them.
    pub fn voters(&self, i: usize) -> anyhow::Result<std::collections::BTreeSet<u64>> {
        let s = self.status(i)?;
        let members = s["members"]
            .as_array()
            .ok_or_else(|| anyhow!("no members in {s}"))?;
        Ok(members
            .iter()
            .filter(|m| m["role"] == "voter")
            .filter_map(|m| m["node_id"].as_u64())
            .collect())
    }

    /// Waits until every host's gossip reports every node alive.
    pub fn wait_all_alive(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, Duration::from_millis(200), || {
            for i in 1..=self.lab.len() {
                let nodes = self.cli_json(i, &["node", "list"])?;
                let all = nodes["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().all(|n| n["gossip_state"] == "alive"));
                if !all {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .context("gossip did not see every node alive")
    }

    /// The leader's node id as seen by host `i`.
    pub fn leader_seen_by(&self, i: usize) -> anyhow::Result<Option<u64>> {
        Ok(self.status(i)?["leader_id"].as_u64())
    }

    /// Waits until the cluster has `n` voters, as host 1 sees it.
    pub fn wait_for_voters(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, Duration::from_millis(300), || {
            let Ok(s) = self.status(1) else {
                return Ok(false);
            };
            let voters = s["members"]
                .as_array()
                .map(|m| m.iter().filter(|m| m["role"] == "voter").count());
            Ok(voters == Some(n))
        })
        .with_context(|| format!("the cluster did not reach {n} voters"))
    }

    /// Waits until host `i`'s agent serves its plugin socket, which it opens after its
    /// datapath is up (later than the local API on a joining node).
    pub fn wait_plugin_socket(&self, i: usize) -> anyhow::Result<()> {
        let path = self.lab.host(i).plugin_socket();
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            if !self.lab.is_running(i)? {
                bail!("agent on host {i} exited");
            }
            Ok(std::os::unix::net::UnixStream::connect(&path).is_ok())
        })
        .with_context(|| {
            format!(
                "host {i} never served {}; log: {}",
                path.display(),
                self.log_tail(i)
            )
        })
    }

    /// The last lines of host `i`'s agent log (colour codes removed), for error messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.lab.host(i).log_path()).unwrap_or_default();
        let text = strip_ansi(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// `text` without ANSI colour sequences (ESC [ ... letter), which tracing writes even to a
/// file and which make error messages unreadable.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Per-host datapath paths, so agents of one lab (and of parallel labs) never share a plugin
/// socket, a pin dir or a CNI queue.
fn datapath_args(h: &crate::Host) -> Vec<String> {
    vec![
        "--plugin-socket".into(),
        h.plugin_socket().display().to_string(),
        "--bpf-pin-dir".into(),
        h.bpf_pin_dir().display().to_string(),
        "--cni-queue-dir".into(),
        h.cni_queue_dir().display().to_string(),
    ]
}

/// Runs the membrane binary inside host `i`'s namespace with `args` (for `init`).
fn membrane(lab: &Lab, i: usize, args: &[&str]) -> anyhow::Result<Output> {
    let bin = crate::membrane_binary()?;
    let bin = bin.display().to_string();
    let mut cmd = vec![bin.as_str()];
    cmd.extend_from_slice(args);
    lab.exec(i, &cmd)
}

/// The output if the command succeeded, else an error with its stderr.
pub fn run_ok(out: &Output) -> anyhow::Result<Output> {
    if out.status.success() {
        Ok(out.clone())
    } else {
        Err(anyhow!("{}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn json(out: &Output) -> anyhow::Result<Value> {
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

fn string(v: &Value, key: &str) -> anyhow::Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no {key:?} in {v}"))
}
