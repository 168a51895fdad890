//! Mirror of `bpf/lib/ipcache.h`: key and value of the `ipcache` LPM trie.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::common::{ip_from_map, ip_to_map};

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
    /// Nonzero: a tunnel key to this prefix's node is ready (the agent sets it from the
    /// tunnel view). With encryption on, from_endpoint sends the prefix's packets into the
    /// TUN only when it is set and drops them as `no-key` otherwise.
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

    /// The same value with `key_index` (0 = no key ready).
    pub fn with_key_index(mut self, key_index: u8) -> Self {
        self.key_index = key_index;
        self
    }

    /// The tunnel endpoint, None when the prefix is not reached through the overlay.
    pub fn tunnel_endpoint(&self) -> Option<Ipv4Addr> {
        (self.tunnel_endpoint != 0).then(|| ip_from_map(self.tunnel_endpoint))
    }
}

// SAFETY: repr(C), only integers and byte arrays, no implicit padding (checked by the
// offset tests below): every bit pattern is valid.
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

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
    fn addresses_are_stored_in_network_order() {
        let v = IpcacheValue::remote(7, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(v.tunnel_endpoint.to_ne_bytes(), [192, 168, 1, 2]);
        assert_eq!(v.tunnel_endpoint(), Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(IpcacheValue::local(7).tunnel_endpoint(), None);
        assert_eq!(v.with_key_index(1).key_index, 1);
        assert_eq!(v.with_key_index(1).tunnel_endpoint, v.tunnel_endpoint);
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
}
