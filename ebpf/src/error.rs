//! Errors of the datapath loader: each says what failed and what to do about it.

use std::{io, path::PathBuf};

use thiserror::Error;

/// An error from loading, attaching or using the BPF datapath.
#[derive(Debug, Error)]
pub enum DatapathError {
    /// /sys/fs/bpf had no bpffs and mounting one failed.
    #[error(
        "{path} is not a BPF filesystem and mounting one there failed: {source}; \
         mount it (`mount -t bpf bpf /sys/fs/bpf`) or run the agent as root"
    )]
    MountBpfFs {
        /// The mount point.
        path: PathBuf,
        /// The mount(2) error.
        source: nix::Error,
    },
    /// The pin directory is not on a bpffs, so nothing can be pinned there.
    #[error(
        "pin directory {path} is not on a BPF filesystem; choose a --bpf-pin-dir under /sys/fs/bpf"
    )]
    PinDirNotBpfFs {
        /// The pin directory.
        path: PathBuf,
    },
    /// A file-system operation on the pin directory failed.
    #[error("{what} {path}: {source}; check that it is on bpffs and that the agent runs as root")]
    PinDir {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// A map pinned by an earlier run does not have the layout this build expects.
    #[error(
        "pinned map {path} does not match this build ({detail}); it was left by an incompatible \
         version: remove the pin directory (Datapath::remove_pins) and restart the agent, which \
         refills the maps from the registry"
    )]
    IncompatiblePinnedMap {
        /// The pinned map.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// The BPF object could not be loaded (maps created, relocations).
    #[error(
        "loading BPF object {object} with maps pinned in {pin_dir} failed: {source}; \
         the agent needs root (CAP_BPF, CAP_NET_ADMIN)"
    )]
    LoadObject {
        /// The object name.
        object: &'static str,
        /// The pin directory.
        pin_dir: PathBuf,
        /// aya's error.
        source: Box<aya::EbpfError>,
    },
    /// The object lacks an expected program or map: a build problem.
    #[error("BPF object {object} has no {kind} `{name}`: the build is inconsistent, rebuild membrane-ebpf")]
    Missing {
        /// The object name.
        object: &'static str,
        /// "program" or "map".
        kind: &'static str,
        /// The missing name.
        name: &'static str,
    },
    /// The kernel rejected a program (verifier) or aya could not use it.
    #[error("program {program}: {what} failed: {source}")]
    Program {
        /// The program name.
        program: &'static str,
        /// What was being done.
        what: &'static str,
        /// aya's error.
        source: Box<aya::programs::ProgramError>,
    },
    /// The interface does not exist in the caller's network namespace.
    #[error(
        "interface {ifname} not found in this network namespace ({source}); create it first, \
         and call from a thread in the namespace that holds it"
    )]
    InterfaceNotFound {
        /// The interface name.
        ifname: String,
        /// The lookup error.
        source: nix::Error,
    },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {ifname} ({direction}) failed: {detail}")]
    Attach {
        /// The program name.
        program: &'static str,
        /// The interface.
        ifname: String,
        /// "ingress" or "egress".
        direction: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The kernel has no TCX (Linux < 6.6).
    #[error(
        "this kernel ({kernel}) has no TCX links (Linux >= 6.6 is required) so programs could \
         not stay attached across agent restarts; upgrade the kernel"
    )]
    KernelTooOld {
        /// The running kernel's version.
        kernel: String,
    },
    /// An endpoint value the datapath cannot represent.
    #[error(
        "endpoint {ip}: {detail}; endpoint ids must be below 65536 (policy and conntrack \
         keep 16 bits) and identities below 2^24 (the VNI width)"
    )]
    InvalidEndpoint {
        /// The endpoint address.
        ip: std::net::Ipv4Addr,
        /// What is out of range.
        detail: String,
    },
    /// A policy key that the datapath cannot represent.
    #[error("invalid policy key: {detail}; a port prefix is 0..=16 bits of the 16-bit port")]
    InvalidPolicyKey {
        /// What is wrong.
        detail: String,
    },
    /// The events ring buffer could not be opened or was already taken.
    #[error(
        "events ring buffer {what}; only one reader may consume it at a time (take it once          with Datapath::take_event_reader, or open the pin in a process that has no other          reader)"
    )]
    Events {
        /// What went wrong.
        what: String,
    },
    /// A map operation failed.
    #[error("map {map}: {op} failed: {source}")]
    Map {
        /// The map name.
        map: &'static str,
        /// The operation.
        op: &'static str,
        /// aya's error.
        source: Box<aya::maps::MapError>,
    },
}

impl DatapathError {
    pub(crate) fn map(map: &'static str, op: &'static str, source: aya::maps::MapError) -> Self {
        DatapathError::Map {
            map,
            op,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(
        program: &'static str,
        what: &'static str,
        source: aya::programs::ProgramError,
    ) -> Self {
        DatapathError::Program {
            program,
            what,
            source: Box::new(source),
        }
    }
}
