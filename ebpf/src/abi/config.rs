//! Mirror of `bpf/lib/config.h`: the single value of the `config` map.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::common::{ip_from_map, ip_to_map};

/// How many control ports the config holds (`CONTROL_PORTS`): RPC, gossip, encryption,
/// VXLAN.
pub const CONTROL_PORTS: usize = 4;

/// The single value of the `config` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// ifindex of the VXLAN device; 0 means the overlay is not configured.
    pub overlay_ifindex: u32,
    /// This node's underlay IPv4, network byte order.
    pub node_ip: u32,
    /// [`DatapathConfig::TRACE`], [`DatapathConfig::ENCRYPT`].
    pub flags: u32,
    /// Event budget per CPU: events per second, also the burst. 0 means
    /// [`DatapathConfig::DEFAULT_EVENTS_PER_SEC`].
    pub events_per_sec: u32,
    /// ifindex of the agent's TUN device (encryption); 0 means none.
    pub tunnel_ifindex: u32,
    /// The cluster's pod pool: network address, network byte order.
    pub pod_pool_addr: u32,
    /// The pod pool's netmask, network byte order; 0 means no pool is configured (then
    /// to_endpoint checks no pod-pool sources).
    pub pod_pool_mask: u32,
    /// The node's control ports (RPC, gossip, encryption, VXLAN), host byte order; 0 =
    /// unused. Endpoints cannot reach them on node addresses without an explicit allow.
    pub control_ports: [u16; CONTROL_PORTS],
}

impl DatapathConfig {
    /// `flags` bit: emit a trace event for every packet forwarded or delivered.
    pub const TRACE: u32 = 1 << 0;
    /// `flags` bit: remote-node prefixes go through the TUN (`tunnel_ifindex`) when their
    /// ipcache key_index is set, are dropped as `no-key` otherwise, never VXLAN; the
    /// plaintext overlay is refused.
    pub const ENCRYPT: u32 = 1 << 1;
    /// The event budget per CPU when `events_per_sec` is 0 (`EVENTS_PER_SEC_DEFAULT`).
    pub const DEFAULT_EVENTS_PER_SEC: u32 = 1000;

    /// A config with no flags set and the default event budget.
    pub fn new(overlay_ifindex: u32, node_ip: Ipv4Addr) -> Self {
        Self {
            overlay_ifindex,
            node_ip: ip_to_map(node_ip),
            flags: 0,
            events_per_sec: 0,
            tunnel_ifindex: 0,
            pod_pool_addr: 0,
            pod_pool_mask: 0,
            control_ports: [0; CONTROL_PORTS],
        }
    }

    /// The same config with encryption on, sending through the TUN `tunnel_ifindex`.
    pub fn with_encryption(mut self, tunnel_ifindex: u32) -> Self {
        self.flags |= Self::ENCRYPT;
        self.tunnel_ifindex = tunnel_ifindex;
        self
    }

    /// The same config with encryption off (plaintext VXLAN) and no TUN.
    pub fn without_encryption(mut self) -> Self {
        self.flags &= !Self::ENCRYPT;
        self.tunnel_ifindex = 0;
        self
    }

    /// Whether encryption is on.
    pub fn encrypt(&self) -> bool {
        self.flags & Self::ENCRYPT != 0
    }

    /// The same config with the cluster's pod pool (host bits ignored).
    pub fn with_pod_pool(mut self, pool: Ipv4Net) -> Self {
        self.pod_pool_addr = ip_to_map(pool.network());
        self.pod_pool_mask = ip_to_map(pool.netmask());
        self
    }

    /// The pod pool, None when not configured.
    pub fn pod_pool(&self) -> Option<Ipv4Net> {
        if self.pod_pool_mask == 0 {
            return None;
        }
        let len = u32::from(ip_from_map(self.pod_pool_mask)).leading_ones();
        Ipv4Net::new(ip_from_map(self.pod_pool_addr), len as u8).ok()
    }

    /// The same config with the node's control ports (RPC, gossip, encryption, VXLAN;
    /// 0 = unused).
    pub fn with_control_ports(mut self, ports: [u16; CONTROL_PORTS]) -> Self {
        self.control_ports = ports;
        self
    }

