//! Mirror of `bpf/lib/events.h`: the records of the `events` ring buffer and their
//! decoding.

use std::net::Ipv4Addr;

use super::{
    common::{ip_from_map, Direction},
    metrics::Reason,
};

/// Kind of a [`FlowEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A packet was dropped; `reason` says why.
    Drop,
    /// Policy allowed a new connection by a rule (`rule_id`).
    PolicyVerdict,
    /// A packet was forwarded or delivered (only with [`DatapathConfig::TRACE`]).
    Trace,
}

impl EventKind {
    /// "drop", "policy-verdict" or "trace".
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Drop => "drop",
            EventKind::PolicyVerdict => "policy-verdict",
            EventKind::Trace => "trace",
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(EventKind::Drop),
            2 => Some(EventKind::PolicyVerdict),
            3 => Some(EventKind::Trace),
            _ => None,
        }
    }
}

/// Which lookup of the policy order matched (`flow_event.policy_match`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyTable {
    /// (identity, protocol): the most specific.
    IdentityProto,
    /// (identity, any protocol).
    IdentityAnyProto,
    /// (any identity, protocol).
    AnyIdentityProto,
    /// (any identity, any protocol).
    AnyIdentityAnyProto,
}

impl PolicyTable {
    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(PolicyTable::IdentityProto),
            2 => Some(PolicyTable::IdentityAnyProto),
            3 => Some(PolicyTable::AnyIdentityProto),
            4 => Some(PolicyTable::AnyIdentityAnyProto),
            _ => None,
        }
    }
}

/// One record of the `events` ring buffer, as the datapath writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowEventRecord {
    /// bpf_ktime_get_ns() when emitted.
    pub ts_ns: u64,
    /// Source IPv4, network byte order.
    pub saddr: u32,
    /// Destination IPv4, network byte order.
    pub daddr: u32,
    /// Source port (ICMP echo: identifier), network byte order.
    pub sport: u16,
    /// Destination port (ICMP echo: identifier), network byte order.
    pub dport: u16,
    /// IANA protocol.
    pub proto: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// [`Direction`] code.
    pub direction: u8,
    /// 1 drop, 2 policy verdict, 3 trace.
    pub kind: u8,
    /// [`Reason`] code.
    pub reason: u16,
    /// The local endpoint, 0 when not known yet.
    pub endpoint_id: u16,
    /// The remote identity, 0 when not known yet.
    pub remote_identity: u32,
    /// The policy rule that decided, 0 = none.
    pub rule_id: u32,
    /// skb->ifindex where the program ran.
    pub ifindex: u32,
    /// skb->len.
    pub len: u32,
    /// 1..=4: the policy lookup that matched ([`PolicyTable`]), 0 none.
    pub policy_match: u8,
    /// ICMP: the type (0 for other protocols).
    pub icmp_type: u8,
    /// Padding.
    pub pad: [u8; 2],
}

/// A decoded flow event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC ns when emitted (compare with [`crate::ktime_now_ns`]).
    pub ts_ns: u64,
    /// Drop, policy verdict or trace.
    pub kind: EventKind,
    /// Ingress (into the endpoint) or egress.
    pub direction: Direction,
    /// Why; None for a code this build does not know (see `reason_code`).
    pub reason: Option<Reason>,
    /// The raw reason number.
    pub reason_code: u16,
    /// Source address.
    pub saddr: Ipv4Addr,
    /// Destination address.
    pub daddr: Ipv4Addr,
    /// Source port, host order (ICMP echo: the identifier; 0 without L4 header).
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IANA protocol.
    pub proto: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// The local endpoint, 0 when the packet was dropped before it was known.
    pub endpoint_id: u16,
    /// The remote identity, 0 when not known.
    pub remote_identity: u32,
    /// The policy rule that decided, 0 = none (e.g. denied because no rule allowed it).
    pub rule_id: u32,
    /// Which lookup matched, None when no policy entry did.
    pub policy_table: Option<PolicyTable>,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Packet length (skb length, Ethernet header included).
    pub len: u32,
    /// ICMP: the type (8 echo request, 0 echo reply, 3 unreachable...); 0 otherwise.
    pub icmp_type: u8,
}

