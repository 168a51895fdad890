//! The policy engine: from policies and identities to one endpoint's policy map.
//!
//! [`compute`] resolves every selector to concrete identity numbers and flattens the rules
//! into [`PolicyEntry`]s, keyed by (direction, remote identity, protocol, port prefix), that
//! the datapath looks up in O(1) of the number of rules. The lookup contract is in the
//! module documentation of [`crate::policy`]; [`EndpointPolicy::verdict`] implements it.
//!
//! How deny wins over allow whatever the specificity: the entries are grouped in tables by
//! (identity, protocol), each either concrete or the wildcard 0. A packet reads the most
//! specific table that has a matching port first and stops there, so a general deny could
//! be hidden by a more specific allow. The engine therefore
//! - drops an allow whose port block lies inside a deny that applies to its table (a deny of
//!   the same table or of a more general one),
//! - copies ("pushes down") into a table every deny of a more general table that overlaps
//!   one of its allows, so that the longest matching block at such a port is a deny, and
//! - creates the table (I, P) when the table (I, any) allows ports that a deny of
//!   (any, P) covers, since (I, any) would otherwise be read before (any, P).
//!
//! Every entry of a table is a true statement about the packets that reach it, and every
//! port that some rule covers is matched by the first table consulted that holds a rule
//! for it, so the first match is the answer of a direct evaluation of the rules (the
//! property tests check this against a brute-force evaluation).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::Ipv4Net;
use membrane_consensus::registry::LabelSet;
use serde::{Deserialize, Serialize};

use super::rule::{Entity, Policy, RuleParts};

/// The wildcard identity of a policy entry: any remote identity.
pub const IDENTITY_ANY: u32 = 0;
/// The reserved identities the engine names (entities `host`, `world`, `remote-node`);
/// their one home is the registry.
pub use membrane_consensus::registry::{IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD};
/// Bit 24 marks a node-local CIDR identity (`CIDR_IDENTITY_BIT | n`).
pub const CIDR_IDENTITY_BIT: u32 = 0x0100_0000;
/// The protocol number of an entry that matches every protocol.
pub const PROTO_ANY: u8 = 0;

/// Which way a packet goes, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Towards the endpoint; the remote identity is the source.
    Ingress,
    /// From the endpoint; the remote identity is the destination.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// The packet passes.
    Allow,
    /// The packet is dropped.
    Deny,
}

/// The four rule lists of a policy spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Section {
    /// `spec.ingress`.
    Ingress,
    /// `spec.ingressDeny`.
    IngressDeny,
    /// `spec.egress`.
    Egress,
    /// `spec.egressDeny`.
    EgressDeny,
}

impl Section {
    /// The YAML field name.
    pub fn field(self) -> &'static str {
        match self {
            Section::Ingress => "ingress",
            Section::IngressDeny => "ingressDeny",
            Section::Egress => "egress",
            Section::EgressDeny => "egressDeny",
        }
    }

    /// The direction the section is about.
    pub fn direction(self) -> Direction {
        match self {
            Section::Ingress | Section::IngressDeny => Direction::Ingress,
            Section::Egress | Section::EgressDeny => Direction::Egress,
        }
    }

    /// What a matching rule of the section decides.
    pub fn verdict(self) -> Verdict {
        match self {
            Section::Ingress | Section::Egress => Verdict::Allow,
            Section::IngressDeny | Section::EgressDeny => Verdict::Deny,
        }
    }
}

/// Names one rule: policy, section and index in the section.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// `metadata.name` of the policy.
    pub policy: String,
    /// The rule list.
    pub section: Section,
    /// Index in the list, from 0.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: spec.{}[{}]",
            self.policy,
            self.section.field(),
            self.index
        )
    }
}

/// One entry of an endpoint's policy map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Which way the packet goes.
    pub direction: Direction,
    /// The remote identity; [`IDENTITY_ANY`] (0) for any.
    pub identity: u32,
    /// IANA protocol number (6 TCP, 17 UDP, 1 ICMP); [`PROTO_ANY`] (0) for any.
    pub proto: u8,
    /// The port block: its first port (the bits below the prefix are zero).
    pub port: u16,
    /// How many high bits of the port must equal those of `port` (0..=16); 0 is every port.
    pub port_prefix_len: u8,
    /// What a packet that this entry decides gets.
    pub verdict: Verdict,
    /// The rule the entry comes from.
    pub rule: RuleRef,
}

