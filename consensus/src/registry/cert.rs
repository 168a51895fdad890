//! Node certificates and revocation: which TLS key speaks for which node.
//!
//! The registry records each current node's certificate (serial, validity, key hash) and,
//! once a node is removed, its id and key hash in `revoked`, for good. The transport asks
//! [`Registry::authorize_peer`] whether a peer's certificate is a current node's; because the
//! answer comes from the replicated registry, a removed node is refused everywhere as soon as
//! its removal is applied, and still after a restart.

use serde::{Deserialize, Serialize};

use super::{NodeRecord, Registry, RegistryError, Response, Sha256};

/// A node certificate as the registry records it (the certificate itself stays on the node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// The certificate's serial number, lower-case hex.
    pub serial: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the certificate's public key (SubjectPublicKeyInfo).
    pub tls_key_sha256: Sha256,
}

/// Longest serial accepted: X.509 serials are at most 20 bytes.
const MAX_SERIAL_HEX: usize = 40;

impl CertRecord {
    /// Checks the record's own fields (not whose key it is).
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.serial.is_empty()
            || self.serial.len() > MAX_SERIAL_HEX
            || !self
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(RegistryError::InvalidCertificate(format!(
                "serial {:?} is not 1-{MAX_SERIAL_HEX} lower-case hex digits",
                self.serial
            )));
        }
        if self.not_after <= self.not_before {
            return Err(RegistryError::InvalidCertificate(format!(
                "it expires ({}) before it is valid ({})",
                self.not_after, self.not_before
            )));
        }
        Ok(())
    }
}

/// Constant-time equality of two key hashes, so timing tells nothing about a guess.
pub(super) fn keys_equal(a: &Sha256, b: &Sha256) -> bool {
    membrane_crypto::token::hashes_equal(&a.to_string(), &b.to_string())
}

impl Registry {
    /// The current certificate record of node `id`.
    pub fn certificate(&self, id: u64) -> Option<&CertRecord> {
        self.certificates.get(&id)
    }

    /// Every current certificate record, by node id.
    pub fn certificates(&self) -> impl Iterator<Item = (u64, &CertRecord)> {
        self.certificates.iter().map(|(id, c)| (*id, c))
    }

    /// Removed nodes and the TLS key hash each had: refused for good.
    pub fn revoked(&self) -> &std::collections::BTreeMap<u64, Sha256> {
        &self.revoked
    }

    /// Whether a peer that presented a certificate naming `node_id` with a key hashing to
    /// `tls_key_sha256` is that current node. Ok only then; a removed node, an unknown id
    /// and a key other than the recorded one are each refused with their own error.
    pub fn authorize_peer(
        &self,
        node_id: u64,
        tls_key_sha256: &Sha256,
    ) -> Result<&NodeRecord, RegistryError> {
        if self.revoked.contains_key(&node_id) {
            return Err(RegistryError::NodeRevoked { id: node_id });
        }
        let node = self
            .nodes
            .get(&node_id)
            .ok_or(RegistryError::NodeNotFound { id: node_id })?;
        if !keys_equal(&node.tls_key_sha256, tls_key_sha256) {
            return Err(RegistryError::NodeKeyMismatch { id: node_id });
        }
        Ok(node)
    }

    /// Replaces a current node's certificate record with a renewed one for the same key.
    pub(super) fn record_certificate(
        &mut self,
        node_id: u64,
        cert: CertRecord,
    ) -> Result<Response, RegistryError> {
        self.config()?;
        cert.validate()?;
        self.authorize_peer(node_id, &cert.tls_key_sha256)?;
        self.certificates.insert(node_id, cert);
        Ok(Response::Ok)
    }

    /// Revokes a node being removed: its key is remembered, its certificate record dropped.
    pub(super) fn revoke_node(&mut self, node: &NodeRecord) {
        self.revoked.insert(node.id, node.tls_key_sha256);
        self.certificates.remove(&node.id);
    }
}

#[cfg(test)]
mod tests {
    use super::CertRecord;
    use crate::registry::test_support::*;
    use crate::registry::{Command, RegistryError, Response, Sha256};

    #[test]
    fn t70_authorize_peer_accepts_only_a_current_node_with_its_key() {
        let mut r = bootstrapped();
        let key = r.node(1).unwrap().tls_key_sha256;
        assert_eq!(r.authorize_peer(1, &key).unwrap().id, 1);
        assert!(matches!(
            r.authorize_peer(1, &Sha256([0x55; 32])),
            Err(RegistryError::NodeKeyMismatch { id: 1 })
        ));
        assert!(matches!(
            r.authorize_peer(9, &key),
            Err(RegistryError::NodeNotFound { id: 9 })
        ));
        let n2 = signed_node(&mut r, "n2");
        assert!(r.authorize_peer(n2.id, &n2.tls_key_sha256).is_ok());
        assert!(r.certificate(n2.id).is_some());
        r.apply(Command::RemoveNode { id: n2.id })
            .into_result()
            .unwrap();
        assert!(matches!(
            r.authorize_peer(n2.id, &n2.tls_key_sha256),
            Err(RegistryError::NodeRevoked { id }) if id == n2.id
        ));
        assert_eq!(r.revoked().get(&n2.id), Some(&n2.tls_key_sha256));
        assert!(r.certificate(n2.id).is_none(), "its record is dropped");
        let msg = RegistryError::NodeRevoked { id: 2 }.to_string();
        assert!(msg.contains("join it again with a new token"), "{msg}");
    }

    #[test]
    fn t71_record_certificate_renews_only_for_the_same_key() {
        let mut r = bootstrapped();
        let n2 = signed_node(&mut r, "n2");
        let renewed = CertRecord {
            serial: "beef".into(),
            not_before: T0 + 100,
            not_after: T0 + 100 + 30 * 86400,
            tls_key_sha256: n2.tls_key_sha256,
        };
        assert_eq!(
            r.apply(Command::RecordCertificate {
                node_id: n2.id,
                cert: renewed.clone(),
            }),
            Response::Ok
        );
        assert_eq!(r.certificate(n2.id), Some(&renewed));
        let other_key = CertRecord {
            tls_key_sha256: Sha256([0x77; 32]),
            ..renewed.clone()
        };
        refused(
            &mut r,
            Command::RecordCertificate {
                node_id: n2.id,
                cert: other_key,
            },
            |e| matches!(e, RegistryError::NodeKeyMismatch { .. }),
        );
        let backwards = CertRecord {
            not_after: renewed.not_before,
            ..renewed.clone()
        };
        refused(
            &mut r,
            Command::RecordCertificate {
                node_id: n2.id,
                cert: backwards,
            },
            |e| matches!(e, RegistryError::InvalidCertificate(_)),
        );
        let bad_serial = CertRecord {
            serial: "XYZ".into(),
            ..renewed.clone()
        };
        refused(
            &mut r,
            Command::RecordCertificate {
                node_id: n2.id,
                cert: bad_serial,
            },
            |e| matches!(e, RegistryError::InvalidCertificate(_)),
        );
        r.apply(Command::RemoveNode { id: n2.id })
            .into_result()
            .unwrap();
        refused(
            &mut r,
            Command::RecordCertificate {
                node_id: n2.id,
                cert: renewed,
            },
            |e| matches!(e, RegistryError::NodeRevoked { .. }),
        );
    }
}
