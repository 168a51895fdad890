//! Admission: the checks a joining node must pass, and the one step that records it.
//!
//! The join service runs [`Registry::precheck_admission`] on its local copy before it
//! proposes anything, so a wrong token never becomes a log entry; it then signs the
//! certificate for the id the precheck returned and proposes [`Command::AdmitSignedNode`],
//! which repeats every check at apply (the local copy may lag) and records node, certificate
//! and token use together: either all of them, or nothing and the token is not spent.
//!
//! The rules, in order:
//! 1. the cluster exists;
//! 2. the token exists and its hash equals the presented one (constant time); an unknown
//!    id and a wrong secret get the same [`RegistryError::JoinRefused`];
//! 3. the token is valid at `now` (not expired, revoked or used up);
//! 4. the name is free;
//! 5. `rpc_addr` is routable (not loopback, link-local, unspecified, multicast, broadcast,
//!    port 0) and no other node has its IP (it becomes a tunnel endpoint);
//! 6. a pod CIDR block is free.
//!
//! [`Command::AdmitSignedNode`]: super::Command::AdmitSignedNode

use std::net::{IpAddr, SocketAddr};

use super::cert::CertRecord;
use super::{pod_cidr, NewNode, NodeRecord, Registry, RegistryError, Response, Sha256};

/// Why `addr` cannot be a node's rpc address, if it cannot.
pub(super) fn rpc_addr_problem(addr: &SocketAddr) -> Option<&'static str> {
    if addr.port() == 0 {
        return Some("port 0 is not a listening port");
    }
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) if ip.is_loopback() => Some("it is a loopback address"),
        IpAddr::V4(ip) if ip.is_link_local() => Some("it is a link-local address"),
        IpAddr::V4(ip) if ip.is_unspecified() => Some("it is the unspecified address"),
        IpAddr::V4(ip) if ip.is_multicast() => Some("it is a multicast address"),
        IpAddr::V4(ip) if ip.is_broadcast() => Some("it is the broadcast address"),
        IpAddr::V6(ip) if ip.is_loopback() => Some("it is a loopback address"),
        IpAddr::V6(ip) if ip.is_unicast_link_local() => Some("it is a link-local address"),
        IpAddr::V6(ip) if ip.is_unspecified() => Some("it is the unspecified address"),
        IpAddr::V6(ip) if ip.is_multicast() => Some("it is a multicast address"),
        _ => None,
    }
}

impl Registry {
    /// Checks an admission against this copy of the registry without changing it, and
    /// returns the id the node would get. The join service calls it before proposing, so
    /// that refused joins cost no log entry; apply runs the same checks again.
    pub fn precheck_admission(
        &self,
        token_id: &str,
        presented_hash: &Sha256,
        node: &NewNode,
        now: i64,
    ) -> Result<u64, RegistryError> {
        self.check_admission(token_id, &presented_hash.to_string(), node, now)?;
        Ok(self.next_admission_id())
    }

    /// The id the next admitted node gets (ids start at 2; 1 is the bootstrap node).
    pub(super) fn next_admission_id(&self) -> u64 {
        self.next_node_id.max(2)
    }

    /// Rules 1-6 of the module docs, for both admission commands.
    pub(super) fn check_admission(
        &self,
        token_id: &str,
        presented_hash: &str,
        node: &NewNode,
        now: i64,
    ) -> Result<(), RegistryError> {
        let config = self.config()?;
        self.check_token(token_id, presented_hash, now)?;
        if let Some(existing) = self.node_by_name(&node.name) {
            return Err(RegistryError::NodeNameTaken {
                name: node.name.clone(),
                id: existing.id,
            });
        }
        let invalid_addr = |reason: String| RegistryError::InvalidRpcAddr {
            addr: node.rpc_addr.to_string(),
            reason,
        };
        if let Some(problem) = rpc_addr_problem(&node.rpc_addr) {
            return Err(invalid_addr(problem.to_string()));
        }
        let ip = node.rpc_addr.ip().to_canonical();
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| n.rpc_addr.ip().to_canonical() == ip)
        {
            return Err(invalid_addr(format!(
                "node {} ({}) is registered at {}",
                other.id, other.name, other.rpc_addr
            )));
        }
        pod_cidr::allocate(config.pod_pool, config.node_prefix_len, self.used_cidrs())?;
        Ok(())
    }

    /// Records an admitted node under `id` and spends the token. Only after every check.
    pub(super) fn record_admission(
        &mut self,
        token_id: &str,
        new: NewNode,
        id: u64,
        now: i64,
    ) -> Result<NodeRecord, RegistryError> {
        let config = self.config()?;
        let pod_cidr =
            pod_cidr::allocate(config.pod_pool, config.node_prefix_len, self.used_cidrs())?;
        // Every check passed: from here on the command cannot fail.
        self.next_node_id = id + 1;
        self.spend_token(token_id);
        let node = NodeRecord {
            id,
            name: new.name,
            rpc_addr: new.rpc_addr,
            tls_key_sha256: new.tls_key_sha256,
            x25519_public: new.x25519_public,
            pod_cidr,
            joined_at: now,
        };
        self.nodes.insert(id, node.clone());
        Ok(node)
    }

    pub(super) fn admit_signed_node(
        &mut self,
        token_id: &str,
        presented_hash: &Sha256,
        new: NewNode,
        node_id: u64,
        cert: CertRecord,
        now: i64,
    ) -> Result<Response, RegistryError> {
        self.check_admission(token_id, &presented_hash.to_string(), &new, now)?;
        let next = self.next_admission_id();
        if node_id != next {
            return Err(RegistryError::NodeIdTaken { id: node_id, next });
        }
        cert.validate()?;
        if !super::cert::keys_equal(&cert.tls_key_sha256, &new.tls_key_sha256) {
            return Err(RegistryError::InvalidCertificate(
                "the certificate's key is not the joining node's TLS key; sign the key the node presented".into(),
            ));
        }
        let node = self.record_admission(token_id, new, node_id, now)?;
        self.certificates.insert(node_id, cert);
        Ok(Response::Node(node))
    }
}

