//! The cluster itself: the settings fixed by `membrane init`, and the bootstrap command that
//! creates the cluster with its first node, first join token and first gossip key.
//!
//! Every other command except a token revocation and a node or endpoint removal needs the
//! cluster to exist ([`RegistryError::NotBootstrapped`] otherwise).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::identity::IdentityTable;
use super::token::validate_token;
use super::{
    pod_cidr, GossipKey, GossipKeyring, NewNode, NodeRecord, Registry, RegistryError, Response,
    TokenRecord,
};

/// Cluster-wide settings fixed by `membrane init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// 1-255; occupies bits 16-23 of every identity so meshed clusters never collide.
    pub cluster_id: u8,
    pub name: String,
    /// The pool that node pod CIDRs are cut from.
    pub pod_pool: Ipv4Net,
    /// Prefix length of each node's share of the pool.
    pub node_prefix_len: u8,
    /// The cluster CA. Its key lives here so that any node can sign a joining node's
    /// certificate; the registry is only ever reachable by holders of a node certificate.
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub created_at: i64,
}

impl ClusterConfig {
    /// Checks the settings before they are committed.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.cluster_id == 0 {
            return Err(RegistryError::InvalidClusterConfig(
                "cluster id must be between 1 and 255".into(),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(RegistryError::InvalidClusterConfig(
                "cluster name is empty".into(),
            ));
        }
        pod_cidr::validate(self.pod_pool, self.node_prefix_len)
    }
}

impl Registry {
    /// The cluster settings, once bootstrapped.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref()
    }

    /// The settings, or the refusal every command before bootstrap gets.
    pub(super) fn config(&self) -> Result<&ClusterConfig, RegistryError> {
        self.cluster.as_ref().ok_or(RegistryError::NotBootstrapped)
    }

    pub(super) fn bootstrap(
        &mut self,
        config: ClusterConfig,
        first_node: NewNode,
        first_token: TokenRecord,
        gossip_key: GossipKey,
    ) -> Result<Response, RegistryError> {
        if let Some(c) = &self.cluster {
            return Err(RegistryError::AlreadyBootstrapped {
                id: c.cluster_id,
                name: c.name.clone(),
            });
        }
        config.validate()?;
        validate_token(&first_token)?;
        let keyring = GossipKeyring::new(gossip_key)?;
        let pod_cidr =
            pod_cidr::allocate(config.pod_pool, config.node_prefix_len, self.used_cidrs())?;
        let node = NodeRecord {
            id: 1,
            name: first_node.name,
            rpc_addr: first_node.rpc_addr,
            tls_key_sha256: first_node.tls_key_sha256,
            x25519_public: first_node.x25519_public,
            pod_cidr,
            joined_at: config.created_at,
        };
        self.identities = IdentityTable::new(config.cluster_id);
        self.cluster = Some(config);
        self.nodes.insert(1, node.clone());
        self.next_node_id = 2;
        self.tokens.insert(first_token.id.clone(), first_token);
        self.gossip_keyring = Some(keyring);
        Ok(Response::Node(node))
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::test_support::*;
    use crate::registry::{Command, LabelSet, Registry, RegistryError};

    #[test]
    fn t10_bootstrap_creates_node_1_with_the_first_block() {
        let r = bootstrapped();
        let n1 = r.node(1).unwrap();
        assert_eq!(n1.pod_cidr.to_string(), "10.128.0.0/24");
        assert_eq!(r.cluster().unwrap().cluster_id, 7);
        assert!(r.token("abcdef").is_some());
    }

    #[test]
    fn t11_bootstrap_twice_is_refused() {
        let mut r = bootstrapped();
        refused(
            &mut r,
            Command::Bootstrap {
                config: config(),
                first_node: new_node("x"),
                first_token: token("zzzzzz", HASH_B, 1),
                gossip_key: gossip_key(1),
            },
            |e| matches!(e, RegistryError::AlreadyBootstrapped { id: 7, .. }),
        );
    }

    #[test]
    fn t12_commands_before_bootstrap_are_refused() {
        let mut r = Registry::default();
        refused(
            &mut r,
            Command::CreateToken {
                token: token("abcdef", HASH_A, 1),
            },
            |e| matches!(e, RegistryError::NotBootstrapped),
        );
        refused(
            &mut r,
            Command::AllocateIdentity {
                labels: LabelSet::parse(&["app=web"]).unwrap(),
            },
            |e| matches!(e, RegistryError::NotBootstrapped),
        );
    }
}
