//! The lab: hosts as network namespaces on one underlay bridge, each able to run a real
//! `membrane agent`, with the faults a Jepsen-style suite needs (kill, pause, cut, partition).
//!
//! Why namespaces and not containers or VMs: they are the cheapest thing that gives every host
//! its own interfaces, routes, sockets and BPF attach points, so agents talk over a real L2
//! network and real UDP/TCP, exactly as on separate machines, while the whole lab is torn down
//! in milliseconds. Nothing here mocks the agent; the lab only arranges the world around it.
//!
//! ```text
//!   netns <id>-h1          netns <id>-h2          netns <id>-hN
//!   eth0 10.77.0.11/24     eth0 10.77.0.12/24     eth0 10.77.0.(10+N)/24
//!        |                      |                      |
//!   -----h1---------------------h2---------------------hN-----  br0 in netns <id>-ul
//! ```
//!
//! Faults are applied where a real network would fail: in the underlay, by an nftables
//! `bridge` table that drops frames between ports. A cut host keeps its link up and simply
//! stops hearing anyone, like a host behind a broken switch, not one whose cable is pulled.
//!
//! Traffic never leaves the namespaces the lab creates: the 10.77.0.0/24 addresses exist only
//! there, and the root namespace is touched only to spawn processes and read the temp dir.
//!
//! Every [`Lab`] cleans up after itself on drop (also on panic): it kills its processes,
//! deletes its namespaces and removes its temp dir. Set `MEMBRANE_LAB_KEEP=1` to keep the temp
//! dir (agent logs and state) for a post-mortem; its path is printed.
#![deny(missing_docs)]

pub mod bench;
pub mod cluster;
mod cmd;
pub mod demo;
pub mod endpoint;
mod faults;
mod host;
pub mod idle;
mod lab;
mod netns;
pub mod observe;
mod process;
pub mod rawpkt;
pub mod traffic;
mod util;

pub use cluster::Cluster;
pub use host::{Host, BPF_PIN_ROOT, RPC_PORT};
pub use lab::{Lab, KEEP_ENV};
pub use netns::{ensure_bpffs, in_netns, ip_in, netns_path, tcp_reachable};
pub use util::{cni_binary, membrane_binary, require_root, wait_until};

/// A gRPC channel to an agent's local API socket, for tests and benchmarks that call the
/// API directly rather than through the CLI.
pub async fn unix_channel(path: &std::path::Path) -> anyhow::Result<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let connector = tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    });
    Ok(tonic::transport::Endpoint::from_static("http://agent.sock")
        .connect_with_connector(connector)
        .await?)
}
