//! Scenario tests of the engine and explain, and the property tests of the whole module.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use membrane_consensus::registry::LabelSet;
use proptest::prelude::*;

use super::engine::*;
use super::explain::*;
use super::parse::*;
use super::rule::*;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

fn labels(s: &str) -> LabelSet {
    LabelSet::parse(&s.split(',').collect::<Vec<_>>()).expect("test labels are valid")
}

fn policies(yaml: &str) -> Vec<Policy> {
    parse_policies("test.yaml", yaml).expect("test policies are valid")
}

/// web=256, db=257, lb=258.
fn cluster() -> BTreeMap<u32, LabelSet> {
    [(256, "app=web"), (257, "app=db"), (258, "app=lb,env=prod")]
        .into_iter()
        .map(|(id, l)| (id, labels(l)))
        .collect()
}

fn head(name: &str, selector: &str) -> String {
    format!("apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {selector}\n")
}

fn ingress_verdict(ep: &EndpointPolicy, id: u32, proto: u8, port: u16) -> Verdict {
    ep.verdict(Direction::Ingress, id, proto, port).0
}

#[test]
fn unselected_endpoint_allows_everything_both_ways() {
    let p = policies(&format!(
        "{}  ingress: [{{fromEndpoints: [{{}}]}}]\n",
        head("a", "{matchLabels: {app: db}}")
    ));
    let ep = compute(&p, &cluster(), &labels("app=web"));
    assert!(!ep.ingress_enforced && !ep.egress_enforced);
    assert!(ep.entries.is_empty());
    assert_eq!(
        ep.verdict(Direction::Ingress, 2, TCP, 22),
        (Verdict::Allow, None)
    );
}

#[test]
fn default_deny_is_per_direction() {
    let p = policies(&format!(
        "{}  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: lb}}}}]\n    toPorts: [{{ports: [{{port: 80, protocol: TCP}}]}}]\n",
        head("web", "{matchLabels: {app: web}}")
    ));
    let ep = compute(&p, &cluster(), &labels("app=web"));
    assert!(ep.ingress_enforced && !ep.egress_enforced);
    let (v, rule) = ep.verdict(Direction::Ingress, 258, TCP, 80);
    assert_eq!(v, Verdict::Allow);
    assert_eq!(
        rule.map(|r| r.to_string()),
        Some("web: spec.ingress[0]".into())
    );
    assert_eq!(ingress_verdict(&ep, 258, TCP, 81), Verdict::Deny);
    assert_eq!(ingress_verdict(&ep, 258, UDP, 80), Verdict::Deny);
    assert_eq!(ingress_verdict(&ep, 257, TCP, 80), Verdict::Deny);
    assert_eq!(ep.verdict(Direction::Egress, 2, TCP, 443).0, Verdict::Allow);
}

#[test]
fn empty_rule_only_enforces_and_ports_only_rule_matches_every_peer() {
    let p = policies(&format!("{}  ingress: [{{}}]\n  egress: [{{toPorts: [{{ports: [{{port: 53, protocol: UDP}}]}}]}}]\n", head("a", "{}")));
    let ep = compute(&p, &cluster(), &labels("app=web"));
    assert!(ep.ingress_enforced && ep.egress_enforced);
    assert_eq!(ingress_verdict(&ep, 258, TCP, 80), Verdict::Deny);
    assert_eq!(ep.verdict(Direction::Egress, 2, UDP, 53).0, Verdict::Allow);
    assert_eq!(
        ep.verdict(Direction::Egress, 257, UDP, 53).0,
        Verdict::Allow
    );
    assert_eq!(ep.verdict(Direction::Egress, 257, TCP, 53).0, Verdict::Deny);
}

