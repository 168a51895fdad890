//! Mirror of `bpf/lib/policy.h`: key and value of the `policy` LPM trie.

use super::common::Direction;

/// Bits of [`PolicyKey`] after `prefixlen` that are always matched exactly (endpoint id,
/// direction, protocol, identity).
pub const POLICY_PREFIX_EXACT: u32 = 64;

/// Key of the `policy` LPM trie. `prefixlen` = 64 + the port prefix length; see
/// docs/datapath.md, "Policy", for the lookup order the datapath uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// 64 + port prefix length (0..=16).
    pub prefixlen: u32,
    /// The local endpoint whose policy this is.
    pub endpoint_id: u16,
    /// [`Direction`] code.
    pub direction: u8,
    /// IANA protocol, 0 = any.
    pub proto: u8,
    /// Remote identity, 0 = any.
    pub identity: u32,
    /// TCP/UDP destination port or ICMP type, network byte order.
    pub port: u16,
    /// Padding, 0.
    pub pad: u16,
}

impl PolicyKey {
    /// The entry for ports whose high `port_prefix_len` bits equal `port`'s (16 = exactly
    /// `port`, 0 = every port). Bits of `port` past the prefix are cleared. For ICMP the
    /// "port" is the ICMP type; for other protocols the datapath looks up port 0.
    pub fn new(
        endpoint_id: u16,
        direction: Direction,
        identity: u32,
        proto: u8,
        port: u16,
        port_prefix_len: u8,
    ) -> Result<Self, crate::DatapathError> {
        if port_prefix_len > 16 {
            return Err(crate::DatapathError::InvalidPolicyKey {
                detail: format!("port prefix length {port_prefix_len} (at most 16)"),
            });
        }
        let mask = if port_prefix_len == 0 {
            0
        } else {
            u16::MAX << (16 - port_prefix_len)
        };
        Ok(Self {
            prefixlen: POLICY_PREFIX_EXACT + u32::from(port_prefix_len),
            endpoint_id,
            direction: direction.code(),
            proto,
            identity,
            port: (port & mask).to_be(),
            pad: 0,
        })
    }

    /// The entry for every port of `proto` (or of every protocol when `proto` is 0).
    pub fn any_port(endpoint_id: u16, direction: Direction, identity: u32, proto: u8) -> Self {
        Self {
            prefixlen: POLICY_PREFIX_EXACT,
            endpoint_id,
            direction: direction.code(),
            proto,
            identity,
            port: 0,
            pad: 0,
        }
    }

    /// The port, host byte order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }

    /// How many high bits of the port the entry matches.
    pub fn port_prefix_len(&self) -> u32 {
        self.prefixlen.saturating_sub(POLICY_PREFIX_EXACT)
    }

    /// The direction, None if the stored code is not one.
    pub fn direction(&self) -> Option<Direction> {
        Direction::from_code(self.direction)
    }

    pub(crate) fn data(&self) -> PolicyKeyData {
        PolicyKeyData {
            endpoint_id: self.endpoint_id,
            direction: self.direction,
            proto: self.proto,
            identity: self.identity,
            port: self.port,
            pad: 0,
        }
    }

    pub(crate) fn from_data(prefixlen: u32, d: PolicyKeyData) -> Self {
        Self {
            prefixlen,
            endpoint_id: d.endpoint_id,
            direction: d.direction,
            proto: d.proto,
            identity: d.identity,
            port: d.port,
            pad: d.pad,
        }
    }
}

/// [`PolicyKey`] without its prefix length: the data part of aya's LPM key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PolicyKeyData {
    pub endpoint_id: u16,
    pub direction: u8,
    pub proto: u8,
    pub identity: u32,
    pub port: u16,
    pub pad: u16,
}

/// What a policy entry decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The packet (and the connection it opens) is allowed.
    Allow,
    /// The packet is dropped, counted as `policy-deny-rule`.
    Deny,
}

/// Value of the `policy` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// 1 allow, 2 deny; anything else denies.
    pub verdict: u8,
    /// Padding, 0.
    pub pad: [u8; 3],
    /// The rule this entry comes from, reported in events and conntrack; 0 = none.
    pub rule_id: u32,
}

impl PolicyValue {
    /// An allow entry from rule `rule_id`.
    pub fn allow(rule_id: u32) -> Self {
        Self {
            verdict: 1,
            pad: [0; 3],
            rule_id,
        }
    }

    /// A deny entry from rule `rule_id`.
    pub fn deny(rule_id: u32) -> Self {
        Self {
            verdict: 2,
            pad: [0; 3],
            rule_id,
        }
    }

    /// The verdict as the datapath reads it (anything but 1 denies).
    pub fn verdict(&self) -> Verdict {
        if self.verdict == 1 {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

// SAFETY: repr(C), only integers and byte arrays, no implicit padding (checked by the
// offset tests below): every bit pattern is valid.
unsafe impl aya::Pod for PolicyKeyData {}
unsafe impl aya::Pod for PolicyValue {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::abi::{header::define, proto};

    #[test]
    fn policy_layout_and_keys() {
        assert_eq!(size_of::<PolicyKey>(), 16);
        assert_eq!(offset_of!(PolicyKey, prefixlen), 0);
        assert_eq!(offset_of!(PolicyKey, endpoint_id), 4);
        assert_eq!(offset_of!(PolicyKey, direction), 6);
        assert_eq!(offset_of!(PolicyKey, proto), 7);
        assert_eq!(offset_of!(PolicyKey, identity), 8);
        assert_eq!(offset_of!(PolicyKey, port), 12);
        assert_eq!(offset_of!(PolicyKey, pad), 14);
        assert_eq!(size_of::<aya::maps::lpm_trie::Key<PolicyKeyData>>(), 16);
        assert_eq!(size_of::<PolicyValue>(), 8);
        assert_eq!(offset_of!(PolicyValue, verdict), 0);
        assert_eq!(offset_of!(PolicyValue, rule_id), 4);

        let k = PolicyKey::new(7, Direction::Ingress, 100, proto::TCP, 8080, 16).unwrap();
        assert_eq!(k.prefixlen, 80);
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!((k.port(), k.port_prefix_len()), (8080, 16));
        // 8080 = 0x1f90; a /8 port prefix keeps 0x1f00 (ports 0x1f00..=0x1fff).
        let k = PolicyKey::new(7, Direction::Egress, 0, proto::UDP, 8080, 8).unwrap();
        assert_eq!((k.port(), k.prefixlen), (0x1f00, 72));
        assert_eq!(k.direction(), Some(Direction::Egress));
        assert!(PolicyKey::new(7, Direction::Egress, 0, 0, 0, 17).is_err());
        let any = PolicyKey::any_port(7, Direction::Ingress, 0, 0);
        assert_eq!(
            any,
            PolicyKey::new(7, Direction::Ingress, 0, 0, 1234, 0).unwrap()
        );
        assert_eq!(PolicyKey::from_data(any.prefixlen, any.data()), any);
        assert_eq!(PolicyValue::allow(9).verdict(), Verdict::Allow);
        assert_eq!(PolicyValue::deny(9).verdict(), Verdict::Deny);
        assert_eq!(PolicyValue::default().verdict(), Verdict::Deny);

        let h = include_str!("../../bpf/lib/policy.h");
        assert_eq!(
            define(h, "POLICY_PREFIX_EXACT"),
            u64::from(POLICY_PREFIX_EXACT)
        );
        assert_eq!(define(h, "POLICY_ALLOW"), 1);
        assert_eq!(define(h, "POLICY_DENY"), 2);
    }
}
