//! Endpoints on a lab cluster, made the way a container runtime makes them: an empty network
//! namespace, then the real `membrane-cni` binary run in the host's namespace with the CNI
//! environment and a network config on stdin. Plus typed reads of `membrane endpoint` and
//! `membrane bpf` output.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::traffic::{tcp_round_trip, udp_round_trip, TcpEchoServer, UdpEchoServer};
use crate::{netns_path, Cluster};

/// How long one `membrane-cni` call may take: an ADD waits for the registry (a Raft write)
/// and the BPF attach, which is well under this on an idle lab.
pub const CNI_TIMEOUT: Duration = Duration::from_secs(30);

/// What one `membrane-cni` run returned.
#[derive(Clone, Debug)]
pub struct CniOutcome {
    /// Whether it exited 0.
    pub exit_ok: bool,
    /// Its exit code (None when killed by a signal).
    pub exit_code: Option<i32>,
    /// What it printed on stdout, parsed (Null when empty or not JSON; see `stdout`).
    pub json: Value,
    /// Raw stdout and stderr, for error messages.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
}

impl CniOutcome {
    /// The CNI error code of a failed call (`{"code": N, "msg": ...}`).
    pub fn error_code(&self) -> Option<u64> {
        self.json["code"].as_u64()
    }

    /// The CNI error message of a failed call.
    pub fn error_msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or("")
    }

    /// The outcome if it succeeded, else an error with what it printed.
    pub fn ok(self) -> anyhow::Result<CniOutcome> {
        if self.exit_ok {
            Ok(self)
        } else {
            Err(anyhow!("membrane-cni failed: {self}"))
        }
    }
}

impl std::fmt::Display for CniOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}, stdout {:?}, stderr {:?}",
            self.exit_code,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// An endpoint made by [`Cluster::add_endpoint`].
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The host (1-based) whose agent it is attached to.
    pub host: usize,
    /// Its network namespace's name (`<lab id>-h<i>-<name>`).
    pub netns: String,
    /// The CNI container id.
    pub container_id: String,
    /// The container-side interface name.
    pub ifname: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The CNI result that ADD printed.
    pub result: Value,
}

impl Endpoint {
    /// The namespace path as CNI_NETNS takes it.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

/// One CNI invocation: what goes into the environment and onto stdin.
#[derive(Clone, Debug, Default)]
pub struct CniCall {
    /// CNI_COMMAND (ADD, DEL, CHECK, VERSION, ...).
    pub command: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS; None leaves it unset.
    pub netns: Option<PathBuf>,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS, e.g. `label_app=web;label_tier=db`; empty leaves it unset.
    pub args: String,
    /// The network config on stdin, as raw bytes (so tests can send broken JSON).
    pub stdin: Vec<u8>,
}

impl Cluster {
    /// The network config `membrane-cni` needs for host `i`, with `extra` merged in at the
    /// top level (e.g. `{"labels": {"app": "web"}}`).
    pub fn cni_config(&self, i: usize, extra: &Value) -> Value {
        let h = self.lab().host(i);
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "membrane",
            "type": "membrane-cni",
            "socket": h.plugin_socket().display().to_string(),
            "queueDir": h.cni_queue_dir().display().to_string(),
        });
        if let (Some(obj), Some(more)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        conf
    }

    /// Runs `membrane-cni` for host `i` with a well-formed config (see [`Cluster::cni_config`]).
    // One argument per CNI variable reads like the invocation it makes; CniCall is the
    // struct form for the tests that need to leave variables out.
    #[allow(clippy::too_many_arguments)]
    pub fn cni(
        &self,
        i: usize,
        command: &str,
        container_id: &str,
        netns: Option<&std::path::Path>,
        ifname: &str,
        extra: &Value,
        cni_args: &str,
    ) -> anyhow::Result<CniOutcome> {
        let call = CniCall {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.map(std::path::Path::to_path_buf),
            ifname: ifname.into(),
            args: cni_args.into(),
            stdin: serde_json::to_vec(&self.cni_config(i, extra))?,
        };
        self.cni_call(i, &call)
    }

