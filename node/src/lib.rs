//! The Membrane agent, its CLI, and the CNI plugin, as a library behind two binaries:
//! `membrane` (agent and CLI, src/bin/membrane.rs) and `membrane-cni` (src/bin/membrane-cni.rs).

// Wiring: the agent starts the wings below and serves the local API; the CLI and the CNI
// plugin are the binaries' front ends.
pub mod agent;
pub mod cli;
pub mod cni;
mod init;

// Who may call what on the node RPC server (docs/security.md).
pub mod authz;

// The wings, one capability each (docs/architecture.md).
pub mod ca;
pub mod cluster;
pub mod endpoints;
pub mod ipcache;
pub mod observe;
pub mod policy;
pub mod rpc;
pub mod tunnel;

// What the wings share: the registry client, the node's BPF datapath and netlink, the
// state directory, node TLS, the clock, and the desired-vs-current diff.
mod civil;
pub mod clock;
pub mod datapath;
mod diff;
pub mod netdev;
pub mod registry;
mod state;
mod transport;

use std::net::IpAddr;

/// Default port of the node-to-node RPC server.
pub const DEFAULT_RPC_PORT: u16 = 7700;

/// This machine's host name, the default node name.
pub fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// The first non-loopback IPv4 address of an interface that is up, with the default port.
pub fn default_advertise_addr() -> anyhow::Result<String> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs()?;
    for ifa in addrs {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            let ip = IpAddr::V4(sin.ip());
            return Ok(format!("{ip}:{DEFAULT_RPC_PORT}"));
        }
    }
    anyhow::bail!("no non-loopback IPv4 address found; pass --advertise-addr IP:PORT")
}
