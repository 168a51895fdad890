//! Mirror of `bpf/lib/endpoints.h`: key and value of the `endpoints` map.

use std::net::Ipv4Addr;

use super::common::{ip_from_map, ip_to_map, Direction};

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
    /// Policy enforcement: [`EndpointValue::INGRESS_ENFORCED`],
    /// [`EndpointValue::EGRESS_ENFORCED`].
    pub flags: u32,
}

impl EndpointValue {
    /// `flags` bit: ingress (into the endpoint) is denied unless a policy entry allows it.
    pub const INGRESS_ENFORCED: u32 = 1 << 0;
    /// `flags` bit: egress (out of the endpoint) is denied unless a policy entry allows it.
    pub const EGRESS_ENFORCED: u32 = 1 << 1;

    /// A value with no flags set: no direction enforces policy (everything that no deny
    /// entry matches is allowed).
    ///
    /// Policy and conntrack keep the endpoint id in 16 bits: ids must be below 65536.
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

    /// The same value with ingress and egress enforcement set as given.
    pub fn with_enforcement(mut self, ingress: bool, egress: bool) -> Self {
        self.flags &= !(Self::INGRESS_ENFORCED | Self::EGRESS_ENFORCED);
        if ingress {
            self.flags |= Self::INGRESS_ENFORCED;
        }
        if egress {
            self.flags |= Self::EGRESS_ENFORCED;
        }
        self
    }

    /// Whether `direction` of this endpoint enforces policy.
    pub fn enforces(&self, direction: Direction) -> bool {
        let bit = match direction {
            Direction::Ingress => Self::INGRESS_ENFORCED,
            Direction::Egress => Self::EGRESS_ENFORCED,
        };
        self.flags & bit != 0
    }
}

// SAFETY: repr(C), only integers and byte arrays, no implicit padding (checked by the
// offset tests below): every bit pattern is valid.
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointValue {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::abi::header::define;

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
    fn addresses_are_stored_in_network_order() {
        let key = EndpointKey::new(Ipv4Addr::new(10, 128, 0, 5));
        assert_eq!(key.ip.to_ne_bytes(), [10, 128, 0, 5]);
        assert_eq!(key.addr(), Ipv4Addr::new(10, 128, 0, 5));
    }

    #[test]
    fn enforcement_flags() {
        let v = EndpointValue::new(1, 2, 3, [0; 6], [0; 6]);
        assert!(!v.enforces(Direction::Ingress) && !v.enforces(Direction::Egress));
        let v = v.with_enforcement(true, false);
        assert_eq!(v.flags, EndpointValue::INGRESS_ENFORCED);
        assert!(v.enforces(Direction::Ingress) && !v.enforces(Direction::Egress));
        let v = v.with_enforcement(false, true);
        assert_eq!(v.flags, EndpointValue::EGRESS_ENFORCED);
    }

    #[test]
    fn flags_match_endpoints_h() {
        let h = include_str!("../../bpf/lib/endpoints.h");
        assert_eq!(
            define(h, "EP_F_INGRESS_ENFORCED"),
            u64::from(EndpointValue::INGRESS_ENFORCED)
        );
        assert_eq!(
            define(h, "EP_F_EGRESS_ENFORCED"),
            u64::from(EndpointValue::EGRESS_ENFORCED)
        );
    }
}
