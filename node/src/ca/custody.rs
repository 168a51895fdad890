//! The CA key file of this node: read, stored after checking it, deleted.
//!
//! The key lives in `keys/ca.key` of the state directory, on voters only. Whatever writes it
//! (`membrane init`, the migration from the registry, a transfer from another voter) goes
//! through [`CaCustody::store`], which refuses a key that is not the private key of this
//! node's own `tls/ca.crt`.

use membrane_crypto::ca::ClusterCa;
use tracing::warn;

use crate::state::{StateDir, StateError};

/// Errors of the key file.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the CA key offered does not belong to this node's CA certificate ({reason}); it was not stored")]
    WrongCa { reason: String },
}

/// This node's custody of the cluster CA key.
#[derive(Clone, Debug)]
pub struct CaCustody {
    state: StateDir,
}

impl CaCustody {
    pub fn new(state: StateDir) -> Self {
        CaCustody { state }
    }

    /// The cluster CA, able to sign, if this node holds its key. A key file that cannot be
    /// used is logged and treated as absent (this node then forwards what needs signing).
    pub fn ca(&self) -> Option<ClusterCa> {
        match self.load() {
            Ok(ca) => ca,
            Err(e) => {
                warn!(error = %e, "the CA key file is unusable; this node will not sign");
                None
            }
        }
    }

    /// Like [`CaCustody::ca`], with the error.
    pub fn load(&self) -> Result<Option<ClusterCa>, CustodyError> {
        let Some(key) = self.state.ca_key()? else {
            return Ok(None);
        };
        let ca_pem = self.signing_ca_pem()?;
        ClusterCa::from_pem(&ca_pem, &key)
            .map(Some)
            .map_err(|e| CustodyError::WrongCa {
                reason: e.to_string(),
            })
    }

    /// Whether the key file exists (without checking it).
    pub fn has_key(&self) -> bool {
        self.state.ca_key_path().exists()
    }

    /// Stores `key_pem` after checking that it is the key of this node's `ca.crt`.
    pub fn store(&self, key_pem: &str) -> Result<(), CustodyError> {
        let ca_pem = self.signing_ca_pem()?;
        ClusterCa::from_pem(&ca_pem, key_pem).map_err(|e| CustodyError::WrongCa {
            reason: e.to_string(),
        })?;
        self.state.write_ca_key(key_pem)?;
        Ok(())
    }

    /// Deletes the key file; true if there was one.
    pub fn delete(&self) -> Result<bool, CustodyError> {
        Ok(self.state.remove_ca_key()?)
    }

    /// Whether `key_pem` is the key of this node's CA (for the legacy key in the registry).
    pub fn is_our_key(&self, key_pem: &str) -> bool {
        self.state
            .certificates()
            .ok()
            .and_then(|(ca_pem, _)| super::bundle::signing(&ca_pem))
            .is_some_and(|ca_pem| ClusterCa::from_pem(&ca_pem, key_pem).is_ok())
    }

    /// The CA a rotation moves to, able to sign, if this node holds its key for
    /// `new_ca_cert_pem` (the registry's).
    pub fn next_ca(&self, new_ca_cert_pem: &str) -> Option<ClusterCa> {
        let key = self.state.next_ca_key().ok()??;
        ClusterCa::from_pem(new_ca_cert_pem, &key).ok()
    }

    /// Stores the key of the CA a rotation moves to, after checking it is the key of
    /// `new_ca_cert_pem`.
    pub fn store_next(&self, new_ca_cert_pem: &str, key_pem: &str) -> Result<(), CustodyError> {
        ClusterCa::from_pem(new_ca_cert_pem, key_pem).map_err(|e| CustodyError::WrongCa {
            reason: e.to_string(),
        })?;
        self.state.write_next_ca_key(key_pem)?;
        Ok(())
    }

    /// Makes the next CA's key the signing key, once `tls/ca.crt` names the new CA first:
    /// the old key is overwritten and deleted. Safe to repeat after a crash: the next key
    /// file goes last.
    pub fn promote_next(&self) -> Result<(), CustodyError> {
        let Some(next) = self.state.next_ca_key()? else {
            return Ok(()); // promoted already
        };
        let ca_pem = self.signing_ca_pem()?;
        ClusterCa::from_pem(&ca_pem, &next).map_err(|e| CustodyError::WrongCa {
            reason: format!("the next CA key is not the key of the first CA in tls/ca.crt: {e}"),
        })?;
        self.state.remove_ca_key()?;
        self.state.write_ca_key(&next)?;
        self.state.remove_next_ca_key()?;
        Ok(())
    }

