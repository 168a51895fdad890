//! Keeps the BPF policy map, the endpoints' enforcement flags and the conntrack table in
//! step with the registry's policies.
//!
//! The policy engine (`crate::policy`) decides; this module translates its output into map
//! entries ([`desired_policy_map`], pure) and applies the difference. After a change that
//! alters what is allowed, connections that are no longer allowed are cut by removing
//! their conntrack entries (unless `--keep-established` is set): their next packet goes
//! through the policy again and is dropped. Connections that stay allowed keep their
//! entries and are not disturbed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use membrane_consensus::registry::{EndpointRecord, LabelSet};
use membrane_consensus::Registry;
use membrane_ebpf::{EndpointValue, PolicyKey, PolicyValue};
use tracing::{info, warn};

use crate::datapath::NodeDatapath;
use crate::policy::{self, Direction, EndpointPolicy, Policy, RuleRef, Verdict};
use crate::registry::client::RegistryClient;

/// Rule id -> rule name, filled by the policy sync; the monitor reads it per event.
pub type RuleNames = Arc<RwLock<BTreeMap<u32, String>>>;

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

/// The policy map entries of one endpoint.
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
    pub map: BTreeMap<PolicyKey, PolicyValue>,
    /// endpoint id -> (ingress enforced, egress enforced).
    pub enforcement: BTreeMap<u32, (bool, bool)>,
    /// endpoint id -> its computed policy (for conntrack re-checks and explain).
    pub computed: BTreeMap<u32, EndpointPolicy>,
    pub rule_names: BTreeMap<u32, String>,
}

/// Computes the policy map for `endpoints` (id, labels).
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

/// The registry's policies, parsed. A stored policy that no longer parses (it was valid
/// when stored; this cannot happen within one version) is skipped and logged rather than
/// stopping enforcement of the others.
pub fn stored_policies(client: &RegistryClient) -> Vec<Policy> {
    let sources: Vec<(String, String)> = client.local(|r| {
        r.policies()
            .map(|p| (p.name.clone(), p.source.clone()))
            .collect()
    });
    let mut policies = Vec::new();
    for (name, source) in sources {
        match policy::parse_policies(&name, &source) {
            Ok(mut p) => policies.append(&mut p),
            Err(e) => warn!(policy = %name, error = %e, "stored policy does not parse; skipped"),
        }
    }
    policies
}

/// Parsed policies, re-parsed only when the registry's revision moves.
struct Parsed {
    revision: u64,
    policies: Arc<Vec<Policy>>,
}

/// The policy side of this node's datapath.
pub struct PolicySync {
    client: Arc<RegistryClient>,
    datapath: Arc<NodeDatapath>,
    parsed: Mutex<Option<Parsed>>,
    /// The revision the datapath enforces; published in gossip for `policy wait`.
    pub enforced_revision: Arc<AtomicU64>,
    pub rule_names: RuleNames,
    /// Cut connections that a policy change no longer allows.
    cut_denied: bool,
    /// Serialises syncs and endpoint installs: both write the policy map.
    apply: Mutex<()>,
}

impl PolicySync {
    pub fn new(
        client: Arc<RegistryClient>,
        datapath: Arc<NodeDatapath>,
        cut_denied: bool,
        rule_names: RuleNames,
        enforced_revision: Arc<AtomicU64>,
    ) -> PolicySync {
        PolicySync {
            client,
            datapath,
            parsed: Mutex::new(None),
            enforced_revision,
            rule_names,
            cut_denied,
            apply: Mutex::new(()),
        }
    }

    /// The registry's policies (revision, parsed; see [`stored_policies`]).
    pub fn policies(&self) -> (u64, Arc<Vec<Policy>>) {
        let revision = self.client.local(|r| r.policy_revision());
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = parsed.as_ref() {
            if p.revision == revision {
                return (revision, p.policies.clone());
            }
        }
        let policies = Arc::new(stored_policies(&self.client));
        *parsed = Some(Parsed {
            revision,
            policies: policies.clone(),
        });
        (revision, policies)
    }

    /// The policy of one endpoint as the engine computes it now.
    pub fn compute_for(&self, labels: &LabelSet) -> EndpointPolicy {
        let (_, policies) = self.policies();
        let identities = self.client.local(identities_of);
        policy::compute(&policies, &identities, labels)
    }

    /// The CIDR identities of the current policies, for the ipcache.
    pub fn cidr_identities(&self) -> BTreeMap<ipnet::Ipv4Net, u32> {
        let (_, policies) = self.policies();
        policy::engine::cidr_identities(&policies)
    }

