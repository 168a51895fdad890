//! The agent: one per node. It owns the node's state directory, runs the Raft registry and
//! the node-to-node RPC server (mutual TLS), serves the local API on a Unix socket, and keeps
//! the Raft membership in step with the registry.

mod api;
mod bootstrap;
mod cluster_service;
pub mod gossip;
mod join;
mod join_service;
pub mod membership;
pub mod query;
pub mod registry_client;
mod rotation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use membrane_consensus::network::{Network, RaftService};
use membrane_crypto::ca::ca_hash_of_cert_der;
use membrane_crypto::keys::NodeKeys;
use membrane_proto::v1::agent_server::AgentServer;
use membrane_proto::v1::cluster_server::ClusterServer;
use membrane_proto::v1::join_server::JoinServer;
use membrane_proto::v1::raft_server::RaftServer;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

pub use api::{join_command, DEFAULT_TOKEN_TTL_SECS, DEFAULT_TOKEN_USES};
pub use join::JoinArgs;

use crate::state::StateDir;
use crate::transport::{require_node_certificate, NodeTls};

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
    pub autopilot: membership::AutopilotConfig,
    /// Where gossip listens (default 0.0.0.0 and the RPC port + 1).
    pub gossip_listen: Option<SocketAddr>,
}

/// Seconds since the epoch. The registry never reads a clock; commands carry this.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, for event timestamps.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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
    let client = Arc::new(registry_client::RegistryClient::new(
        raft.clone(),
        registry,
        tls.clone(),
    ));

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
    let node_server = tonic::transport::Server::builder()
        .tls_config(tls.server_config())?
        .add_service(JoinServer::new(join_service::JoinService {
            client: client.clone(),
        }))
        .add_service(InterceptedService::new(
            // Snapshots can exceed tonic's default 4 MiB message limit.
            RaftServer::new(RaftService::new(raft.clone()))
                .max_decoding_message_size(membrane_consensus::network::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(membrane_consensus::network::MAX_MESSAGE_BYTES),
            require_node_certificate,
        ))
        .add_service(ClusterServer::with_interceptor(
            cluster_service::ClusterService {
                client: client.clone(),
            },
            require_node_certificate,
        ))
        // Nagle off: Raft and forwarded writes are small request/response messages, and
        // Nagle against delayed ACKs stalls them by 40 ms.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true)),
        );
    let node_server = tokio::spawn(node_server);

    let liveness = membership::Liveness::default();
    let gossip = gossip::spawn(
        client.clone(),
        me.clone(),
        opts.gossip_listen,
        liveness.clone(),
    );

    // Local API on the Unix socket.
    let unix = bind_unix(&opts.socket)?;
    let api = api::AgentApi {
        client: client.clone(),
        gossip: gossip.clone(),
        me: me.clone(),
        ca_hash,
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
    let reconciler = tokio::spawn(membership::run(
        client.clone(),
        liveness.clone(),
        opts.autopilot.clone(),
    ));

    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = node_server => Err(anyhow!("node RPC server stopped: {r:?}")),
        r = api_server => Err(anyhow!("local API server stopped: {r:?}")),
    };
    reconciler.abort();
    info!("shutting down");
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft shutdown");
    }
    let _ = std::fs::remove_file(&opts.socket);
    result
}

fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket left by a crashed agent: remove it, but never a live agent's.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is serving {}; stop it first or pass a different --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
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
