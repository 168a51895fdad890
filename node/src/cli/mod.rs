//! The command line: parses arguments, talks to the local agent over its Unix socket, prints
//! tables or JSON. `anyhow` stops here: every error is printed with its causes.

mod flow;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use membrane_proto::v1 as pb;
use membrane_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::agent::{AgentOptions, JoinArgs};
use crate::init::InitOptions;
use output::Output;

const DEFAULT_STATE_DIR: &str = "/var/lib/membrane";
const DEFAULT_SOCKET: &str = "/run/membrane/agent.sock";
const DEFAULT_PLUGIN_SOCKET: &str = "/run/membrane/plugin.sock";
const DEFAULT_CNI_QUEUE_DIR: &str = crate::cni::config::DEFAULT_QUEUE_DIR;

#[derive(Parser)]
#[command(
    name = "membrane",
    version,
    about = "eBPF networking and security agent with its own Raft registry"
)]
pub struct Cli {
    /// The local agent's API socket.
    #[arg(long, global = true, env = "MEMBRANE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format of listings.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new cluster with this node as its first member, and print the join command.
    Init(InitArgs),
    /// Run the agent on this node.
    Agent(Box<AgentArgs>),
    /// Show the cluster, this node, and its Raft state.
    Status,
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Security identities.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Gossip membership as this node sees it; --watch streams changes.
    Members {
        #[arg(long)]
        watch: bool,
    },
    /// The gossip keyring.
    #[command(subcommand)]
    Gossip(GossipCmd),
    /// Endpoints (containers and processes joined to the datapath).
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Network policies (CiliumNetworkPolicy-shaped YAML; see docs/policy.md).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// What the BPF maps of this node hold, read from the kernel.
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Stream this node's flow events (drops, policy verdicts, traces) until Ctrl-C.
    Monitor(MonitorArgs),
    /// Benchmarks against plain kernel paths (runs membrane-lab, built beside this binary).
    Bench {
        /// What to measure: datapath, registry or gossip.
        what: String,
        /// Passed through to membrane-lab.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
struct MonitorArgs {
    /// Only events of this local endpoint (its number, as `membrane endpoint list` shows).
    #[arg(long)]
    endpoint: Option<u32>,
    /// Only events where either side has this identity.
    #[arg(long)]
    identity: Option<u32>,
    /// Which events: drop, policy (allowed by a rule), trace (needs the agent's
    /// --monitor-trace) or all.
    #[arg(long = "type", value_enum, default_value_t = MonitorKind::All)]
    kind: MonitorKind,
}

#[derive(Clone, Copy, ValueEnum)]
enum MonitorKind {
    Drop,
    Policy,
    Trace,
    All,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// List endpoints of every node (from the registry), with their state on this node.
    List {
        /// Only this node's endpoints.
        #[arg(long)]
        local: bool,
    },
    /// Show one endpoint: a number of this node, a container id, or an IPv4 address.
    Get { key: String },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate and store the policies of FILE ("-" for stdin), all or none.
    Import { file: PathBuf },
    /// Show one policy (or all) as YAML.
    Get { name: Option<String> },
    /// Delete a policy.
    Delete { name: String },
    /// Check FILE without storing anything (no agent needed).
    Validate { file: PathBuf },
    /// Wait until every live node enforces revision REV.
    Wait {
        revision: u64,
        /// Seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Say which rule allows or denies a packet, from the same engine as the datapath.
    Explain {
        /// Labels (app=web,tier=fe), an endpoint (number, container id, IPv4) or an address.
        #[arg(long)]
        from: String,
        /// Same forms as --from.
        #[arg(long)]
        to: String,
        /// PORT/PROTO, e.g. 80/TCP, 53/UDP, ICMP.
        #[arg(long)]
        port: String,
    },
}

/// Reads a policy file, or stdin for "-".
fn read_source(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the policy from stdin")?;
        return Ok((s, "-".into()));
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((text, file.display().to_string()))
}

#[derive(Subcommand)]
enum BpfCmd {
    /// The ipcache map: prefix -> identity and tunnel endpoint.
    #[command(subcommand)]
    Ipcache(BpfListCmd),
    /// The endpoints map: local endpoint address -> interface, identity, MACs.
    #[command(subcommand)]
    Endpoint(BpfListCmd),
}

#[derive(Subcommand)]
enum BpfListCmd {
    List,
}

#[derive(Subcommand)]
enum GossipCmd {
    /// Show the key ids and which one seals.
    Keys,
    /// Install a new key, switch every node to it, then remove the old one.
    RotateKey,
}

#[derive(Args)]
struct InitArgs {
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[arg(long, default_value = "membrane")]
    cluster_name: String,
    /// 1-255; goes into bits 16-23 of every identity so meshed clusters never collide.
    #[arg(long, default_value_t = 1)]
    cluster_id: u8,
    /// This node's name (default: host name).
    #[arg(long)]
    name: Option<String>,
    /// Address other nodes reach this one on (default: first IPv4 address, port 7700).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// The pool that node pod CIDRs are cut from.
    #[arg(long, default_value = "10.128.0.0/9")]
    pod_cidr: Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_size: u8,
    /// Lifetime of the first join token, in seconds.
    #[arg(long, default_value_t = crate::agent::DEFAULT_TOKEN_TTL_SECS)]
    token_ttl: u64,
}

#[derive(Args)]
struct AgentArgs {
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Listen address of the node RPC server (default 0.0.0.0 and the advertised port).
    #[arg(long)]
    listen_addr: Option<std::net::SocketAddr>,
    /// Address other nodes reach this one on; used when joining.
    #[arg(long)]
    advertise_addr: Option<String>,
    /// This node's name when joining (default: host name).
    #[arg(long)]
    name: Option<String>,
    /// Join the cluster through this node (ip:port); first start only.
    #[arg(long, requires_all = ["token", "ca_hash"])]
    join: Option<String>,
    /// Join token ID.SECRET.
    #[arg(long, requires = "join")]
    token: Option<String>,
    /// sha256:HEX of the cluster CA, as printed by `membrane init`.
    #[arg(long, requires = "join")]
    ca_hash: Option<String>,
    /// Number of Raft voters to keep (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    voters: usize,
    /// Seconds a voter may be down before autopilot replaces it with a learner.
    #[arg(long, default_value_t = 10)]
    voter_down_after: u64,
    /// Seconds a node may be down before autopilot removes it from the registry.
    #[arg(long, default_value_t = 24 * 3600)]
    remove_dead_after: u64,
    /// Where gossip listens (UDP; default 0.0.0.0 and the RPC port + 1).
    #[arg(long)]
    gossip_addr: Option<std::net::SocketAddr>,
    /// The plugin API socket for orchestrators and membrane-cni.
    #[arg(long, default_value = DEFAULT_PLUGIN_SOCKET)]
    plugin_socket: PathBuf,
    /// Where BPF maps are pinned (default /sys/fs/bpf/membrane/<node name>).
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Deletes that membrane-cni queued while the agent was down.
    #[arg(long, default_value = DEFAULT_CNI_QUEUE_DIR)]
    cni_queue_dir: PathBuf,
    /// UDP port of the VXLAN overlay.
    #[arg(long, default_value_t = 8472)]
    tunnel_port: u16,
    /// Name of the VXLAN overlay device.
    #[arg(long, default_value = "membrane_vx")]
    overlay_device: String,
    /// Endpoint MTU (default: the underlay MTU minus 50 for VXLAN).
    #[arg(long, value_parser = clap::value_parser!(u32).range(576..=65535))]
    mtu: Option<u32>,
    /// Masquerade pod traffic that leaves the pod pool (nftables).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    masquerade: bool,
    /// Keep established connections that a policy change no longer allows (default: cut
    /// them by removing their conntrack entries).
    #[arg(long)]
    keep_established: bool,
    /// Emit a trace event for every packet forwarded or delivered (for `membrane monitor
    /// --type trace`; costs an event per packet, within --events-per-sec).
    #[arg(long)]
    monitor_trace: bool,
    /// Flow events each CPU may emit per second (also the burst); the rest are counted
    /// as lost.
    #[arg(long, default_value_t = membrane_ebpf::DatapathConfig::DEFAULT_EVENTS_PER_SEC,
          value_parser = clap::value_parser!(u32).range(1..))]
    events_per_sec: u32,
    /// Where the Prometheus metrics endpoint listens (GET /metrics); empty turns it off.
    #[arg(long, default_value = crate::observe::metrics::DEFAULT_ADDR)]
    metrics_addr: String,
    /// Log filter (tracing EnvFilter syntax), e.g. info or membrane=debug.
    #[arg(long, env = "MEMBRANE_LOG", default_value = "info")]
    log: String,
}

/// Raft needs an odd voter count to tolerate failures; 1 is for single-node labs.
fn parse_voters(s: &str) -> Result<usize, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s:?} is not a voter count; use 1, 3 or 5")),
    }
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List the nodes in the registry with their Raft role.
    List,
    /// Remove a node from the registry and the Raft membership (its id is never reused).
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a join token and print the command that uses it.
    Create {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = crate::agent::DEFAULT_TOKEN_TTL_SECS)]
        ttl: u64,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = crate::agent::DEFAULT_TOKEN_USES)]
        uses: u32,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Allocate (or take a reference on) the identity of a label set: k=v ...
    Allocate {
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// List identities.
    List,
    /// Release one reference on the identity of a label set: k=v ...
    Release {
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.output);
    let result = match cli.command {
        Command::Agent(args) => run_agent(*args, &cli.socket),
        Command::Init(args) => run_init(args, &out),
        Command::Bench { what, args } => run_bench(&what, &args),
        Command::Policy(PolicyCmd::Validate { file }) => run_validate(&file, &out),
        other => runtime().and_then(|rt| rt.block_on(run_client(other, &cli.socket, &out))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::transport::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run_agent(args: AgentArgs, socket: &std::path::Path) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| anyhow!("bad --log filter {:?}: {e}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let join = match (args.join, args.token, args.ca_hash) {
        (Some(addr), Some(token), Some(ca_hash)) => Some(JoinArgs {
            addr,
            token,
            ca_hash,
        }),
        _ => None,
    };
    let metrics_addr = crate::observe::metrics::parse_addr(&args.metrics_addr)?;
    let opts = AgentOptions {
        state_dir: args.state_dir,
        socket: socket.to_path_buf(),
        listen: args.listen_addr,
        advertise: args.advertise_addr,
        name: args.name,
        join,
        autopilot: crate::cluster::autopilot::AutopilotConfig {
            target_voters: args.voters,
            voter_down_after: std::time::Duration::from_secs(args.voter_down_after),
            remove_after: std::time::Duration::from_secs(args.remove_dead_after),
        },
        gossip_listen: args.gossip_addr,
        plugin_socket: args.plugin_socket,
        cni_queue_dir: args.cni_queue_dir,
        datapath: crate::datapath::DatapathOptions {
            pin_dir: args.bpf_pin_dir,
            tunnel_port: args.tunnel_port,
            overlay_device: args.overlay_device,
            mtu: args.mtu,
            masquerade: args.masquerade,
            trace: args.monitor_trace,
            events_per_sec: args.events_per_sec,
        },
        keep_established: args.keep_established,
        metrics_addr,
    };
    runtime()?.block_on(crate::agent::run(opts))
}

/// `membrane policy validate`: the same parser and checks as an import, locally.
fn run_validate(file: &std::path::Path, out: &Output) -> anyhow::Result<()> {
    let (text, label) = read_source(file)?;
    let policies = crate::policy::parse_policies(&label, &text).map_err(|e| anyhow!("{e}"))?;
    let names: Vec<String> = policies.iter().map(|p| p.metadata.name.clone()).collect();
    out.message(
        &format!(
            "{label}: {} valid policies: {}",
            names.len(),
            names.join(", ")
        ),
        serde_json::json!({"file": label, "valid": true, "policies": names}),
    );
    Ok(())
}

/// `membrane bench WHAT`: the benchmarks build real labs of namespaces, which is the lab
/// crate's job; run its binary from beside this one.
fn run_bench(what: &str, args: &[String]) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let lab = me.with_file_name("membrane-lab");
    if !lab.exists() {
        anyhow::bail!(
            "{} is missing; build it with `cargo build --release -p membrane-jepsen` (or run scripts/bench.sh {what})",
            lab.display()
        );
    }
    let status = std::process::Command::new(&lab)
        .arg("bench")
        .arg(what)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", lab.display()))?;
    if !status.success() {
        anyhow::bail!("the {what} benchmark failed ({status})");
    }
    Ok(())
}

fn run_init(args: InitArgs, out: &Output) -> anyhow::Result<()> {
    let advertise = match args.advertise_addr {
        Some(a) => a,
        None => crate::default_advertise_addr()?,
    };
    let opts = InitOptions {
        state_dir: args.state_dir,
        cluster_name: args.cluster_name,
        cluster_id: args.cluster_id,
        node_name: args.name.unwrap_or_else(crate::default_node_name),
        advertise,
        pod_cidr: args.pod_cidr,
        node_cidr_size: args.node_cidr_size,
        token_ttl_secs: args.token_ttl,
    };
    let report = crate::init::init(&opts)?;
    out.init(&report);
    Ok(())
}

async fn connect(socket: &std::path::Path) -> anyhow::Result<AgentClient<Channel>> {
    let channel = crate::transport::unix_channel(socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the agent at {}; is `membrane agent` running (or pass --socket)?",
                socket.display()
            )
        })?;
    Ok(AgentClient::new(channel))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

