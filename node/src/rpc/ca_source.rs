//! Where the join service finds the cluster CA that signs new nodes' certificates.
//!
//! Today the key is the registry's legacy copy (`ClusterConfig.legacy_ca_key_pem`); it is
//! moving to the voters' disks, and a node that holds no key (a learner) forwards joins to a
//! voter. The join service only asks "can this node sign, and with what", through this seam.

use std::sync::Arc;

use membrane_crypto::ca::ClusterCa;

use crate::registry::client::RegistryClient;

/// Why no CA could be had.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("this node has not caught up with the cluster yet; try again")]
    NotCaughtUp,
    #[error("the cluster CA is unusable: {0}")]
    Unusable(String),
}

/// The CA this node signs with, if it holds one.
pub trait CaSource: Send + Sync {
    /// `Ok(None)`: this node holds no CA key; the join goes to a voter that does.
    fn ca(&self) -> Result<Option<ClusterCa>, CaError>;
}

/// The key kept in the replicated registry by clusters created before issue 11.
pub struct LegacyRegistryCa {
    pub client: Arc<RegistryClient>,
}

impl CaSource for LegacyRegistryCa {
    fn ca(&self) -> Result<Option<ClusterCa>, CaError> {
        let config = self
            .client
            .local(|r| r.cluster().cloned())
            .ok_or(CaError::NotCaughtUp)?;
        if config.legacy_ca_key_pem.trim().is_empty() {
            return Ok(None);
        }
        ClusterCa::from_pem(&config.ca_cert_pem, &config.legacy_ca_key_pem)
            .map(Some)
            .map_err(|e| CaError::Unusable(e.to_string()))
    }
}
