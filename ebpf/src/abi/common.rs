//! Mirror of `bpf/lib/common.h`: the policy direction shared by every map, and the byte
//! order of addresses and ports in maps and events (network order, as the kernel sees
//! them; build values with the constructors of this module's siblings so that no caller
//! converts byte order by hand).

use std::{fmt, net::Ipv4Addr};

/// An IPv4 address as a `u32` whose in-memory bytes are in network order.
pub(crate) fn ip_to_map(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`ip_to_map`].
pub(crate) fn ip_from_map(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// The direction of a policy decision, a conntrack entry and a metrics row: into the
/// endpoint (ingress) or out of it (egress).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the endpoint (to_endpoint; from_overlay counts here too).
    Ingress = 0,
    /// Out of the endpoint (from_endpoint).
    Egress = 1,
}

impl Direction {
    /// Both directions, in numeric order.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The number used in the maps.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The direction with this number, if any.
    pub fn from_code(code: u8) -> Option<Direction> {
        match code {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }

    /// "ingress" or "egress".
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IANA protocol numbers the datapath looks into.
pub mod proto {
    /// ICMP: the policy port is the ICMP type; echo is tracked by its identifier.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::abi::header::define;

    #[test]
    fn directions_match_common_h() {
        let h = include_str!("../../bpf/lib/common.h");
        assert_eq!(
            define(h, "DIR_INGRESS"),
            u64::from(Direction::Ingress.code())
        );
        assert_eq!(define(h, "DIR_EGRESS"), u64::from(Direction::Egress.code()));
    }

    #[test]
    fn addresses_are_stored_in_network_order() {
        let raw = ip_to_map(Ipv4Addr::new(10, 128, 0, 5));
        assert_eq!(raw.to_ne_bytes(), [10, 128, 0, 5]);
        assert_eq!(ip_from_map(raw), Ipv4Addr::new(10, 128, 0, 5));
    }
}
