//! The one error type of the netdev module.

use std::path::PathBuf;

/// What went wrong while configuring network devices. Messages say which step failed
/// and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// The endpoint's host-side veth name is already used in the node's namespace.
    #[error(
        "host interface {name:?} already exists in the node's network namespace; \
         a stale endpoint probably left it behind: delete the endpoint, or the link \
         (`ip link del {name}`), and retry"
    )]
    HostNameTaken { name: String },

    /// The container-side interface name is already used inside the endpoint's namespace.
    #[error(
        "interface {ifname:?} already exists in network namespace {}; \
         use another interface name or remove the existing interface",
        netns.display()
    )]
    ContainerNameTaken { ifname: String, netns: PathBuf },

    /// The netns path does not exist or is not a network namespace.
    #[error(
        "{} is not a network namespace ({reason}); pass the path of a live one, \
         such as /run/netns/NAME or /proc/PID/ns/net",
        path.display()
    )]
    NoSuchNetns { path: PathBuf, reason: String },

    /// A link with the overlay device's name exists but is not a VXLAN device.
    #[error(
        "link {name:?} exists but is of kind {kind}, not vxlan; delete it or choose \
         another overlay device name (--overlay-device)"
    )]
    NotVxlan { name: String, kind: String },

    /// A caller-supplied value the kernel would refuse.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },

    /// No interface to take the underlay MTU from.
    #[error(
        "cannot find the underlay interface: no default route and no up, non-loopback \
         interface with an IPv4 address; pass the endpoint MTU explicitly (--mtu)"
    )]
    NoUnderlay,

    /// A netlink request failed; `step` says which.
    #[error("{step}: {}", describe_netlink(.errno, .source))]
    Netlink {
        step: String,
        /// The positive errno the kernel answered with, if it was a kernel error.
        errno: Option<i32>,
        #[source]
        source: rtnetlink::Error,
    },

    /// A system call or file operation failed; `step` says which.
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },

    /// `nft -f -` refused the masquerade script.
    #[error(
        "nft failed ({status}): {stderr}; check that nftables (the `nft` binary) is \
         installed and the nf_tables kernel module can be loaded"
    )]
    Nft { status: String, stderr: String },
}

impl NetdevError {
    /// Wraps an rtnetlink error with the step that failed.
    pub(crate) fn netlink(step: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetdevError::Netlink {
            step: step.into(),
            errno: errno_of(&source),
            source,
        }
    }

    pub(crate) fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        NetdevError::Io {
            step: step.into(),
            source,
        }
    }

    /// The kernel's errno, when the error is a netlink NACK.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetdevError::Netlink { errno, .. } => *errno,
            NetdevError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The positive errno of a netlink NACK (the kernel sends it negated).
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().saturating_neg()),
        _ => None,
    }
}

/// "File exists (os error 17)" reads better than the Debug dump of the NACK.
fn describe_netlink(errno: &Option<i32>, source: &rtnetlink::Error) -> String {
    match errno {
        Some(n) => std::io::Error::from_raw_os_error(*n).to_string(),
        None => source.to_string(),
    }
}
