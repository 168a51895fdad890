//! Typed access to the pinned maps.

use std::net::Ipv4Addr;

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use ipnet::Ipv4Net;

use crate::{
    abi::{
        DatapathConfig, EndpointKey, EndpointValue, IpcacheKey, IpcacheValue, MetricValue, Reason,
    },
    error::DatapathError,
};

pub(crate) const ENDPOINTS: &str = "endpoints";
pub(crate) const IPCACHE: &str = "ipcache";
pub(crate) const CONFIG: &str = "config";
pub(crate) const METRICS: &str = "metrics";

/// What each pinned map must look like (bpf/lib/maps.h): checked before an existing pin is
/// reused, because the kernel would otherwise happily hand an old layout to new programs.
pub(crate) struct MapSpec {
    pub name: &'static str,
    pub map_type: aya::maps::MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub(crate) const SPECS: [MapSpec; 4] = [
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
        max_entries: 64,
    },
];

pub(crate) struct Maps {
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    ipcache: LpmTrie<MapData, u32, IpcacheValue>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuArray<MapData, MetricValue>,
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

    pub(crate) fn metrics(&self) -> Result<Vec<(Reason, u64, u64)>, DatapathError> {
        Reason::ALL
            .into_iter()
            .map(|reason| {
                let per_cpu = self
                    .metrics
                    .get(&reason.code(), 0)
                    .map_err(|e| DatapathError::map(METRICS, "lookup", e))?;
                let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), v| {
                    (p.wrapping_add(v.packets), b.wrapping_add(v.bytes))
                });
                Ok((reason, packets, bytes))
            })
            .collect()
    }
}