impl PolicyEntry {
    /// True when `port` lies in the entry's port block.
    pub fn covers_port(&self, port: u16) -> bool {
        block_contains_port((self.port, self.port_prefix_len), port)
    }
}

/// The policy of one local endpoint, as the datapath needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    /// Some policy selects the endpoint with an `ingress` or `ingressDeny` rule: ingress
    /// that no entry allows is dropped.
    pub ingress_enforced: bool,
    /// Likewise for egress.
    pub egress_enforced: bool,
    /// The policy map, sorted.
    pub entries: Vec<PolicyEntry>,
    /// The identity of every CIDR named in any policy (not only those selecting this
    /// endpoint, so that the numbering is the same for every endpoint), for the ipcache.
    pub cidr_identities: BTreeMap<Ipv4Net, u32>,
}

impl EndpointPolicy {
    /// True when the direction is in default deny.
    pub fn enforced(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enforced,
            Direction::Egress => self.egress_enforced,
        }
    }

    /// Applies the lookup contract to [`Self::entries`]: the tables (I, P), (I, any),
    /// (any, P), (any, any) in that order; in a table the longest matching port prefix;
    /// the first table with a match decides; else deny if enforced, allow if not. The rule
    /// is `None` for a default verdict. For ICMP and other port-less protocols, `port` is 0.
    pub fn verdict(
        &self,
        direction: Direction,
        identity: u32,
        proto: u8,
        port: u16,
    ) -> (Verdict, Option<RuleRef>) {
        let mut tables = vec![
            (identity, proto),
            (identity, PROTO_ANY),
            (IDENTITY_ANY, proto),
        ];
        tables.push((IDENTITY_ANY, PROTO_ANY));
        let mut seen = BTreeSet::new();
        for (id, p) in tables {
            if !seen.insert((id, p)) {
                continue;
            }
            let best = self
                .entries
                .iter()
                .filter(|e| e.direction == direction && e.identity == id && e.proto == p)
                .filter(|e| e.covers_port(port))
                .max_by_key(|e| e.port_prefix_len);
            if let Some(e) = best {
                return (e.verdict, Some(e.rule.clone()));
            }
        }
        if self.enforced(direction) {
            (Verdict::Deny, None)
        } else {
            (Verdict::Allow, None)
        }
    }

    /// The identity the ipcache gives an address outside the cluster: the CIDR identity
    /// of the longest prefix containing it, else world.
    pub fn identity_of_address(&self, addr: std::net::Ipv4Addr) -> u32 {
        lpm_identity(&self.cidr_identities, addr)
    }
}

/// The ipcache's longest-prefix match over CIDR identities; world when nothing matches.
pub fn lpm_identity(cidr_identities: &BTreeMap<Ipv4Net, u32>, addr: std::net::Ipv4Addr) -> u32 {
    cidr_identities
        .iter()
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, id)| *id)
        .unwrap_or(IDENTITY_WORLD)
}

/// Every CIDR and except-CIDR named in the policies, numbered `CIDR_IDENTITY_BIT | n`
/// from 1 in the order of the sorted CIDR list. `0.0.0.0/0` gets none: it is world.
pub fn cidr_identities(policies: &[Policy]) -> BTreeMap<Ipv4Net, u32> {
    let mut nets = BTreeSet::new();
    for policy in policies {
        for (_, _, parts) in rules(policy) {
            for c in parts.cidr.unwrap_or(&[]) {
                nets.insert(c.0);
            }
            for set in parts.cidr_set.unwrap_or(&[]) {
                nets.insert(set.cidr.0);
                nets.extend(set.except.iter().map(|e| e.0));
            }
        }
    }
    nets.into_iter()
        .filter(|n| n.prefix_len() > 0)
        .zip(1u32..)
        // 2^24 - 1 CIDRs is far beyond any policy file; the mask keeps the bit layout.
        .map(|(n, i)| (n, CIDR_IDENTITY_BIT | (i & 0x00FF_FFFF)))
        .collect()
}