#[test]
fn entities_resolve_to_reserved_and_cluster_identities() {
    let p = policies(&format!(
        "{}  ingress:\n  - fromEntities: [host]\n  - fromEntities: [remote-node]\n  - fromEntities: [cluster]\n    toPorts: [{{ports: [{{port: 9000}}]}}]\n  - fromEntities: [world]\n    toPorts: [{{ports: [{{port: 443, protocol: TCP}}]}}]\n  egress:\n  - toEntities: [all]\n    toPorts: [{{ports: [{{protocol: ICMP}}]}}]\n  - toCIDR: [8.8.8.0/24]\n",
        head("e", "{}")
    ));
    let ep = compute(&p, &cluster(), &labels("app=web"));
    let cidr = ep
        .cidr_identities
        .get(&"8.8.8.0/24".parse().expect("net"))
        .copied();
    assert_eq!(cidr, Some(CIDR_IDENTITY_BIT | 1));
    let cidr = cidr.unwrap_or_default();
    assert_eq!(ingress_verdict(&ep, IDENTITY_HOST, TCP, 22), Verdict::Allow);
    assert_eq!(
        ingress_verdict(&ep, IDENTITY_REMOTE_NODE, UDP, 1),
        Verdict::Allow
    );
    assert_eq!(ingress_verdict(&ep, 257, TCP, 9000), Verdict::Allow);
    assert_eq!(ingress_verdict(&ep, 257, UDP, 9000), Verdict::Allow);
    assert_eq!(
        ingress_verdict(&ep, IDENTITY_HOST, TCP, 9000),
        Verdict::Allow
    );
    assert_eq!(ingress_verdict(&ep, 2, TCP, 9000), Verdict::Deny);
    assert_eq!(ingress_verdict(&ep, 257, TCP, 443), Verdict::Deny);
    assert_eq!(ingress_verdict(&ep, 2, TCP, 443), Verdict::Allow);
    assert_eq!(
        ingress_verdict(&ep, cidr, TCP, 443),
        Verdict::Allow,
        "world includes CIDR identities"
    );
    assert_eq!(ep.verdict(Direction::Egress, 2, ICMP, 0).0, Verdict::Allow);
    assert_eq!(
        ep.verdict(Direction::Egress, 257, ICMP, 0).0,
        Verdict::Allow
    );
    assert_eq!(ep.verdict(Direction::Egress, 2, TCP, 80).0, Verdict::Deny);
    assert_eq!(
        ep.verdict(Direction::Egress, cidr, TCP, 80).0,
        Verdict::Allow
    );
    assert!(ep
        .entries
        .iter()
        .any(|e| e.identity == IDENTITY_ANY && e.proto == ICMP));
}

#[test]
fn cidr_excepts_get_identities_that_the_set_does_not_allow() {
    let p = policies(&format!(
        "{}  egress:\n  - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n  - toCIDR: [10.1.2.0/24]\n    toPorts: [{{ports: [{{port: 80, protocol: TCP}}]}}]\n",
        head("c", "{}")
    ));
    let ep = compute(&p, &cluster(), &labels("app=web"));
    let ids: Vec<(String, u32)> = ep
        .cidr_identities
        .iter()
        .map(|(n, i)| (n.to_string(), *i))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("10.0.0.0/8".into(), 0x0100_0001),
            ("10.1.0.0/16".into(), 0x0100_0002),
            ("10.1.2.0/24".into(), 0x0100_0003)
        ]
    );
    let at = |ip: [u8; 4], port| {
        let id = ep.identity_of_address(Ipv4Addr::from(ip));
        ep.verdict(Direction::Egress, id, TCP, port).0
    };
    assert_eq!(at([10, 2, 0, 1], 22), Verdict::Allow);
    assert_eq!(at([10, 1, 0, 1], 22), Verdict::Deny, "the except range");
    assert_eq!(
        at([10, 1, 2, 9], 80),
        Verdict::Allow,
        "a CIDR inside the except, allowed by its own rule"
    );
    assert_eq!(at([10, 1, 2, 9], 22), Verdict::Deny);
    assert_eq!(at([8, 8, 8, 8], 22), Verdict::Deny);
}

#[test]
fn a_general_deny_wins_over_a_specific_allow() {
    // Deny all ports from world-and-CIDRs; allow 10.0.0.0/8 on 80; deny TCP 0-1023 from
    // anyone; allow lb on every port.
    let p = policies(&format!(
        "{}  ingress:\n  - fromCIDR: [10.0.0.0/8]\n    toPorts: [{{ports: [{{port: 80, protocol: TCP}}]}}]\n  - fromEndpoints: [{{matchLabels: {{app: lb}}}}]\n  ingressDeny:\n  - fromEntities: [world]\n    toPorts: [{{ports: [{{port: 80, protocol: ANY}}]}}]\n  - toPorts: [{{ports: [{{port: 1, endPort: 1023, protocol: TCP}}]}}]\n",
        head("d", "{}")
    ));
    let ep = compute(&p, &cluster(), &labels("app=web"));
    let ten = ep.identity_of_address(Ipv4Addr::new(10, 0, 0, 1));
    let (v, rule) = ep.verdict(Direction::Ingress, ten, TCP, 80);
    assert_eq!(v, Verdict::Deny);
    assert_eq!(rule.map(|r| r.section), Some(Section::IngressDeny));
    assert_eq!(
        ingress_verdict(&ep, 258, TCP, 80),
        Verdict::Deny,
        "deny of (any, TCP) beats allow of (lb, any)"
    );
    assert_eq!(ingress_verdict(&ep, 258, TCP, 1023), Verdict::Deny);
    assert_eq!(ingress_verdict(&ep, 258, TCP, 1024), Verdict::Allow);
    assert_eq!(ingress_verdict(&ep, 258, UDP, 80), Verdict::Allow);
    // The (lb, TCP) table exists only to carry the pushed-down deny.
    assert!(ep
        .entries
        .iter()
        .any(|e| e.identity == 258 && e.proto == TCP && e.verdict == Verdict::Deny));
}

