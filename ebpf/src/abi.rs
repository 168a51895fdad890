//! `#[repr(C)]` mirrors of the structs in `bpf/lib/maps.h` and the reason numbers of
//! `bpf/lib/metrics.h` (docs/datapath.md, "BPF maps"). Addresses are stored as the kernel
//! sees them (network byte order); build values with the constructors here so that no
//! caller converts byte order by hand.

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;

/// An IPv4 address as a `u32` whose in-memory bytes are in network order.
pub(crate) fn ip_to_map(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`ip_to_map`].
pub(crate) fn ip_from_map(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// Key of the `endpoints` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Endpoint IPv4, network byte order.
    pub ip: u32,
}

impl EndpointKey {
    /// The key for an endpoint address.
    pub fn new(ip: Ipv4Addr) -> Self {
        Self { ip: ip_to_map(ip) }
    }

    /// The endpoint address.
    pub fn addr(&self) -> Ipv4Addr {
        ip_from_map(self.ip)
    }
}

/// Value of the `endpoints` map: one local endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// ifindex of the host side of the endpoint's veth.
    pub ifindex: u32,
    /// Security identity of the endpoint.
    pub identity: u32,
    /// Agent-local endpoint id.
    pub endpoint_id: u32,
    /// The endpoint's (container-side) MAC.
    pub mac: [u8; 6],
    /// The host side's MAC.
    pub host_mac: [u8; 6],
    /// Reserved, 0.
    pub flags: u32,
}

impl EndpointValue {
    /// A value with no flags set.
    pub fn new(
        ifindex: u32,
        identity: u32,
        endpoint_id: u32,
        mac: [u8; 6],
        host_mac: [u8; 6],
    ) -> Self {
        Self {
            ifindex,
            identity,
            endpoint_id,
            mac,
            host_mac,
            flags: 0,
        }
    }
}

/// Key of the `ipcache` LPM trie (the layout of `struct bpf_lpm_trie_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    /// Prefix length in bits, 0..=32.
    pub prefixlen: u32,
    /// Network address, network byte order.
    pub ip: u32,
}

impl IpcacheKey {
    /// The key for a prefix; host bits are cleared so that equal prefixes are equal keys.
    pub fn new(net: Ipv4Net) -> Self {
        Self {
            prefixlen: u32::from(net.prefix_len()),
            ip: ip_to_map(net.network()),
        }
    }

    /// The prefix, or None if the stored length is out of range.
    pub fn net(&self) -> Option<Ipv4Net> {
        let len = u8::try_from(self.prefixlen).ok()?;
        Ipv4Net::new(ip_from_map(self.ip), len).ok()
    }
}

/// Value of the `ipcache` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    /// Security identity of the prefix (0 for a whole remote pod CIDR).
    pub identity: u32,
    /// Underlay IPv4 of the owning node, network byte order; 0 when local or not reached
    /// through the overlay.
    pub tunnel_endpoint: u32,
    /// Encryption key index, 0 for none.
    pub key_index: u8,
    /// Padding, 0.
    pub pad: [u8; 3],
    /// Reserved, 0.
    pub flags: u32,
}

impl IpcacheValue {
    /// A prefix that is not reached through the overlay (local, or routed by the host).
    pub fn local(identity: u32) -> Self {
        Self {
            identity,
            ..Self::default()
        }
    }

    /// A prefix owned by the node whose underlay address is `tunnel_endpoint`.
    pub fn remote(identity: u32, tunnel_endpoint: Ipv4Addr) -> Self {
        Self {
            identity,
            tunnel_endpoint: ip_to_map(tunnel_endpoint),
            ..Self::default()
        }
    }

    /// The tunnel endpoint, None when the prefix is not reached through the overlay.
    pub fn tunnel_endpoint(&self) -> Option<Ipv4Addr> {
        (self.tunnel_endpoint != 0).then(|| ip_from_map(self.tunnel_endpoint))
    }
}

