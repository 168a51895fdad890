//! Loading the objects, bpffs, and attaching programs so that they outlive the agent.
//!
//! # Why pinned TCX links
//!
//! On Linux >= 6.6 aya 0.14 attaches tc programs as TCX links (`bpf_link`s). A TCX link
//! detaches as soon as its last reference goes away, so a link that is only held by the
//! process dies with the agent. We therefore pin every link in bpffs
//! (`<pin_dir>/links/<ifname>:<ifindex>:<direction>`); the pin keeps it attached while no
//! agent runs. A restarted agent opens the pin and calls `bpf_link_update` (aya's
//! `attach_to_link`), which swaps the program inside the existing link atomically: at
//! every instant exactly one of our programs is attached, never zero or two.
//!
//! The legacy netlink cls_bpf path would also persist (if the aya link is forgotten
//! rather than dropped), but replacing a filter there is a separate netlink request per
//! filter keyed by priority/handle that we would have to remember, and aya's replace path
//! sends no NLM_F_REPLACE; on this project's kernels TCX is simply the better tool. TCX
//! needs no clsact qdisc, so none is added. Kernels without TCX are refused with a clear
//! error rather than silently getting attachments that would break on restart.
//!
//! The ifindex in the pin name ties a pin to one incarnation of an interface: a veth
//! deleted and re-created under the same name gets a new ifindex, and the stale pin (whose
//! link the kernel already detached) is removed after the new link is pinned.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use tracing::{debug, info, warn};

use crate::{error::DatapathError, maps::SPECS};

/// bpffs magic number (statfs f_type), from linux/magic.h.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const LINKS_DIR: &str = "links";

pub(crate) static LXC_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_lxc.o"));
pub(crate) static OVERLAY_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_overlay.o"));
pub(crate) static TUNNEL_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_tunnel.o"));

/// Which tc hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

fn is_bpffs(path: &Path) -> Result<bool, nix::Error> {
    let st = nix::sys::statfs::statfs(path)?;
    // f_type's integer type differs between libcs; the magic fits in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as u32;
    Ok(magic == BPF_FS_MAGIC)
}

/// Mounts bpffs on /sys/fs/bpf unless one is there already (statfs magic, so a bpffs
/// mounted by systemd or by an earlier agent is reused, never stacked).
pub(crate) fn ensure_bpffs() -> Result<(), DatapathError> {
    let root = Path::new(BPFFS_ROOT);
    match is_bpffs(root) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(nix::Error::ENOENT) => {
            fs::create_dir_all(root).map_err(|source| DatapathError::PinDir {
                what: "creating",
                path: root.to_owned(),
                source,
            })?;
        }
        Err(source) => {
            return Err(DatapathError::MountBpfFs {
                path: root.to_owned(),
                source,
            })
        }
    }
    info!("mounting bpffs on {BPFFS_ROOT}");
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| DatapathError::MountBpfFs {
        path: root.to_owned(),
        source,
    })
}

pub(crate) fn create_pin_dir(pin_dir: &Path) -> Result<PathBuf, DatapathError> {
    let links = pin_dir.join(LINKS_DIR);
    fs::create_dir_all(&links).map_err(|source| DatapathError::PinDir {
        what: "creating",
        path: links.clone(),
        source,
    })?;
    match is_bpffs(pin_dir) {
        Ok(true) => Ok(links),
        _ => Err(DatapathError::PinDirNotBpfFs {
            path: pin_dir.to_owned(),
        }),
    }
}

