//! Typed access to the pinned maps.

use std::net::Ipv4Addr;

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use ipnet::Ipv4Net;

use crate::{
    abi::{
        CtKey, CtValue, DatapathConfig, Direction, EndpointKey, EndpointValue, IpcacheKey,
        IpcacheValue, MetricValue, PolicyKey, PolicyKeyData, PolicyValue, Reason,
    },
    error::DatapathError,
};

pub(crate) const ENDPOINTS: &str = "endpoints";
pub(crate) const IPCACHE: &str = "ipcache";
pub(crate) const CONFIG: &str = "config";
pub(crate) const METRICS: &str = "metrics";
pub(crate) const POLICY: &str = "policy";
pub(crate) const CONNTRACK: &str = "conntrack";
pub(crate) const EVENTS: &str = "events";
pub(crate) const EVENT_BUDGET: &str = "event_budget";

/// What each pinned map must look like (as declared in its concern's bpf/lib/*.h): checked
/// before an existing pin is reused, because the kernel would otherwise happily hand an old
/// layout to new programs.
pub(crate) struct MapSpec {
    pub name: &'static str,
    pub map_type: aya::maps::MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub(crate) const SPECS: [MapSpec; 8] = [
    MapSpec {
        name: ENDPOINTS,
        map_type: aya::maps::MapType::Hash,
        key_size: size_of::<EndpointKey>() as u32,
        value_size: size_of::<EndpointValue>() as u32,
        max_entries: 16384,
    },
    MapSpec {
        name: IPCACHE,
        map_type: aya::maps::MapType::LpmTrie,
        key_size: size_of::<IpcacheKey>() as u32,
        value_size: size_of::<IpcacheValue>() as u32,
        max_entries: 65536,
    },
    MapSpec {
        name: CONFIG,
        map_type: aya::maps::MapType::Array,
        key_size: 4,
        value_size: size_of::<DatapathConfig>() as u32,
        max_entries: 1,
    },
    MapSpec {
        name: METRICS,
        map_type: aya::maps::MapType::PerCpuArray,
        key_size: 4,
        value_size: size_of::<MetricValue>() as u32,
        max_entries: 2 * crate::abi::METRICS_PER_DIRECTION,
    },
    MapSpec {
        name: POLICY,
        map_type: aya::maps::MapType::LpmTrie,
        key_size: size_of::<PolicyKey>() as u32,
        value_size: size_of::<PolicyValue>() as u32,
        max_entries: 65536,
    },
    MapSpec {
        name: CONNTRACK,
        map_type: aya::maps::MapType::LruHash,
        key_size: size_of::<CtKey>() as u32,
        value_size: size_of::<CtValue>() as u32,
        max_entries: 65536,
    },
    MapSpec {
        name: EVENTS,
        map_type: aya::maps::MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: 1 << 20,
    },
    MapSpec {
        name: EVENT_BUDGET,
        map_type: aya::maps::MapType::PerCpuArray,
        key_size: 4,
        value_size: 16,
        max_entries: 1,
    },
];

pub(crate) struct Maps {
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    ipcache: LpmTrie<MapData, u32, IpcacheValue>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuArray<MapData, MetricValue>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc_enoent()),
        _ => false,
    }
}

const fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

fn lpm_key(net: Ipv4Net) -> Key<u32> {
    let k = IpcacheKey::new(net);
    Key::new(k.prefixlen, k.ip)
}

impl Maps {
    pub(crate) fn new(
        mut take: impl FnMut(&'static str) -> Option<Map>,
    ) -> Result<Self, DatapathError> {
        let mut get = |name: &'static str| {
            take(name).ok_or(DatapathError::Missing {
                object: "bpf_lxc.o",
                kind: "map",
                name,
            })
        };
        let conv = |name: &'static str, e: MapError| DatapathError::map(name, "open", e);
        Ok(Maps {
            endpoints: HashMap::try_from(get(ENDPOINTS)?).map_err(|e| conv(ENDPOINTS, e))?,
            ipcache: LpmTrie::try_from(get(IPCACHE)?).map_err(|e| conv(IPCACHE, e))?,
            config: Array::try_from(get(CONFIG)?).map_err(|e| conv(CONFIG, e))?,
            metrics: PerCpuArray::try_from(get(METRICS)?).map_err(|e| conv(METRICS, e))?,
            policy: LpmTrie::try_from(get(POLICY)?).map_err(|e| conv(POLICY, e))?,
            conntrack: HashMap::try_from(get(CONNTRACK)?).map_err(|e| conv(CONNTRACK, e))?,
        })
    }

    pub(crate) fn upsert_endpoint(
        &mut self,
        ip: Ipv4Addr,
        value: &EndpointValue,
    ) -> Result<(), DatapathError> {
        self.endpoints
            .insert(EndpointKey::new(ip), value, 0)
            .map_err(|e| DatapathError::map(ENDPOINTS, "insert", e))
    }

