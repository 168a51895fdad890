//! What the policy side of the datapath must hold, computed without IO.
//!
//! The engine ([`crate::policy::compute`]) decides each endpoint's policy; this module turns
//! that into policy map entries and enforcement flags ([`desired_policy_map`]), names the
//! rules ([`rule_id`]), and decides which tracked connections a policy change cuts
//! ([`connections_to_cut`]). [`super::apply`] writes the result into the maps.

use std::collections::BTreeMap;

use membrane_consensus::registry::LabelSet;
use membrane_consensus::Registry;
use membrane_ebpf::{CtKey, CtValue, PolicyKey, PolicyValue};
use tracing::warn;

use crate::policy::{self, Direction, EndpointPolicy, Policy, RuleRef, Verdict};

/// A stable, non-zero id for a rule: the same on every node and across restarts, so events
/// can be named without a shared table.
pub fn rule_id(rule: &RuleRef) -> u32 {
    // FNV-1a over the rule's display form.
    let mut h: u32 = 0x811c_9dc5;
    for b in rule.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn bpf_direction(d: Direction) -> membrane_ebpf::Direction {
    match d {
        Direction::Ingress => membrane_ebpf::Direction::Ingress,
        Direction::Egress => membrane_ebpf::Direction::Egress,
    }
}

fn engine_direction(d: membrane_ebpf::Direction) -> Direction {
    match d {
        membrane_ebpf::Direction::Ingress => Direction::Ingress,
        membrane_ebpf::Direction::Egress => Direction::Egress,
    }
}

/// The policy map entries of one endpoint; the names of the rules they come from are added
/// to `names`.
pub fn endpoint_entries(
    endpoint_id: u16,
    computed: &EndpointPolicy,
    names: &mut BTreeMap<u32, String>,
) -> BTreeMap<PolicyKey, PolicyValue> {
    let mut out = BTreeMap::new();
    for e in &computed.entries {
        let Ok(key) = PolicyKey::new(
            endpoint_id,
            bpf_direction(e.direction),
            e.identity,
            e.proto,
            e.port,
            e.port_prefix_len,
        ) else {
            // The engine only produces prefixes of at most 16 bits.
            continue;
        };
        let id = rule_id(&e.rule);
        names.entry(id).or_insert_with(|| e.rule.to_string());
        let value = match e.verdict {
            Verdict::Allow => PolicyValue::allow(id),
            Verdict::Deny => PolicyValue::deny(id),
        };
        out.insert(key, value);
    }
    out
}

/// Everything the policy side of the datapath must hold for this node's endpoints.
#[derive(Debug, Default)]
pub struct DesiredPolicy {
    /// The whole policy map.
    pub map: BTreeMap<PolicyKey, PolicyValue>,
    /// endpoint id -> (ingress enforced, egress enforced).
    pub enforcement: BTreeMap<u32, (bool, bool)>,
    /// endpoint id -> its computed policy (for conntrack re-checks and explain).
    pub computed: BTreeMap<u32, EndpointPolicy>,
    /// rule id -> rule name, for the monitor.
    pub rule_names: BTreeMap<u32, String>,
}

/// Computes the policy map for `endpoints` (id, labels). Ids the datapath cannot carry
/// (above 65535) are left out.
pub fn desired_policy_map(
    policies: &[Policy],
    identities: &BTreeMap<u32, LabelSet>,
    endpoints: &[(u32, LabelSet)],
) -> DesiredPolicy {
    let mut out = DesiredPolicy::default();
    for (id, labels) in endpoints {
        let Ok(ep16) = u16::try_from(*id) else {
            continue;
        };
        let computed = policy::compute(policies, identities, labels);
        out.map
            .extend(endpoint_entries(ep16, &computed, &mut out.rule_names));
        out.enforcement
            .insert(*id, (computed.ingress_enforced, computed.egress_enforced));
        out.computed.insert(*id, computed);
    }
    out
}

/// The registry's identities as the engine takes them.
pub fn identities_of(reg: &Registry) -> BTreeMap<u32, LabelSet> {
    reg.identities().map(|i| (i.id, i.labels.clone())).collect()
}

/// Stored policies (name, source), parsed. A stored policy that no longer parses (it was
/// valid when stored; this cannot happen within one version) is skipped and logged rather
/// than stopping enforcement of the others.
pub fn parse_stored(sources: Vec<(String, String)>) -> Vec<Policy> {
    let mut policies = Vec::new();
    for (name, source) in sources {
        match policy::parse_policies(&name, &source) {
            Ok(mut p) => policies.append(&mut p),
            Err(e) => warn!(policy = %name, error = %e, "stored policy does not parse; skipped"),
        }
    }
    policies
}

/// The tracked connections that `computed` (endpoint id -> its policy, as it is now) no
/// longer allows: removing their conntrack entries sends their next packet through the
/// policy again, which drops it.
///
/// An entry is judged at the policy point that allowed it (its endpoint and direction),
/// against the remote identity of that decision and the port of the opening packet (for
/// ICMP the echo request type, 8). Entries of endpoints without a computed policy here, or
/// with a direction code that is not one, are left alone.
pub fn connections_to_cut(
    computed: &BTreeMap<u32, EndpointPolicy>,
    conntrack: &[(CtKey, CtValue)],
) -> Vec<CtKey> {
    conntrack
        .iter()
        .filter(|(key, value)| {
            let Some(policy) = computed.get(&u32::from(value.endpoint_id)) else {
                return false;
            };
            let Some(direction) = key.direction() else {
                return false;
            };
            let port = if key.proto == membrane_ebpf::proto::ICMP {
                8
            } else {
                key.dport()
            };
            let (verdict, _) = policy.verdict(
                engine_direction(direction),
                value.remote_identity,
                key.proto,
                port,
            );
            verdict == Verdict::Deny
        })
        .map(|(key, _)| *key)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    pub(crate) fn labels(s: &[&str]) -> LabelSet {
        LabelSet::parse(s).unwrap()
    }

    pub(crate) const DB_POLICY: &str = r#"
apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata:
  name: db
spec:
  endpointSelector:
    matchLabels: {app: db}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: web}
      toPorts:
        - ports:
            - port: "5432"
              protocol: TCP
"#;

    pub(crate) const WEB: u32 = 65792;
    pub(crate) const DB: u32 = 65793;
    pub(crate) const OTHER: u32 = 65794;

    pub(crate) fn identities() -> BTreeMap<u32, LabelSet> {
        [
            (WEB, labels(&["app=web"])),
            (DB, labels(&["app=db"])),
            (OTHER, labels(&["app=other"])),
        ]
        .into_iter()
        .collect()
    }

    /// web is endpoint 1, db endpoint 2, under the db policy.
    pub(crate) fn desired_db() -> DesiredPolicy {
        let policies = policy::parse_policies("db.yaml", DB_POLICY).unwrap();
        desired_policy_map(
            &policies,
            &identities(),
            &[(1, labels(&["app=web"])), (2, labels(&["app=db"]))],
        )
    }

    pub(crate) fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A conntrack entry opened from `src:sport` to `dst:dport`, allowed at endpoint `ep`'s
    /// `direction` for the remote identity `remote`.
    pub(crate) fn ct(
        (src, sport): (&str, u16),
        (dst, dport): (&str, u16),
        proto: u8,
        direction: membrane_ebpf::Direction,
        ep: u16,
        remote: u32,
    ) -> (CtKey, CtValue) {
        let key = CtKey::new(ip(src), ip(dst), sport, dport, proto, direction);
        let value = CtValue {
            expires_ns: u64::MAX,
            remote_identity: remote,
            endpoint_id: ep,
            direction: direction.code(),
            ..CtValue::default()
        };
        (key, value)
    }

    #[test]
    fn a_selected_endpoint_gets_entries_and_enforcement_the_other_does_not() {
        let d = desired_db();
        assert_eq!(d.enforcement.get(&1), Some(&(false, false)));
        assert_eq!(d.enforcement.get(&2), Some(&(true, false)));
        let key = PolicyKey::new(
            2,
            membrane_ebpf::Direction::Ingress,
            WEB,
            membrane_ebpf::proto::TCP,
            5432,
            16,
        )
        .unwrap();
        let v = d.map.get(&key).expect("allow entry for web -> db:5432");
        assert_eq!(v.verdict, 1);
        assert_eq!(
            d.rule_names.get(&v.rule_id).map(String::as_str),
            Some("db: spec.ingress[0]")
        );
        assert!(
            d.map.keys().all(|k| k.endpoint_id == 2),
            "web has no entries"
        );
    }

    #[test]
    fn rule_ids_are_stable_and_never_zero() {
        let r = RuleRef {
            policy: "db".into(),
            section: policy::engine::Section::Ingress,
            index: 0,
        };
        assert_eq!(rule_id(&r), rule_id(&r.clone()));
        assert_ne!(rule_id(&r), 0);
        let other = RuleRef {
            index: 1,
            ..r.clone()
        };
        assert_ne!(rule_id(&r), rule_id(&other));
    }

    #[test]
    fn a_policy_change_cuts_the_connections_it_no_longer_allows_and_only_those() {
        use membrane_ebpf::proto::{ICMP, TCP, UDP};
        use membrane_ebpf::Direction::{Egress, Ingress};
        let d = desired_db();
        // web (10.128.0.2, endpoint 1) and db (10.128.0.3, endpoint 2) on this node; other
        // (10.128.1.9) elsewhere.
        let allowed = ct(
            ("10.128.0.2", 40000),
            ("10.128.0.3", 5432),
            TCP,
            Ingress,
            2,
            WEB,
        );
        let wrong_port = ct(
            ("10.128.0.2", 40001),
            ("10.128.0.3", 22),
            TCP,
            Ingress,
            2,
            WEB,
        );
        let wrong_peer = ct(
            ("10.128.1.9", 40002),
            ("10.128.0.3", 5432),
            TCP,
            Ingress,
            2,
            OTHER,
        );
        let udp = ct(
            ("10.128.0.2", 40003),
            ("10.128.0.3", 5432),
            UDP,
            Ingress,
            2,
            WEB,
        );
        // ICMP echo: both ports hold the identifier; the policy port is the type, 8.
        let ping = ct(("10.128.0.2", 7), ("10.128.0.3", 7), ICMP, Ingress, 2, WEB);
        // web's egress side of the same connections: web enforces nothing.
        let web_side = ct(
            ("10.128.0.2", 40001),
            ("10.128.0.3", 22),
            TCP,
            Egress,
            1,
            DB,
        );
        // A connection db opened: its replies come in at db's ingress, its entry is egress.
        let db_opened = ct(
            ("10.128.0.3", 40004),
            ("10.128.1.9", 80),
            TCP,
            Egress,
            2,
            OTHER,
        );
        // An endpoint this node has no computed policy for.
        let unknown = ct(
            ("10.128.1.9", 40005),
            ("10.128.0.9", 22),
            TCP,
            Ingress,
            9,
            OTHER,
        );
        let mut bad_direction = ct(
            ("10.128.1.9", 40006),
            ("10.128.0.3", 22),
            TCP,
            Ingress,
            2,
            OTHER,
        );
        bad_direction.0.direction = 0xee;
        let table = vec![
            allowed,
            wrong_port,
            wrong_peer,
            udp,
            ping,
            web_side,
            db_opened,
            unknown,
            bad_direction,
        ];
        let mut cut = connections_to_cut(&d.computed, &table);
        cut.sort();
        let mut want = vec![wrong_port.0, wrong_peer.0, udp.0, ping.0];
        want.sort();
        assert_eq!(cut, want);
    }

    #[test]
    fn an_icmp_echo_is_judged_on_port_8_not_on_its_identifier() {
        use membrane_ebpf::proto::ICMP;
        use membrane_ebpf::Direction::Ingress;
        // Rules without a protocol hold for every protocol on their ports, ICMP included.
        let policy = |ports: &str| {
            let text = format!(
                r#"
apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata:
  name: any
spec:
  endpointSelector:
    matchLabels: {{app: db}}
  ingress:
    - fromEndpoints:
        - matchLabels: {{app: web}}
      toPorts:
        - ports:
            - {ports}
"#
            );
            let policies = policy::parse_policies("any.yaml", &text).unwrap();
            desired_policy_map(&policies, &identities(), &[(2, labels(&["app=db"]))])
        };
        // Identifier 5432 in both ports.
        let ping = ct(
            ("10.128.0.2", 5432),
            ("10.128.0.3", 5432),
            ICMP,
            Ingress,
            2,
            WEB,
        );
        let only_5432 = policy(r#"{port: "5432"}"#);
        assert_eq!(
            connections_to_cut(&only_5432.computed, &[ping]),
            vec![ping.0]
        );
        let one_to_ten = policy("{port: 1, endPort: 10}");
        assert_eq!(connections_to_cut(&one_to_ten.computed, &[ping]), vec![]);
    }
}