/// Every rule of a policy with its section and index.
pub(crate) fn rules(policy: &Policy) -> impl Iterator<Item = (Section, usize, RuleParts<'_>)> {
    let s = &policy.spec;
    let ing = s
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| (Section::Ingress, i, r.parts()));
    let ingd = s
        .ingress_deny
        .iter()
        .enumerate()
        .map(|(i, r)| (Section::IngressDeny, i, r.parts()));
    let eg = s
        .egress
        .iter()
        .enumerate()
        .map(|(i, r)| (Section::Egress, i, r.parts()));
    let egd = s
        .egress_deny
        .iter()
        .enumerate()
        .map(|(i, r)| (Section::EgressDeny, i, r.parts()));
    ing.chain(ingd).chain(eg).chain(egd)
}

/// True when the policy applies to the endpoint and has a rule in the direction, which
/// puts the endpoint into default deny in that direction.
pub fn policy_enforces(policy: &Policy, endpoint: &LabelSet, direction: Direction) -> bool {
    let has_rules = match direction {
        Direction::Ingress => {
            !policy.spec.ingress.is_empty() || !policy.spec.ingress_deny.is_empty()
        }
        Direction::Egress => !policy.spec.egress.is_empty() || !policy.spec.egress_deny.is_empty(),
    };
    has_rules && policy.spec.endpoint_selector.matches(endpoint)
}

/// What selectors resolve against.
struct Universe<'a> {
    identities: &'a BTreeMap<u32, LabelSet>,
    cidrs: &'a BTreeMap<Ipv4Net, u32>,
}

impl Universe<'_> {
    /// The identities a rule's peers resolve to; `{0}` when it matches every peer.
    fn peers(&self, parts: &RuleParts<'_>) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        if parts.has_no_peer_field() {
            // A ports-only rule matches every peer; the empty rule `{}` matches none.
            if parts.has_ports() {
                out.insert(IDENTITY_ANY);
            }
            return out;
        }
        for sel in parts.endpoints.unwrap_or(&[]) {
            out.extend(
                self.identities
                    .iter()
                    .filter(|(_, labels)| sel.matches(labels))
                    .map(|(id, _)| *id),
            );
        }
        for c in parts.cidr.unwrap_or(&[]) {
            out.extend(self.cidr(c.0, &[]));
        }
        for set in parts.cidr_set.unwrap_or(&[]) {
            let except: Vec<Ipv4Net> = set.except.iter().map(|e| e.0).collect();
            out.extend(self.cidr(set.cidr.0, &except));
        }
        for entity in parts.entities.unwrap_or(&[]) {
            match entity {
                Entity::All => {
                    out.insert(IDENTITY_ANY);
                }
                Entity::Host => {
                    out.insert(IDENTITY_HOST);
                }
                Entity::RemoteNode => {
                    out.insert(IDENTITY_REMOTE_NODE);
                }
                Entity::Cluster => {
                    out.extend(self.identities.keys().copied());
                    out.extend([IDENTITY_HOST, IDENTITY_REMOTE_NODE]);
                }
                Entity::World => {
                    out.insert(IDENTITY_WORLD);
                    out.extend(self.cidrs.values().copied());
                }
            }
        }
        if out.contains(&IDENTITY_ANY) {
            // The wildcard covers every other number.
            out.retain(|id| *id == IDENTITY_ANY);
        }
        out
    }

    /// The CIDR identities inside `net` and outside every except; world too for /0.
    /// An address's identity is that of its longest CIDR, so "the address is in `net` and
    /// in no except" is "its CIDR lies inside `net` and inside no except".
    fn cidr(&self, net: Ipv4Net, except: &[Ipv4Net]) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .cidrs
            .iter()
            .filter(|(d, _)| net.contains(*d) && !except.iter().any(|e| e.contains(*d)))
            .map(|(_, id)| *id)
            .collect();
        if net.prefix_len() == 0 {
            ids.push(IDENTITY_WORLD);
        }
        ids
    }
}

/// A port block: first port and prefix length.
type Block = (u16, u8);

