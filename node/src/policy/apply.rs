//! Applies the desired policy state ([`super::desired`]) to the datapath: the policy map,
//! the endpoints' enforcement flags, and the conntrack entries a change cuts.
//!
//! Only the difference is written. After a change that alters what is allowed, connections
//! that are no longer allowed are cut by removing their conntrack entries (unless
//! `--keep-established` is set): their next packet goes through the policy again and is
//! dropped. Connections that stay allowed keep their entries and are not disturbed.
//!
//! The maps are reached through [`PolicyMaps`]: the BPF datapath in the agent, and
//! [`MemoryPolicyMaps`] in unit tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use membrane_consensus::registry::{EndpointRecord, LabelSet};
use membrane_ebpf::{
    CtKey, CtValue, Datapath, DatapathError, EndpointValue, PolicyKey, PolicyValue,
};
use tracing::info;

use crate::datapath::NodeDatapath;
use crate::policy::desired::{
    connections_to_cut, desired_policy_map, endpoint_entries, identities_of, parse_stored,
    DesiredPolicy,
};
use crate::policy::{self, EndpointPolicy, Policy};
use crate::registry::client::RegistryClient;

/// Rule id -> rule name, filled by the policy sync; the monitor reads it per event.
pub type RuleNames = Arc<RwLock<BTreeMap<u32, String>>>;

/// The maps the policy side writes: policy entries, the endpoints' flags, conntrack.
pub trait PolicyMaps {
    /// Every policy entry.
    fn policy_entries(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, DatapathError>;
    /// Inserts or replaces a policy entry.
    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyValue) -> Result<(), DatapathError>;
    /// Removes a policy entry; false if it was not there.
    fn remove_policy(&mut self, key: &PolicyKey) -> Result<bool, DatapathError>;
    /// The endpoint with address `ip`, if any.
    fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointValue>, DatapathError>;
    /// Inserts or replaces an endpoint.
    fn upsert_endpoint(&mut self, ip: Ipv4Addr, value: &EndpointValue)
        -> Result<(), DatapathError>;
    /// Every conntrack entry.
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError>;
    /// Removes a conntrack entry; false if it was not there.
    fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError>;
}

impl PolicyMaps for Datapath {
    fn policy_entries(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, DatapathError> {
        Datapath::policy_entries(self)
    }
    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyValue) -> Result<(), DatapathError> {
        Datapath::upsert_policy(self, key, value)
    }
    fn remove_policy(&mut self, key: &PolicyKey) -> Result<bool, DatapathError> {
        Datapath::remove_policy(self, key)
    }
    fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointValue>, DatapathError> {
        Datapath::endpoint(self, ip)
    }
    fn upsert_endpoint(
        &mut self,
        ip: Ipv4Addr,
        value: &EndpointValue,
    ) -> Result<(), DatapathError> {
        Datapath::upsert_endpoint(self, ip, value)
    }
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        Datapath::conntrack_entries(self)
    }
    fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        Datapath::conntrack_remove(self, key)
    }
}

/// The policy maps in memory, counting writes, for unit tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryPolicyMaps {
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    pub endpoints: BTreeMap<Ipv4Addr, EndpointValue>,
    pub conntrack: BTreeMap<CtKey, CtValue>,
    /// Policy and endpoint upserts and removals, conntrack removals.
    pub writes: usize,
}

