//! Mirror of `bpf/lib/metrics.h`: the `metrics` map's value and the reason numbers that
//! index it.

use std::fmt;

use super::common::Direction;

/// One CPU's counters for one reason in the `metrics` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (skb length, Ethernet header included).
    pub bytes: u64,
}

// SAFETY: repr(C), only integers and byte arrays, no implicit padding (checked by the
// offset tests below): every bit pattern is valid.
unsafe impl aya::Pod for MetricValue {}

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
    /// Passed to the host stack (ARP, or a destination the datapath does not own).
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
    /// Sent into the agent's TUN for encryption (from_endpoint, encryption on).
    ForwardedTunnel = 12,
    /// Received from the agent's TUN (opened and authenticated by the agent), the
    /// identity mark set, passed to the stack towards the endpoint (from_tunnel).
    FromTunnel = 13,
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
    /// Dropped: encryption is on and no tunnel key to the destination's node is ready
    /// (strict mode: never sent in clear).
    DropNoKey = 24,
    /// Dropped: not IPv4 or ARP (IPv6, VLAN-tagged, other): the datapath is IPv4 only
    /// and fails closed.
    DropUnsupportedL3 = 25,
    /// Dropped: an overlay packet whose outer source is not a registered node.
    DropOverlaySource = 26,
    /// Dropped: an overlay or tunnel packet whose inner source is not owned by the
    /// sending node with the claimed identity (or has no known identity).
    DropOverlayIdentity = 27,
    /// Dropped: an endpoint sent to a node's control port (RPC, gossip, encryption,
    /// VXLAN) without an explicit allow policy.
    DropControlPort = 28,
    /// Dropped: a packet from the host stack with a pod-pool source that did not come
    /// from a local endpoint, the overlay or the tunnel.
    DropPodSource = 29,
    /// Dropped: a plaintext overlay (VXLAN) packet while encryption is on.
    DropPlaintextOverlay = 30,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; 28] = [
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
        Reason::ForwardedTunnel,
        Reason::FromTunnel,
        Reason::DropSpoofed,
        Reason::DropNoEndpoint,
        Reason::DropNoOverlay,
        Reason::DropRedirectFailed,
        Reason::DropMalformed,
        Reason::DropPolicyDenied,
        Reason::DropPolicyDenyRule,
        Reason::DropNoPolicyContext,
        Reason::DropNoKey,
        Reason::DropUnsupportedL3,
        Reason::DropOverlaySource,
        Reason::DropOverlayIdentity,
        Reason::DropControlPort,
        Reason::DropPodSource,
        Reason::DropPlaintextOverlay,
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
            Reason::ForwardedTunnel => "forwarded-tunnel",
            Reason::FromTunnel => "from-tunnel",
            Reason::DropSpoofed => "spoofed-source",
            Reason::DropNoEndpoint => "no-local-endpoint",
            Reason::DropNoOverlay => "overlay-not-configured",
            Reason::DropRedirectFailed => "redirect-failed",
            Reason::DropMalformed => "malformed",
            Reason::DropPolicyDenied => "policy-denied",
            Reason::DropPolicyDenyRule => "policy-deny-rule",
            Reason::DropNoPolicyContext => "no-policy-context",
            Reason::DropNoKey => "no-key",
            Reason::DropUnsupportedL3 => "unsupported-l3",
            Reason::DropOverlaySource => "overlay-source",
            Reason::DropOverlayIdentity => "overlay-identity",
            Reason::DropControlPort => "control-port",
            Reason::DropPodSource => "pod-source",
            Reason::DropPlaintextOverlay => "plaintext-overlay",
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
    use crate::abi::header::define;

    #[test]
    fn metric_layout() {
        assert_eq!(size_of::<MetricValue>(), 16);
        assert_eq!(offset_of!(MetricValue, packets), 0);
        assert_eq!(offset_of!(MetricValue, bytes), 8);
        assert_eq!(
            define(include_str!("../../bpf/lib/metrics.h"), "METRICS_PER_DIR"),
            u64::from(METRICS_PER_DIRECTION)
        );
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
        let header = include_str!("../../bpf/lib/metrics.h");
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
        // Numbers and names fixed by the issue-12 contract.
        for (r, code, name) in [
            (Reason::ForwardedTunnel, 12, "forwarded-tunnel"),
            (Reason::FromTunnel, 13, "from-tunnel"),
            (Reason::DropNoKey, 24, "no-key"),
            (Reason::DropUnsupportedL3, 25, "unsupported-l3"),
            (Reason::DropOverlaySource, 26, "overlay-source"),
            (Reason::DropOverlayIdentity, 27, "overlay-identity"),
            (Reason::DropControlPort, 28, "control-port"),
            (Reason::DropPodSource, 29, "pod-source"),
            (Reason::DropPlaintextOverlay, 30, "plaintext-overlay"),
        ] {
            assert_eq!((r.code(), r.as_str()), (code, name));
        }
    }
}
