//! Applies the desired ipcache ([`super::desired`]) to the map, writing only the difference.
//! The map is reached through [`IpcacheMap`]: the BPF datapath in the agent, a `BTreeMap`
//! in unit tests.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use membrane_ebpf::{Datapath, DatapathError, IpcacheValue};

use super::desired::desired_ipcache;
use crate::datapath::NodeDatapath;
use crate::diff::diff;
use crate::registry::RegistryClient;

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

/// Brings the ipcache to what the registry says; returns (written, removed).
pub fn sync_once(
    client: &RegistryClient,
    datapath: &NodeDatapath,
    me: u64,
    cidr_identities: &BTreeMap<Ipv4Net, u32>,
    keys_ready: &std::collections::BTreeSet<u64>,
) -> anyhow::Result<(usize, usize)> {
    let desired = client.local(|r| {
        let mut d = desired_ipcache(r, me, cidr_identities);
        super::desired::mark_keys_ready(&mut d, r, keys_ready);
        d
    });
    Ok(apply_ipcache(&mut *datapath.bpf(), &desired)?)
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
