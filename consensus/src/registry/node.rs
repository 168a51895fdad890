//! Nodes: admission with a join token, removal, and the records every node reads to reach
//! the others.
//!
//! A node's id is handed out once and never again, even after the node is removed; its pod
//! CIDR is freed with it and may go to a later node.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Registry, RegistryError, Response};

/// A node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    pub name: String,
    #[serde(with = "addr_as_string")]
    pub rpc_addr: SocketAddr,
    /// SHA-256 of the public key in the node's TLS certificate.
    pub tls_key_sha256: Sha256,
    /// The node's X25519 public key for the datapath tunnel.
    pub x25519_public: X25519Public,
    pub pod_cidr: Ipv4Net,
    pub joined_at: i64,
}

/// What a node tells the registry about itself when it is admitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    #[serde(with = "addr_as_string")]
    pub rpc_addr: SocketAddr,
    pub tls_key_sha256: Sha256,
    pub x25519_public: X25519Public,
}

/// A 32-byte key (or digest) that records carry: lower-case hex in text and in serde, so
/// log entries and snapshots stay readable and encode exactly as the hex strings that
/// these fields were before (stores written then still decode).
macro_rules! key32 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| KeyError {
                    what: $what,
                    reason: format!("{s:?} is not 64 hex characters"),
                })?;
                Ok($name(out))
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = KeyError;
            fn try_from(b: &[u8]) -> Result<Self, KeyError> {
                b.try_into().map($name).map_err(|_| KeyError {
                    what: $what,
                    reason: format!("it is {} bytes, not 32", b.len()),
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

key32!(
    /// A SHA-256 digest: of a node's TLS public key (SubjectPublicKeyInfo).
    Sha256,
    "SHA-256 digest"
);
key32!(
    /// A node's X25519 public key.
    X25519Public,
    "X25519 public key"
);

/// A key that is not 32 bytes (or 64 hex characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct KeyError {
    what: &'static str,
    reason: String,
}

/// `ip:port` as a string in serde, as the field was before it was typed: readable in JSON,
/// and the same bytes in bincode, so stores written before still decode.
mod addr_as_string {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Registry {
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    pub fn node(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| n.name == name)
    }

    /// The legacy admission (no certificate record): the same checks as
    /// [`Command::AdmitSignedNode`](super::Command::AdmitSignedNode) but the id.
    pub(super) fn admit_node(
        &mut self,
        token_id: &str,
        presented_hash: &str,
        new: NewNode,
        now: i64,
    ) -> Result<Response, RegistryError> {
        self.check_admission(token_id, presented_hash, &new, now)?;
        let id = self.next_admission_id();
        let node = self.record_admission(token_id, new, id, now)?;
        Ok(Response::Node(node))
    }

    /// Removes a node with everything it holds, and revokes its key for good.
    pub(super) fn remove_node(&mut self, id: u64) -> Result<Response, RegistryError> {
        let node = self
            .nodes
            .remove(&id)
            .ok_or(RegistryError::NodeNotFound { id })?;
        for ep in self.endpoints.remove_node(id) {
            // The reference was taken when the endpoint was added, so it is there.
            let _ = self.identities.release(&ep.labels);
        }
        self.drop_api_identity_refs(id);
        self.forget_tunnel_node(id);
        self.revoke_node(&node);
        Ok(Response::Ok)
    }

    /// The pod CIDRs of every node, for the allocator to avoid.
    pub(super) fn used_cidrs(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.nodes.values().map(|n| n.pod_cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::{NewNode, Sha256, X25519Public};
    use crate::registry::test_support::*;
    use crate::registry::{Command, RegistryError, Response};

    #[test]
    fn typed_fields_encode_as_the_strings_they_were() {
        #[derive(serde::Serialize)]
        struct Before {
            name: String,
            rpc_addr: String,
            tls_key_sha256: String,
            x25519_public: String,
        }
        let before = Before {
            name: "n1".into(),
            rpc_addr: "10.0.0.1:7700".into(),
            tls_key_sha256: "0a".repeat(32),
            x25519_public: "11".repeat(32),
        };
        let now = NewNode {
            name: "n1".into(),
            rpc_addr: "10.0.0.1:7700".parse().unwrap(),
            tls_key_sha256: Sha256([0x0a; 32]),
            x25519_public: X25519Public([0x11; 32]),
        };
        let old_bytes = bincode::serialize(&before).unwrap();
        assert_eq!(bincode::serialize(&now).unwrap(), old_bytes);
        assert_eq!(bincode::deserialize::<NewNode>(&old_bytes).unwrap(), now);
        assert_eq!(
            serde_json::to_string(&now).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
        assert!("abc".parse::<Sha256>().is_err());
        assert!(X25519Public::try_from(&[0u8; 31][..]).is_err());
    }

    #[test]
    fn t20_admit_with_a_valid_token_assigns_id_and_cidr() {
        let mut r = bootstrapped();
        let Response::Node(n) = admit(&mut r, "abcdef", HASH_A, "n2", T0 + 10) else {
            panic!()
        };
        assert_eq!(n.id, 2);
        assert_eq!(n.pod_cidr.to_string(), "10.128.1.0/24");
        assert_eq!(r.token("abcdef").unwrap().uses, 1);
    }

    #[test]
    fn t22_a_taken_name_is_refused() {
        let mut r = bootstrapped();
        r.apply(Command::CreateToken {
            token: token("multi1", HASH_B, 10),
        });
        refused(
            &mut r,
            Command::AdmitNode {
                token_id: "multi1".into(),
                presented_hash: HASH_B.into(),
                node: new_node("n1"),
                now: T0,
            },
            |e| matches!(e, RegistryError::NodeNameTaken { id: 1, .. }),
        );
        assert_eq!(
            r.token("multi1").unwrap().uses,
            0,
            "a refused join does not use the token"
        );
    }

    #[test]
    fn t23_node_ids_are_never_reused() {
        let mut r = bootstrapped();
        r.apply(Command::CreateToken {
            token: token("multi1", HASH_B, 10),
        });
        let Response::Node(n2) = admit(&mut r, "multi1", HASH_B, "n2", T0) else {
            panic!()
        };
        assert_eq!(r.apply(Command::RemoveNode { id: n2.id }), Response::Ok);
        let Response::Node(n3) = admit(&mut r, "multi1", HASH_B, "n3", T0) else {
            panic!()
        };
        assert_eq!(n3.id, 3);
        assert_eq!(
            n3.pod_cidr, n2.pod_cidr,
            "the freed block is handed out again"
        );
    }

    #[test]
    fn t24_pod_cidr_exhaustion_is_refused() {
        let mut r = bootstrapped();
        r.apply(Command::CreateToken {
            token: token("multi1", HASH_B, 10),
        });
        for name in ["n2", "n3", "n4"] {
            assert!(matches!(
                admit(&mut r, "multi1", HASH_B, name, T0),
                Response::Node(_)
            ));
        }
        // The /22 pool holds four /24 blocks.
        refused(
            &mut r,
            Command::AdmitNode {
                token_id: "multi1".into(),
                presented_hash: HASH_B.into(),
                node: new_node("n5"),
                now: T0,
            },
            |e| matches!(e, RegistryError::PodCidrExhausted { prefix: 24, .. }),
        );
    }

    #[test]
    fn t85_removing_a_node_removes_its_endpoints_and_their_references() {
        let mut r = bootstrapped();
        r.apply(Command::CreateToken {
            token: token("ghijkl", HASH_B, 1),
        });
        let n2 = match admit(&mut r, "ghijkl", HASH_B, "n2", T0 + 1) {
            Response::Node(n) => n,
            other => panic!("{other:?}"),
        };
        let (on1, _) = added(r.apply(new_endpoint(1, "c1", "eth0", "/run/netns/a", &["app=web"])));
        let (on2, _) = added(r.apply(new_endpoint(
            n2.id,
            "c2",
            "eth0",
            "/run/netns/b",
            &["app=web"],
        )));
        assert_eq!(
            on2.ipv4,
            "10.128.1.2".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(r.identity(on1.identity).unwrap().references, 2);
        r.apply(Command::RemoveNode { id: n2.id })
            .into_result()
            .unwrap();
        assert_eq!(r.endpoints().collect::<Vec<_>>(), vec![&on1]);
        assert_eq!(r.identity(on1.identity).unwrap().references, 1);
    }
}
