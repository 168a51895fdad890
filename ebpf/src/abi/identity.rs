//! Mirror of `bpf/lib/identity.h`: the reserved security identities (Cilium's numbering).
//! The registry (membrane-consensus) is the Rust home of these numbers and allocates from
//! 256 up; this module is the datapath's copy, held to the header by the test below.

/// No identity known: the wildcard of policy entries, and the identity of a remote node's
/// whole pod CIDR in the ipcache.
pub const IDENTITY_UNKNOWN: u32 = 0;
/// Reserved identity of the local host (the node's own addresses).
pub const IDENTITY_HOST: u32 = 1;
/// Reserved identity of anything the ipcache does not know.
pub const IDENTITY_WORLD: u32 = 2;
/// Reserved identity of a local workload that Membrane does not manage.
pub const IDENTITY_UNMANAGED: u32 = 3;
/// Reserved identity of the health-check endpoint.
pub const IDENTITY_HEALTH: u32 = 4;
/// Reserved identity of an endpoint whose identity is not resolved yet.
pub const IDENTITY_INIT: u32 = 5;
/// Reserved identity of the other nodes of the cluster.
pub const IDENTITY_REMOTE_NODE: u32 = 6;

/// Every reserved identity with its `#define` in `bpf/lib/identity.h`.
pub const RESERVED_IDENTITIES: [(&str, u32); 7] = [
    ("IDENTITY_UNKNOWN", IDENTITY_UNKNOWN),
    ("IDENTITY_HOST", IDENTITY_HOST),
    ("IDENTITY_WORLD", IDENTITY_WORLD),
    ("IDENTITY_UNMANAGED", IDENTITY_UNMANAGED),
    ("IDENTITY_HEALTH", IDENTITY_HEALTH),
    ("IDENTITY_INIT", IDENTITY_INIT),
    ("IDENTITY_REMOTE_NODE", IDENTITY_REMOTE_NODE),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::header::defines;

    /// Each Rust constant equals the header's #define, and the header defines no other
    /// identity.
    #[test]
    fn identities_match_identity_h() {
        let h = include_str!("../../bpf/lib/identity.h");
        let c: Vec<(String, u64)> = defines(h)
            .into_iter()
            .filter(|(n, _)| n.starts_with("IDENTITY_"))
            .collect();
        assert_eq!(c.len(), RESERVED_IDENTITIES.len(), "{c:?}");
        for (name, value) in RESERVED_IDENTITIES {
            let found = c.iter().find(|(n, _)| n == name);
            assert_eq!(found.map(|(_, v)| *v), Some(u64::from(value)), "{name}");
        }
        // The registry allocates from 256 up: every reserved number sits below.
        assert!(RESERVED_IDENTITIES.iter().all(|(_, v)| *v < 256));
    }
}
