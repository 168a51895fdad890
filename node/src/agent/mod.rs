//! The agent: one per node. It owns the node's state directory, runs the Raft registry and
//! the node-to-node RPC server (mutual TLS), serves the local API on a Unix socket, and keeps
//! the Raft membership in step with the registry.

mod api;
mod reconcile;
pub mod socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use membrane_consensus::network::{Network, RaftService};
use membrane_crypto::ca::ca_hash_of_cert_der;
use membrane_crypto::keys::NodeKeys;
use membrane_proto::v1::agent_server::AgentServer;
use membrane_proto::v1::cert_authority_server::CertAuthorityServer;
use membrane_proto::v1::cluster_server::ClusterServer;
use membrane_proto::v1::join_server::JoinServer;
use membrane_proto::v1::raft_server::RaftServer;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

pub use crate::rpc::JoinArgs;
pub use api::{join_command, DEFAULT_TOKEN_TTL_SECS, DEFAULT_TOKEN_USES};

use crate::authz::{Authenticator, JoinTrust, RaftGate};
use crate::ca::CaCustody;
use crate::cluster::api::ClusterApi;
use crate::cluster::{autopilot, gossip};
use crate::datapath::{self, NodeDatapath};
use crate::endpoints::api::EndpointsApi;
use crate::endpoints::{self, EndpointManager, EndpointsSlot};
use crate::ipcache::api::IpcacheApi;
use crate::observe::api::ObserveApi;
use crate::observe::{metrics, monitor, Telemetry};
use crate::policy::api::{PolicyApi, PolicySlot};
use crate::policy::apply::PolicySync;
use crate::registry::RegistryClient;
use crate::rpc::{bootstrap, ca_service, cluster_service, join, join_service};
use crate::state::StateDir;
use crate::transport::NodeTls;

/// How an agent is started.
pub struct AgentOptions {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Where the node RPC server listens; defaults to 0.0.0.0 with the advertised port.
    pub listen: Option<SocketAddr>,
    /// Address other nodes use to reach this one (used when joining).
    pub advertise: Option<String>,
    pub name: Option<String>,
    pub join: Option<JoinArgs>,
    pub autopilot: autopilot::AutopilotConfig,
    /// Where gossip listens (default 0.0.0.0 and the RPC port + 1).
    pub gossip_listen: Option<SocketAddr>,
    /// The plugin API socket (orchestrators, `membrane-cni`).
    pub plugin_socket: PathBuf,
    /// Deletes queued by `membrane-cni` while the agent was down.
    pub cni_queue_dir: PathBuf,
    /// BPF pin dir, overlay, MTU, masquerade. `pin_dir` None: /sys/fs/bpf/membrane/<node>.
    pub datapath: datapath::DatapathOptions,
    /// Keep established connections that a policy change no longer allows (default: cut).
    pub keep_established: bool,
    /// Where the Prometheus endpoint listens; None: off.
    pub metrics_addr: Option<SocketAddr>,
    /// Group given access to the local sockets (mode 0660); None: root only (0600).
    pub socket_group: Option<String>,
    /// How this node admits others (rate limit of failed joins, advertised address rule).
    pub join_policy: join_service::JoinPolicy,
    /// The encryption tunnel's flags.
    pub tunnel: crate::tunnel::control::TunnelOptions,
}

/// Where a node pins its BPF maps by default.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/membrane";