    /// Installs the policy of one endpoint before it is handed out, and returns the
    /// endpoints-map value with its enforcement flags.
    pub fn install_endpoint(
        &self,
        ep: &EndpointRecord,
        value: EndpointValue,
    ) -> Result<EndpointValue, membrane_ebpf::DatapathError> {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let computed = self.compute_for(&ep.labels);
        let Ok(ep16) = u16::try_from(ep.id) else {
            return Ok(value);
        };
        let mut names = BTreeMap::new();
        let entries = endpoint_entries(ep16, &computed, &mut names);
        self.rule_names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(names);
        let mut bpf = self.datapath.bpf();
        // Entries of an earlier endpoint with the same number (deleted meanwhile).
        for (k, _) in bpf.policy_entries()? {
            if k.endpoint_id == ep16 && !entries.contains_key(&k) {
                bpf.remove_policy(&k)?;
            }
        }
        for (k, v) in &entries {
            bpf.upsert_policy(k, v)?;
        }
        Ok(value.with_enforcement(computed.ingress_enforced, computed.egress_enforced))
    }

    /// Removes an endpoint's policy entries (on delete).
    pub fn remove_endpoint(&self, endpoint_id: u32) -> Result<(), membrane_ebpf::DatapathError> {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(ep16) = u16::try_from(endpoint_id) else {
            return Ok(());
        };
        let mut bpf = self.datapath.bpf();
        for (k, _) in bpf.policy_entries()? {
            if k.endpoint_id == ep16 {
                bpf.remove_policy(&k)?;
            }
        }
        Ok(())
    }

    /// Brings the policy map, the enforcement flags and conntrack to what the registry
    /// says for `live` endpoints. Returns the number of map writes + removals.
    pub fn sync(&self, live: &[EndpointRecord]) -> anyhow::Result<usize> {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let (revision, policies) = self.policies();
        let identities = self.client.local(identities_of);
        let endpoints: Vec<(u32, LabelSet)> =
            live.iter().map(|e| (e.id, e.labels.clone())).collect();
        let desired = desired_policy_map(&policies, &identities, &endpoints);
        self.rule_names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(desired.rule_names.clone());
        let mut bpf = self.datapath.bpf();
        let current: BTreeMap<PolicyKey, PolicyValue> = bpf.policy_entries()?.into_iter().collect();
        let (upserts, removals) = crate::diff::diff(&current, &desired.map);
        for (k, v) in &upserts {
            bpf.upsert_policy(k, v)?;
        }
        for k in &removals {
            bpf.remove_policy(k)?;
        }
        let mut flag_changes = 0;
        for ep in live {
            let Some((ingress, egress)) = desired.enforcement.get(&ep.id).copied() else {
                continue;
            };
            if let Some(v) = bpf.endpoint(ep.ipv4)? {
                let want = v.with_enforcement(ingress, egress);
                if want != v {
                    bpf.upsert_endpoint(ep.ipv4, &want)?;
                    flag_changes += 1;
                }
            }
        }
        let changed = upserts.len() + removals.len() + flag_changes;
        let mut cut = 0;
        if changed > 0 && self.cut_denied {
            for (key, value) in bpf.conntrack_entries()? {
                let Some(computed) = desired.computed.get(&u32::from(value.endpoint_id)) else {
                    continue;
                };
                let Some(direction) = key.direction() else {
                    continue;
                };
                let dir = match direction {
                    membrane_ebpf::Direction::Ingress => Direction::Ingress,
                    membrane_ebpf::Direction::Egress => Direction::Egress,
                };
                // The policy port of the opening packet: its destination port, or for
                // ICMP the echo request type.
                let port = if key.proto == membrane_ebpf::proto::ICMP {
                    8
                } else {
                    key.dport()
                };
                let (verdict, _) = computed.verdict(dir, value.remote_identity, key.proto, port);
                if verdict == Verdict::Deny && bpf.conntrack_remove(&key)? {
                    cut += 1;
                }
            }
        }
        drop(bpf);
        let before = self.enforced_revision.swap(revision, Ordering::SeqCst);
        if changed > 0 || before != revision {
            info!(
                revision,
                entries = desired.map.len(),
                changed,
                connections_cut = cut,
                "policy enforced"
            );
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &[&str]) -> LabelSet {
        LabelSet::parse(s).unwrap()
    }

    const DB_POLICY: &str = r#"
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

    #[test]
    fn a_selected_endpoint_gets_entries_and_enforcement_the_other_does_not() {
        let policies = policy::parse_policies("db.yaml", DB_POLICY).unwrap();
        let identities: BTreeMap<u32, LabelSet> =
            [(65792, labels(&["app=web"])), (65793, labels(&["app=db"]))]
                .into_iter()
                .collect();
        let d = desired_policy_map(
            &policies,
            &identities,
            &[(1, labels(&["app=web"])), (2, labels(&["app=db"]))],
        );
        assert_eq!(d.enforcement.get(&1), Some(&(false, false)));
        assert_eq!(d.enforcement.get(&2), Some(&(true, false)));
        let key = PolicyKey::new(
            2,
            membrane_ebpf::Direction::Ingress,
            65792,
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
}