#[cfg(test)]
impl PolicyMaps for MemoryPolicyMaps {
    fn policy_entries(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, DatapathError> {
        Ok(self.policy.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyValue) -> Result<(), DatapathError> {
        self.writes += 1;
        self.policy.insert(*key, *value);
        Ok(())
    }
    fn remove_policy(&mut self, key: &PolicyKey) -> Result<bool, DatapathError> {
        self.writes += 1;
        Ok(self.policy.remove(key).is_some())
    }
    fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointValue>, DatapathError> {
        Ok(self.endpoints.get(&ip).copied())
    }
    fn upsert_endpoint(
        &mut self,
        ip: Ipv4Addr,
        value: &EndpointValue,
    ) -> Result<(), DatapathError> {
        self.writes += 1;
        self.endpoints.insert(ip, *value);
        Ok(())
    }
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        Ok(self.conntrack.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        self.writes += 1;
        Ok(self.conntrack.remove(key).is_some())
    }
}

/// What one [`apply_desired`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Policy entries written.
    pub upserts: usize,
    /// Policy entries removed.
    pub removals: usize,
    /// Endpoints whose enforcement flags changed.
    pub flag_changes: usize,
    /// Connections cut (conntrack entries removed).
    pub cut: usize,
}

impl Applied {
    /// Map writes and removals, conntrack aside.
    pub fn changed(&self) -> usize {
        self.upserts + self.removals + self.flag_changes
    }
}

/// Brings `maps` to `desired` for the `live` endpoints (id, address): writes the policy
/// entries that differ, removes the stale ones, sets the enforcement flags that differ, and,
/// when anything changed and `cut_denied`, cuts the connections the new policy denies.
pub fn apply_desired(
    maps: &mut dyn PolicyMaps,
    desired: &DesiredPolicy,
    live: &[(u32, Ipv4Addr)],
    cut_denied: bool,
) -> Result<Applied, DatapathError> {
    let current: BTreeMap<PolicyKey, PolicyValue> = maps.policy_entries()?.into_iter().collect();
    let (upserts, removals) = crate::diff::diff(&current, &desired.map);
    for (k, v) in &upserts {
        maps.upsert_policy(k, v)?;
    }
    for k in &removals {
        maps.remove_policy(k)?;
    }
    let mut applied = Applied {
        upserts: upserts.len(),
        removals: removals.len(),
        ..Applied::default()
    };
    for (id, ip) in live {
        let Some((ingress, egress)) = desired.enforcement.get(id).copied() else {
            continue;
        };
        if let Some(v) = maps.endpoint(*ip)? {
            let want = v.with_enforcement(ingress, egress);
            if want != v {
                maps.upsert_endpoint(*ip, &want)?;
                applied.flag_changes += 1;
            }
        }
    }
    if applied.changed() > 0 && cut_denied {
        for key in connections_to_cut(&desired.computed, &maps.conntrack_entries()?) {
            if maps.conntrack_remove(&key)? {
                applied.cut += 1;
            }
        }
    }
    Ok(applied)
}

/// Writes one endpoint's policy `entries`, removing any other entry under its number (left
/// by an earlier endpoint with the same number, deleted meanwhile).
pub fn install_entries(
    maps: &mut dyn PolicyMaps,
    endpoint_id: u16,
    entries: &BTreeMap<PolicyKey, PolicyValue>,
) -> Result<(), DatapathError> {
    for (k, _) in maps.policy_entries()? {
        if k.endpoint_id == endpoint_id && !entries.contains_key(&k) {
            maps.remove_policy(&k)?;
        }
    }
    for (k, v) in entries {
        maps.upsert_policy(k, v)?;
    }
    Ok(())
}

/// Removes every policy entry of one endpoint.
pub fn remove_entries(maps: &mut dyn PolicyMaps, endpoint_id: u16) -> Result<(), DatapathError> {
    install_entries(maps, endpoint_id, &BTreeMap::new())
}

/// The registry's policies, parsed (see [`parse_stored`]).
pub fn stored_policies(client: &RegistryClient) -> Vec<Policy> {
    parse_stored(client.local(|r| {
        r.policies()
            .map(|p| (p.name.clone(), p.source.clone()))
            .collect()
    }))
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

    fn name_rules(&self, names: impl IntoIterator<Item = (u32, String)>) {
        self.rule_names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(names);
    }

    /// Installs the policy of one endpoint before it is handed out, and returns the
    /// endpoints-map value with its enforcement flags.
    pub fn install_endpoint(
        &self,
        ep: &EndpointRecord,
        value: EndpointValue,
    ) -> Result<EndpointValue, DatapathError> {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let computed = self.compute_for(&ep.labels);
        let Ok(ep16) = u16::try_from(ep.id) else {
            return Ok(value);
        };
        let mut names = BTreeMap::new();
        let entries = endpoint_entries(ep16, &computed, &mut names);
        self.name_rules(names);
        install_entries(&mut *self.datapath.bpf(), ep16, &entries)?;
        Ok(value.with_enforcement(computed.ingress_enforced, computed.egress_enforced))
    }

    /// Removes an endpoint's policy entries (on delete).
    pub fn remove_endpoint(&self, endpoint_id: u32) -> Result<(), DatapathError> {
        let _apply = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(ep16) = u16::try_from(endpoint_id) else {
            return Ok(());
        };
        remove_entries(&mut *self.datapath.bpf(), ep16)
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
        self.name_rules(desired.rule_names.clone());
        let addresses: Vec<(u32, Ipv4Addr)> = live.iter().map(|e| (e.id, e.ipv4)).collect();
        let applied = apply_desired(
            &mut *self.datapath.bpf(),
            &desired,
            &addresses,
            self.cut_denied,
        )?;
        let changed = applied.changed();
        let before = self.enforced_revision.swap(revision, Ordering::SeqCst);
        if changed > 0 || before != revision {
            info!(
                revision,
                entries = desired.map.len(),
                changed,
                connections_cut = applied.cut,
                "policy enforced"
            );
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use membrane_ebpf::proto::TCP;
    use membrane_ebpf::Direction::{Egress, Ingress};

    use super::*;
    use crate::policy::desired::tests::{ct, desired_db, ip, DB, OTHER, WEB};

    const WEB_IP: &str = "10.128.0.2";
    const DB_IP: &str = "10.128.0.3";

    fn live() -> Vec<(u32, Ipv4Addr)> {
        vec![(1, ip(WEB_IP)), (2, ip(DB_IP))]
    }

    /// web (1) and db (2) in the endpoints map with no flags, no policy entries, and two
    /// connections into db: one the db policy allows, one it does not.
    fn maps() -> (MemoryPolicyMaps, CtKey, CtKey) {
        let mut m = MemoryPolicyMaps::default();
        m.endpoints
            .insert(ip(WEB_IP), EndpointValue::new(11, WEB, 1, [0; 6], [0; 6]));
        m.endpoints
            .insert(ip(DB_IP), EndpointValue::new(12, DB, 2, [0; 6], [0; 6]));
        let allowed = ct((WEB_IP, 40000), (DB_IP, 5432), TCP, Ingress, 2, WEB);
        let denied = ct((WEB_IP, 40001), (DB_IP, 22), TCP, Ingress, 2, WEB);
        // The other side of the denied connection: web's egress enforces nothing.
        let web_side = ct((WEB_IP, 40001), (DB_IP, 22), TCP, Egress, 1, DB);
        // Another endpoint's entry (not live here).
        let other = ct(
            ("10.128.1.9", 40002),
            ("10.128.0.9", 22),
            TCP,
            Ingress,
            9,
            OTHER,
        );
        for (k, v) in [allowed, denied, web_side, other] {
            m.conntrack.insert(k, v);
        }
        (m, allowed.0, denied.0)
    }

    #[test]
    fn a_policy_change_cuts_denied_connections_and_keeps_allowed_ones() {
        let (mut m, allowed, denied) = maps();
        let desired = desired_db();
        let applied = apply_desired(&mut m, &desired, &live(), true).unwrap();
        assert_eq!(applied.cut, 1);
        assert!(m.conntrack.contains_key(&allowed));
        assert!(!m.conntrack.contains_key(&denied));
        assert_eq!(
            m.conntrack.len(),
            3,
            "the web side and other endpoints stay"
        );
    }

    #[test]
    fn keep_established_keeps_every_connection() {
        let (mut m, _, _) = maps();
        let before = m.conntrack.clone();
        let applied = apply_desired(&mut m, &desired_db(), &live(), false).unwrap();
        assert!(applied.changed() > 0);
        assert_eq!(applied.cut, 0);
        assert_eq!(m.conntrack, before);
    }

    #[test]
    fn a_sync_writes_the_entries_and_flags_then_only_the_difference() {
        let (mut m, _, _) = maps();
        let desired = desired_db();
        let first = apply_desired(&mut m, &desired, &live(), true).unwrap();
        assert_eq!(m.policy, desired.map);
        assert_eq!(first.upserts, desired.map.len());
        assert_eq!((first.removals, first.flag_changes), (0, 1));
        assert_eq!(
            m.endpoints[&ip(DB_IP)].flags,
            EndpointValue::INGRESS_ENFORCED
        );
        assert_eq!(m.endpoints[&ip(WEB_IP)].flags, 0);

        // Nothing changed: nothing is written, conntrack is not even walked.
        let writes = m.writes;
        let again = apply_desired(&mut m, &desired, &live(), true).unwrap();
        assert_eq!(again, Applied::default());
        assert_eq!(m.writes, writes);

        // One stale entry and one changed value: two writes, the rest untouched.
        let stale = PolicyKey::new(2, Ingress, OTHER, TCP, 80, 16).unwrap();
        m.policy.insert(stale, PolicyValue::allow(1));
        let (k, v) = desired.map.iter().next().unwrap();
        m.policy.insert(*k, PolicyValue::deny(v.rule_id));
        let writes = m.writes;
        let fixed = apply_desired(&mut m, &desired, &live(), false).unwrap();
        assert_eq!(
            (fixed.upserts, fixed.removals, fixed.flag_changes),
            (1, 1, 0)
        );
        assert_eq!(m.writes, writes + 2);
        assert_eq!(m.policy, desired.map);

        // Flags changed behind the agent's back are put right.
        let db = m.endpoints.get_mut(&ip(DB_IP)).unwrap();
        *db = db.with_enforcement(false, true);
        let flags = apply_desired(&mut m, &desired, &live(), false).unwrap();
        assert_eq!(flags.flag_changes, 1);
        assert_eq!(
            m.endpoints[&ip(DB_IP)].flags,
            EndpointValue::INGRESS_ENFORCED
        );
    }

    #[test]
    fn installing_an_endpoint_replaces_what_an_earlier_one_of_that_number_left() {
        let mut m = MemoryPolicyMaps::default();
        let left = PolicyKey::new(2, Ingress, OTHER, TCP, 80, 16).unwrap();
        let kept = PolicyKey::new(1, Ingress, OTHER, TCP, 80, 16).unwrap();
        m.policy.insert(left, PolicyValue::allow(1));
        m.policy.insert(kept, PolicyValue::allow(1));
        let desired = desired_db();
        let entries: BTreeMap<PolicyKey, PolicyValue> = desired
            .map
            .iter()
            .filter(|(k, _)| k.endpoint_id == 2)
            .map(|(k, v)| (*k, *v))
            .collect();
        install_entries(&mut m, 2, &entries).unwrap();
        let mut want = entries.clone();
        want.insert(kept, PolicyValue::allow(1));
        assert_eq!(m.policy, want);
        remove_entries(&mut m, 2).unwrap();
        assert_eq!(m.policy.keys().collect::<Vec<_>>(), vec![&kept]);
    }
}
