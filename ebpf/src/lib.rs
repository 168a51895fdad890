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
    DatapathConfig, EndpointKey, EndpointValue, IpcacheKey, IpcacheValue, MetricValue, Reason,
};
pub use error::DatapathError;
use loader::Direction;

const LXC: &str = "bpf_lxc.o";
const OVERLAY: &str = "bpf_overlay.o";
const FROM_ENDPOINT: &str = "from_endpoint";
const TO_ENDPOINT: &str = "to_endpoint";
const FROM_OVERLAY: &str = "from_overlay";

/// The loaded programs and their pinned maps.
pub struct Datapath {
    pin_dir: PathBuf,
    links_dir: PathBuf,
    lxc: Ebpf,
    overlay: Ebpf,
    maps: maps::Maps,
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
        // bpf_lxc.o creates (or reopens) the pins; bpf_overlay.o then reopens the same maps.
        let mut lxc = loader::load_object(LXC, loader::LXC_OBJ, pin_dir)?;
        let mut overlay = loader::load_object(OVERLAY, loader::OVERLAY_OBJ, pin_dir)?;
        loader::load_program(&mut lxc, LXC, FROM_ENDPOINT)?;
        loader::load_program(&mut lxc, LXC, TO_ENDPOINT)?;
        loader::load_program(&mut overlay, OVERLAY, FROM_OVERLAY)?;
        let maps = maps::Maps::new(|name| lxc.take_map(name))?;
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Datapath {
            pin_dir: pin_dir.to_owned(),
            links_dir,
            lxc,
            overlay,
            maps,
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
            Direction::Ingress,
        )?;
        loader::attach_tc(
            &mut self.lxc,
            TO_ENDPOINT,
            &self.links_dir,
            host_ifname,
            Direction::Egress,
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
            Direction::Ingress,
        )
    }

    /// Detaches `from_overlay` from `ifname`; like [`Datapath::detach_endpoint`].
    pub fn detach_overlay(&mut self, ifname: &str) -> Result<(), DatapathError> {
        loader::detach_all(&self.links_dir, ifname)
    }

    /// The ifindex of `ifname` in the calling thread's network namespace (for
    /// [`EndpointValue::ifindex`] and [`DatapathConfig::overlay_ifindex`]).
    pub fn ifindex(ifname: &str) -> Result<u32, DatapathError> {
        loader::ifindex(ifname)
    }

    /// Inserts or replaces the endpoint with address `ip`.
    pub fn upsert_endpoint(
        &mut self,
        ip: Ipv4Addr,
        value: &EndpointValue,
    ) -> Result<(), DatapathError> {
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

    /// `(reason, packets, bytes)` for every [`Reason`], summed over CPUs.
    pub fn metrics(&self) -> Result<Vec<(Reason, u64, u64)>, DatapathError> {
        self.maps.metrics()
    }

    /// `(packets, bytes)` for one reason, summed over CPUs.
    pub fn metric(&self, reason: Reason) -> Result<(u64, u64), DatapathError> {
        Ok(self
            .metrics()?
            .into_iter()
            .find(|(r, _, _)| *r == reason)
            .map(|(_, p, b)| (p, b))
            .unwrap_or_default())
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

// The agent keeps the datapath behind a Mutex shared across tasks.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Datapath>();
};