impl FlowEvent {
    /// Decodes one ring buffer record; None when it is too short or names an unknown kind
    /// or direction.
    pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
        if bytes.len() < size_of::<FlowEventRecord>() {
            return None;
        }
        // SAFETY: the length is checked above, FlowEventRecord is Pod (every bit pattern
        // is valid) and read_unaligned has no alignment requirement.
        let r: FlowEventRecord =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEventRecord>()) };
        Some(FlowEvent {
            ts_ns: r.ts_ns,
            kind: EventKind::from_code(r.kind)?,
            direction: Direction::from_code(r.direction)?,
            reason: Reason::from_code(u32::from(r.reason)),
            reason_code: r.reason,
            saddr: ip_from_map(r.saddr),
            daddr: ip_from_map(r.daddr),
            sport: u16::from_be(r.sport),
            dport: u16::from_be(r.dport),
            proto: r.proto,
            tcp_flags: r.tcp_flags,
            endpoint_id: r.endpoint_id,
            remote_identity: r.remote_identity,
            rule_id: r.rule_id,
            policy_table: PolicyTable::from_code(r.policy_match),
            ifindex: r.ifindex,
            len: r.len,
            icmp_type: r.icmp_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::abi::{common::ip_to_map, header::define, proto};

    #[test]
    fn flow_event_layout_and_decode() {
        assert_eq!(size_of::<FlowEventRecord>(), 48);
        assert_eq!(offset_of!(FlowEventRecord, ts_ns), 0);
        assert_eq!(offset_of!(FlowEventRecord, saddr), 8);
        assert_eq!(offset_of!(FlowEventRecord, daddr), 12);
        assert_eq!(offset_of!(FlowEventRecord, sport), 16);
        assert_eq!(offset_of!(FlowEventRecord, dport), 18);
        assert_eq!(offset_of!(FlowEventRecord, proto), 20);
        assert_eq!(offset_of!(FlowEventRecord, tcp_flags), 21);
        assert_eq!(offset_of!(FlowEventRecord, direction), 22);
        assert_eq!(offset_of!(FlowEventRecord, kind), 23);
        assert_eq!(offset_of!(FlowEventRecord, reason), 24);
        assert_eq!(offset_of!(FlowEventRecord, endpoint_id), 26);
        assert_eq!(offset_of!(FlowEventRecord, remote_identity), 28);
        assert_eq!(offset_of!(FlowEventRecord, rule_id), 32);
        assert_eq!(offset_of!(FlowEventRecord, ifindex), 36);
        assert_eq!(offset_of!(FlowEventRecord, len), 40);
        assert_eq!(offset_of!(FlowEventRecord, policy_match), 44);
        assert_eq!(offset_of!(FlowEventRecord, icmp_type), 45);

        let rec = FlowEventRecord {
            ts_ns: 5,
            saddr: ip_to_map(Ipv4Addr::new(10, 0, 0, 1)),
            daddr: ip_to_map(Ipv4Addr::new(10, 0, 0, 2)),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            tcp_flags: 0x02,
            direction: 0,
            kind: 1,
            reason: 22,
            endpoint_id: 3,
            remote_identity: 300,
            rule_id: 42,
            ifindex: 9,
            len: 74,
            policy_match: 1,
            icmp_type: 0,
            pad: [0; 2],
        };
        // SAFETY: FlowEventRecord is repr(C) without padding; viewing it as bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&rec as *const FlowEventRecord).cast::<u8>(),
                size_of::<FlowEventRecord>(),
            )
        };
        let ev = FlowEvent::decode(bytes).unwrap();
        assert_eq!(ev.kind, EventKind::Drop);
        assert_eq!(ev.direction, Direction::Ingress);
        assert_eq!(ev.reason, Some(Reason::DropPolicyDenyRule));
        assert_eq!((ev.sport, ev.dport), (40000, 80));
        assert_eq!(ev.saddr, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!((ev.rule_id, ev.remote_identity), (42, 300));
        assert_eq!(ev.policy_table, Some(PolicyTable::IdentityProto));
        assert!(FlowEvent::decode(&bytes[..47]).is_none());
        let mut bad = bytes.to_vec();
        bad[23] = 9;
        assert!(FlowEvent::decode(&bad).is_none(), "unknown kind");
        let h = include_str!("../../bpf/lib/events.h");
        assert_eq!(define(h, "EVENT_DROP"), 1);
        assert_eq!(define(h, "EVENT_POLICY_VERDICT"), 2);
        assert_eq!(define(h, "EVENT_TRACE"), 3);
    }
}
