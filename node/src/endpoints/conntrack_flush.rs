//! Dropping the conntrack entries of an address that changed hands.
//!
//! An entry passes every later packet of its tuple without a policy lookup
//! (docs/datapath.md, "Connection tracking"). When an endpoint is deleted its address is
//! free, and the next endpoint to hold it, of another identity maybe, would send and
//! receive on the old flows as if their policy decision were its own. So the deleting node
//! removes every entry that names the address, as source or destination (both policy
//! points, both directions), and every peer does the same when the address's /32 leaves its
//! ipcache or changes identity ([`crate::ipcache::apply`]).
//!
//! [`keys_naming`] chooses (pure); [`flush_addresses`] removes, through [`ConntrackMap`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use membrane_ebpf::{CtKey, CtValue, Datapath, DatapathError};

/// The conntrack map, as far as flushing needs it.
pub trait ConntrackMap {
    /// Every entry.
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError>;
    /// Removes an entry; false if it was not there.
    fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError>;
}

impl ConntrackMap for Datapath {
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        Datapath::conntrack_entries(self)
    }
    fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        Datapath::conntrack_remove(self, key)
    }
}

/// Conntrack in memory, for unit tests.
impl ConntrackMap for BTreeMap<CtKey, CtValue> {
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        Ok(self.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        Ok(self.remove(key).is_some())
    }
}

/// The keys of `entries` whose source or destination is one of `addrs`, expired or not
/// (an expired entry is overwritten by the next opener anyway; removing it costs nothing).
pub fn keys_naming(entries: &[(CtKey, CtValue)], addrs: &BTreeSet<Ipv4Addr>) -> Vec<CtKey> {
    if addrs.is_empty() {
        return Vec::new();
    }
    entries
        .iter()
        .filter(|(k, _)| addrs.contains(&k.saddr()) || addrs.contains(&k.daddr()))
        .map(|(k, _)| *k)
        .collect()
}

/// Removes every entry naming one of `addrs`; returns how many were removed.
pub fn flush_addresses(
    map: &mut dyn ConntrackMap,
    addrs: &BTreeSet<Ipv4Addr>,
) -> Result<usize, DatapathError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let keys = keys_naming(&map.conntrack_entries()?, addrs);
    let mut removed = 0;
    for key in &keys {
        // An entry evicted or collected meanwhile is fine: it is gone either way.
        if map.conntrack_remove(key)? {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use membrane_ebpf::Direction;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn key(s: &str, d: &str, sport: u16, dport: u16, dir: Direction) -> CtKey {
        CtKey::new(ip(s), ip(d), sport, dport, 17, dir)
    }

    fn map() -> BTreeMap<CtKey, CtValue> {
        [
            // The address as source: its own egress entry and the peer's ingress entry.
            key("10.128.0.2", "10.128.1.2", 4000, 53, Direction::Egress),
            key("10.128.0.2", "10.128.1.2", 4000, 53, Direction::Ingress),
            // As destination: a connection someone opened towards it.
            key("10.128.1.3", "10.128.0.2", 5000, 80, Direction::Egress),
            // Others, including an address that merely shares a prefix.
            key("10.128.1.3", "10.128.1.2", 5000, 80, Direction::Ingress),
            key("10.128.0.20", "10.128.1.2", 4000, 53, Direction::Egress),
        ]
        .into_iter()
        .map(|k| (k, CtValue::default()))
        .collect()
    }

    #[test]
    fn entries_naming_the_address_either_way_are_chosen_and_no_others() {
        let m = map();
        let entries = m.conntrack_entries().unwrap();
        let mut chosen = keys_naming(&entries, &[ip("10.128.0.2")].into());
        chosen.sort();
        let mut want = vec![
            key("10.128.0.2", "10.128.1.2", 4000, 53, Direction::Egress),
            key("10.128.0.2", "10.128.1.2", 4000, 53, Direction::Ingress),
            key("10.128.1.3", "10.128.0.2", 5000, 80, Direction::Egress),
        ];
        want.sort();
        assert_eq!(chosen, want);
        assert!(keys_naming(&entries, &BTreeSet::new()).is_empty());
        assert!(keys_naming(&entries, &[ip("10.9.9.9")].into()).is_empty());
    }

    #[test]
    fn flushing_removes_exactly_the_chosen_entries() {
        let mut m = map();
        let n = flush_addresses(&mut m, &[ip("10.128.0.2"), ip("10.128.0.20")].into()).unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            m.keys().copied().collect::<Vec<_>>(),
            vec![key(
                "10.128.1.3",
                "10.128.1.2",
                5000,
                80,
                Direction::Ingress
            )]
        );
        assert_eq!(
            flush_addresses(&mut m, &[ip("10.128.0.2")].into()).unwrap(),
            0
        );
    }
}