/// Raft timing for a LAN with fsync'd writes: elections well above the append latency.
fn raft_config(cluster_name: &str) -> anyhow::Result<Arc<openraft::Config>> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 150,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    // Checked before anything else so that a typo fails the start, not the first bind.
    let socket_access = socket::Access::from_group_name(opts.socket_group.as_deref())?;
    let state = StateDir::open(&opts.state_dir)?;
    let keys = NodeKeys::load_or_create(&state.keys_dir())?;
    let me = match (state.identity()?, &opts.join) {
        (Some(me), join) => {
            if join.is_some() {
                info!(node_id = me.node_id, "this node is already a member; ignoring --join");
            }
            me
        }
        (None, Some(args)) => {
            let name = opts.name.clone().unwrap_or_else(crate::default_node_name);
            let rpc_addr = match &opts.advertise {
                Some(a) => a.clone(),
                None => crate::default_advertise_addr()?,
            };
            join::join(&state, &keys, args, &name, &rpc_addr).await?
        }
        (None, None) => bail!(
            "{} holds no cluster state: run `membrane init` to create a cluster, or pass --join ADDR --token ID.SECRET --ca-hash sha256:HEX to join one",
            state.root().display()
        ),
    };
    let (ca_pem, cert_pem) = state.certificates()?;
    let ca_hash = {
        let der =
            crate::transport::first_cert_der(&ca_pem).context("the cluster CA certificate")?;
        ca_hash_of_cert_der(&der)?
    };
    let tls = NodeTls {
        ca_pem,
        cert_pem,
        key_pem: keys.tls_key_pem().to_string(),
    };

    // A rewrite of the Raft database asked for by the CA key scrub needs it closed: now.
    let rewrote_at_start = crate::ca::scrub::rewrite_if_requested(&state.raft_dir())?;
    let (log_store, sm_store) = membrane_consensus::store::open(&state.raft_dir())?;
    let registry = sm_store.registry();
    let raft = membrane_consensus::Raft::new(
        me.node_id,
        raft_config(&me.cluster_name)?,
        Network::new(tls.client_config()),
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| anyhow!("cannot start raft: {e}"))?;
    let client = Arc::new(RegistryClient::new(raft.clone(), registry, tls.clone()));
    let authenticator = Authenticator {
        client: client.clone(),
        join_trust: Arc::new(JoinTrust::load(state.root())?),
    };

    // Node RPC server.
    let listen = match opts.listen {
        Some(l) => l,
        None => {
            let port = me
                .rpc_addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(crate::DEFAULT_RPC_PORT);
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is another agent running?"))?;
    let join_counters = Arc::new(join_service::JoinCounters::default());
    let restart = Arc::new(crate::ca::run::Restart::default());
    let ca = crate::ca::run::CaContext {
        client: client.clone(),
        custody: CaCustody::new(state.clone()),
        state: state.clone(),
        tls: tls.clone(),
        me: me.clone(),
        restart: restart.clone(),
        rewrote_at_start,
    };
    let node_server = tonic::transport::Server::builder()
        .tls_config(tls.server_config())?
        .add_service(JoinServer::new(join_service::JoinService::new(
            client.clone(),
            Arc::new(ca.custody.clone()),
            tls.clone(),
            opts.join_policy,
            join_counters.clone(),
        )))
        .add_service(InterceptedService::new(
            // Snapshots can exceed tonic's default 4 MiB message limit.
            RaftServer::new(RaftService::new(raft.clone(), Arc::new(RaftGate)))
                .max_decoding_message_size(membrane_consensus::network::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(membrane_consensus::network::MAX_MESSAGE_BYTES),
            authenticator.clone(),
        ))
        .add_service(CertAuthorityServer::with_interceptor(
            ca_service::CaService {
                client: client.clone(),
                custody: ca.custody.clone(),
            },
            authenticator.clone(),
        ))
        .add_service(ClusterServer::with_interceptor(
            cluster_service::ClusterService {
                client: client.clone(),
            },
            authenticator,
        ))
        // Nagle off: Raft and forwarded writes are small request/response messages, and
        // Nagle against delayed ACKs stalls them by 40 ms.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true)),
        );
    let node_server = tokio::spawn(node_server);

    let liveness = gossip::Liveness::default();
    let gossip = gossip::spawn(
        client.clone(),
        gossip::GossipSetup {
            me: me.clone(),
            listen: opts.gossip_listen,
            secret: membrane_gossip::NodeSecret(keys.x25519_secret().clone()),
            replay_state: state.root().join("gossip-replay"),
        },
        liveness.clone(),
    );

    // Local API on the Unix socket.
    let unix = socket::bind(&opts.socket, socket_access)?;
    let tunnel_shared = Arc::new(crate::tunnel::control::TunnelShared::default());
    let endpoints_slot: EndpointsSlot = Arc::default();
    let policy_slot: PolicySlot = Arc::default();
    // monitor-metrics: event stream, rule names and enforced revision (see Telemetry).
    let telemetry = Telemetry {
        monitor: monitor::Monitor::new(monitor::CHANNEL_CAPACITY),
        rule_names: Arc::default(),
        enforced_revision: Arc::default(),
    };
    if let Some(addr) = opts.metrics_addr {
        let listener = metrics::bind(addr).await?;
        tokio::spawn(metrics::serve(
            listener,
            metrics::Sources {
                client: client.clone(),
                gossip: gossip.clone(),
                endpoints: endpoints_slot.clone(),
                monitor: telemetry.monitor.clone(),
                enforced_revision: telemetry.enforced_revision.clone(),
                join: join_counters.clone(),
                tunnel: tunnel_shared.clone(),
            },
        ));
    }
    let api = api::AgentApi {
        cluster: ClusterApi {
            client: client.clone(),
            gossip: gossip.clone(),
            me: me.clone(),
            ca_hash,
        },
        endpoints: EndpointsApi {
            client: client.clone(),
            node_id: me.node_id,
            endpoints: endpoints_slot.clone(),
        },
        ipcache: IpcacheApi {
            endpoints: endpoints_slot.clone(),
        },
        observe: ObserveApi {
            monitor: telemetry.monitor.clone(),
        },
        policy: PolicyApi {
            client: client.clone(),
            gossip: gossip.clone(),
            node_id: me.node_id,
            sync: policy_slot.clone(),
        },
        ca: crate::ca::api::CaApi { ctx: ca.clone() },
        encryption: crate::tunnel::api::EncryptionApi {
            client: client.clone(),
            shared: tunnel_shared.clone(),
            me: me.node_id,
            port: opts.tunnel.port,
        },
    };
    let api_server = tonic::transport::Server::builder()
        .add_service(AgentServer::new(api))
        .serve_with_incoming(UnixListenerStream::new(unix));
    let api_server = tokio::spawn(api_server);
    info!(node_id = me.node_id, name = %me.node_name, %listen, socket = %opts.socket.display(), "agent started");

    if let Some(b) = state.bootstrap()? {
        bootstrap::bootstrap(&raft, &client, b, &me).await?;
        state.remove_bootstrap()?;
    }
    let ca_custody = tokio::spawn(crate::ca::run::custody(ca.clone()));
    let ca_renewal = tokio::spawn(crate::ca::run::renewal(ca.clone()));
    let ca_rotation = tokio::spawn(crate::ca::rotation::run(ca.clone()));
    let reconciler = tokio::spawn(autopilot::run(
        client.clone(),
        liveness.clone(),
        opts.autopilot.clone(),
        gossip.clone(),
    ));
    // The ports endpoints may not reach on node addresses without an explicit policy:
    // RPC, gossip, the encryption tunnel, VXLAN.
    let gossip_port = opts
        .gossip_listen
        .or_else(|| me.rpc_addr.parse().ok().and_then(gossip::gossip_addr_of))
        .map_or(0, |a| a.port());
    let datapath_opts = datapath::DatapathOptions {
        control_ports: [
            listen.port(),
            gossip_port,
            opts.tunnel.port,
            opts.datapath.tunnel_port,
        ],
        ..opts.datapath.clone()
    };
    let datapath_task = tokio::spawn(run_datapath(DatapathTask {
        client: client.clone(),
        me: me.clone(),
        opts: datapath_opts,
        plugin_socket: opts.plugin_socket.clone(),
        queue_dir: opts.cni_queue_dir.clone(),
        slot: endpoints_slot,
        policy_slot,
        gossip: gossip.clone(),
        keep_established: opts.keep_established,
        telemetry: telemetry.clone(),
        socket_access,
        liveness: liveness.clone(),
        tunnel_opts: opts.tunnel.clone(),
        tunnel_shared: tunnel_shared.clone(),
        tunnel_dir: state.root().join("tunnel"),
    }));

    let mut restart_for = None;
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        reason = restart.requested() => {
            restart_for = Some(reason);
            Ok(())
        }
        r = node_server => Err(anyhow!("node RPC server stopped: {r:?}")),
        r = api_server => Err(anyhow!("local API server stopped: {r:?}")),
        r = datapath_task => match r {
            Ok(Ok(())) => Err(anyhow!("the plugin API server stopped")),
            Ok(Err(e)) => Err(e.context("the datapath failed")),
            Err(e) => Err(anyhow!("the datapath task failed: {e}")),
        },
    };
    reconciler.abort();
    ca_custody.abort();
    ca_renewal.abort();
    ca_rotation.abort();
    info!(restart_for, "shutting down");
    if let Some(g) = gossip.get() {
        g.save_replay_state();
    }
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft shutdown");
    }
    let _ = std::fs::remove_file(&opts.socket);
    let _ = std::fs::remove_file(&opts.plugin_socket);
    // Programs, maps, veths and the overlay device stay: traffic keeps flowing while the
    // agent is away, and the next start takes them back.
    if let Some(reason) = restart_for {
        return Err(exec_self(reason));
    }
    result
}

