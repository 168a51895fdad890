//! The reserved identity numbers have one home, the registry
//! (`membrane_consensus::registry::RESERVED_IDENTITIES`); the datapath's C header
//! (`ebpf/bpf/lib/identity.h`) is mirrored in `membrane_ebpf`, whose own test checks the
//! mirror against the header. This test ties the two: the agent is the one crate that sees both.

use membrane_consensus::registry::{IDENTITY_FIRST_LOCAL, RESERVED_IDENTITIES};

#[test]
fn the_datapath_header_and_the_registry_agree_on_every_reserved_identity() {
    let datapath = membrane_ebpf::abi::RESERVED_IDENTITIES;
    assert_eq!(
        datapath.len(),
        RESERVED_IDENTITIES.len(),
        "identity.h and the registry list different sets: {datapath:?} vs {RESERVED_IDENTITIES:?}"
    );
    for (number, label) in RESERVED_IDENTITIES {
        // "reserved:remote-node" <-> IDENTITY_REMOTE_NODE
        let c_name = format!(
            "IDENTITY_{}",
            label
                .trim_start_matches("reserved:")
                .replace('-', "_")
                .to_uppercase()
        );
        let in_header = datapath.iter().find(|(n, _)| *n == c_name).map(|(_, v)| *v);
        assert_eq!(in_header, Some(number), "{label}: {c_name} in identity.h");
        assert!(
            number < IDENTITY_FIRST_LOCAL,
            "{label} collides with allocated identities"
        );
    }
}
