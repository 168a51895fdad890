//! What a test needs to know about one host of the lab: names, addresses and paths.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The node RPC port every agent in the lab listens on; each host has its own address, so
/// they can all use the default.
pub const RPC_PORT: u16 = 7700;

/// One host of a [`crate::Lab`]: a network namespace with `eth0` on the underlay, and the
/// files of the agent it runs. Plain data; processes and faults are driven through the lab.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    name: String,
    netns: String,
    port: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    pin_dir: PathBuf,
}

/// Where the lab's agents pin their BPF maps: one directory per host under it, named after
/// the host's namespace, so labs never share maps and a stale one is easy to spot.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/membrane";

impl Host {
    pub(crate) fn new(lab_id: &str, index: usize, lab_dir: &Path) -> Host {
        let name = format!("h{index}");
        // Callers bound `index` so that the last octet stays below 255.
        let octet = u8::try_from(10 + index).unwrap_or(u8::MAX);
        Host {
            index,
            netns: format!("{lab_id}-{name}"),
            port: name.clone(),
            ip: Ipv4Addr::new(10, 77, 0, octet),
            dir: lab_dir.join(&name),
            pin_dir: Path::new(BPF_PIN_ROOT).join(format!("{lab_id}-{name}")),
            name,
        }
    }

    /// The 1-based index of the host in its lab.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The short name, `h<i>`, also a good node name for the agent.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace, `<lab id>-h<i>` (for `ip -n` and `nsenter --net=/run/netns/...`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The name of this host's bridge port in the underlay namespace (the veth peer of `eth0`).
    pub fn underlay_port(&self) -> &str {
        &self.port
    }

    /// The address of `eth0`, `10.77.0.<10+i>`; it exists only inside the lab.
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }

    /// `eth0` with its prefix, as `ip addr add` takes it.
    pub(crate) fn cidr(&self) -> String {
        format!("{}/24", self.ip)
    }

    /// Where the agent's node RPC server listens and other agents reach it: `ip:7700`.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), RPC_PORT)
    }

    /// The host's directory in the lab's temp dir: `<tmp>/h<i>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent's state dir (`--state-dir`): `<tmp>/h<i>/state`. Kept across restarts.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The agent's local API socket (`--socket`): `<tmp>/h<i>/agent.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// The agent's plugin API socket (`--plugin-socket`), which `membrane-cni` talks to:
    /// `<tmp>/h<i>/plugin.sock`.
    pub fn plugin_socket(&self) -> PathBuf {
        self.dir.join("plugin.sock")
    }

    /// Where the agent pins its BPF maps (`--bpf-pin-dir`):
    /// `/sys/fs/bpf/membrane/<lab id>-h<i>`. Removed by the lab's Drop.
    pub fn bpf_pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Where `membrane-cni` queues deletes while the agent is down (`--cni-queue-dir`):
    /// `<tmp>/h<i>/cni-queue`.
    pub fn cni_queue_dir(&self) -> PathBuf {
        self.dir.join("cni-queue")
    }

    /// The log that every process started on this host appends stdout and stderr to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
}