    pub(crate) fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, DatapathError> {
        match self.endpoints.remove(&EndpointKey::new(ip)) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(DatapathError::map(ENDPOINTS, "remove", e)),
        }
    }

    pub(crate) fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointValue>, DatapathError> {
        match self.endpoints.get(&EndpointKey::new(ip), 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(DatapathError::map(ENDPOINTS, "lookup", e)),
        }
    }

    pub(crate) fn endpoints(&self) -> Result<Vec<(Ipv4Addr, EndpointValue)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(|e| DatapathError::map(ENDPOINTS, "iterate", e))?;
            out.push((k.addr(), v));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    pub(crate) fn upsert_ipcache(
        &mut self,
        net: Ipv4Net,
        value: &IpcacheValue,
    ) -> Result<(), DatapathError> {
        self.ipcache
            .insert(&lpm_key(net), value, 0)
            .map_err(|e| DatapathError::map(IPCACHE, "insert", e))
    }

    pub(crate) fn remove_ipcache(&mut self, net: Ipv4Net) -> Result<bool, DatapathError> {
        match self.ipcache.remove(&lpm_key(net)) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(DatapathError::map(IPCACHE, "remove", e)),
        }
    }

    pub(crate) fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheValue)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(|e| DatapathError::map(IPCACHE, "iterate", e))?;
            let key = IpcacheKey {
                prefixlen: k.prefix_len(),
                ip: k.data(),
            };
            // The kernel validates prefixlen <= 32 on insert, so this cannot be None.
            if let Some(net) = key.net() {
                out.push((net, v));
            }
        }
        out.sort_by_key(|(net, _)| *net);
        Ok(out)
    }

    pub(crate) fn set_config(&mut self, value: &DatapathConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, value, 0)
            .map_err(|e| DatapathError::map(CONFIG, "update", e))
    }

    pub(crate) fn config(&self) -> Result<DatapathConfig, DatapathError> {
        self.config
            .get(&0, 0)
            .map_err(|e| DatapathError::map(CONFIG, "lookup", e))
    }

    pub(crate) fn metrics(&self) -> Result<Vec<(Direction, Reason, u64, u64)>, DatapathError> {
        let mut out = Vec::with_capacity(2 * Reason::ALL.len());
        for direction in Direction::ALL {
            for reason in Reason::ALL {
                let per_cpu = self
                    .metrics
                    .get(&reason.metrics_index(direction), 0)
                    .map_err(|e| DatapathError::map(METRICS, "lookup", e))?;
                let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), v| {
                    (p.wrapping_add(v.packets), b.wrapping_add(v.bytes))
                });
                out.push((direction, reason, packets, bytes));
            }
        }
        Ok(out)
    }

    pub(crate) fn upsert_policy(
        &mut self,
        key: &PolicyKey,
        value: &PolicyValue,
    ) -> Result<(), DatapathError> {
        self.policy
            .insert(&Key::new(key.prefixlen, key.data()), value, 0)
            .map_err(|e| DatapathError::map(POLICY, "insert", e))
    }

    pub(crate) fn remove_policy(&mut self, key: &PolicyKey) -> Result<bool, DatapathError> {
        match self.policy.remove(&Key::new(key.prefixlen, key.data())) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(DatapathError::map(POLICY, "remove", e)),
        }
    }

    pub(crate) fn policy_entries(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.policy.iter() {
            let (k, v) = item.map_err(|e| DatapathError::map(POLICY, "iterate", e))?;
            out.push((PolicyKey::from_data(k.prefix_len(), k.data()), v));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    pub(crate) fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.conntrack.iter() {
            match item {
                Ok(kv) => out.push(kv),
                // The datapath may delete (LRU) an entry between getting its key and its
                // value: that entry is simply gone.
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(DatapathError::map(CONNTRACK, "iterate", e)),
            }
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    pub(crate) fn conntrack_get(&self, key: &CtKey) -> Result<Option<CtValue>, DatapathError> {
        match self.conntrack.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(DatapathError::map(CONNTRACK, "lookup", e)),
        }
    }

    pub(crate) fn conntrack_upsert(
        &mut self,
        key: &CtKey,
        value: &CtValue,
    ) -> Result<(), DatapathError> {
        self.conntrack
            .insert(key, value, 0)
            .map_err(|e| DatapathError::map(CONNTRACK, "insert", e))
    }

    pub(crate) fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        match self.conntrack.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(DatapathError::map(CONNTRACK, "remove", e)),
        }
    }

    pub(crate) fn conntrack_gc(&mut self, now_ns: u64) -> Result<usize, DatapathError> {
        // Keys first, deletes after: deleting while iterating a hash map can restart
        // or skip the iteration.
        let expired: Vec<CtKey> = self
            .conntrack_entries()?
            .into_iter()
            .filter(|(_, v)| v.is_expired(now_ns))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in expired {
            // Re-read: a packet may have refreshed the entry since the scan.
            let still_expired = self
                .conntrack_get(&key)?
                .is_some_and(|v| v.is_expired(now_ns));
            if still_expired && self.conntrack_remove(&key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::header::define;

    fn spec(name: &str) -> &'static MapSpec {
        SPECS.iter().find(|s| s.name == name).unwrap()
    }

    /// The capacities the loader checks pins against are the headers' `*_MAX`.
    #[test]
    fn capacities_match_the_headers() {
        for (name, header, define_name) in [
            (
                ENDPOINTS,
                include_str!("../bpf/lib/endpoints.h"),
                "ENDPOINTS_MAX",
            ),
            (IPCACHE, include_str!("../bpf/lib/ipcache.h"), "IPCACHE_MAX"),
            (POLICY, include_str!("../bpf/lib/policy.h"), "POLICY_MAX"),
            (CONNTRACK, include_str!("../bpf/lib/conntrack.h"), "CT_MAX"),
            (EVENTS, include_str!("../bpf/lib/events.h"), "EVENTS_BYTES"),
        ] {
            assert_eq!(
                u64::from(spec(name).max_entries),
                define(header, define_name),
                "{name}"
            );
        }
        // METRICS_MAX is 2 * METRICS_PER_DIR: one row per direction.
        let metrics = include_str!("../bpf/lib/metrics.h");
        assert_eq!(
            u64::from(spec(METRICS).max_entries),
            2 * define(metrics, "METRICS_PER_DIR")
        );
    }
}
