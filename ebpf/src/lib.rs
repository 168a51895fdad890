//! The BPF datapath of Membrane: the C programs in `bpf/` (compiled by build.rs), their
//! maps and the loader that attaches them (docs/datapath.md is the contract).
//!
//! The agent owns one [`Datapath`] behind a mutex. Programs stay attached and maps stay
//! pinned when it is dropped or the agent exits, so traffic keeps flowing across agent
//! restarts; the next [`Datapath::load`] reuses the pinned maps and re-attaching replaces
//! the programs atomically (see `loader.rs` for why pinned TCX links).
//!
//! Attach and detach calls act on interfaces of the calling thread's network namespace.
#![deny(missing_docs)]

pub mod abi;
mod error;
mod events;
mod loader;
mod maps;
mod sys;

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use ipnet::Ipv4Net;
use tracing::info;

pub use abi::{
    ct_timeout, proto, CtKey, CtValue, DatapathConfig, Direction, EndpointKey, EndpointValue,
    EventKind, FlowEvent, FlowEventRecord, IpcacheKey, IpcacheValue, MetricValue, PolicyKey,
    PolicyTable, PolicyValue, Reason, Verdict, CONTROL_PORTS, IDENTITY_HEALTH, IDENTITY_HOST,
    IDENTITY_INIT, IDENTITY_REMOTE_NODE, IDENTITY_UNKNOWN, IDENTITY_UNMANAGED, IDENTITY_WORLD,
    RESERVED_IDENTITIES,
};
pub use error::DatapathError;
pub use events::EventReader;
use loader::Hook;

const LXC: &str = "bpf_lxc.o";
const OVERLAY: &str = "bpf_overlay.o";
const FROM_ENDPOINT: &str = "from_endpoint";
const TO_ENDPOINT: &str = "to_endpoint";
const FROM_OVERLAY: &str = "from_overlay";
const TUNNEL: &str = "bpf_tunnel.o";
const FROM_TUNNEL: &str = "from_tunnel";

