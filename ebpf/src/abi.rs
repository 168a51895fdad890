//! `#[repr(C)]` mirrors of the structs in `bpf/lib/maps.h`, the reason numbers of
//! `bpf/lib/metrics.h` and the conntrack timeouts of `bpf/lib/conntrack.h`
//! (docs/datapath.md, "BPF maps"). Addresses and ports are stored as the kernel sees them
//! (network byte order); build values with the constructors here so that no caller
//! converts byte order by hand.

use std::{fmt, net::Ipv4Addr, time::Duration};

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

/// Reserved identity of the local host (the node's own addresses).
pub const IDENTITY_HOST: u32 = 1;
/// Reserved identity of anything the ipcache does not know.
pub const IDENTITY_WORLD: u32 = 2;

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
unsafe impl aya::Pod for PolicyKeyData {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}

/// Why a program forwarded, passed or dropped a packet: the column of `metrics` (index
/// direction * 64 + reason). The numbers are the contract with `bpf/lib/metrics.h`; never
/// renumber. A packet is counted once per stage: once by the policy stage (`ct-*`,
/// `policy-allowed` or a drop) and once by the forwarding stage.
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
    /// Policy allowed a new connection and a conntrack entry was created.
    CtNew = 6,
    /// A packet of a tracked connection, in the direction that opened it.
    CtEstablished = 7,
    /// A reply of a tracked connection.
    CtReply = 8,
    /// Policy allowed a packet that opens no entry (TCP without SYN, ICMP other than
    /// echo, untracked protocols, later fragments).
    PolicyAllowed = 9,
    /// An event was not emitted: over the per-CPU budget.
    EventsRateLimited = 10,
    /// An event was not emitted: the ring buffer was full (the reader is behind).
    EventsRingbufFull = 11,
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
    /// Dropped: the direction is enforced and no policy entry allowed the packet.
    DropPolicyDenied = 21,
    /// Dropped: a deny entry matched (its rule is in the event).
    DropPolicyDenyRule = 22,
    /// Dropped: a packet leaving towards an endpoint whose address is not the one
    /// registered behind that interface, so there is no policy to check.
    DropNoPolicyContext = 23,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; 19] = [
        Reason::ForwardedLocal,
        Reason::ForwardedOverlay,
        Reason::ToStack,
        Reason::Delivered,
        Reason::FromOverlay,
        Reason::CtNew,
        Reason::CtEstablished,
        Reason::CtReply,
        Reason::PolicyAllowed,
        Reason::EventsRateLimited,
        Reason::EventsRingbufFull,
        Reason::DropSpoofed,
        Reason::DropNoEndpoint,
        Reason::DropNoOverlay,
        Reason::DropRedirectFailed,
        Reason::DropMalformed,
        Reason::DropPolicyDenied,
        Reason::DropPolicyDenyRule,
        Reason::DropNoPolicyContext,
    ];

    /// The stable name used in logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ForwardedLocal => "forwarded-local",
            Reason::ForwardedOverlay => "forwarded-overlay",
            Reason::ToStack => "to-stack",
            Reason::Delivered => "delivered",
            Reason::FromOverlay => "from-overlay",
            Reason::CtNew => "ct-new",
            Reason::CtEstablished => "ct-established",
            Reason::CtReply => "ct-reply",
            Reason::PolicyAllowed => "policy-allowed",
            Reason::EventsRateLimited => "events-rate-limited",
            Reason::EventsRingbufFull => "events-ringbuf-full",
            Reason::DropSpoofed => "spoofed-source",
            Reason::DropNoEndpoint => "no-local-endpoint",
            Reason::DropNoOverlay => "overlay-not-configured",
            Reason::DropRedirectFailed => "redirect-failed",
            Reason::DropMalformed => "malformed",
            Reason::DropPolicyDenied => "policy-denied",
            Reason::DropPolicyDenyRule => "policy-deny-rule",
            Reason::DropNoPolicyContext => "no-policy-context",
        }
    }

    /// The reason number (the column within a direction's metrics row).
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The `metrics` map index for this reason in `direction`.
    pub const fn metrics_index(self, direction: Direction) -> u32 {
        direction as u32 * METRICS_PER_DIRECTION + self.code()
    }

    /// The reason with this number, if any.
    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the packet was dropped.
    pub const fn is_drop(self) -> bool {
        self.code() >= 16
    }
}