/// Replaces this process with a fresh start of the same binary and arguments (same pid, so
/// a supervisor sees no exit). Used to put a renewed certificate to use everywhere at once
/// (see `ca::run`). Every descriptor the agent opened is close-on-exec. Returns only if the
/// exec failed.
fn exec_self(reason: &str) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    info!(reason, "restarting the agent in place");
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    let err = cmd.args(args).exec();
    anyhow!("cannot restart the agent to {reason} ({err}); start it again")
}

/// What the datapath task needs from the agent.
struct DatapathTask {
    client: Arc<RegistryClient>,
    me: crate::state::NodeIdentity,
    opts: datapath::DatapathOptions,
    plugin_socket: PathBuf,
    queue_dir: PathBuf,
    slot: EndpointsSlot,
    policy_slot: PolicySlot,
    gossip: gossip::GossipSlot,
    keep_established: bool,
    telemetry: Telemetry,
    socket_access: socket::Access,
    liveness: gossip::Liveness,
    tunnel_opts: crate::tunnel::control::TunnelOptions,
    tunnel_shared: Arc<crate::tunnel::control::TunnelShared>,
    tunnel_dir: PathBuf,
}

/// Brings up the datapath once this node's registry copy knows its pod CIDR, restores the
/// endpoints, keeps the ipcache in step, and serves the plugin API until it fails.
async fn run_datapath(task: DatapathTask) -> anyhow::Result<()> {
    let DatapathTask {
        client,
        me,
        opts,
        plugin_socket,
        queue_dir,
        slot,
        policy_slot,
        gossip,
        keep_established,
        telemetry,
        socket_access,
        liveness,
        tunnel_opts,
        tunnel_shared,
        tunnel_dir,
    } = task;
    let node_ip = me
        .rpc_addr
        .parse()
        .ok()
        .and_then(crate::ipcache::node_ip)
        .ok_or_else(|| {
        anyhow!(
            "the advertised address {} is not IPV4:PORT; the overlay needs this node's IPv4 underlay address",
            me.rpc_addr
        )
    })?;
    // A node that just joined learns its own record a moment later, through Raft.
    let (pod_cidr, pod_pool) = loop {
        let found = client.local(|r| Some((r.node(me.node_id)?.pod_cidr, r.cluster()?.pod_pool)));
        if let Some(f) = found {
            break f;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let pin_dir = opts
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_ROOT).join(&me.node_name));
    // After a restart the registry copy re-applies its committed log; until it has, it
    // lacks endpoints that exist, and syncing the maps from it would cut their traffic.
    let committed = client
        .raft()
        .with_raft_state(|st| st.committed.map(|l| l.index))
        .await
        .ok()
        .flatten();
    if let Some(committed) = committed {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while client.applied_index().unwrap_or(0) < committed {
            if tokio::time::Instant::now() >= deadline {
                warn!(committed, applied = ?client.applied_index(), "the registry copy is still behind its committed log; restoring endpoints anyway");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let dp = Arc::new(NodeDatapath::start(&opts, &pin_dir, node_ip, pod_cidr, pod_pool).await?);
    let policy = Arc::new(PolicySync::new(
        client.clone(),
        dp.clone(),
        !keep_established,
        telemetry.rule_names.clone(),
        telemetry.enforced_revision.clone(),
    ));
    let manager = Arc::new(EndpointManager::new(
        client.clone(),
        dp.clone(),
        me.clone(),
        policy.clone(),
    ));
    // The tunnel before the first ipcache sync: with encryption on, the datapath must know
    // the TUN before remote entries exist (until then they are dropped as no-key).
    tokio::spawn(crate::tunnel::control::run(
        crate::tunnel::control::ControlContext {
            client: client.clone(),
            datapath: dp.clone(),
            me: me.node_id,
            node_ip,
            tunnel_dir,
            liveness,
            opts: tunnel_opts,
            shared: tunnel_shared.clone(),
        },
    ));
    if let Err(e) = crate::ipcache::sync_once(
        &client,
        &dp,
        me.node_id,
        &policy.cidr_identities(),
        &tunnel_shared.keys_ready(),
    ) {
        warn!(error = %format!("{e:#}"), "first ipcache sync failed; the sync loop retries");
    }
    manager.restore().await;
    // Deletes queued while the agent was down go before any new add is accepted.
    manager.drain_queue(&queue_dir).await;
    let _ = slot.set(manager.clone());
    let _ = policy_slot.set(policy.clone());
    if let Err(e) = policy.sync(&manager.live_records()) {
        warn!(error = %format!("{e:#}"), "first policy sync failed; the sync loop retries");
    }
    // The one reader of the events ring buffer.
    let reader = dp.bpf().take_event_reader();
    if let Some(reader) = reader {
        tokio::spawn(monitor::run_reader(
            telemetry.monitor.clone(),
            reader,
            client.clone(),
            manager.clone(),
            telemetry.rule_names.clone(),
        ));
    }
    tokio::spawn(reconcile::run(
        client.clone(),
        dp.clone(),
        me.node_id,
        manager.clone(),
        policy.clone(),
        gossip,
        tunnel_shared,
    ));
    tokio::spawn(manager.clone().run_queue(queue_dir));
    let unix = socket::bind(&plugin_socket, socket_access)?;
    info!(socket = %plugin_socket.display(), "plugin API listening");
    tonic::transport::Server::builder()
        .add_service(membrane_proto::v1::plugin_server::PluginServer::new(
            endpoints::plugin_service::PluginService {
                endpoints: manager,
                node_name: me.node_name.clone(),
            },
        ))
        .serve_with_incoming(UnixListenerStream::new(unix))
        .await
        .context("the plugin API server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
