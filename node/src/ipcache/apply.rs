//! Applies the desired ipcache ([`super::desired`]) to the map, writing only the difference.
//! The map is reached through [`IpcacheMap`]: the BPF datapath in the agent, a `BTreeMap`
//! in unit tests.
//!
//! An endpoint address whose /32 leaves the ipcache, or comes back under another identity,
//! has changed hands: [`released_addresses`] names them and [`sync_once`] removes this
//! node's conntrack entries for them, so a new holder of the address inherits no flow
//! (docs/datapath.md, "Endpoint delete and address reuse").

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use membrane_ebpf::{Datapath, DatapathError, IpcacheValue};

use super::desired::desired_ipcache;
use crate::datapath::NodeDatapath;
use crate::diff::diff;
use crate::endpoints::conntrack_flush::flush_addresses;
use crate::registry::RegistryClient;
use tracing::info;

/// The ipcache map: longest-prefix entries of identity and tunnel endpoint.
pub trait IpcacheMap {
    /// Every entry.
    fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheValue)>, DatapathError>;
    /// Inserts or replaces the entry for `net`.
    fn upsert_ipcache(&mut self, net: Ipv4Net, value: &IpcacheValue) -> Result<(), DatapathError>;
    /// Removes the entry for exactly `net`; false if it was not there.
    fn remove_ipcache(&mut self, net: Ipv4Net) -> Result<bool, DatapathError>;
}

impl IpcacheMap for Datapath {
    fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheValue)>, DatapathError> {
        Datapath::ipcache(self)
    }
    fn upsert_ipcache(&mut self, net: Ipv4Net, value: &IpcacheValue) -> Result<(), DatapathError> {
        Datapath::upsert_ipcache(self, net, value)
    }
    fn remove_ipcache(&mut self, net: Ipv4Net) -> Result<bool, DatapathError> {
        Datapath::remove_ipcache(self, net)
    }
}