#[test]
fn multi_policy_order_does_not_change_verdicts() {
    let a = format!("{}  ingress: [{{fromEntities: [all]}}]\n", head("a", "{}"));
    let b = format!(
        "{}  ingressDeny: [{{fromEndpoints: [{{matchLabels: {{app: db}}}}]}}]\n",
        head("b", "{}")
    );
    let ab = compute(
        &policies(&format!("{a}---\n{b}")),
        &cluster(),
        &labels("app=web"),
    );
    let ba = compute(
        &policies(&format!("{b}---\n{a}")),
        &cluster(),
        &labels("app=web"),
    );
    assert_eq!(ab, ba);
    assert_eq!(ingress_verdict(&ab, 257, TCP, 5), Verdict::Deny);
    assert_eq!(ingress_verdict(&ab, 256, TCP, 5), Verdict::Allow);
}

#[test]
fn explain_names_the_rule_or_the_default() {
    let p = policies(&format!(
        "{}  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: lb}}}}]\n    toPorts: [{{ports: [{{port: 80, protocol: TCP}}]}}]\n---\n{}  egress: [{{toEntities: [cluster]}}]\n  egressDeny: [{{toEntities: [world]}}]\n",
        head("web-in", "{matchLabels: {app: web}}"),
        head("lb-out", "{matchLabels: {app: lb}}")
    ));
    let ids = cluster();
    let lb = Peer::Labels(labels("app=lb,env=prod"));
    let web = Peer::Labels(labels("app=web"));

    let e = explain(&p, &ids, &lb, &web, TCP, 80);
    assert_eq!(e.verdict, Verdict::Allow);
    assert!(
        e.sentence.contains("allowed by web-in: spec.ingress[0]"),
        "{}",
        e.sentence
    );
    assert!(
        e.sentence
            .contains("egress of app=lb,env=prod allowed by lb-out: spec.egress[0]"),
        "{}",
        e.sentence
    );

    let e = explain(&p, &ids, &lb, &web, TCP, 81);
    assert_eq!(e.verdict, Verdict::Deny);
    assert!(
        e.sentence.contains("denied by default: the destination (app=web) is selected by policy web-in; none allows 81/TCP from identity 258"),
        "{}",
        e.sentence
    );

    let e = explain(&p, &ids, &web, &lb, TCP, 80);
    assert_eq!(e.verdict, Verdict::Allow);
    assert!(
        e.sentence
            .contains("no policy selects the destination (app=lb,env=prod) for ingress"),
        "{}",
        e.sentence
    );

    let e = explain(
        &p,
        &ids,
        &lb,
        &Peer::Address(Ipv4Addr::new(1, 1, 1, 1)),
        TCP,
        443,
    );
    assert_eq!(e.verdict, Verdict::Deny);
    assert!(e.ingress.is_none());
    assert!(
        e.sentence.contains("denied by lb-out: spec.egressDeny[0]"),
        "{}",
        e.sentence
    );

    let e = explain(&p, &ids, &Peer::Identity(IDENTITY_WORLD), &web, TCP, 80);
    assert_eq!(e.verdict, Verdict::Deny);
    assert!(e.egress.is_none());
    assert!(e.sentence.contains("2 (world)"), "{}", e.sentence);
}