    /// Runs `membrane-cni` inside host `i`'s namespace, as a runtime on that host would, with
    /// exactly the environment in `call` (plus PATH and CNI_PATH), killed after
    /// [`CNI_TIMEOUT`].
    pub fn cni_call(&self, i: usize, call: &CniCall) -> anyhow::Result<CniOutcome> {
        let bin = crate::cni_binary()?;
        let host = self.lab().host(i);
        let mut cmd = crate::netns::nsenter(host.netns());
        cmd.arg(&bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "CNI_PATH",
                bin.parent().unwrap_or(std::path::Path::new("/")),
            );
        if !call.command.is_empty() {
            cmd.env("CNI_COMMAND", &call.command);
        }
        if !call.container_id.is_empty() {
            cmd.env("CNI_CONTAINERID", &call.container_id);
        }
        if let Some(ns) = &call.netns {
            cmd.env("CNI_NETNS", ns);
        }
        if !call.ifname.is_empty() {
            cmd.env("CNI_IFNAME", &call.ifname);
        }
        if !call.args.is_empty() {
            cmd.env("CNI_ARGS", &call.args);
        }
        if let Some(log) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", log);
        }
        let what = format!(
            "membrane-cni {} {} on {}",
            call.command,
            call.container_id,
            host.name()
        );
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        // Fed from a thread: a plugin that never reads stdin must not block us.
        let input = call.stdin.clone();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let mut out_pipe = child.stdout.take().context("no stdout pipe")?;
        let mut err_pipe = child.stderr.take().context("no stderr pipe")?;
        let out_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            s
        });
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + CNI_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} did not finish within {CNI_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = feeder.join();
        let stdout = out_thread.join().unwrap_or_default();
        let stderr = err_thread.join().unwrap_or_default();
        Ok(CniOutcome {
            exit_ok: status.success(),
            exit_code: status.code(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr,
        })
    }

    /// Makes an endpoint namespace `name` on host `i` and attaches it with `membrane-cni ADD`
    /// (container id `h<i>-<name>-<lab id>`, unique in the cluster; interface eth0, `labels` as `key=value`).
    pub fn add_endpoint(&self, i: usize, name: &str, labels: &[&str]) -> anyhow::Result<Endpoint> {
        let netns = self.lab().add_endpoint_netns(i, name)?;
        // Host and name first: CLI tables shorten container ids to their first 12 characters.
        let container_id = format!("h{i}-{name}-{}", self.lab().id());
        let mut map = serde_json::Map::new();
        for l in labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow!("label {l:?} is not key=value"))?;
            map.insert(k.into(), Value::String(v.into()));
        }
        let out = self
            .cni(
                i,
                "ADD",
                &container_id,
                Some(&netns_path(&netns)),
                "eth0",
                &json!({ "labels": map }),
                "",
            )?
            .ok()
            .with_context(|| format!("ADD of {name} on host {i}; log: {}", self.log_tail(i)))?;
        let ip = result_ip(&out.json)?;
        Ok(Endpoint {
            host: i,
            netns,
            container_id,
            ifname: "eth0".into(),
            ip,
            result: out.json,
        })
    }

    /// `membrane-cni DEL` of an endpoint (its namespace stays, as a runtime deletes that
    /// itself afterwards).
    pub fn del_endpoint(&self, ep: &Endpoint) -> anyhow::Result<CniOutcome> {
        self.cni(
            ep.host,
            "DEL",
            &ep.container_id,
            Some(&ep.netns_path()),
            &ep.ifname,
            &json!({}),
            "",
        )?
        .ok()
    }

    /// `membrane endpoint list -o json` on host `i`: every node's endpoints.
    pub fn endpoints(&self, i: usize) -> anyhow::Result<Vec<Value>> {
        array(self.cli_json(i, &["endpoint", "list"])?, "endpoints")
    }

    /// `membrane bpf ipcache list -o json` on host `i`.
    pub fn bpf_ipcache(&self, i: usize) -> anyhow::Result<Vec<Value>> {
        array(self.cli_json(i, &["bpf", "ipcache", "list"])?, "entries")
    }

    /// `membrane bpf endpoint list -o json` on host `i`.
    pub fn bpf_endpoints(&self, i: usize) -> anyhow::Result<Vec<Value>> {
        array(self.cli_json(i, &["bpf", "endpoint", "list"])?, "entries")
    }

    /// `membrane identity list -o json` on host `i`.
    pub fn identities(&self, i: usize) -> anyhow::Result<Vec<Value>> {
        array(self.cli_json(i, &["identity", "list"])?, "identities")
    }

    /// Waits until every endpoint in `eps` is listed by every running node, and as `ready`
    /// by its own node.
    pub fn wait_endpoints_listed(
        &self,
        eps: &[&Endpoint],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        crate::wait_until(timeout, Duration::from_millis(200), || {
            for i in 1..=self.lab().len() {
                if !self.lab().is_running(i)? {
                    continue;
                }
                let listed = self.endpoints(i)?;
                for ep in eps {
                    let Some(e) = listed
                        .iter()
                        .find(|e| e["container_id"] == ep.container_id.as_str())
                    else {
                        bail!("h{i} does not list {}: {listed:?}", ep.container_id);
                    };
                    if ep.host == i && e["state"] != "ready" {
                        bail!(
                            "h{i} (node {}) lists its own {} as {}: {e}",
                            self.node_id(i).unwrap_or(0),
                            ep.container_id,
                            e["state"]
                        );
                    }
                }
            }
            Ok(true)
        })
    }
}