    /// Deletes the next CA's key; true if there was one.
    pub fn delete_next(&self) -> Result<bool, CustodyError> {
        Ok(self.state.remove_next_ca_key()?)
    }

    /// The CA this node signs with: the first certificate of `tls/ca.crt` (during a CA
    /// rotation the file holds two).
    fn signing_ca_pem(&self) -> Result<String, CustodyError> {
        let (ca_pem, _) = self.state.certificates()?;
        super::bundle::signing(&ca_pem).ok_or_else(|| CustodyError::WrongCa {
            reason: "tls/ca.crt holds no complete certificate".into(),
        })
    }
}

/// The join service signs with the key this node holds; without one (a learner, or a voter
/// that has not received it yet) it forwards the join to a voter.
impl crate::rpc::ca_source::CaSource for CaCustody {
    fn ca(&self) -> Result<Option<ClusterCa>, crate::rpc::ca_source::CaError> {
        self.load()
            .map_err(|e| crate::rpc::ca_source::CaError::Unusable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custody_with_ca(ca: &ClusterCa) -> (tempfile::TempDir, CaCustody) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        state
            .write_certificates(ca.cert_pem(), ca.cert_pem())
            .unwrap();
        (tmp, CaCustody::new(state))
    }

    #[test]
    fn t10_stores_only_the_key_of_its_own_ca() {
        let ca = ClusterCa::generate("c").unwrap();
        let other = ClusterCa::generate("c").unwrap();
        let (_tmp, custody) = custody_with_ca(&ca);
        assert!(custody.ca().is_none());
        let err = custody.store(other.key_pem()).unwrap_err();
        assert!(matches!(err, CustodyError::WrongCa { .. }), "{err}");
        assert!(!custody.has_key(), "a refused key is not written");
        assert!(!custody.is_our_key(other.key_pem()));
        assert!(custody.is_our_key(ca.key_pem()));

        custody.store(ca.key_pem()).unwrap();
        let loaded = custody.ca().expect("the stored key loads");
        assert_eq!(loaded.hash(), ca.hash());
        assert!(custody.delete().unwrap());
        assert!(custody.ca().is_none());
        assert!(!custody.delete().unwrap());
    }

    #[test]
    fn t12_a_rotation_key_is_stored_apart_then_promoted() {
        let old = ClusterCa::generate("c").unwrap();
        let new = ClusterCa::generate("c").unwrap();
        let (_tmp, custody) = custody_with_ca(&old);
        custody.store(old.key_pem()).unwrap();
        let bundle = super::super::bundle::join(&[old.cert_pem(), new.cert_pem()]);
        custody.state.write_ca_certs(&bundle).unwrap();
        assert_eq!(
            custody.ca().unwrap().hash(),
            old.hash(),
            "the first CA signs"
        );
        assert!(custody.store_next(new.cert_pem(), old.key_pem()).is_err());
        custody.store_next(new.cert_pem(), new.key_pem()).unwrap();
        assert_eq!(custody.next_ca(new.cert_pem()).unwrap().hash(), new.hash());
        // Not promoted while the old CA is still first.
        assert!(custody.promote_next().is_err());
        assert_eq!(custody.ca().unwrap().hash(), old.hash());
        let bundle = super::super::bundle::join(&[new.cert_pem(), old.cert_pem()]);
        custody.state.write_ca_certs(&bundle).unwrap();
        custody.promote_next().unwrap();
        assert_eq!(custody.ca().unwrap().hash(), new.hash());
        assert!(custody.next_ca(new.cert_pem()).is_none());
        custody.promote_next().unwrap();
        assert_eq!(custody.ca().unwrap().hash(), new.hash(), "repeatable");
    }

    #[test]
    fn t11_a_mismatched_key_file_is_not_used() {
        let ca = ClusterCa::generate("c").unwrap();
        let other = ClusterCa::generate("c").unwrap();
        let (_tmp, custody) = custody_with_ca(&ca);
        custody.state.write_ca_key(other.key_pem()).unwrap();
        assert!(custody.ca().is_none());
        assert!(matches!(custody.load(), Err(CustodyError::WrongCa { .. })));
    }
}