/// Slots per direction in the `metrics` map (`METRICS_PER_DIR`).
pub const METRICS_PER_DIRECTION: u32 = 64;

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
        assert_eq!(offset_of!(DatapathConfig, events_per_sec), 12);
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

    /// `#define NAME VALUE` lines of a header, VALUE parsed as an integer (a `(1U << n)`
    /// form too).
    fn defines(header: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for line in header.lines() {
            let Some(rest) = line.trim().strip_prefix("#define ") else {
                continue;
            };
            let mut parts = rest.splitn(2, char::is_whitespace);
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value = value.split("/*").next().unwrap_or("").trim();
            let parsed = if let Some(shift) = value
                .strip_prefix("(1U << ")
                .and_then(|v| v.strip_suffix(')'))
            {
                shift.parse::<u32>().ok().map(|s| 1u64 << s)
            } else {
                value.trim_end_matches('U').parse().ok()
            };
            if let Some(v) = parsed {
                out.push((name.to_owned(), v));
            }
        }
        out
    }

    fn define(header: &str, name: &str) -> u64 {
        defines(header)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not defined"))
            .1
    }

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

        let h = include_str!("../bpf/lib/maps.h");
        assert_eq!(
            define(h, "POLICY_PREFIX_EXACT"),
            u64::from(POLICY_PREFIX_EXACT)
        );
        assert_eq!(define(h, "POLICY_ALLOW"), 1);
        assert_eq!(define(h, "POLICY_DENY"), 2);
        assert_eq!(
            define(h, "DIR_INGRESS"),
            u64::from(Direction::Ingress.code())
        );
        assert_eq!(define(h, "DIR_EGRESS"), u64::from(Direction::Egress.code()));
        assert_eq!(define(h, "IDENTITY_HOST"), u64::from(IDENTITY_HOST));
        assert_eq!(define(h, "IDENTITY_WORLD"), u64::from(IDENTITY_WORLD));
        assert_eq!(
            define(h, "EP_F_INGRESS_ENFORCED"),
            u64::from(EndpointValue::INGRESS_ENFORCED)
        );
        assert_eq!(
            define(h, "EP_F_EGRESS_ENFORCED"),
            u64::from(EndpointValue::EGRESS_ENFORCED)
        );
        assert_eq!(define(h, "CFG_F_TRACE"), u64::from(DatapathConfig::TRACE));
        assert_eq!(
            define(h, "EVENTS_PER_SEC_DEFAULT"),
            u64::from(DatapathConfig::DEFAULT_EVENTS_PER_SEC)
        );
        assert_eq!(
            define(h, "METRICS_PER_DIR"),
            u64::from(METRICS_PER_DIRECTION)
        );
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
        let c = DatapathConfig::new(1, Ipv4Addr::LOCALHOST)
            .with_trace(true)
            .with_events_per_sec(5);
        assert_eq!((c.flags, c.events_per_sec), (DatapathConfig::TRACE, 5));
        assert_eq!(c.with_trace(false).flags, 0);
    }

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

        let m = include_str!("../bpf/lib/maps.h");
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
        let h = include_str!("../bpf/lib/conntrack.h");
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
        let h = include_str!("../bpf/lib/maps.h");
        assert_eq!(define(h, "EVENT_DROP"), 1);
        assert_eq!(define(h, "EVENT_POLICY_VERDICT"), 2);
        assert_eq!(define(h, "EVENT_TRACE"), 3);
    }

    /// "DropSpoofed" -> "DROP_SPOOFED": the C enumerator of a Rust variant.
    fn c_enumerator(r: Reason) -> String {
        let mut out = String::new();
        for (i, ch) in format!("{r:?}").chars().enumerate() {
            if ch.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
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
            assert_eq!(
                *name,
                c_enumerator(reason),
                "REASON_{name} = {code} vs {reason:?}"
            );
        }
        assert_eq!(define(header, "REASON_DROP_FIRST"), 16);
    }

    #[test]
    fn reason_names_are_unique_and_codes_fit() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(
                r.code() < METRICS_PER_DIRECTION,
                "a metrics row has 64 slots"
            );
            assert_eq!(r.is_drop(), r.code() >= 16);
            assert_eq!(r.metrics_index(Direction::Ingress), r.code());
            assert_eq!(r.metrics_index(Direction::Egress), 64 + r.code());
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Reason::DropPolicyDenied.as_str(), "policy-denied");
    }
}
