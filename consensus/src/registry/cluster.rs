//! The cluster itself: the settings fixed by `membrane init`, and the bootstrap command that
//! creates the cluster with its first node, first join token and first gossip key. The CA
//! key is not among the settings any more (it stays on the voters); see
//! [`ClusterConfig::legacy_ca_key_pem`] for registries written before.
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
    /// The cluster CA's certificate.
    pub ca_cert_pem: String,
    /// The CA's private key as registries before issue 11 kept it (replicated to every
    /// node, its log and snapshots). Empty for clusters created after issue 11, whose key
    /// lives only on the voters' disks; a non-empty value is a pre-issue-11 registry that
    /// must be migrated: move the key to the voters, then propose
    /// [`Command::ForgetLegacyCaKey`](super::Command::ForgetLegacyCaKey).
    pub legacy_ca_key_pem: String,
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

    /// The CA key still held in the registry by a pre-issue-11 cluster; `None` once it has
    /// been moved out (and for every cluster created since).
    pub fn legacy_ca_key(&self) -> Option<&str> {
        self.cluster
            .as_ref()
            .map(|c| c.legacy_ca_key_pem.as_str())
            .filter(|k| !k.is_empty())
    }

    /// Clears the legacy CA key. Idempotent: the migration may be proposed more than once.
    pub(super) fn forget_legacy_ca_key(&mut self) -> Result<Response, RegistryError> {
        let config = self
            .cluster
            .as_mut()
            .ok_or(RegistryError::NotBootstrapped)?;
        config.legacy_ca_key_pem.clear();
        Ok(Response::Ok)
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
    use crate::registry::{Command, LabelSet, Registry, RegistryError, Response};

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
    fn t13_the_legacy_ca_key_is_forgotten_and_new_clusters_have_none() {
        let mut r = bootstrapped();
        assert_eq!(r.legacy_ca_key(), Some("key"));
        assert_eq!(r.apply(Command::ForgetLegacyCaKey), Response::Ok);
        assert_eq!(r.legacy_ca_key(), None);
        assert_eq!(
            r.cluster().unwrap().ca_cert_pem,
            "ca",
            "the certificate stays"
        );
        assert_eq!(
            r.apply(Command::ForgetLegacyCaKey),
            Response::Ok,
            "idempotent"
        );

        let mut fresh = Registry::default();
        let mut cfg = config();
        cfg.legacy_ca_key_pem.clear();
        let resp = fresh.apply(Command::Bootstrap {
            config: cfg,
            first_node: new_node("n1"),
            first_token: token("abcdef", HASH_A, 1),
            gossip_key: gossip_key(1),
        });
        assert!(matches!(resp, Response::Node(_)), "{resp:?}");
        assert_eq!(fresh.legacy_ca_key(), None);
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
