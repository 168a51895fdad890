//! Registries for the tunnel's pure tests: three nodes, encryption on.

use std::collections::BTreeSet;

use membrane_consensus::registry::{
    ClusterConfig, Command, GossipKey, NewNode, Registry, Sha256, TokenRecord, X25519Public,
};

const HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn node(name: &str, ip: &str) -> NewNode {
    NewNode {
        name: name.into(),
        rpc_addr: format!("{ip}:7700").parse().unwrap(),
        tls_key_sha256: Sha256([0x00; 32]),
        x25519_public: X25519Public([0x11; 32]),
    }
}

pub fn apply(r: &mut Registry, cmd: Command) {
    r.apply(cmd).into_result().unwrap();
}

/// Nodes 1, 2, 3 at 10.77.0.11-13, encryption enabled, no epoch yet.
pub fn three_nodes() -> (Registry, [u64; 3]) {
    let mut r = Registry::default();
    apply(
        &mut r,
        Command::Bootstrap {
            config: ClusterConfig {
                cluster_id: 1,
                name: "t".into(),
                pod_pool: "10.128.0.0/16".parse().unwrap(),
                node_prefix_len: 24,
                ca_cert_pem: String::new(),
                legacy_ca_key_pem: String::new(),
                created_at: 0,
            },
            first_node: node("n1", "10.77.0.11"),
            first_token: TokenRecord {
                id: "abcdef".into(),
                secret_hash: HASH.into(),
                description: String::new(),
                created_at: 0,
                expires_at: 3600,
                max_uses: 5,
                uses: 0,
                revoked: false,
            },
            gossip_key: GossipKey {
                id: 1,
                key_hex: "ab".repeat(32),
            },
        },
    );
    for (n, ip) in [("n2", "10.77.0.12"), ("n3", "10.77.0.13")] {
        apply(
            &mut r,
            Command::AdmitNode {
                token_id: "abcdef".into(),
                presented_hash: HASH.into(),
                node: node(n, ip),
                now: 1,
            },
        );
    }
    apply(&mut r, Command::SetEncryption { enabled: true });
    (r, [1, 2, 3])
}

/// The public key node `n` publishes for `epoch` in these tests.
pub fn test_key(n: u64, epoch: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = n as u8;
    k[1] = epoch as u8;
    k[31] = 0x5a;
    k
}

pub fn publish(r: &mut Registry, n: u64, epoch: u32) {
    apply(
        r,
        Command::PublishTunnelKey {
            node_id: n,
            epoch,
            public: X25519Public(test_key(n, epoch)),
        },
    );
}

pub fn report(r: &mut Registry, n: u64, epoch: u32, peers: &[u64]) {
    apply(
        r,
        Command::ReportTunnelEpoch {
            node_id: n,
            epoch,
            peers: peers.iter().copied().collect::<BTreeSet<u64>>(),
        },
    );
}

/// Begins `epoch`, has `nodes` publish and install each other, and activates it.
pub fn activate_with(r: &mut Registry, epoch: u32, nodes: &[u64]) {
    apply(r, Command::BeginTunnelEpoch { now: 100 });
    assert_eq!(r.encryption().pending(), Some(epoch));
    for n in nodes {
        publish(r, *n, epoch);
    }
    for n in nodes {
        let others: Vec<u64> = nodes.iter().copied().filter(|o| o != n).collect();
        report(r, *n, epoch, &others);
    }
    apply(r, Command::ActivateTunnelEpoch { epoch, now: 100 });
}