/// Ports the echo servers of [`EchoServers`] listen on inside every endpoint.
pub const ECHO_TCP_PORT: u16 = 7000;
/// See [`ECHO_TCP_PORT`].
pub const ECHO_UDP_PORT: u16 = 7001;

/// A TCP and a UDP echo server in each of a set of endpoints; they stop when dropped.
pub struct EchoServers {
    _tcp: Vec<TcpEchoServer>,
    _udp: Vec<UdpEchoServer>,
}

impl EchoServers {
    /// Starts both servers in every endpoint, on 0.0.0.0 and the `ECHO_*_PORT`s.
    pub fn start(eps: &[&Endpoint]) -> anyhow::Result<EchoServers> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for ep in eps {
            tcp.push(TcpEchoServer::start(
                &ep.netns,
                Ipv4Addr::UNSPECIFIED,
                ECHO_TCP_PORT,
            )?);
            udp.push(UdpEchoServer::start(
                &ep.netns,
                Ipv4Addr::UNSPECIFIED,
                ECHO_UDP_PORT,
            )?);
        }
        Ok(EchoServers {
            _tcp: tcp,
            _udp: udp,
        })
    }
}

/// A transport that [`check_pair`] tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// A TCP connection and an echoed message.
    Tcp,
    /// An echoed datagram.
    Udp,
}

/// Whether `from` reaches the echo server of `to` over `proto`, retrying until `timeout`
/// (a remote endpoint may take a moment to reach every node's ipcache); the error is the
/// last attempt's.
pub fn check_pair(
    from: &Endpoint,
    to: &Endpoint,
    proto: Proto,
    timeout: Duration,
) -> anyhow::Result<()> {
    let attempt = Duration::from_secs(2).min(timeout);
    crate::wait_until(timeout, Duration::from_millis(100), || {
        match proto {
            Proto::Tcp => tcp_round_trip(&from.netns, (to.ip, ECHO_TCP_PORT).into(), attempt),
            Proto::Udp => udp_round_trip(&from.netns, (to.ip, ECHO_UDP_PORT).into(), attempt),
        }
        .map(|()| true)
    })
    .with_context(|| {
        format!(
            "{proto:?} {} (h{}, {}) -> {} (h{}, {})",
            from.netns, from.host, from.ip, to.netns, to.host, to.ip
        )
    })
}

impl Cluster {
    /// Host `i`'s node id, from `membrane status`.
    pub fn node_id(&self, i: usize) -> anyhow::Result<u64> {
        let s = self.status(i)?;
        s["node_id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no node_id in {s}"))
    }

    /// Host `i`'s pod CIDR, from `membrane status` (e.g. "10.128.1.0/24").
    pub fn pod_cidr(&self, i: usize) -> anyhow::Result<String> {
        let s = self.status(i)?;
        match s["pod_cidr"].as_str() {
            Some(c) if !c.is_empty() => Ok(c.to_string()),
            _ => bail!("no pod_cidr in {s}"),
        }
    }

    /// Restarts host `i`'s agent with the same arguments and waits until it serves its API.
    pub fn restart_agent(&self, i: usize) -> anyhow::Result<()> {
        self.lab().restart(i)?;
        self.wait_serving(i)
    }

    /// Waits until host `i`'s agent answers `membrane status` (failing early if it exits).
    pub fn wait_serving(&self, i: usize) -> anyhow::Result<()> {
        crate::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            if !self.lab().is_running(i)? {
                bail!("agent on host {i} exited: {}", self.log_tail(i));
            }
            Ok(self.status(i).is_ok())
        })
        .with_context(|| format!("host {i} did not come back; log: {}", self.log_tail(i)))?;
        self.wait_plugin_socket(i)
    }
}

/// The `mb*` links (host sides of endpoint veths) in namespace `ns`.
pub fn endpoint_links(ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(link_names(ns)?
        .into_iter()
        .filter(|n| n.starts_with("mb"))
        .collect())
}