#[test]
fn port_proto_arguments() {
    assert_eq!(parse_port_proto("80/TCP").ok(), Some((6, 80)));
    assert_eq!(parse_port_proto("53/udp").ok(), Some((17, 53)));
    assert_eq!(parse_port_proto("ICMP").ok(), Some((1, 0)));
    for (bad, why) in [
        ("80", "not TCP, UDP or ICMP"),
        ("x/TCP", "not a number"),
        ("8/ICMP", "ICMP has no ports"),
        ("TCP", "a port is needed"),
    ] {
        let err = parse_port_proto(bad).expect_err(bad).to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Property tests.

const SELECTORS: &[&str] = &[
    "{}",
    "{matchLabels: {app: a}}",
    "{matchLabels: {app: b}}",
    "{matchExpressions: [{key: env, operator: In, values: [x]}]}",
    "{matchExpressions: [{key: app, operator: NotIn, values: [a]}]}",
    "{matchExpressions: [{key: env, operator: DoesNotExist}]}",
];
const CIDRS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "192.168.0.0/16",
];
const CIDR_SETS: &[(&str, &[&str])] = &[
    ("10.0.0.0/8", &["10.1.0.0/16"]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("10.1.0.0/16", &["10.1.2.0/24", "10.1.2.3/32"]),
];
const ADDRESSES: &[[u8; 4]] = &[
    [10, 1, 2, 3],
    [10, 1, 2, 4],
    [10, 1, 3, 1],
    [10, 2, 0, 1],
    [192, 168, 1, 1],
    [8, 8, 8, 8],
];
const ENTITIES: &[Entity] = &[
    Entity::Host,
    Entity::World,
    Entity::Cluster,
    Entity::All,
    Entity::RemoteNode,
];
const PORTS: &[(Option<u16>, Option<u16>, Protocol)] = &[
    (None, None, Protocol::Tcp),
    (None, None, Protocol::Any),
    (None, None, Protocol::Icmp),
    (Some(80), None, Protocol::Tcp),
    (Some(80), None, Protocol::Any),
    (Some(443), None, Protocol::Udp),
    (Some(1000), Some(1100), Protocol::Tcp),
    (Some(1024), Some(65535), Protocol::Any),
    (Some(53), None, Protocol::Udp),
    (Some(1), Some(1023), Protocol::Tcp),
];
const PACKET_PORTS: &[u16] = &[
    22, 53, 80, 443, 999, 1000, 1023, 1024, 1050, 1100, 1101, 65535,
];
const LABELS: &[&str] = &[
    "app=a",
    "app=a,env=x",
    "app=b",
    "app=b,env=y",
    "app=c,env=x",
    "app=c",
];

fn selector(i: usize) -> EndpointSelector {
    parse_part(SELECTORS[i]).expect("pool selectors are valid")
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).expect("pool CIDRs are valid")
}

fn arb_rule() -> impl Strategy<Value = IngressRule> {
    let sels = prop::option::weighted(0.4, prop::collection::vec(0..SELECTORS.len(), 0..3));
    let cidrs = prop::option::weighted(0.25, prop::collection::vec(0..CIDRS.len(), 1..3));
    let sets = prop::option::weighted(0.2, prop::collection::vec(0..CIDR_SETS.len(), 1..2));
    let ents = prop::option::weighted(0.3, prop::collection::vec(0..ENTITIES.len(), 1..3));
    let ports = prop::option::weighted(
        0.6,
        prop::collection::vec(prop::collection::vec(0..PORTS.len(), 0..3), 0..3),
    );
    (sels, cidrs, sets, ents, ports).prop_map(|(sels, cidrs, sets, ents, ports)| IngressRule {
        from_endpoints: sels.map(|v| v.into_iter().map(selector).collect()),
        from_cidr: cidrs.map(|v| v.into_iter().map(|i| cidr(CIDRS[i])).collect()),
        from_cidr_set: sets.map(|v| {
            v.into_iter()
                .map(|i| CidrRule {
                    cidr: cidr(CIDR_SETS[i].0),
                    except: CIDR_SETS[i].1.iter().map(|e| cidr(e)).collect(),
                })
                .collect()
        }),
        from_entities: ents.map(|v| v.into_iter().map(|i| ENTITIES[i]).collect()),
        to_ports: ports.map(|rules| {
            rules
                .into_iter()
                .map(|ps| PortRule {
                    ports: ps
                        .into_iter()
                        .map(|i| PortProtocol {
                            port: PORTS[i].0,
                            end_port: PORTS[i].1,
                            protocol: PORTS[i].2,
                        })
                        .collect(),
                })
                .collect()
        }),
    })
}

fn to_egress(r: IngressRule) -> EgressRule {
    EgressRule {
        to_endpoints: r.from_endpoints,
        to_cidr: r.from_cidr,
        to_cidr_set: r.from_cidr_set,
        to_entities: r.from_entities,
        to_ports: r.to_ports,
    }
}

fn arb_policy(index: usize) -> impl Strategy<Value = Policy> {
    let rules = || prop::collection::vec(arb_rule(), 0..3);
    (0..SELECTORS.len(), rules(), rules(), rules(), rules()).prop_map(move |(sel, i, id, e, ed)| {
        Policy {
            api_version: ApiVersion::MembraneV1,
            kind: Kind::NetworkPolicy,
            metadata: Metadata {
                name: format!("p{index}"),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            spec: PolicySpec {
                description: None,
                endpoint_selector: selector(sel),
                ingress: i,
                ingress_deny: id,
                egress: e.into_iter().map(to_egress).collect(),
                egress_deny: ed.into_iter().map(to_egress).collect(),
            },
        }
    })
}

fn arb_policies() -> impl Strategy<Value = Vec<Policy>> {
    (arb_policy(0), arb_policy(1), arb_policy(2), 1..=3usize).prop_map(|(a, b, c, n)| {
        let mut v = vec![a, b, c];
        v.truncate(n);
        v
    })
}

/// The remote side of a packet, before the ipcache.
#[derive(Clone, Copy, Debug)]
enum Remote {
    Id(u32),
    Addr(Ipv4Addr),
}

/// The rules evaluated directly, packet by packet, with CIDRs matched on the address.
fn brute_force(
    policies: &[Policy],
    identities: &BTreeMap<u32, LabelSet>,
    endpoint: &LabelSet,
    direction: Direction,
    remote: Remote,
    proto: u8,
    port: u16,
) -> Verdict {
    let mut enforced = false;
    let mut allowed = false;
    for p in policies
        .iter()
        .filter(|p| p.spec.endpoint_selector.matches(endpoint))
    {
        for (section, _, parts) in rules(p) {
            if section.direction() != direction {
                continue;
            }
            enforced = true;
            if rule_matches(&parts, identities, remote, proto, port) {
                match section.verdict() {
                    Verdict::Deny => return Verdict::Deny,
                    Verdict::Allow => allowed = true,
                }
            }
        }
    }
    if allowed || !enforced {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

fn rule_matches(
    parts: &RuleParts<'_>,
    identities: &BTreeMap<u32, LabelSet>,
    remote: Remote,
    proto: u8,
    port: u16,
) -> bool {
    let peer = if parts.has_no_peer_field() {
        parts.has_ports()
    } else {
        let labels = match remote {
            Remote::Id(id) => identities.get(&id),
            Remote::Addr(_) => None,
        };
        let addr = match remote {
            Remote::Addr(a) => Some(a),
            Remote::Id(_) => None,
        };
        parts
            .endpoints
            .unwrap_or(&[])
            .iter()
            .any(|s| labels.is_some_and(|l| s.matches(l)))
            || parts
                .cidr
                .unwrap_or(&[])
                .iter()
                .any(|c| addr.is_some_and(|a| c.0.contains(&a)))
            || parts.cidr_set.unwrap_or(&[]).iter().any(|s| {
                addr.is_some_and(|a| {
                    s.cidr.0.contains(&a) && !s.except.iter().any(|e| e.0.contains(&a))
                })
            })
            || parts
                .entities
                .unwrap_or(&[])
                .iter()
                .any(|e| match (e, remote) {
                    (Entity::All, _) => true,
                    (Entity::Host, Remote::Id(id)) => id == IDENTITY_HOST,
                    (Entity::RemoteNode, Remote::Id(id)) => id == IDENTITY_REMOTE_NODE,
                    (Entity::Cluster, Remote::Id(_)) => true,
                    (Entity::World, Remote::Addr(_)) => true,
                    _ => false,
                })
    };
    let ports = !parts.has_ports()
        || parts.to_ports.unwrap_or(&[]).iter().any(|r| {
            r.ports.is_empty()
                || r.ports.iter().any(|pp| {
                    let (lo, hi) = pp.range();
                    let proto_ok = pp.protocol == Protocol::Any || pp.protocol.number() == proto;
                    proto_ok && (pp.port.is_none() || (lo..=hi).contains(&port))
                })
        });
    peer && ports
}

fn find_rule<'a>(policies: &'a [Policy], r: &RuleRef) -> Option<RuleParts<'a>> {
    let p = policies.iter().find(|p| p.metadata.name == r.policy)?;
    rules(p)
        .find(|(s, i, _)| *s == r.section && *i == r.index)
        .map(|(_, _, parts)| parts)
}

fn arb_packet() -> impl Strategy<Value = (Direction, Result<usize, usize>, u8, u16)> {
    (
        prop_oneof![Just(Direction::Ingress), Just(Direction::Egress)],
        prop_oneof![(0..6usize).prop_map(Ok), (0..ADDRESSES.len()).prop_map(Err)],
        prop_oneof![Just(TCP), Just(UDP), Just(ICMP), Just(132u8)],
        0..PACKET_PORTS.len(),
    )
        .prop_map(|(d, r, proto, i)| (d, r, proto, if proto == ICMP { 0 } else { PACKET_PORTS[i] }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// The flattened map, looked up by the contract, gives the verdict of the rules, and
    /// the rule it names is one that matches the packet with that verdict.
    #[test]
    fn flattened_verdict_equals_direct_evaluation(
        policies in arb_policies(),
        idents in prop::collection::vec(0..LABELS.len(), 1..5),
        endpoint in 0..LABELS.len(),
        packets in prop::collection::vec(arb_packet(), 40),
    ) {
        let identities: BTreeMap<u32, LabelSet> =
            idents.iter().enumerate().map(|(i, l)| (256 + i as u32, labels(LABELS[*l]))).collect();
        let cluster_ids: Vec<u32> = identities.keys().copied().chain([IDENTITY_HOST, IDENTITY_REMOTE_NODE]).collect();
        let endpoint = labels(LABELS[endpoint]);
        let ep = compute(&policies, &identities, &endpoint);
        for (direction, remote, proto, port) in packets {
            let remote = match remote {
                Ok(i) => Remote::Id(cluster_ids[i % cluster_ids.len()]),
                Err(i) => Remote::Addr(Ipv4Addr::from(ADDRESSES[i])),
            };
            let id = match remote {
                Remote::Id(id) => id,
                Remote::Addr(a) => ep.identity_of_address(a),
            };
            let expected = brute_force(&policies, &identities, &endpoint, direction, remote, proto, port);
            let (got, rule) = ep.verdict(direction, id, proto, port);
            prop_assert_eq!(got, expected, "{:?} {:?} id {} proto {} port {}\nentries: {:#?}", direction, remote, id, proto, port, ep.entries);
            if let Some(r) = rule {
                prop_assert_eq!(r.section.verdict(), got);
                let parts = find_rule(&policies, &r);
                prop_assert!(parts.is_some_and(|p| rule_matches(&p, &identities, remote, proto, port)), "{} does not match", r);
            }
        }
        // Serialising and parsing again gives the same policies.
        let text = to_yaml(&policies).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = parse_policies("roundtrip.yaml", &text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(again, policies);
    }

    /// The parser returns, whatever the input.
    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = parse_policies("fuzz.yaml", &text);
    }
}

const SAMPLE: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\nspec:\n  endpointSelector:\n    matchLabels: {app: web}\n    matchExpressions: [{key: env, operator: In, values: [prod]}]\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: lb}}]\n    fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n    toPorts:\n    - ports: [{port: \"80\", endPort: 90, protocol: TCP}]\n  egressDeny:\n  - toEntities: [world]\n---\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 1600, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated policy files: the parser returns, and whatever it accepts writes back and
    /// parses again to the same policies.
    #[test]
    fn parser_never_panics_on_mutated_yaml(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0..4u8, prop::sample::select(vec!["", "-", ":", " ", "\n", "[", "{", "}", "]", "'", "\"", "#", "&a", "*a", "!!", "---\n", "0", "99999", "ICMP", "0.0.0.0/0", "~", "<<: "])), 1..6),
    ) {
        let mut text = SAMPLE.to_string();
        for (at, op, s) in edits {
            let i = at.index(text.len() + 1);
            // Stay on a character boundary: the sample is ASCII and so are the insertions.
            let i = (0..=i).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            match op {
                0 => text.insert_str(i, s),
                1 => { let j = (i + 1 + s.len()).min(text.len()); if text.is_char_boundary(j) { text.replace_range(i..j, ""); } }
                2 => { let j = (i + 8).min(text.len()); if text.is_char_boundary(j) { let piece = text[i..j].to_string(); text.insert_str(j, &piece); } }
                _ => { text.replace_range(i..i, s); text.push_str(s); }
            }
        }
        if let Ok(policies) = parse_policies("mutated.yaml", &text) {
            let out = to_yaml(&policies).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = parse_policies("again.yaml", &out).map_err(|e| TestCaseError::fail(format!("{e}\n{out}")))?;
            prop_assert_eq!(again, policies);
        }
    }
}
