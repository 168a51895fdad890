//! The node's datapath as the agent holds it: the BPF programs and pinned maps, the VXLAN
//! overlay device, forwarding and masquerade. Set up once at start; the endpoint manager
//! and the registry sync write the maps through it.
//!
//! Everything here survives an agent restart: programs stay attached, maps stay pinned, the
//! overlay device stays up. A restarted agent re-opens what is there instead of rebuilding
//! it, so established connections between endpoints are not cut.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use ipnet::Ipv4Net;
use membrane_ebpf::Datapath;
use tracing::info;

use crate::netdev;

/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERLAY_OVERHEAD: u32 = 50;

/// How the datapath is set up (agent flags; see docs/datapath.md).
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// None: `/sys/fs/bpf/membrane/<node name>`.
    pub pin_dir: Option<PathBuf>,
    pub tunnel_port: u16,
    pub overlay_device: String,
    /// Endpoint MTU; default: the underlay MTU minus [`OVERLAY_OVERHEAD`].
    pub mtu: Option<u32>,
    pub masquerade: bool,
    /// `--monitor-trace`: a trace event for every packet forwarded or delivered.
    pub trace: bool,
    /// `--events-per-sec`: the event budget per CPU (rate and burst).
    pub events_per_sec: u32,
    /// This node's control ports, closed to endpoints on node addresses unless a policy
    /// allows them explicitly: RPC, gossip, encryption (UDP), VXLAN; 0 = unused. The agent
    /// fills them in once it knows its listen addresses.
    pub control_ports: [u16; 4],
}

/// The default UDP port of the encryption tunnel (`--encryption-port`).
pub const DEFAULT_ENCRYPTION_PORT: u16 = 8473;

/// The nftables table the agent owns in its namespace.
pub const NFT_TABLE: &str = "membrane";

/// The loaded datapath of this node.
pub struct NodeDatapath {
    bpf: Mutex<Datapath>,
    pub pin_dir: PathBuf,
    pub overlay_device: String,
    pub overlay_ifindex: u32,
    /// The MTU given to endpoints.
    pub mtu: u32,
    /// This node's underlay address (the tunnel endpoint others send to).
    pub node_ip: Ipv4Addr,
}

impl NodeDatapath {
    /// Brings the datapath up (or re-opens it after a restart): forwarding on, the overlay
    /// device, BPF programs and pinned maps, masquerade of pod traffic leaving the pool.
    pub async fn start(
        opts: &DatapathOptions,
        pin_dir: &std::path::Path,
        node_ip: Ipv4Addr,
        pod_cidr: Ipv4Net,
        pod_pool: Ipv4Net,
    ) -> anyhow::Result<NodeDatapath> {
        // Traffic that leaves the pod network is routed by this node's stack.
        netdev::set_sysctl("net/ipv4/ip_forward", "1").context("cannot enable IPv4 forwarding")?;
        let mtu = match opts.mtu {
            Some(m) => m,
            None => netdev::underlay_mtu()
                .await
                .context("cannot find the underlay MTU; pass --mtu")?
                .saturating_sub(OVERLAY_OVERHEAD),
        };
        let (overlay_ifindex, _) =
            netdev::ensure_vxlan(&opts.overlay_device, opts.tunnel_port, None)
                .await
                .with_context(|| {
                    format!("cannot set up the overlay device {}", opts.overlay_device)
                })?;
        let mut bpf = Datapath::load(pin_dir).with_context(|| {
            format!(
                "cannot load the BPF datapath (maps pinned in {})",
                pin_dir.display()
            )
        })?;
        bpf.attach_overlay(&opts.overlay_device).with_context(|| {
            format!(
                "cannot attach the overlay program to {}",
                opts.overlay_device
            )
        })?;
        // A pool of /0 would have a zero mask, which the datapath reads as "no pool".
        if pod_pool.prefix_len() == 0 {
            anyhow::bail!("the cluster's pod pool {pod_pool} covers every address; it must be a real prefix (e.g. 10.128.0.0/16)");
        }
        // Encryption starts off: the agent turns it on with set_encryption once its TUN
        // is up (a restarted agent keeps the previous flag until then: packets for
        // remote pods are dropped as no-key rather than sent in clear).
        let previous = bpf.config().unwrap_or_default();
        let mut config = membrane_ebpf::DatapathConfig::new(overlay_ifindex, node_ip)
            .with_trace(opts.trace)
            .with_events_per_sec(opts.events_per_sec)
            .with_pod_pool(pod_pool)
            .with_control_ports(opts.control_ports);
        if previous.encrypt() {
            config = config.with_encryption(0);
        }
        bpf.set_config(&config)
            .context("cannot write the datapath config map")?;
        netdev::ensure_masquerade(NFT_TABLE, pod_cidr, pod_pool, opts.masquerade)
            .context("cannot set up masquerading (nftables)")?;
        info!(
            pin_dir = %pin_dir.display(),
            overlay = %opts.overlay_device,
            overlay_ifindex,
            mtu,
            masquerade = opts.masquerade,
            trace = opts.trace,
            events_per_sec = opts.events_per_sec,
            %pod_pool,
            control_ports = ?opts.control_ports,
            "datapath up"
        );
        Ok(NodeDatapath {
            bpf: Mutex::new(bpf),
            pin_dir: pin_dir.to_path_buf(),
            overlay_device: opts.overlay_device.clone(),
            overlay_ifindex,
            mtu,
            node_ip,
        })
    }

    /// Turns encryption on (`Some(ifindex of the TUN)`) or off (`None`) in the config map.
    /// On, from_tunnel is attached to the TUN first, then the flag is written: from then on
    /// remote pod traffic goes into the TUN where the ipcache says a key is ready
    /// (key_index != 0), is dropped as `no-key` elsewhere, and plaintext VXLAN is refused
    /// on receipt. Off, the config goes back to VXLAN and from_tunnel stays attached
    /// (harmless: nothing is written into a TUN the agent has closed).
    pub fn set_encryption(&self, tunnel_ifindex: Option<u32>) -> anyhow::Result<()> {
        let mut bpf = self.bpf();
        let config = bpf
            .config()
            .context("cannot read the datapath config map")?;
        let config = match tunnel_ifindex {
            Some(0) => {
                anyhow::bail!("the TUN's ifindex is 0: pass the index of an existing device")
            }
            Some(ifindex) => {
                let name = nix::net::if_::if_indextoname(ifindex)
                    .map_err(anyhow::Error::from)
                    .and_then(|n| Ok(n.into_string()?))
                    .with_context(|| {
                        format!("cannot find the tunnel device with ifindex {ifindex}")
                    })?;
                bpf.attach_tunnel(&name)
                    .with_context(|| format!("cannot attach the tunnel program to {name}"))?;
                config.with_encryption(ifindex)
            }
            None => config.without_encryption(),
        };
        bpf.set_config(&config)
            .context("cannot write the datapath config map")?;
        info!(tunnel_ifindex = ?tunnel_ifindex, "datapath encryption set");
        Ok(())
    }

    /// The BPF side, for map reads and writes. Keep the critical section short.
    pub fn bpf(&self) -> MutexGuard<'_, Datapath> {
        self.bpf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