/// Refuses pinned maps whose layout differs from this build's: aya reuses any object
/// found under the pin name without comparing it.
pub(crate) fn check_pinned_maps(pin_dir: &Path) -> Result<(), DatapathError> {
    for spec in &SPECS {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| {
            DatapathError::IncompatiblePinnedMap {
                path: path.clone(),
                detail: format!("cannot open it as a map: {e}"),
            }
        })?;
        let mut diffs = Vec::new();
        match info.map_type() {
            Ok(t) if t == spec.map_type => {}
            Ok(t) => diffs.push(format!("type {t:?}, expected {:?}", spec.map_type)),
            Err(e) => diffs.push(format!("unknown type: {e}")),
        }
        for (what, got, want) in [
            ("key size", info.key_size(), spec.key_size),
            ("value size", info.value_size(), spec.value_size),
            ("max entries", info.max_entries(), spec.max_entries),
        ] {
            if got != want {
                diffs.push(format!("{what} {got}, expected {want}"));
            }
        }
        if !diffs.is_empty() && spec.name == crate::maps::CONFIG {
            // The config map holds nothing the agent does not rewrite at start (it grew
            // in issue 12): an old layout is replaced rather than refused. Programs
            // still attached keep the old map until their links are updated.
            warn!(path = %path.display(), detail = %diffs.join(", "), "replacing the pinned config map of an older layout");
            fs::remove_file(&path).map_err(|source| DatapathError::PinDir {
                what: "removing",
                path: path.clone(),
                source,
            })?;
            continue;
        }
        if !diffs.is_empty() {
            return Err(DatapathError::IncompatiblePinnedMap {
                path,
                detail: diffs.join(", "),
            });
        }
        debug!(map = spec.name, "reusing pinned map");
    }
    Ok(())
}

pub(crate) fn load_object(
    object: &'static str,
    bytes: &[u8],
    pin_dir: &Path,
) -> Result<Ebpf, DatapathError> {
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(bytes)
        .map_err(|source| DatapathError::LoadObject {
            object,
            pin_dir: pin_dir.to_owned(),
            source: Box::new(source),
        })
}

pub(crate) fn load_program(
    bpf: &mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<(), DatapathError> {
    let prog: &mut SchedClassifier = bpf
        .program_mut(name)
        .ok_or(DatapathError::Missing {
            object,
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| DatapathError::program(name, "type check", e))?;
    prog.load()
        .map_err(|e| DatapathError::program(name, "kernel load (verifier)", e))
}

pub(crate) fn require_tcx() -> Result<(), DatapathError> {
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => Ok(()),
        Ok(v) => Err(DatapathError::KernelTooOld {
            kernel: format!("{v:?}"),
        }),
        // Unparseable version strings come from custom kernels; let the attach itself decide.
        Err(e) => {
            warn!("cannot read the kernel version ({e}); assuming TCX is available");
            Ok(())
        }
    }
}

/// Linux interface names: 1..=15 bytes, no '/', ':' or whitespace (dev_valid_name). ':' is
/// our separator in link pin names, so this also keeps those unambiguous.
pub(crate) fn validate_ifname(ifname: &str) -> Result<(), DatapathError> {
    let ok = !ifname.is_empty()
        && ifname.len() < 16
        && ifname != "."
        && ifname != ".."
        && !ifname
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(DatapathError::InterfaceNotFound {
            ifname: ifname.to_owned(),
            source: nix::Error::EINVAL,
        })
    }
}

pub(crate) fn ifindex(ifname: &str) -> Result<u32, DatapathError> {
    validate_ifname(ifname)?;
    nix::net::if_::if_nametoindex(ifname).map_err(|source| DatapathError::InterfaceNotFound {
        ifname: ifname.to_owned(),
        source,
    })
}

fn pin_name(ifname: &str, ifindex: u32, dir: Hook) -> String {
    format!("{ifname}:{ifindex}:{}", dir.as_str())
}

