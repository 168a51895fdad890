//! Mirror of `bpf/lib/conntrack.h`: key and value of the `conntrack` map and the idle
//! timeouts.

use std::{net::Ipv4Addr, time::Duration};

use super::common::{ip_from_map, ip_to_map, Direction};

/// Idle timeouts of conntrack entries (`CT_TIMEOUT_*` in `bpf/lib/conntrack.h`).
pub mod ct_timeout {
    use std::time::Duration;

    /// TCP after the SYN, until the handshake completes.
    pub const TCP_SYN: Duration = Duration::from_secs(60);
    /// TCP established.
    pub const TCP_ESTABLISHED: Duration = Duration::from_secs(6 * 3600);
    /// TCP after a RST or a FIN each way.
    pub const TCP_CLOSING: Duration = Duration::from_secs(10);
    /// UDP.
    pub const UDP: Duration = Duration::from_secs(60);
    /// ICMP echo.
    pub const ICMP: Duration = Duration::from_secs(60);
}

/// Key of the `conntrack` map: the tuple of the packet that opened the connection, and
/// the policy point that allowed it (egress at the source endpoint, ingress at the
/// destination endpoint). For ICMP echo both ports hold the identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// Source IPv4 of the opening packet, network byte order.
    pub saddr: u32,
    /// Destination IPv4, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IANA protocol.
    pub proto: u8,
    /// [`Direction`] code of the policy point.
    pub direction: u8,
    /// Padding, 0.
    pub pad: u16,
}

impl CtKey {
    /// A key from host-order values.
    pub fn new(
        saddr: Ipv4Addr,
        daddr: Ipv4Addr,
        sport: u16,
        dport: u16,
        proto: u8,
        direction: Direction,
    ) -> Self {
        Self {
            saddr: ip_to_map(saddr),
            daddr: ip_to_map(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            direction: direction.code(),
            pad: 0,
        }
    }

    /// Source address.
    pub fn saddr(&self) -> Ipv4Addr {
        ip_from_map(self.saddr)
    }

    /// Destination address.
    pub fn daddr(&self) -> Ipv4Addr {
        ip_from_map(self.daddr)
    }

    /// Source port, host order.
    pub fn sport(&self) -> u16 {
        u16::from_be(self.sport)
    }

    /// Destination port (the one policy matched), host order.
    pub fn dport(&self) -> u16 {
        u16::from_be(self.dport)
    }

    /// The policy point, None if the stored code is not a direction.
    pub fn direction(&self) -> Option<Direction> {
        Direction::from_code(self.direction)
    }
}

/// Value of the `conntrack` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// [`crate::ktime_now_ns`] after which the entry is dead (CLOCK_MONOTONIC, ns).
    pub expires_ns: u64,
    /// Packets seen, both directions.
    pub packets: u64,
    /// Bytes seen (skb length), both directions.
    pub bytes: u64,
    /// The remote identity of the decision that created the entry.
    pub remote_identity: u32,
    /// The allow rule of that decision, 0 when allowed because nothing was enforced.
    pub rule_id: u32,
    /// `CtValue::SYN_SEEN` and the other state bits.
    pub flags: u32,
    /// The endpoint whose policy decided.
    pub endpoint_id: u16,
    /// [`Direction`] code of that decision (the key's direction).
    pub direction: u8,
    /// Padding, 0.
    pub pad: u8,
}

impl CtValue {
    /// TCP: the opening SYN passed.
    pub const SYN_SEEN: u32 = 1 << 0;
    /// A packet in the reply direction passed.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// TCP: the handshake completed.
    pub const ESTABLISHED: u32 = 1 << 2;
    /// TCP: FIN from the opening side.
    pub const FIN_ORIG: u32 = 1 << 3;
    /// TCP: FIN from the reply side.
    pub const FIN_REPLY: u32 = 1 << 4;
    /// TCP: RST seen, or FIN both ways.
    pub const CLOSING: u32 = 1 << 5;

    /// Whether the entry is dead at `now_ns` ([`crate::ktime_now_ns`]).
    pub fn is_expired(&self, now_ns: u64) -> bool {
        self.expires_ns <= now_ns
    }

    /// Time left at `now_ns`, zero once expired.
    pub fn remaining(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(self.expires_ns.saturating_sub(now_ns))
    }

    /// The direction of the decision, None if the stored code is not one.
    pub fn direction(&self) -> Option<Direction> {
        Direction::from_code(self.direction)
    }
}

// SAFETY: repr(C), only integers and byte arrays, no implicit padding (checked by the
// offset tests below): every bit pattern is valid.
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::abi::{header::define, proto};

    #[test]
    fn conntrack_layout_flags_and_timeouts() {
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, saddr), 0);
        assert_eq!(offset_of!(CtKey, daddr), 4);
        assert_eq!(offset_of!(CtKey, sport), 8);
        assert_eq!(offset_of!(CtKey, dport), 10);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(offset_of!(CtKey, direction), 13);
        assert_eq!(offset_of!(CtKey, pad), 14);
        assert_eq!(size_of::<CtValue>(), 40);
        assert_eq!(offset_of!(CtValue, expires_ns), 0);
        assert_eq!(offset_of!(CtValue, packets), 8);
        assert_eq!(offset_of!(CtValue, bytes), 16);
        assert_eq!(offset_of!(CtValue, remote_identity), 24);
        assert_eq!(offset_of!(CtValue, rule_id), 28);
        assert_eq!(offset_of!(CtValue, flags), 32);
        assert_eq!(offset_of!(CtValue, endpoint_id), 36);
        assert_eq!(offset_of!(CtValue, direction), 38);
        assert_eq!(offset_of!(CtValue, pad), 39);

        let k = CtKey::new(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            40000,
            80,
            proto::TCP,
            Direction::Egress,
        );
        assert_eq!(k.saddr.to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(k.dport.to_ne_bytes(), [0, 80]);
        assert_eq!((k.sport(), k.dport()), (40000, 80));
        assert_eq!(k.direction(), Some(Direction::Egress));

        let m = include_str!("../../bpf/lib/conntrack.h");
        for (name, bit) in [
            ("CT_F_SYN_SEEN", CtValue::SYN_SEEN),
            ("CT_F_SEEN_REPLY", CtValue::SEEN_REPLY),
            ("CT_F_ESTABLISHED", CtValue::ESTABLISHED),
            ("CT_F_FIN_ORIG", CtValue::FIN_ORIG),
            ("CT_F_FIN_REPLY", CtValue::FIN_REPLY),
            ("CT_F_CLOSING", CtValue::CLOSING),
        ] {
            assert_eq!(define(m, name), u64::from(bit), "{name}");
        }
        let h = include_str!("../../bpf/lib/conntrack.h");
        for (name, d) in [
            ("CT_TIMEOUT_TCP_SYN_S", ct_timeout::TCP_SYN),
            ("CT_TIMEOUT_TCP_ESTABLISHED_S", ct_timeout::TCP_ESTABLISHED),
            ("CT_TIMEOUT_TCP_CLOSING_S", ct_timeout::TCP_CLOSING),
            ("CT_TIMEOUT_UDP_S", ct_timeout::UDP),
            ("CT_TIMEOUT_ICMP_S", ct_timeout::ICMP),
        ] {
            assert_eq!(define(h, name), d.as_secs(), "{name}");
        }
        let v = CtValue {
            expires_ns: 100,
            ..CtValue::default()
        };
        assert!(!v.is_expired(99) && v.is_expired(100));
        assert_eq!(v.remaining(40), Duration::from_nanos(60));
        assert_eq!(v.remaining(400), Duration::ZERO);
    }
}
