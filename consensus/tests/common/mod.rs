//! Shared fixtures for the consensus integration tests.
#![allow(dead_code)]

use membrane_consensus::registry::{
    ClusterConfig, GossipKey, NewNode, Sha256, TokenRecord, X25519Public,
};
use membrane_consensus::Command;

/// A `Bootstrap` command for a cluster with id 7 and node 1 at 127.0.0.1:7700.
pub fn bootstrap_cmd() -> Command {
    Command::Bootstrap {
        config: ClusterConfig {
            cluster_id: 7,
            name: "lab".into(),
            pod_pool: "10.128.0.0/16".parse().expect("cidr"),
            node_prefix_len: 24,
            ca_cert_pem: "ca".into(),
            legacy_ca_key_pem: "key".into(),
            created_at: 1_000,
        },
        first_node: NewNode {
            name: "n1".into(),
            rpc_addr: "127.0.0.1:7700".parse().expect("addr"),
            tls_key_sha256: Sha256([0x00; 32]),
            x25519_public: X25519Public([0x11; 32]),
        },
        first_token: token("first"),
        gossip_key: GossipKey {
            id: 1,
            key_hex: "cd".repeat(32),
        },
    }
}

/// A single-use token record that expires far in the future.
pub fn token(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: "aa".repeat(32),
        description: String::new(),
        created_at: 1_000,
        expires_at: 1_000_000,
        max_uses: 1,
        uses: 0,
        revoked: false,
    }
}