/// The ipcache in memory, for unit tests.
impl IpcacheMap for BTreeMap<Ipv4Net, IpcacheValue> {
    fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheValue)>, DatapathError> {
        Ok(self.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn upsert_ipcache(&mut self, net: Ipv4Net, value: &IpcacheValue) -> Result<(), DatapathError> {
        self.insert(net, *value);
        Ok(())
    }
    fn remove_ipcache(&mut self, net: Ipv4Net) -> Result<bool, DatapathError> {
        Ok(self.remove(&net).is_some())
    }
}

/// Brings `map` to `desired`; returns (written, removed).
pub fn apply_ipcache(
    map: &mut dyn IpcacheMap,
    desired: &BTreeMap<Ipv4Net, IpcacheValue>,
) -> Result<(usize, usize), DatapathError> {
    let current: BTreeMap<Ipv4Net, IpcacheValue> = map.ipcache()?.into_iter().collect();
    let (upserts, removals) = diff(&current, desired);
    for (cidr, value) in &upserts {
        map.upsert_ipcache(*cidr, value)?;
    }
    for cidr in &removals {
        map.remove_ipcache(*cidr)?;
    }
    Ok((upserts.len(), removals.len()))
}

/// The addresses of `pod_pool` whose /32 entry in `current` is missing from `desired` or
/// has another identity there: an endpoint address that was deleted or changed hands.
/// Node addresses and other CIDRs lie outside the pool and are never named.
pub fn released_addresses(
    current: &BTreeMap<Ipv4Net, IpcacheValue>,
    desired: &BTreeMap<Ipv4Net, IpcacheValue>,
    pod_pool: Ipv4Net,
) -> BTreeSet<Ipv4Addr> {
    current
        .iter()
        .filter(|(net, _)| net.prefix_len() == 32 && pod_pool.contains(&net.addr()))
        .filter(|(net, cur)| desired.get(net).is_none_or(|d| d.identity != cur.identity))
        .map(|(net, _)| net.addr())
        .collect()
}

/// Brings the ipcache to what the registry says, and removes the conntrack entries of the
/// endpoint addresses that left it or changed identity; returns (written, removed).
pub fn sync_once(
    client: &RegistryClient,
    datapath: &NodeDatapath,
    me: u64,
    cidr_identities: &BTreeMap<Ipv4Net, u32>,
    keys_ready: &std::collections::BTreeSet<u64>,
) -> anyhow::Result<(usize, usize)> {
    let (desired, pool) = client.local(|r| {
        let mut d = desired_ipcache(r, me, cidr_identities);
        super::desired::mark_keys_ready(&mut d, r, keys_ready);
        (d, r.cluster().map(|c| c.pod_pool))
    });
    let mut bpf = datapath.bpf();
    let released = match pool {
        Some(pool) => {
            let current: BTreeMap<Ipv4Net, IpcacheValue> = bpf.ipcache()?.into_iter().collect();
            released_addresses(&current, &desired, pool)
        }
        None => BTreeSet::new(),
    };
    let counts = apply_ipcache(&mut *bpf, &desired)?;
    // After the ipcache: a packet that meets no entry now meets the new identity's policy.
    let flushed = flush_addresses(&mut *bpf, &released)?;
    if !released.is_empty() {
        info!(addresses = ?released, flushed, "conntrack entries of released endpoint addresses removed");
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// A map that counts writes, so the test sees that unchanged entries are left alone.
    #[derive(Default)]
    struct Counting {
        map: BTreeMap<Ipv4Net, IpcacheValue>,
        writes: Vec<Ipv4Net>,
    }

    impl IpcacheMap for Counting {
        fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheValue)>, DatapathError> {
            self.map.ipcache()
        }
        fn upsert_ipcache(
            &mut self,
            net: Ipv4Net,
            value: &IpcacheValue,
        ) -> Result<(), DatapathError> {
            self.writes.push(net);
            self.map.upsert_ipcache(net, value)
        }
        fn remove_ipcache(&mut self, net: Ipv4Net) -> Result<bool, DatapathError> {
            self.writes.push(net);
            self.map.remove_ipcache(net)
        }
    }

    #[test]
    fn released_addresses_are_pool_slash_32s_gone_or_under_another_identity() {
        let tunnel: Ipv4Addr = "10.77.0.12".parse().unwrap();
        let pool = net("10.128.0.0/16");
        let current: BTreeMap<Ipv4Net, IpcacheValue> = [
            (net("10.128.1.2/32"), IpcacheValue::remote(300, tunnel)), // deleted
            (net("10.128.1.3/32"), IpcacheValue::remote(300, tunnel)), // reused by 301
            (net("10.128.1.4/32"), IpcacheValue::remote(300, tunnel)), // unchanged
            (net("10.128.0.5/32"), IpcacheValue::local(302)),          // local, deleted
            (net("10.128.2.0/24"), IpcacheValue::remote(0, tunnel)),   // a node's CIDR
            (net("10.77.0.12/32"), IpcacheValue::local(6)),            // a node leaving
        ]
        .into_iter()
        .collect();
        let mut key_ready = IpcacheValue::remote(300, tunnel);
        key_ready.key_index = 1;
        let desired: BTreeMap<Ipv4Net, IpcacheValue> = [
            (net("10.128.1.3/32"), IpcacheValue::remote(301, tunnel)),
            // Same identity, another field changed: the same holder.
            (net("10.128.1.4/32"), key_ready),
        ]
        .into_iter()
        .collect();
        let got = released_addresses(&current, &desired, pool);
        let want: BTreeSet<Ipv4Addr> = ["10.128.1.2", "10.128.1.3", "10.128.0.5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(released_addresses(&current, &current, pool).is_empty());
    }

    #[test]
    fn only_changed_entries_are_written_and_stale_ones_removed() {
        let tunnel: Ipv4Addr = "10.77.0.12".parse().unwrap();
        let mut m = Counting::default();
        m.map.insert(net("10.77.0.11/32"), IpcacheValue::local(1));
        m.map
            .insert(net("10.128.1.2/32"), IpcacheValue::remote(300, tunnel));
        m.map
            .insert(net("10.128.2.0/24"), IpcacheValue::remote(0, tunnel));
        let desired: BTreeMap<Ipv4Net, IpcacheValue> = [
            (net("10.77.0.11/32"), IpcacheValue::local(1)),
            (net("10.128.1.2/32"), IpcacheValue::remote(301, tunnel)),
            (net("10.128.0.2/32"), IpcacheValue::local(302)),
        ]
        .into_iter()
        .collect();
        assert_eq!(apply_ipcache(&mut m, &desired).unwrap(), (2, 1));
        assert_eq!(m.map, desired);
        let mut writes = m.writes.clone();
        writes.sort();
        assert_eq!(
            writes,
            vec![
                net("10.128.0.2/32"),
                net("10.128.1.2/32"),
                net("10.128.2.0/24")
            ]
        );
        m.writes.clear();
        assert_eq!(apply_ipcache(&mut m, &desired).unwrap(), (0, 0));
        assert!(m.writes.is_empty());
    }
}