async fn run_client(cmd: Command, socket: &std::path::Path, out: &Output) -> anyhow::Result<()> {
    let mut c = connect(socket).await?;
    match cmd {
        Command::Status => out.status(
            &c.status(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Node(NodeCmd::List) => out.nodes(
            &c.node_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Node(NodeCmd::Remove { id }) => {
            c.node_remove(pb::NodeRemoveRequest { id })
                .await
                .map_err(status_err)?;
            out.message(
                &format!("node {id} removed"),
                serde_json::json!({"removed": id}),
            );
        }
        Command::Token(TokenCmd::Create {
            ttl,
            uses,
            description,
        }) => {
            if uses == 0 {
                anyhow::bail!("--uses must be at least 1");
            }
            let req = pb::TokenCreateRequest {
                ttl_seconds: ttl,
                max_uses: uses,
                description,
            };
            out.token_created(&c.token_create(req).await.map_err(status_err)?.into_inner())
        }
        Command::Token(TokenCmd::List) => out.tokens(
            &c.token_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Token(TokenCmd::Revoke { id }) => {
            c.token_revoke(pb::TokenRevokeRequest { id: id.clone() })
                .await
                .map_err(status_err)?;
            out.message(
                &format!("token {id} revoked"),
                serde_json::json!({"revoked": id}),
            );
        }
        Command::Identity(IdentityCmd::Allocate { labels }) => out.identity(
            &c.identity_allocate(pb::IdentityRequest { labels })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Identity(IdentityCmd::List) => out.identities(
            &c.identity_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Identity(IdentityCmd::Release { labels }) => out.released(
            &c.identity_release(pb::IdentityRequest { labels })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Members { watch } => {
            let mut stream = c
                .watch_members(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner();
            if watch {
                while let Some(e) = stream.message().await.map_err(status_err)? {
                    out.member_event(&e);
                }
                return Ok(());
            }
            // The stream opens with the current members, then waits for changes: take what
            // arrives at once.
            let mut members = Vec::new();
            while let Ok(Ok(Some(e))) =
                tokio::time::timeout(std::time::Duration::from_millis(200), stream.message()).await
            {
                members.push(e);
            }
            out.members(&members);
        }
        Command::Gossip(GossipCmd::Keys) => out.keyring(
            &c.gossip_keyring(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Gossip(GossipCmd::RotateKey) => out.keyring(
            &c.gossip_rotate_key(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Endpoint(EndpointCmd::List { local }) => out.endpoints(
            &c.endpoint_list(pb::EndpointListRequest { local_only: local })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Endpoint(EndpointCmd::Get { key }) => out.endpoint(
            &c.endpoint_get(pb::EndpointGetRequest { key })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Bpf(BpfCmd::Ipcache(BpfListCmd::List)) => out.bpf_ipcache(
            &c.bpf_ipcache_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Bpf(BpfCmd::Endpoint(BpfListCmd::List)) => out.bpf_endpoints(
            &c.bpf_endpoint_list(pb::Empty {})
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Monitor(args) => {
            let kind = match args.kind {
                MonitorKind::Drop => pb::MonitorType::Drop,
                MonitorKind::Policy => pb::MonitorType::Policy,
                MonitorKind::Trace => pb::MonitorType::Trace,
                MonitorKind::All => pb::MonitorType::All,
            };
            let req = pb::MonitorRequest {
                endpoint_id: args.endpoint.unwrap_or(0),
                identity: args.identity.unwrap_or(0),
                r#type: kind as i32,
            };
            let mut stream = c.monitor(req).await.map_err(status_err)?.into_inner();
            loop {
                tokio::select! {
                    msg = stream.message() => match msg.map_err(status_err)? {
                        Some(m) => out.flow_event(&m),
                        None => anyhow::bail!("the agent ended the event stream (did it stop?)"),
                    },
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        Command::Policy(PolicyCmd::Import { file }) => {
            let (source, file) = read_source(&file)?;
            out.policy_imported(
                &c.policy_import(pb::PolicyImportRequest { source, file })
                    .await
                    .map_err(status_err)?
                    .into_inner(),
            )
        }
        Command::Policy(PolicyCmd::Get { name }) => out.policies(
            &c.policy_get(pb::PolicyGetRequest {
                name: name.unwrap_or_default(),
            })
            .await
            .map_err(status_err)?
            .into_inner(),
        ),
        Command::Policy(PolicyCmd::Delete { name }) => {
            let r = c
                .policy_delete(pb::PolicyDeleteRequest { name: name.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            out.message(
                &format!("policy {name} deleted (revision {})", r.revision),
                serde_json::json!({"deleted": name, "revision": r.revision}),
            );
        }
        Command::Policy(PolicyCmd::Wait { revision, timeout }) => out.policy_waited(
            &c.policy_wait(pb::PolicyWaitRequest {
                revision,
                timeout_seconds: timeout,
            })
            .await
            .map_err(status_err)?
            .into_inner(),
        ),
        Command::Policy(PolicyCmd::Explain { from, to, port }) => out.policy_explained(
            &c.policy_explain(pb::PolicyExplainRequest { from, to, port })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        Command::Init(_)
        | Command::Agent(_)
        | Command::Bench { .. }
        | Command::Policy(PolicyCmd::Validate { .. }) => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}