/// The loaded programs and their pinned maps.
pub struct Datapath {
    pin_dir: PathBuf,
    links_dir: PathBuf,
    lxc: Ebpf,
    overlay: Ebpf,
    tunnel: Ebpf,
    maps: maps::Maps,
    events: Option<EventReader>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs with their maps pinned in `pin_dir`, reusing maps already pinned
    /// there (their contents survive agent restarts). Mounts bpffs on /sys/fs/bpf when
    /// nothing of that type is mounted there. Attaches nothing.
    pub fn load(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        loader::ensure_bpffs()?;
        let links_dir = loader::create_pin_dir(pin_dir)?;
        loader::check_pinned_maps(pin_dir)?;
        // bpf_lxc.o creates (or reopens) the pins; bpf_overlay.o and bpf_tunnel.o then
        // reopen the same maps.
        let mut lxc = loader::load_object(LXC, loader::LXC_OBJ, pin_dir)?;
        let mut overlay = loader::load_object(OVERLAY, loader::OVERLAY_OBJ, pin_dir)?;
        let mut tunnel = loader::load_object(TUNNEL, loader::TUNNEL_OBJ, pin_dir)?;
        loader::load_program(&mut lxc, LXC, FROM_ENDPOINT)?;
        loader::load_program(&mut lxc, LXC, TO_ENDPOINT)?;
        loader::load_program(&mut overlay, OVERLAY, FROM_OVERLAY)?;
        loader::load_program(&mut tunnel, TUNNEL, FROM_TUNNEL)?;
        let maps = maps::Maps::new(|name| lxc.take_map(name))?;
        let events = lxc
            .take_map(maps::EVENTS)
            .ok_or(DatapathError::Missing {
                object: LXC,
                kind: "map",
                name: maps::EVENTS,
            })
            .and_then(EventReader::from_map)?;
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Datapath {
            pin_dir: pin_dir.to_owned(),
            links_dir,
            lxc,
            overlay,
            tunnel,
            maps,
            events: Some(events),
        })
    }

    /// The pin directory this datapath uses.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches `from_endpoint` (tc ingress) and `to_endpoint` (tc egress) to the host side
    /// of an endpoint's veth, in the calling thread's network namespace. The attachment
    /// outlives this process; calling it again (from this or a later agent) replaces the
    /// programs atomically.
    pub fn attach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        loader::attach_tc(
            &mut self.lxc,
            FROM_ENDPOINT,
            &self.links_dir,
            host_ifname,
            Hook::Ingress,
        )?;
        loader::attach_tc(
            &mut self.lxc,
            TO_ENDPOINT,
            &self.links_dir,
            host_ifname,
            Hook::Egress,
        )
    }

    /// Detaches the endpoint programs from `host_ifname`. Succeeds when nothing is
    /// attached or the interface is gone (deleting a veth detaches its programs).
    pub fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        loader::detach_all(&self.links_dir, host_ifname)
    }

    /// Attaches `from_overlay` to tc ingress of the VXLAN device (external mode), with the
    /// same persistence and replacement as [`Datapath::attach_endpoint`].
    pub fn attach_overlay(&mut self, ifname: &str) -> Result<(), DatapathError> {
        loader::attach_tc(
            &mut self.overlay,
            FROM_OVERLAY,
            &self.links_dir,
            ifname,
            Hook::Ingress,
        )
    }

    /// Attaches `from_tunnel` to tc ingress of the agent's TUN device (an L3 device: the
    /// program reads the IPv4 header at offset 0), with the same persistence and
    /// replacement as [`Datapath::attach_endpoint`]. The agent writes opened packets into
    /// the TUN; from_tunnel gives them the ipcache identity of their inner source and lets
    /// the stack route them to the endpoint's veth, where to_endpoint enforces policy.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<(), DatapathError> {
        loader::attach_tc(
            &mut self.tunnel,
            FROM_TUNNEL,
            &self.links_dir,
            ifname,
            Hook::Ingress,
        )
    }

    /// Detaches `from_tunnel` (and anything else of ours) from `ifname`. Succeeds when
    /// nothing is attached or the interface is gone.
    pub fn detach_tunnel(&mut self, ifname: &str) -> Result<(), DatapathError> {
        loader::detach_all(&self.links_dir, ifname)
    }

    /// The ifindex of `ifname` in the calling thread's network namespace (for
    /// [`EndpointValue::ifindex`] and [`DatapathConfig::overlay_ifindex`]).
    pub fn ifindex(ifname: &str) -> Result<u32, DatapathError> {
        loader::ifindex(ifname)
    }

    /// Inserts or replaces the endpoint with address `ip`. Refuses an endpoint id above
    /// 65535 or an identity of 2^24 or more, which the datapath cannot carry.
    pub fn upsert_endpoint(
        &mut self,
        ip: Ipv4Addr,
        value: &EndpointValue,
    ) -> Result<(), DatapathError> {
        // The datapath would otherwise truncate them and apply another endpoint's policy
        // or carry another identity.
        if value.endpoint_id > u32::from(u16::MAX) {
            return Err(DatapathError::InvalidEndpoint {
                ip,
                detail: format!("endpoint id {} is too large", value.endpoint_id),
            });
        }
        if value.identity >= 1 << 24 {
            return Err(DatapathError::InvalidEndpoint {
                ip,
                detail: format!("identity {} is too large", value.identity),
            });
        }
        self.maps.upsert_endpoint(ip, value)
    }

    /// Removes the endpoint; false if it was not there.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, DatapathError> {
        self.maps.remove_endpoint(ip)
    }

    /// The endpoint with address `ip`, if any.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointValue>, DatapathError> {
        self.maps.endpoint(ip)
    }

    /// Every endpoint, sorted by address.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, EndpointValue)>, DatapathError> {
        self.maps.endpoints()
    }

    /// Inserts or replaces the ipcache entry for `net` (host bits are ignored).
    pub fn upsert_ipcache(
        &mut self,
        net: Ipv4Net,
        value: &IpcacheValue,
    ) -> Result<(), DatapathError> {
        self.maps.upsert_ipcache(net, value)
    }

    /// Removes the ipcache entry for exactly `net`; false if it was not there.
    pub fn remove_ipcache(&mut self, net: Ipv4Net) -> Result<bool, DatapathError> {
        self.maps.remove_ipcache(net)
    }

    /// Every ipcache entry, sorted by prefix.
    pub fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheValue)>, DatapathError> {
        self.maps.ipcache()
    }

    /// Writes the datapath configuration.
    pub fn set_config(&mut self, config: &DatapathConfig) -> Result<(), DatapathError> {
        self.maps.set_config(config)
    }

    /// The datapath configuration (all zero until [`Datapath::set_config`]).
    pub fn config(&self) -> Result<DatapathConfig, DatapathError> {
        self.maps.config()
    }

    /// `(direction, reason, packets, bytes)` for every [`Direction`] and [`Reason`],
    /// summed over CPUs. Ingress counts what goes into endpoints (to_endpoint and
    /// from_overlay), egress what leaves them (from_endpoint).
    pub fn metrics(&self) -> Result<Vec<(Direction, Reason, u64, u64)>, DatapathError> {
        self.maps.metrics()
    }

    /// `(packets, bytes)` for one reason, summed over CPUs and both directions.
    pub fn metric(&self, reason: Reason) -> Result<(u64, u64), DatapathError> {
        Ok(self
            .metrics()?
            .into_iter()
            .filter(|(_, r, _, _)| *r == reason)
            .fold((0, 0), |(p, b), (_, _, rp, rb)| {
                (p.wrapping_add(rp), b.wrapping_add(rb))
            }))
    }

    /// `(packets, bytes)` for one reason in one direction, summed over CPUs.
    pub fn metric_in(
        &self,
        direction: Direction,
        reason: Reason,
    ) -> Result<(u64, u64), DatapathError> {
        Ok(self
            .metrics()?
            .into_iter()
            .find(|(d, r, _, _)| *d == direction && *r == reason)
            .map(|(_, _, p, b)| (p, b))
            .unwrap_or_default())
    }

    /// Inserts or replaces a policy entry. The datapath looks entries up in the order
    /// (identity, proto), (identity, any), (any, proto), (any, any), each by longest port
    /// prefix, and the first hit decides (docs/datapath.md, "Policy"): the engine writes
    /// entries for which that order gives its answer.
    pub fn upsert_policy(
        &mut self,
        key: &PolicyKey,
        value: &PolicyValue,
    ) -> Result<(), DatapathError> {
        self.maps.upsert_policy(key, value)
    }

    /// Removes exactly this policy entry; false if it was not there. Connections it
    /// allowed keep their conntrack entries: remove those too to cut them.
    pub fn remove_policy(&mut self, key: &PolicyKey) -> Result<bool, DatapathError> {
        self.maps.remove_policy(key)
    }

    /// Every policy entry, sorted by key.
    pub fn policy_entries(&self) -> Result<Vec<(PolicyKey, PolicyValue)>, DatapathError> {
        self.maps.policy_entries()
    }

    /// Every conntrack entry (live or expired but not yet collected), sorted by key.
    /// A snapshot: the datapath keeps adding and refreshing entries meanwhile.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        self.maps.conntrack_entries()
    }

    /// The entry for `key`, if any.
    pub fn conntrack_get(&self, key: &CtKey) -> Result<Option<CtValue>, DatapathError> {
        self.maps.conntrack_get(key)
    }

    /// Removes one entry; false if it was not there. The connection's next packet at that
    /// policy point goes through policy again, so removing the entries of connections the
    /// policy no longer allows cuts them.
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool, DatapathError> {
        self.maps.conntrack_remove(key)
    }

    /// Writes an entry as given (restores, tools and tests; the datapath creates its own).
    pub fn conntrack_upsert(&mut self, key: &CtKey, value: &CtValue) -> Result<(), DatapathError> {
        self.maps.conntrack_upsert(key, value)
    }

    /// Deletes the entries expired at `now_ns` (a [`ktime_now_ns`] reading) and returns how
    /// many. The datapath already ignores expired entries; this frees their slots.
    pub fn conntrack_gc(&mut self, now_ns: u64) -> Result<usize, DatapathError> {
        self.maps.conntrack_gc(now_ns)
    }

    /// How full the endpoints, ipcache, policy and conntrack maps are (for pressure
    /// metrics). Counts by iterating, so it costs a walk of each map: call it at scrape
    /// time, not per packet.
    pub fn map_usage(&self) -> Result<Vec<MapUsage>, DatapathError> {
        let counts = [
            (maps::ENDPOINTS, self.maps.endpoints()?.len()),
            (maps::IPCACHE, self.maps.ipcache()?.len()),
            (maps::POLICY, self.maps.policy_entries()?.len()),
            (maps::CONNTRACK, self.maps.conntrack_entries()?.len()),
        ];
        Ok(counts
            .into_iter()
            .map(|(name, entries)| MapUsage {
                name,
                entries,
                capacity: map_capacity(name).unwrap_or(0),
            })
            .collect())
    }

    /// The reader of the events ring buffer; None after the first call (there is one
    /// consumer per ring buffer).
    pub fn take_event_reader(&mut self) -> Option<EventReader> {
        self.events.take()
    }

    /// Removes every pin in `pin_dir` (maps and links), which detaches the programs from
    /// interfaces that still exist once no process holds them. For uninstall and tests;
    /// succeeds when the directory does not exist.
    pub fn remove_pins(pin_dir: &Path) -> Result<(), DatapathError> {
        match fs::remove_dir_all(pin_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatapathError::PinDir {
                what: "removing",
                path: pin_dir.to_owned(),
                source,
            }),
        }
    }
}

/// One map's fill level ([`Datapath::map_usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapUsage {
    /// The map's pinned name (`endpoints`, `ipcache`, `policy`, `conntrack`).
    pub name: &'static str,
    /// Entries present now.
    pub entries: usize,
    /// `max_entries` of the map.
    pub capacity: u32,
}

/// `max_entries` of the map pinned as `name`, None for a name the datapath has no map of.
pub fn map_capacity(name: &str) -> Option<u32> {
    maps::SPECS
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.max_entries)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so conntrack expiries
/// and event timestamps compare with it directly.
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

// The agent keeps the datapath behind a Mutex shared across tasks.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Datapath>();
};