/// Pins in `links_dir` for `ifname` (any ifindex), optionally only one direction.
fn pins_for(links_dir: &Path, ifname: &str, dir: Option<Hook>) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(links_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.rsplitn(3, ':');
        let (Some(d), Some(_idx), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if n == ifname && dir.is_none_or(|dir| dir.as_str() == d) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Attaches `prog` to `ifname`'s tc hook, replacing in place whatever program our pinned
/// link for this interface holds (see the module comment).
pub(crate) fn attach_tc(
    bpf: &mut Ebpf,
    program: &'static str,
    links_dir: &Path,
    ifname: &str,
    dir: Hook,
) -> Result<(), DatapathError> {
    require_tcx()?;
    let index = ifindex(ifname)?;
    let err = |detail: String| DatapathError::Attach {
        program,
        ifname: ifname.to_owned(),
        direction: dir.as_str(),
        detail,
    };
    let prog: &mut SchedClassifier = bpf
        .program_mut(program)
        .ok_or(DatapathError::Missing {
            object: "datapath",
            kind: "program",
            name: program,
        })?
        .try_into()
        .map_err(|e| DatapathError::program(program, "type check", e))?;

    let pin = links_dir.join(pin_name(ifname, index, dir));
    let need_new = match PinnedLink::from_pin(&pin) {
        Ok(pinned) => {
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| {
                err(format!(
                    "{} is not a TCX link ({e}); remove it and retry",
                    pin.display()
                ))
            })?;
            // bpf_link_update: the kernel swaps the program in the existing link atomically.
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // Close our fd; the pin keeps the link (and so the attachment) alive.
                    drop(prog.take_link(id).map_err(|e| err(e.to_string()))?);
                    debug!(
                        ifname,
                        direction = dir.as_str(),
                        program,
                        "replaced program in pinned link"
                    );
                    false
                }
                // ENOLINK: the link's interface is gone (ifindex reused after a wrap). The
                // hook has nothing of ours, so a fresh link loses no traffic.
                Err(e) if is_enolink(&e) => {
                    warn!(path = %pin.display(), "pinned link is defunct; replacing it");
                    fs::remove_file(&pin).map_err(|e| err(format!("removing defunct pin: {e}")))?;
                    true
                }
                Err(e) => {
                    return Err(err(format!(
                        "replacing the program in {}: {e}",
                        pin.display()
                    )))
                }
            }
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(err(format!("opening pin {}: {e}", pin.display()))),
    };
    if need_new {
        let id = prog
            .attach_with_options(
                ifname,
                dir.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| err(format!("creating the TCX link: {e}")))?;
        let link = prog.take_link(id).map_err(|e| err(e.to_string()))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: LinkError| err(format!("not an fd link: {e}")))?;
        // If pinning fails the link is dropped here and detaches: nothing half-made.
        fd.pin(&pin)
            .map_err(|e| err(format!("pinning the link at {}: {e}", pin.display())))?;
        debug!(
            ifname,
            direction = dir.as_str(),
            program,
            "attached new pinned link"
        );
    }

    // Links of earlier incarnations of this interface name: already detached by the
    // kernel when that interface went away; only their pins remain.
    let stale = pins_for(links_dir, ifname, Some(dir)).map_err(|e| err(e.to_string()))?;
    for path in stale.into_iter().filter(|p| *p != pin) {
        if let Err(e) = fs::remove_file(&path) {
            warn!(path = %path.display(), "removing stale link pin: {e}");
        }
    }
    Ok(())
}

fn is_enolink(e: &aya::programs::ProgramError) -> bool {
    match e {
        aya::programs::ProgramError::SyscallError(s) => {
            s.io_error.raw_os_error() == Some(libc::ENOLINK)
        }
        _ => false,
    }
}

/// Removes our link pins for `ifname`, which detaches the programs if the interface still
/// exists (no other reference holds those links).
pub(crate) fn detach_all(links_dir: &Path, ifname: &str) -> Result<(), DatapathError> {
    validate_ifname(ifname)?;
    let pins = pins_for(links_dir, ifname, None).map_err(|source| DatapathError::PinDir {
        what: "listing",
        path: links_dir.to_owned(),
        source,
    })?;
    for path in pins {
        // Detach first so the programs are gone when this returns; ENOLINK (already
        // detached, the interface went away) and a vanished pin are fine.
        match crate::sys::obj_get(&path) {
            Ok(fd) => {
                if let Err(e) = crate::sys::link_detach(&fd) {
                    if e.raw_os_error() != Some(libc::ENOLINK) {
                        warn!(path = %path.display(), "BPF_LINK_DETACH: {e}; removing the pin anyway");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => warn!(path = %path.display(), "opening link pin: {e}; removing it anyway"),
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DatapathError::PinDir {
                    what: "removing",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        for ok in ["eth0", "mb1a2b3c4d5e", "eth0.100", "membrane_vx", "a-b"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a:b", "a b", "0123456789abcdef", ".", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pin_names_parse_back_per_interface() {
        let dir = std::env::temp_dir().join(format!("membrane-ebpf-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in [
            pin_name("eth0", 3, Hook::Ingress),
            pin_name("eth0", 9, Hook::Egress),
            pin_name("eth0.100", 4, Hook::Ingress),
        ] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let mut got = pins_for(&dir, "eth0", None).unwrap();
        got.sort();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(pins_for(&dir, "eth0", Some(Hook::Egress)).unwrap().len(), 1);
        assert_eq!(pins_for(&dir, "eth0.100", None).unwrap().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