    /// The same config with trace events on or off.
    pub fn with_trace(mut self, on: bool) -> Self {
        if on {
            self.flags |= Self::TRACE;
        } else {
            self.flags &= !Self::TRACE;
        }
        self
    }

    /// The same config with another event budget per CPU (0 = the default).
    pub fn with_events_per_sec(mut self, per_cpu: u32) -> Self {
        self.events_per_sec = per_cpu;
        self
    }

    /// This node's underlay address.
    pub fn node_ip(&self) -> Ipv4Addr {
        ip_from_map(self.node_ip)
    }
}

// SAFETY: repr(C), only integers and byte arrays, no implicit padding (checked by the
// offset tests below): every bit pattern is valid.
unsafe impl aya::Pod for DatapathConfig {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::abi::header::define;

    #[test]
    fn config_layout() {
        assert_eq!(size_of::<DatapathConfig>(), 36);
        assert_eq!(offset_of!(DatapathConfig, overlay_ifindex), 0);
        assert_eq!(offset_of!(DatapathConfig, node_ip), 4);
        assert_eq!(offset_of!(DatapathConfig, flags), 8);
        assert_eq!(offset_of!(DatapathConfig, events_per_sec), 12);
        assert_eq!(offset_of!(DatapathConfig, tunnel_ifindex), 16);
        assert_eq!(offset_of!(DatapathConfig, pod_pool_addr), 20);
        assert_eq!(offset_of!(DatapathConfig, pod_pool_mask), 24);
        assert_eq!(offset_of!(DatapathConfig, control_ports), 28);
    }

    #[test]
    fn encryption_pool_and_ports() {
        let pool: Ipv4Net = "10.128.7.9/16".parse().unwrap();
        let c = DatapathConfig::new(1, Ipv4Addr::LOCALHOST)
            .with_trace(true)
            .with_encryption(9)
            .with_pod_pool(pool)
            .with_control_ports([7700, 7946, 8473, 8472]);
        assert_eq!(c.flags, DatapathConfig::TRACE | DatapathConfig::ENCRYPT);
        assert!(c.encrypt());
        assert_eq!(c.tunnel_ifindex, 9);
        assert_eq!(c.pod_pool_addr.to_ne_bytes(), [10, 128, 0, 0]);
        assert_eq!(c.pod_pool_mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(c.pod_pool(), Some("10.128.0.0/16".parse().unwrap()));
        assert_eq!(c.control_ports, [7700, 7946, 8473, 8472]);
        let off = c.without_encryption();
        assert_eq!((off.flags, off.tunnel_ifindex), (DatapathConfig::TRACE, 0));
        assert_eq!(DatapathConfig::default().pod_pool(), None);
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        // A /0 pool has mask 0, which the datapath reads as "no pool": refused upstream.
        assert_eq!(
            DatapathConfig::default().with_pod_pool(all).pod_pool(),
            None
        );
    }

    #[test]
    fn addresses_are_stored_in_network_order() {
        let c = DatapathConfig::new(3, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(c.node_ip(), Ipv4Addr::new(172, 16, 0, 1));
    }

    #[test]
    fn trace_and_budget() {
        let c = DatapathConfig::new(1, Ipv4Addr::LOCALHOST)
            .with_trace(true)
            .with_events_per_sec(5);
        assert_eq!((c.flags, c.events_per_sec), (DatapathConfig::TRACE, 5));
        assert_eq!(c.with_trace(false).flags, 0);
    }

    #[test]
    fn constants_match_config_h() {
        let h = include_str!("../../bpf/lib/config.h");
        assert_eq!(define(h, "CFG_F_TRACE"), u64::from(DatapathConfig::TRACE));
        assert_eq!(
            define(h, "CFG_F_ENCRYPT"),
            u64::from(DatapathConfig::ENCRYPT)
        );
        assert_eq!(define(h, "CONTROL_PORTS"), CONTROL_PORTS as u64);
        assert_eq!(
            define(h, "EVENTS_PER_SEC_DEFAULT"),
            u64::from(DatapathConfig::DEFAULT_EVENTS_PER_SEC)
        );
    }
}