fn block_contains_port((base, len): Block, port: u16) -> bool {
    len == 0 || (base ^ port) >> (16 - u32::from(len)) == 0
}

/// True when block `outer` contains block `inner` (or equals it).
fn block_contains(outer: Block, inner: Block) -> bool {
    outer.1 <= inner.1 && block_contains_port(outer, inner.0)
}

fn blocks_overlap(a: Block, b: Block) -> bool {
    block_contains(a, b) || block_contains(b, a)
}

/// The fewest prefix-aligned blocks that cover exactly `lo..=hi`.
pub fn range_to_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at lo that does not pass hi.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        // lo < 2^16 and size is a power of two <= 2^16, so both fit.
        let len = 16 - size.trailing_zeros();
        out.push((lo as u16, len as u8));
        lo += size;
    }
    out
}

/// One rule's contribution to one table.
#[derive(Clone, Debug)]
struct Atom {
    block: Block,
    verdict: Verdict,
    rule: RuleRef,
}

type Tables = BTreeMap<(u32, u8), Vec<Atom>>;

/// Computes the policy of the endpoint with labels `endpoint`.
///
/// `identities` are the cluster's identities (number -> labels) that `fromEndpoints`
/// selectors resolve against; reserved identities (1 host, 2 world, 6 remote-node) are
/// implied and are reached through entities only.
pub fn compute(
    policies: &[Policy],
    identities: &BTreeMap<u32, LabelSet>,
    endpoint: &LabelSet,
) -> EndpointPolicy {
    let cidrs = cidr_identities(policies);
    let universe = Universe {
        identities,
        cidrs: &cidrs,
    };
    let mut atoms: BTreeMap<Direction, Tables> = BTreeMap::new();
    for policy in policies {
        if !policy.spec.endpoint_selector.matches(endpoint) {
            continue;
        }
        for (section, index, parts) in rules(policy) {
            let peers = universe.peers(&parts);
            if peers.is_empty() {
                continue;
            }
            let rule = RuleRef {
                policy: policy.metadata.name.clone(),
                section,
                index,
            };
            let tables = atoms.entry(section.direction()).or_default();
            for (proto, lo, hi) in port_ranges(&parts) {
                for block in range_to_blocks(lo, hi) {
                    for id in &peers {
                        tables.entry((*id, proto)).or_default().push(Atom {
                            block,
                            verdict: section.verdict(),
                            rule: rule.clone(),
                        });
                    }
                }
            }
        }
    }
    let mut entries = Vec::new();
    for (direction, tables) in &atoms {
        flatten(*direction, tables, &mut entries);
    }
    entries.sort();
    EndpointPolicy {
        ingress_enforced: policies
            .iter()
            .any(|p| policy_enforces(p, endpoint, Direction::Ingress)),
        egress_enforced: policies
            .iter()
            .any(|p| policy_enforces(p, endpoint, Direction::Egress)),
        entries,
        cidr_identities: cidrs,
    }
}

/// The (protocol, first port, last port) ranges of a rule's `toPorts`.
fn port_ranges(parts: &RuleParts<'_>) -> Vec<(u8, u16, u16)> {
    let all = (PROTO_ANY, 0, u16::MAX);
    if !parts.has_ports() {
        return vec![all];
    }
    let mut out = Vec::new();
    for rule in parts.to_ports.unwrap_or(&[]) {
        if rule.ports.is_empty() {
            out.push(all);
        }
        for p in &rule.ports {
            let (lo, hi) = p.range();
            out.push((p.protocol.number(), lo, hi));
        }
    }
    out
}

