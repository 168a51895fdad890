//! `membrane policy explain`: which rule lets a packet through or drops it.
//!
//! A packet from A to B passes when A's egress policy and B's ingress policy both allow
//! it. Both verdicts come from [`compute`] and [`EndpointPolicy::verdict`], the same code
//! that fills the datapath's policy maps, so the explanation cannot drift from what the
//! datapath does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use membrane_consensus::registry::LabelSet;

use super::engine::{
    compute, policy_enforces, Direction, EndpointPolicy, RuleRef, Verdict, IDENTITY_HOST,
    IDENTITY_REMOTE_NODE, IDENTITY_WORLD,
};
use super::error::PolicyError;
use super::rule::Policy;

/// One side of the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// An endpoint of the cluster with these labels (registered or not).
    Labels(LabelSet),
    /// An identity number: a registered one is an endpoint, a reserved or CIDR one is not.
    Identity(u32),
    /// An address outside the cluster; its identity is found through the ipcache.
    Address(Ipv4Addr),
}

/// What one side's policy says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideVerdict {
    /// The direction examined: the sender's egress or the receiver's ingress.
    pub direction: Direction,
    /// The verdict of that side.
    pub verdict: Verdict,
    /// The rule that decided, `None` for a default verdict.
    pub rule: Option<RuleRef>,
    /// The policies that select the endpoint in this direction (default deny when any).
    pub selected_by: Vec<String>,
    /// The remote identity the lookup used.
    pub remote_identity: u32,
    /// A sentence on this side.
    pub reason: String,
}

/// The answer of `policy explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Allow only when both sides allow.
    pub verdict: Verdict,
    /// The sender's egress, when the sender is an endpoint.
    pub egress: Option<SideVerdict>,
    /// The receiver's ingress, when the receiver is an endpoint.
    pub ingress: Option<SideVerdict>,
    /// The whole answer in one or two sentences.
    pub sentence: String,
}

/// Identity used for labels that no registered identity has, so that selectors can
/// still be evaluated against them; outside every range the registry hands out.
pub const UNREGISTERED_IDENTITY: u32 = 0x00FF_FFFF;

/// Explains the fate of a packet from `from` to `to` on `port` with protocol `proto`
/// (IANA number; use port 0 for ICMP).
pub fn explain(
    policies: &[Policy],
    identities: &BTreeMap<u32, LabelSet>,
    from: &Peer,
    to: &Peer,
    proto: u8,
    port: u16,
) -> Explanation {
    let mut identities = identities.clone();
    let (from_id, from_labels) = resolve(policies, &mut identities, from);
    let (to_id, to_labels) = resolve(policies, &mut identities, to);
    let what = format!("{}/{}", port, proto_name(proto));

    let side = |labels: &LabelSet, direction: Direction, remote: u32| {
        let ep = compute(policies, &identities, labels);
        let selected_by: Vec<String> = policies
            .iter()
            .filter(|p| policy_enforces(p, labels, direction))
            .map(|p| p.metadata.name.clone())
            .collect();
        let (verdict, rule) = ep.verdict(direction, remote, proto, port);
        let role = match direction {
            Direction::Egress => "the source",
            Direction::Ingress => "the destination",
        };
        let reason = match (&rule, verdict) {
            (Some(r), Verdict::Allow) => format!("{direction} of {labels} allowed by {r}"),
            (Some(r), Verdict::Deny) => format!("{direction} of {labels} denied by {r}"),
            (None, Verdict::Allow) => {
                format!("{direction} allowed by default: no policy selects {role} ({labels}) for {direction}")
            }
            (None, Verdict::Deny) => format!(
                "{direction} denied by default: {role} ({labels}) is selected by {} {}; none allows {what} {} identity {}",
                if selected_by.len() == 1 { "policy" } else { "policies" },
                selected_by.join(", "),
                if direction == Direction::Egress { "to" } else { "from" },
                describe_identity(remote, &ep),
            ),
        };
        SideVerdict {
            direction,
            verdict,
            rule,
            selected_by,
            remote_identity: remote,
            reason,
        }
    };

    let egress = from_labels
        .as_ref()
        .map(|l| side(l, Direction::Egress, to_id));
    let ingress = to_labels
        .as_ref()
        .map(|l| side(l, Direction::Ingress, from_id));
    let denied = [&egress, &ingress]
        .into_iter()
        .flatten()
        .find(|s| s.verdict == Verdict::Deny);
    let verdict = if denied.is_some() {
        Verdict::Deny
    } else {
        Verdict::Allow
    };
    let sides: Vec<&str> = [&egress, &ingress]
        .into_iter()
        .flatten()
        .map(|s| s.reason.as_str())
        .collect();
    let sentence = match (denied, sides.is_empty()) {
        (_, true) => "allowed: neither side is an endpoint, so no policy applies".to_string(),
        (Some(d), _) => format!("denied: {}", d.reason),
        (None, _) => format!("allowed: {}", sides.join("; ")),
    };
    Explanation {
        verdict,
        egress,
        ingress,
        sentence,
    }
}

/// The identity of a peer and, when it is an endpoint, its labels.
fn resolve(
    policies: &[Policy],
    identities: &mut BTreeMap<u32, LabelSet>,
    peer: &Peer,
) -> (u32, Option<LabelSet>) {
    match peer {
        Peer::Labels(labels) => {
            let known = identities
                .iter()
                .find(|(_, l)| *l == labels)
                .map(|(id, _)| *id);
            let id = known.unwrap_or_else(|| {
                identities.insert(UNREGISTERED_IDENTITY, labels.clone());
                UNREGISTERED_IDENTITY
            });
            (id, Some(labels.clone()))
        }
        Peer::Identity(id) => (*id, identities.get(id).cloned()),
        Peer::Address(addr) => {
            let ep = EndpointPolicy {
                cidr_identities: super::engine::cidr_identities(policies),
                ..EndpointPolicy::default()
            };
            (ep.identity_of_address(*addr), None)
        }
    }
}

fn describe_identity(id: u32, ep: &EndpointPolicy) -> String {
    match id {
        IDENTITY_HOST => "1 (host)".into(),
        IDENTITY_WORLD => "2 (world)".into(),
        IDENTITY_REMOTE_NODE => "6 (remote-node)".into(),
        _ => match ep.cidr_identities.iter().find(|(_, v)| **v == id) {
            Some((net, _)) => format!("{id} (cidr {net})"),
            None => id.to_string(),
        },
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        n => n.to_string(),
    }
}

/// Reads `PORT/PROTO` (`80/TCP`, `53/udp`, `ICMP` or `0/ICMP`) into (IANA protocol, port).
pub fn parse_port_proto(input: &str) -> Result<(u8, u16), PolicyError> {
    let bad = |reason: &str| PolicyError::PortProtocol {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let (port, proto) = match input.trim().split_once('/') {
        Some((port, proto)) => (Some(port.trim()), proto.trim()),
        None => (None, input.trim()),
    };
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "ICMP" => 1,
        _ => return Err(bad("the protocol is not TCP, UDP or ICMP")),
    };
    let port = match port {
        None if proto == 1 => 0,
        None => return Err(bad("a port is needed for TCP and UDP")),
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number 0-65535"))?,
    };
    if proto == 1 && port != 0 {
        return Err(bad("ICMP has no ports"));
    }
    Ok((proto, port))
}