/// The single value of the `config` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// ifindex of the VXLAN device; 0 means the overlay is not configured.
    pub overlay_ifindex: u32,
    /// This node's underlay IPv4, network byte order.
    pub node_ip: u32,
    /// Reserved, 0.
    pub flags: u32,
    /// Padding, 0.
    pub pad: u32,
}

impl DatapathConfig {
    /// A config with no flags set.
    pub fn new(overlay_ifindex: u32, node_ip: Ipv4Addr) -> Self {
        Self {
            overlay_ifindex,
            node_ip: ip_to_map(node_ip),
            flags: 0,
            pad: 0,
        }
    }

    /// This node's underlay address.
    pub fn node_ip(&self) -> Ipv4Addr {
        ip_from_map(self.node_ip)
    }
}

/// One CPU's counters for one reason in the `metrics` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (skb length, Ethernet header included).
    pub bytes: u64,
}

// SAFETY: all of these are repr(C), contain only integers and byte arrays, and have no
// implicit padding (checked by the offset tests below), so every bit pattern is valid.
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for DatapathConfig {}
unsafe impl aya::Pod for MetricValue {}

/// Why a program forwarded, passed or dropped a packet: the index into `metrics`.
/// The numbers are the contract with `bpf/lib/metrics.h`; never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Redirected to a local endpoint (from_endpoint).
    ForwardedLocal = 1,
    /// Sent into the overlay (from_endpoint).
    ForwardedOverlay = 2,
    /// Passed to the host stack (non-IPv4, or a destination the datapath does not own).
    ToStack = 3,
    /// Delivered to an endpoint (to_endpoint).
    Delivered = 4,
    /// Received from the overlay and redirected to a local endpoint (from_overlay).
    FromOverlay = 5,
    /// Dropped: the source IP is not the endpoint's behind that interface.
    DropSpoofed = 16,
    /// Dropped: an overlay packet for no local endpoint.
    DropNoEndpoint = 17,
    /// Dropped: the ipcache says overlay but no overlay device is configured.
    DropNoOverlay = 18,
    /// Dropped: a helper refused the rewrite, tunnel key or redirect.
    DropRedirectFailed = 19,
    /// Dropped: the packet could not be parsed.
    DropMalformed = 20,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; 10] = [
        Reason::ForwardedLocal,
        Reason::ForwardedOverlay,
        Reason::ToStack,
        Reason::Delivered,
        Reason::FromOverlay,
        Reason::DropSpoofed,
        Reason::DropNoEndpoint,
        Reason::DropNoOverlay,
        Reason::DropRedirectFailed,
        Reason::DropMalformed,
    ];

    /// The stable name used in logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ForwardedLocal => "forwarded-local",
            Reason::ForwardedOverlay => "forwarded-overlay",
            Reason::ToStack => "to-stack",
            Reason::Delivered => "delivered",
            Reason::FromOverlay => "from-overlay",
            Reason::DropSpoofed => "spoofed-source",
            Reason::DropNoEndpoint => "no-local-endpoint",
            Reason::DropNoOverlay => "overlay-not-configured",
            Reason::DropRedirectFailed => "redirect-failed",
            Reason::DropMalformed => "malformed",
        }
    }

    /// The metrics index.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The reason with this metrics index, if any.
    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the packet was dropped.
    pub const fn is_drop(self) -> bool {
        self.code() >= 16
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn endpoint_layout() {
        assert_eq!(size_of::<EndpointKey>(), 4);
        assert_eq!(offset_of!(EndpointKey, ip), 0);
        assert_eq!(size_of::<EndpointValue>(), 28);
        assert_eq!(offset_of!(EndpointValue, ifindex), 0);
        assert_eq!(offset_of!(EndpointValue, identity), 4);
        assert_eq!(offset_of!(EndpointValue, endpoint_id), 8);
        assert_eq!(offset_of!(EndpointValue, mac), 12);
        assert_eq!(offset_of!(EndpointValue, host_mac), 18);
        assert_eq!(offset_of!(EndpointValue, flags), 24);
    }

    #[test]
    fn ipcache_layout() {
        assert_eq!(size_of::<IpcacheKey>(), 8);
        assert_eq!(offset_of!(IpcacheKey, prefixlen), 0);
        assert_eq!(offset_of!(IpcacheKey, ip), 4);
        // The loader uses aya's LPM key type, which must have the same layout.
        assert_eq!(size_of::<aya::maps::lpm_trie::Key<u32>>(), 8);
        assert_eq!(size_of::<IpcacheValue>(), 16);
        assert_eq!(offset_of!(IpcacheValue, identity), 0);
        assert_eq!(offset_of!(IpcacheValue, tunnel_endpoint), 4);
        assert_eq!(offset_of!(IpcacheValue, key_index), 8);
        assert_eq!(offset_of!(IpcacheValue, pad), 9);
        assert_eq!(offset_of!(IpcacheValue, flags), 12);
    }

    #[test]
    fn config_and_metric_layout() {
        assert_eq!(size_of::<DatapathConfig>(), 16);
        assert_eq!(offset_of!(DatapathConfig, overlay_ifindex), 0);
        assert_eq!(offset_of!(DatapathConfig, node_ip), 4);
        assert_eq!(offset_of!(DatapathConfig, flags), 8);
        assert_eq!(offset_of!(DatapathConfig, pad), 12);
        assert_eq!(size_of::<MetricValue>(), 16);
        assert_eq!(offset_of!(MetricValue, packets), 0);
        assert_eq!(offset_of!(MetricValue, bytes), 8);
    }

    #[test]
    fn addresses_are_stored_in_network_order() {
        let key = EndpointKey::new(Ipv4Addr::new(10, 128, 0, 5));
        assert_eq!(key.ip.to_ne_bytes(), [10, 128, 0, 5]);
        assert_eq!(key.addr(), Ipv4Addr::new(10, 128, 0, 5));

        let v = IpcacheValue::remote(7, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(v.tunnel_endpoint.to_ne_bytes(), [192, 168, 1, 2]);
        assert_eq!(v.tunnel_endpoint(), Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(IpcacheValue::local(7).tunnel_endpoint(), None);

        let c = DatapathConfig::new(3, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(c.node_ip(), Ipv4Addr::new(172, 16, 0, 1));
    }

    #[test]
    fn ipcache_key_round_trip_clears_host_bits() {
        let net: Ipv4Net = "10.128.1.7/24".parse().unwrap();
        let key = IpcacheKey::new(net);
        assert_eq!(key.prefixlen, 24);
        assert_eq!(key.net(), Some("10.128.1.0/24".parse().unwrap()));
        let bad = IpcacheKey {
            prefixlen: 33,
            ip: 0,
        };
        assert_eq!(bad.net(), None);
    }

    /// The C enum and this one must agree: parse metrics.h and compare.
    #[test]
    fn reasons_match_metrics_h() {
        let header = include_str!("../bpf/lib/metrics.h");
        let mut seen = Vec::new();
        for line in header.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("REASON_") else {
                continue;
            };
            let Some((name, value)) = rest.split_once('=') else {
                continue;
            };
            let value: u32 = value.trim().trim_end_matches(',').parse().unwrap();
            seen.push((name.trim().to_owned(), value));
        }
        assert_eq!(seen.len(), Reason::ALL.len(), "{seen:?}");
        for (name, code) in &seen {
            let reason = Reason::from_code(*code)
                .unwrap_or_else(|| panic!("REASON_{name} = {code} has no Rust Reason"));
            let c_name = name.to_lowercase().replace('_', "-");
            let expected = match reason {
                Reason::DropSpoofed => "drop-spoofed",
                Reason::DropNoEndpoint => "drop-no-endpoint",
                Reason::DropNoOverlay => "drop-no-overlay",
                Reason::DropRedirectFailed => "drop-redirect-failed",
                Reason::DropMalformed => "drop-malformed",
                Reason::ToStack => "to-stack",
                other => other.as_str(),
            };
            assert_eq!(c_name, expected, "REASON_{name} = {code} vs {reason:?}");
        }
    }

    #[test]
    fn reason_names_are_unique_and_codes_fit() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(r.code() < 64, "metrics map has 64 slots");
            assert_eq!(r.is_drop(), r.code() >= 16);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
