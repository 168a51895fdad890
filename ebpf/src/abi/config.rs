//! Mirror of `bpf/lib/config.h`: the single value of the `config` map.

use std::net::Ipv4Addr;

use super::common::{ip_from_map, ip_to_map};

/// The single value of the `config` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// ifindex of the VXLAN device; 0 means the overlay is not configured.
    pub overlay_ifindex: u32,
    /// This node's underlay IPv4, network byte order.
    pub node_ip: u32,
    /// [`DatapathConfig::TRACE`] or 0.
    pub flags: u32,
    /// Event budget per CPU: events per second, also the burst. 0 means
    /// [`DatapathConfig::DEFAULT_EVENTS_PER_SEC`].
    pub events_per_sec: u32,
}

impl DatapathConfig {
    /// `flags` bit: emit a trace event for every packet forwarded or delivered.
    pub const TRACE: u32 = 1 << 0;
    /// The event budget per CPU when `events_per_sec` is 0 (`EVENTS_PER_SEC_DEFAULT`).
    pub const DEFAULT_EVENTS_PER_SEC: u32 = 1000;

    /// A config with no flags set and the default event budget.
    pub fn new(overlay_ifindex: u32, node_ip: Ipv4Addr) -> Self {
        Self {
            overlay_ifindex,
            node_ip: ip_to_map(node_ip),
            flags: 0,
            events_per_sec: 0,
        }
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
        assert_eq!(size_of::<DatapathConfig>(), 16);
        assert_eq!(offset_of!(DatapathConfig, overlay_ifindex), 0);
        assert_eq!(offset_of!(DatapathConfig, node_ip), 4);
        assert_eq!(offset_of!(DatapathConfig, flags), 8);
        assert_eq!(offset_of!(DatapathConfig, events_per_sec), 12);
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
            define(h, "EVENTS_PER_SEC_DEFAULT"),
            u64::from(DatapathConfig::DEFAULT_EVENTS_PER_SEC)
        );
    }
}