/// Turns the atoms of one direction into entries, table by table (see the module docs).
fn flatten(direction: Direction, atoms: &Tables, out: &mut Vec<PolicyEntry>) {
    let empty: Vec<Atom> = Vec::new();
    let get = |key: (u32, u8)| atoms.get(&key).unwrap_or(&empty);
    let allows = |key| get(key).iter().filter(|a| a.verdict == Verdict::Allow);
    let denies = |key| get(key).iter().filter(|a| a.verdict == Verdict::Deny);

    // The tables: every key with atoms, plus (I, P) wherever an allow of (I, any) meets a
    // deny of (any, P), which (I, any) would otherwise hide.
    let mut keys: BTreeSet<(u32, u8)> = atoms.keys().copied().collect();
    let deny_protos: BTreeSet<u8> = atoms
        .iter()
        .filter(|((id, p), v)| {
            *id == IDENTITY_ANY && *p != PROTO_ANY && v.iter().any(|a| a.verdict == Verdict::Deny)
        })
        .map(|((_, p), _)| *p)
        .collect();
    for (id, _) in atoms
        .keys()
        .filter(|(id, p)| *id != IDENTITY_ANY && *p == PROTO_ANY)
    {
        for p in &deny_protos {
            let meets = allows((*id, PROTO_ANY))
                .any(|a| denies((IDENTITY_ANY, *p)).any(|d| blocks_overlap(a.block, d.block)));
            if meets {
                keys.insert((*id, *p));
            }
        }
    }

    for &(id, proto) in &keys {
        // The more general tables whose denies apply to this one.
        let general: BTreeSet<(u32, u8)> = [
            (id, PROTO_ANY),
            (IDENTITY_ANY, proto),
            (IDENTITY_ANY, PROTO_ANY),
        ]
        .into_iter()
        .filter(|k| *k != (id, proto))
        .collect();
        let own = get((id, proto));
        let inherited: Vec<&Atom> = general.iter().flat_map(|k| denies(*k)).collect();
        let applicable: Vec<&Atom> = own
            .iter()
            .filter(|a| a.verdict == Verdict::Deny)
            .chain(inherited.iter().copied())
            .collect();
        // Allows that a deny of (I, any) must not hide: those of (I, any) itself, when this
        // is (I, P) and a deny of (any, P) may cover them.
        let shadowing: Vec<&Atom> = if id != IDENTITY_ANY && proto != PROTO_ANY {
            allows((id, PROTO_ANY)).collect()
        } else {
            Vec::new()
        };
        let own_allows: Vec<&Atom> = own.iter().filter(|a| a.verdict == Verdict::Allow).collect();

        let mut table: BTreeMap<(Block, Verdict), RuleRef> = BTreeMap::new();
        let mut put = |a: &Atom| {
            table
                .entry((a.block, a.verdict))
                .and_modify(|r| {
                    if a.rule < *r {
                        *r = a.rule.clone();
                    }
                })
                .or_insert_with(|| a.rule.clone());
        };
        for d in own.iter().filter(|a| a.verdict == Verdict::Deny) {
            put(d);
        }
        for d in &inherited {
            let needed = own_allows
                .iter()
                .chain(shadowing.iter())
                .any(|a| blocks_overlap(a.block, d.block));
            if needed {
                put(d);
            }
        }
        for a in &own_allows {
            if !applicable.iter().any(|d| block_contains(d.block, a.block)) {
                put(a);
            }
        }
        out.extend(
            table
                .into_iter()
                .map(|((block, verdict), rule)| PolicyEntry {
                    direction,
                    identity: id,
                    proto,
                    port: block.0,
                    port_prefix_len: block.1,
                    verdict,
                    rule,
                }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_minimal_aligned_blocks() {
        assert_eq!(range_to_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(range_to_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(range_to_blocks(80, 83), vec![(80, 14)]);
        assert_eq!(range_to_blocks(79, 84), vec![(79, 16), (80, 14), (84, 16)]);
        assert_eq!(range_to_blocks(1, 65535).len(), 16);
        assert_eq!(range_to_blocks(65535, 65535), vec![(65535, 16)]);
        // Every port of a range is covered exactly once, and none outside it.
        for (lo, hi) in [(1000u16, 1100u16), (1, 1), (3, 65534), (32768, 65535)] {
            let blocks = range_to_blocks(lo, hi);
            for port in [
                0u16,
                lo.saturating_sub(1),
                lo,
                (lo / 2) + (hi / 2),
                hi,
                hi.saturating_add(1),
                65535,
            ] {
                let n = blocks
                    .iter()
                    .filter(|b| block_contains_port(**b, port))
                    .count();
                assert_eq!(
                    n,
                    usize::from((lo..=hi).contains(&port)),
                    "{lo}-{hi} port {port}"
                );
            }
        }
    }
}
