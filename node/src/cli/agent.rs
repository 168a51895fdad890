//! `membrane agent`: turns the agent's flags into its options and runs it.

use anyhow::anyhow;

use super::args::AgentArgs;
use crate::agent::{AgentOptions, JoinArgs};

pub(super) fn run_agent(args: AgentArgs, socket: &std::path::Path) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| anyhow!("bad --log filter {:?}: {e}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let token = super::token_source::resolve(
        args.token,
        args.token_file.as_deref(),
        std::env::var(super::token_source::TOKEN_ENV).ok(),
    )?;
    let join = match (args.join, token, args.ca_hash) {
        (Some(addr), Some(token), Some(ca_hash)) => Some(JoinArgs {
            addr,
            token,
            ca_hash,
        }),
        (Some(_), None, _) => anyhow::bail!(
            "--join needs the join token: pass --token-file PATH, set {}, or pass --token",
            super::token_source::TOKEN_ENV
        ),
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
            // Filled in by the agent once its listen addresses are known.
            control_ports: [0; 4],
        },
        keep_established: args.keep_established,
        metrics_addr,
        socket_group: args.socket_group,
        tunnel: crate::tunnel::control::TunnelOptions {
            port: args.encryption_port,
            device: args.encryption_device,
            rotation_interval_secs: args.key_rotation_interval,
            workers: args
                .tunnel_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            mtu: crate::tunnel::device::DEFAULT_MTU,
        },
        join_policy: crate::rpc::join_service::JoinPolicy {
            allow_any_addr: args.join_allow_any_addr,
            limits: crate::rpc::rate_limit::Limits {
                max_failures: args.join_failures_per_minute,
                window: std::time::Duration::from_secs(60),
            },
        },
    };
    super::runtime()?.block_on(crate::agent::run(opts))
}
