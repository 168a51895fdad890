//! Pure decoration: a datapath [`FlowEvent`] plus what the agent knows about both sides
//! (the local endpoint, the remote identity's labels, the rule's name) becomes the
//! [`pb::FlowEventMessage`] subscribers receive.

use std::collections::BTreeMap;

use membrane_consensus::registry::{
    reserved_identity_name, IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD,
};

use membrane_ebpf::FlowEvent;
use membrane_proto::v1 as pb;

/// The reserved identities the monitor names (docs/datapath.md): those the datapath assigns
/// to traffic. Numbers and names come from the registry, their one home.
const NAMED: [u32; 3] = [IDENTITY_HOST, IDENTITY_WORLD, IDENTITY_REMOTE_NODE];

/// What decoration needs of a local endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    pub labels: Vec<String>,
    pub identity: u32,
}

/// Labels shown for an identity the registry has no record of.
pub fn reserved_labels(identity: u32) -> Vec<String> {
    NAMED
        .iter()
        .filter(|id| **id == identity)
        .filter_map(|id| reserved_identity_name(*id))
        .map(str::to_string)
        .collect()
}

/// The rule's name, `rule N` when the policy sync has not named it, empty for rule 0.
pub fn rule_display(rule_id: u32, names: &BTreeMap<u32, String>) -> String {
    match rule_id {
        0 => String::new(),
        id => names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("rule {id}")),
    }
}

/// The message for one event, given what the agent knows about both sides.
pub fn decorate(
    ev: &FlowEvent,
    time_unix_ns: i64,
    local: Option<&Local>,
    remote_labels: Vec<String>,
    rule: String,
) -> pb::FlowEventMessage {
    pb::FlowEventMessage {
        time_unix_ns,
        kind: ev.kind.as_str().to_string(),
        direction: ev.direction.as_str().to_string(),
        endpoint_id: u32::from(ev.endpoint_id),
        endpoint_labels: local.map(|l| l.labels.clone()).unwrap_or_default(),
        endpoint_identity: local.map(|l| l.identity).unwrap_or(0),
        src: ev.saddr.to_string(),
        dst: ev.daddr.to_string(),
        sport: u32::from(ev.sport),
        dport: u32::from(ev.dport),
        proto: u32::from(ev.proto),
        tcp_flags: u32::from(ev.tcp_flags),
        reason: match ev.reason {
            Some(r) => r.as_str().to_string(),
            None => format!("reason {}", ev.reason_code),
        },
        remote_identity: ev.remote_identity,
        remote_labels,
        rule_id: ev.rule_id,
        rule,
        len: ev.len,
        ifindex: ev.ifindex,
        icmp_type: u32::from(ev.icmp_type),
        lost: 0,
    }
}

/// The notice a subscriber gets in place of `n` events it missed.
pub fn lost_notice(n: u64) -> pb::FlowEventMessage {
    pb::FlowEventMessage {
        lost: n,
        ..Default::default()
    }
}

/// Events and endpoints for the tests of the decoration, the filter and the CLI's printing.
#[cfg(test)]
pub(crate) mod testing {
    use super::Local;
    use membrane_ebpf::{proto, Direction, EventKind, FlowEvent, Reason};
    use std::net::Ipv4Addr;

    pub fn event(kind: EventKind, direction: Direction, reason: Reason) -> FlowEvent {
        FlowEvent {
            ts_ns: 0,
            kind,
            direction,
            reason: Some(reason),
            reason_code: reason.code() as u16,
            saddr: Ipv4Addr::new(10, 128, 0, 5),
            daddr: Ipv4Addr::new(10, 128, 1, 7),
            sport: 40000,
            dport: 5432,
            proto: proto::TCP,
            tcp_flags: 0x02,
            endpoint_id: 1234,
            remote_identity: 300,
            rule_id: 0,
            policy_table: None,
            ifindex: 9,
            len: 74,
            icmp_type: 0,
        }
    }

    pub fn web() -> Local {
        Local {
            labels: vec!["app=web".into()],
            identity: 200,
        }
    }

    /// 10:01:02.123 UTC on some day.
    pub const T: i64 =
        ((10 * 3600 + 60 + 2) * 1000 + 123) * 1_000_000 + 19_000 * 86_400 * 1_000_000_000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_named_and_reserved_identities_labelled() {
        let mut names = BTreeMap::new();
        names.insert(7, "allow-web".to_string());
        assert_eq!(rule_display(7, &names), "allow-web");
        assert_eq!(rule_display(8, &names), "rule 8");
        assert_eq!(rule_display(0, &names), "");
        assert_eq!(reserved_labels(6), vec!["reserved:remote-node"]);
        assert!(reserved_labels(300).is_empty());
    }
}
