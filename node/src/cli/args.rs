//! The command line's shape: every flag, subcommand and help text, as clap reads them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/membrane";
pub(super) const DEFAULT_SOCKET: &str = "/run/membrane/agent.sock";
pub(super) const DEFAULT_PLUGIN_SOCKET: &str = "/run/membrane/plugin.sock";
pub(super) const DEFAULT_CNI_QUEUE_DIR: &str = crate::cni::config::DEFAULT_QUEUE_DIR;

#[derive(Parser)]
#[command(
    name = "membrane",
    version,
    about = "eBPF networking and security agent with its own Raft registry"
)]
pub struct Cli {
    /// The local agent's API socket.
    #[arg(long, global = true, env = "MEMBRANE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(super) socket: PathBuf,
    /// Output format of listings.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    pub(super) output: Format,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Create a new cluster with this node as its first member, and print the join command.
    Init(InitArgs),
    /// Run the agent on this node.
    Agent(Box<AgentArgs>),
    /// Show the cluster, this node, and its Raft state.
    Status,
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The cluster CA: its status, and replacing it.
    #[command(subcommand)]
    Ca(CaCmd),
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
    /// Transparent encryption between nodes (a cluster setting) and its key epochs.
    #[command(subcommand)]
    Encrypt(EncryptCmd),
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
        /// What to measure: datapath, registry, gossip, tunnel, or cipher (ChaCha20-Poly1305
        /// on one core, in this process: ring, RustCrypto and openssl side by side).
        what: String,
        /// Passed through to membrane-lab.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
pub(super) struct MonitorArgs {
    /// Only events of this local endpoint (its number, as `membrane endpoint list` shows).
    #[arg(long)]
    pub(super) endpoint: Option<u32>,
    /// Only events where either side has this identity.
    #[arg(long)]
    pub(super) identity: Option<u32>,
    /// Which events: drop, policy (allowed by a rule), trace (needs the agent's
    /// --monitor-trace) or all.
    #[arg(long = "type", value_enum, default_value_t = MonitorKind::All)]
    pub(super) kind: MonitorKind,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum MonitorKind {
    Drop,
    Policy,
    Trace,
    All,
}

#[derive(Subcommand)]
pub(super) enum EndpointCmd {
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
pub(super) enum PolicyCmd {
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

#[derive(Subcommand)]
pub(super) enum BpfCmd {
    /// The ipcache map: prefix -> identity and tunnel endpoint.
    #[command(subcommand)]
    Ipcache(BpfListCmd),
    /// The endpoints map: local endpoint address -> interface, identity, MACs.
    #[command(subcommand)]
    Endpoint(BpfListCmd),
}

#[derive(Subcommand)]
pub(super) enum BpfListCmd {
    List,
}

#[derive(Subcommand)]
pub(super) enum GossipCmd {
    /// Show the key ids and which one seals.
    Keys,
    /// Install a new key, switch every node to it, then remove the old one.
    RotateKey,
}

#[derive(Args)]
pub(super) struct InitArgs {
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub(super) state_dir: PathBuf,
    #[arg(long, default_value = "membrane")]
    pub(super) cluster_name: String,
    /// 1-255; goes into bits 16-23 of every identity so meshed clusters never collide.
    #[arg(long, default_value_t = 1)]
    pub(super) cluster_id: u8,
    /// This node's name (default: host name).
    #[arg(long)]
    pub(super) name: Option<String>,
    /// Address other nodes reach this one on (default: first IPv4 address, port 7700).
    #[arg(long)]
    pub(super) advertise_addr: Option<String>,
    /// The pool that node pod CIDRs are cut from.
    #[arg(long, default_value = "10.128.0.0/9")]
    pub(super) pod_cidr: Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub(super) node_cidr_size: u8,
    /// Lifetime of the first join token, in seconds.
    #[arg(long, default_value_t = crate::agent::DEFAULT_TOKEN_TTL_SECS)]
    pub(super) token_ttl: u64,
}

#[derive(Args)]
pub(super) struct AgentArgs {
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub(super) state_dir: PathBuf,
    /// Listen address of the node RPC server (default 0.0.0.0 and the advertised port).
    #[arg(long)]
    pub(super) listen_addr: Option<std::net::SocketAddr>,
    /// Address other nodes reach this one on; used when joining.
    #[arg(long)]
    pub(super) advertise_addr: Option<String>,
    /// This node's name when joining (default: host name).
    #[arg(long)]
    pub(super) name: Option<String>,
    /// Join the cluster through this node (ip:port); first start only. The token comes
    /// from --token-file, MEMBRANE_JOIN_TOKEN or --token (exactly one).
    #[arg(long, requires = "ca_hash")]
    pub(super) join: Option<String>,
    /// Join token ID.SECRET. Visible to local users in /proc: prefer --token-file or
    /// MEMBRANE_JOIN_TOKEN.
    #[arg(long, requires = "join", conflicts_with = "token_file")]
    pub(super) token: Option<String>,
    /// A file holding the join token ID.SECRET (mode 0600 or stricter).
    #[arg(long, requires = "join")]
    pub(super) token_file: Option<PathBuf>,
    /// sha256:HEX of the cluster CA, as printed by `membrane init`.
    #[arg(long, requires = "join")]
    pub(super) ca_hash: Option<String>,
    /// Number of Raft voters to keep (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    pub(super) voters: usize,
    /// Seconds a voter may be down before autopilot replaces it with a learner.
    #[arg(long, default_value_t = 10)]
    pub(super) voter_down_after: u64,
    /// Seconds a node may be down before autopilot removes it from the registry.
    #[arg(long, default_value_t = 24 * 3600)]
    pub(super) remove_dead_after: u64,
    /// Where gossip listens (UDP; default 0.0.0.0 and the RPC port + 1).
    #[arg(long)]
    pub(super) gossip_addr: Option<std::net::SocketAddr>,
    /// The plugin API socket for orchestrators and membrane-cni.
    #[arg(long, default_value = DEFAULT_PLUGIN_SOCKET)]
    pub(super) plugin_socket: PathBuf,
    /// Where BPF maps are pinned (default /sys/fs/bpf/membrane/<node name>).
    #[arg(long)]
    pub(super) bpf_pin_dir: Option<PathBuf>,
    /// Deletes that membrane-cni queued while the agent was down.
    #[arg(long, default_value = DEFAULT_CNI_QUEUE_DIR)]
    pub(super) cni_queue_dir: PathBuf,
    /// UDP port of the VXLAN overlay.
    #[arg(long, default_value_t = 8472)]
    pub(super) tunnel_port: u16,
    /// Name of the VXLAN overlay device.
    #[arg(long, default_value = "membrane_vx")]
    pub(super) overlay_device: String,
    /// UDP port of the encryption tunnel (sealed node-to-node traffic).
    #[arg(long, default_value_t = crate::datapath::DEFAULT_ENCRYPTION_PORT)]
    pub(super) encryption_port: u16,
    /// Name of the encryption tunnel's TUN device.
    #[arg(long, default_value = "membrane_tun")]
    pub(super) encryption_device: String,
    /// Seconds between tunnel key rotations (the leader begins a new epoch).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(10..))]
    pub(super) key_rotation_interval: i64,
    /// Tunnel worker threads (default: the number of CPUs).
    #[arg(long)]
    pub(super) tunnel_workers: Option<usize>,
    /// Endpoint MTU (default: the underlay MTU minus 50 for VXLAN).
    #[arg(long, value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub(super) mtu: Option<u32>,
    /// Masquerade pod traffic that leaves the pod pool (nftables).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(super) masquerade: bool,
    /// Keep established connections that a policy change no longer allows (default: cut
    /// them by removing their conntrack entries).
    #[arg(long)]
    pub(super) keep_established: bool,
    /// Emit a trace event for every packet forwarded or delivered (for `membrane monitor
    /// --type trace`; costs an event per packet, within --events-per-sec).
    #[arg(long)]
    pub(super) monitor_trace: bool,
    /// Flow events each CPU may emit per second (also the burst); the rest are counted
    /// as lost.
    #[arg(long, default_value_t = membrane_ebpf::DatapathConfig::DEFAULT_EVENTS_PER_SEC,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) events_per_sec: u32,
    /// Where the Prometheus metrics endpoint listens (GET /metrics); empty turns it off.
    #[arg(long, default_value = crate::observe::metrics::DEFAULT_ADDR)]
    pub(super) metrics_addr: String,
    /// Log filter (tracing EnvFilter syntax), e.g. info or membrane=debug.
    #[arg(long, env = "MEMBRANE_LOG", default_value = "info")]
    pub(super) log: String,
    /// Group that may use the agent and plugin sockets (mode 0660); default: root only (0600).
    #[arg(long)]
    pub(super) socket_group: Option<String>,
    /// Admit nodes whose advertised IP differs from the address their join comes from
    /// (nodes behind NAT); by default such a join is refused.
    #[arg(long)]
    pub(super) join_allow_any_addr: bool,
    /// Failed joins one source address may make per minute before its joins are refused
    /// for the rest of the minute; 0 turns the limit off.
    #[arg(long, default_value_t = 5)]
    pub(super) join_failures_per_minute: u32,
}

/// Raft needs an odd voter count to tolerate failures; 1 is for single-node labs.
pub(super) fn parse_voters(s: &str) -> Result<usize, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s:?} is not a voter count; use 1, 3 or 5")),
    }
}

#[derive(Subcommand)]
pub(super) enum NodeCmd {
    /// List the nodes in the registry with their Raft role.
    List,
    /// Remove a node from the registry and the Raft membership (its id is never reused).
    Remove { id: u64 },
    /// Each node's certificate: serial, expiry and days left (renewed when a third is left).
    Certs,
    /// Renew this node's certificate now (same key); the agent restarts itself to use it.
    RenewCert,
}

#[derive(Subcommand)]
pub(super) enum EncryptCmd {
    /// Turn encryption on for the whole cluster (run on a voter); waits until a key epoch
    /// is active.
    Enable {
        /// Return once the setting is committed.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for an active epoch.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Turn encryption off (traffic goes as plaintext VXLAN again).
    Disable,
    /// Rotate the tunnel keys now (run on a voter); waits until the new epoch is active.
    Rotate {
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// This node's tunnel: epochs, and per peer the send and accepted epochs, packets and
    /// bytes, and drops by reason.
    Status,
}

#[derive(Subcommand)]
pub(super) enum CaCmd {
    /// The CA that signs now (its --ca-hash) and the progress of a rotation.
    Status,
    /// Replace the cluster CA (run on a voter): every node trusts old and new, renews its
    /// certificate from the new, then retires the old, one node at a time (each agent
    /// restarts in place). Returns at the start; follow it with `membrane ca status`.
    Rotate,
}

#[derive(Subcommand)]
pub(super) enum TokenCmd {
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
pub(super) enum IdentityCmd {
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