/// The address of a CNI result (`ips[0].address`, "10.128.0.2/32").
pub fn result_ip(result: &Value) -> anyhow::Result<Ipv4Addr> {
    let addr = result["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no ips[0].address in the CNI result {result}"))?;
    let ip = addr.split('/').next().unwrap_or(addr);
    ip.parse()
        .with_context(|| format!("bad address {addr:?} in the CNI result"))
}

/// Names of the links in namespace `ns` (`ip -j link`).
pub fn link_names(ns: &str) -> anyhow::Result<Vec<String>> {
    let text = crate::ip_in(ns, &["-j", "link", "show"])?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("ip -j link: {text}"))?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

fn array(v: Value, key: &str) -> anyhow::Result<Vec<Value>> {
    match v.get(key) {
        Some(Value::Array(a)) => Ok(a.clone()),
        // proto3 JSON may leave an empty list out.
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(other) => bail!("{key} is not a list: {other}"),
    }
}

/// What the policy tests need: import, wait, explain, through the CLI.
impl Cluster {
    /// Writes `yaml` to a fresh file in the lab dir and runs `membrane policy import FILE
    /// -o json` on host `i`; returns the revision it printed.
    pub fn policy_import(&self, i: usize, yaml: &str) -> anyhow::Result<u64> {
        let path = self.policy_file(yaml)?;
        let v = self
            .cli_json(i, &["policy", "import", &path.display().to_string()])
            .with_context(|| format!("policy import on h{i}:\n{yaml}"))?;
        v["revision"]
            .as_u64()
            .ok_or_else(|| anyhow!("no revision in the import output {v}"))
    }

    /// Writes `yaml` to a new file `policy-<n>.yaml` in the lab dir (the CLI runs in the
    /// root namespace, so it reads the file where the test wrote it).
    pub fn policy_file(&self, yaml: &str) -> anyhow::Result<PathBuf> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.lab().dir().join(format!("policy-{n}.yaml"));
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// `membrane policy wait REV --timeout S -o json` on host `i`: what every node enforces.
    pub fn policy_wait(&self, i: usize, revision: u64, timeout_secs: u32) -> anyhow::Result<Value> {
        self.cli_json(
            i,
            &[
                "policy",
                "wait",
                &revision.to_string(),
                "--timeout",
                &timeout_secs.to_string(),
            ],
        )
        .with_context(|| format!("policy wait {revision} on h{i}; log: {}", self.log_tail(i)))
    }

    /// Imports `yaml` through host 1 and waits (from every host) until every node enforces
    /// the new revision; returns it.
    pub fn policy_apply(&self, yaml: &str) -> anyhow::Result<u64> {
        let rev = self.policy_import(1, yaml)?;
        for i in 1..=self.lab().len() {
            self.policy_wait(i, rev, 30)?;
        }
        Ok(rev)
    }

    /// `membrane policy explain --from F --to T --port P -o json` on host `i`.
    pub fn policy_explain(
        &self,
        i: usize,
        from: &str,
        to: &str,
        port: &str,
    ) -> anyhow::Result<Value> {
        self.cli_json(
            i,
            &[
                "policy", "explain", "--from", from, "--to", to, "--port", port,
            ],
        )
    }
}

/// A TCP echo from `from` to `to:port` succeeds within a few seconds (the first cross-node
/// packets may wait for the ipcache or a policy to settle).
pub fn expect_echo(from: &Endpoint, to: &Endpoint, port: u16) -> anyhow::Result<()> {
    let target = std::net::SocketAddr::from((to.ip, port));
    let mut last = crate::traffic::TcpAttempt::TimedOut;
    crate::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        last = crate::traffic::tcp_attempt(&from.netns, target, Duration::from_secs(2))?;
        Ok(last == crate::traffic::TcpAttempt::Echoed)
    })
    .map_err(|e| anyhow!("{} -> {}:{port}: {last:?} ({e:#})", from.netns, to.ip))
}

/// A TCP connect from `from` to `to:port` times out twice in a row (1 s each): the datapath
/// drops it — not refused with a RST, and not lost once by chance.
pub fn expect_dropped(from: &Endpoint, to: &Endpoint, port: u16) -> anyhow::Result<()> {
    let target = std::net::SocketAddr::from((to.ip, port));
    for _ in 0..2 {
        let got = crate::traffic::tcp_attempt(&from.netns, target, Duration::from_secs(1))?;
        anyhow::ensure!(
            got == crate::traffic::TcpAttempt::TimedOut,
            "{} -> {}:{port} should be dropped by policy, got {got:?}",
            from.netns,
            to.ip
        );
    }
    Ok(())
}