#[cfg(test)]
mod tests {
    use super::rpc_addr_problem;
    use crate::registry::test_support::*;
    use crate::registry::{Command, RegistryError, Response, Sha256};

    #[test]
    fn t25_rpc_addr_rules() {
        for bad in [
            "127.0.0.1:7700",
            "127.5.5.5:7700",
            "169.254.1.1:7700",
            "0.0.0.0:7700",
            "224.0.0.1:7700",
            "255.255.255.255:7700",
            "[::1]:7700",
            "[fe80::1]:7700",
            "[::]:7700",
            "[ff02::1]:7700",
            "[::ffff:127.0.0.1]:7700",
            "10.0.0.1:0",
        ] {
            assert!(
                rpc_addr_problem(&bad.parse().unwrap()).is_some(),
                "{bad} was accepted"
            );
        }
        for good in ["10.77.0.11:7700", "192.0.2.1:1", "[2001:db8::1]:7700"] {
            assert_eq!(rpc_addr_problem(&good.parse().unwrap()), None, "{good}");
        }
    }

    #[test]
    fn t26_signed_admission_records_node_cert_and_token_use_together() {
        let mut r = bootstrapped();
        let node = new_node("n2");
        let next = r
            .precheck_admission("abcdef", &sha(HASH_A), &node, T0)
            .unwrap();
        assert_eq!(next, 2);
        let before = r.clone();
        let _ = r.precheck_admission("abcdef", &sha(HASH_A), &node, T0);
        assert_eq!(r, before, "the precheck changes nothing");
        let cert = cert_for(&node);
        let Response::Node(n) = r.apply(signed_cmd("abcdef", HASH_A, node, next, cert.clone()))
        else {
            panic!()
        };
        assert_eq!(n.id, 2);
        assert_eq!(r.certificate(2), Some(&cert));
        assert_eq!(r.token("abcdef").unwrap().uses, 1);
    }

    #[test]
    fn t27_signed_admission_refusals_change_nothing_and_keep_the_token() {
        let mut r = bootstrapped();
        r.apply(Command::CreateToken {
            token: token("multi1", HASH_B, 10),
        });
        let node = new_node("n2");
        let cert = cert_for(&node);
        // Another id than the next one: the signer must retry.
        refused(
            &mut r,
            signed_cmd("multi1", HASH_B, node.clone(), 5, cert.clone()),
            |e| matches!(e, RegistryError::NodeIdTaken { id: 5, next: 2 }),
        );
        // A certificate for another key.
        let wrong_key = crate::registry::CertRecord {
            tls_key_sha256: Sha256([0x99; 32]),
            ..cert.clone()
        };
        refused(
            &mut r,
            signed_cmd("multi1", HASH_B, node.clone(), 2, wrong_key),
            |e| matches!(e, RegistryError::InvalidCertificate(_)),
        );
        // Unknown id and wrong secret look the same.
        let unknown = r
            .precheck_admission("nosuch", &sha(HASH_B), &node, T0)
            .unwrap_err();
        let wrong = r
            .precheck_admission("multi1", &sha(HASH_A), &node, T0)
            .unwrap_err();
        assert_eq!(unknown, RegistryError::JoinRefused);
        assert_eq!(wrong, RegistryError::JoinRefused);
        assert!(unknown.to_string().contains("membrane token create"));
        refused(
            &mut r,
            signed_cmd("multi1", HASH_A, node.clone(), 2, cert.clone()),
            |e| *e == RegistryError::JoinRefused,
        );
        // Loopback, and an address another node has (node 1's IP, other port).
        let n1_ip = r.node(1).unwrap().rpc_addr.ip();
        for addr in [
            "127.0.0.1:7700".parse().unwrap(),
            std::net::SocketAddr::new(n1_ip, 9999),
        ] {
            let mut at = node.clone();
            at.rpc_addr = addr;
            refused(
                &mut r,
                signed_cmd("multi1", HASH_B, at.clone(), 2, cert.clone()),
                |e| matches!(e, RegistryError::InvalidRpcAddr { .. }),
            );
            refused(
                &mut r,
                Command::AdmitNode {
                    token_id: "multi1".into(),
                    presented_hash: HASH_B.into(),
                    node: at,
                    now: T0,
                },
                |e| matches!(e, RegistryError::InvalidRpcAddr { .. }),
            );
        }
        assert_eq!(r.token("multi1").unwrap().uses, 0);
        // The retry with the right id passes.
        assert!(matches!(
            r.apply(signed_cmd("multi1", HASH_B, node, 2, cert)),
            Response::Node(_)
        ));
    }
}
