//! Network devices through netlink: the endpoint veth pair, the VXLAN overlay device,
//! sysctls and the masquerade table (docs/datapath.md, "An endpoint").
//!
//! Everything here acts on the network namespace of the calling thread (the agent's),
//! except where a function takes a netns path: those open their rtnetlink socket on a
//! dedicated thread that has `setns`'d into that namespace (see `netns.rs`), because a
//! netlink socket belongs to the namespace of the thread that creates it.

mod endpoint;
mod error;
mod link;
mod netns;
mod nft;
mod sysctl;
mod vxlan;

#[cfg(test)]
mod tests;

pub use endpoint::{container_link, create_endpoint_link, EndpointLink, EndpointLinkSpec};
pub use error::NetdevError;
pub use link::{default_endpoint_mtu, delete_link, link_by_name, underlay_mtu};
pub use netns::{check_netns_path, NetnsProblem};
pub use nft::ensure_masquerade;
pub use sysctl::{get_sysctl, set_sysctl};
pub use vxlan::ensure_vxlan;

use sha2::{Digest, Sha256};

/// Bytes of VXLAN-over-IPv4 encapsulation: the endpoint MTU is the underlay MTU minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// The host-side name of an endpoint's veth: `mb` + the first 10 hex digits of
/// SHA-256(container id, NUL, ifname). 12 characters, so it always fits IFNAMSIZ, and
/// the same (container id, ifname) always maps to the same name (CNI DEL and restarts
/// find the link without any stored state).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = hex::encode(h.finalize());
    format!("mb{}", &digest[..10])
}

/// Checks that `name` is something the kernel takes as an interface name, so that a bad
/// name is reported as such rather than as an obscure netlink EINVAL.
pub fn validate_ifname(name: &str) -> Result<(), NetdevError> {
    let bad = |why: &str| {
        Err(NetdevError::Invalid {
            what: "interface name",
            detail: format!("{name:?}: {why}"),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains '/', ':', whitespace or a control character");
    }
    Ok(())
}
