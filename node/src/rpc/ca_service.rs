//! The `CertAuthority` RPC: the CA key for voters, key status for the leader, and node
//! certificate renewal.
//!
//! Every call is identified by the caller's node certificate: the node id it names and the
//! hash of its key must be a current registry node's (so a removed node, or a copy of its
//! certificate, is refused). `FetchKey` is served only to voters of the current Raft
//! membership; `Renew` signs a certificate for the caller's current key and no other.

use std::sync::Arc;

use membrane_consensus::registry::{CertRecord, Sha256};
use membrane_consensus::{Command, Response as RegistryResponse};
use membrane_crypto::ca::{ca_hash_of_cert_der, csr_public_key_sha256};
use membrane_proto::v1::cert_authority_server::CertAuthority;
use membrane_proto::v1::{
    CaKeyRequest, CaKeyResponse, CaKeyStatusRequest, CaKeyStatusResponse, RenewRequest,
    RenewResponse,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::authz::{caller_of, Caller, Role};
use crate::ca::custody::CaCustody;
use crate::registry::client::RegistryClient;

pub struct CaService {
    pub client: Arc<RegistryClient>,
    pub custody: CaCustody,
}

/// The node calling, as the authenticator proved it from its certificate (a current node
/// with the key it presented): only nodes of this node's registry, not join-time trust.
#[allow(clippy::result_large_err)]
pub fn authorized_caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    let caller = caller_of(req.extensions())?;
    match caller.role {
        Role::Voter | Role::Learner | Role::Member => Ok(caller),
        Role::JoinTrusted | Role::AdmittedSinceOurCopy => Err(Status::permission_denied(format!(
            "node {} is not in this node's registry copy yet; try another voter",
            caller.node_id
        ))),
    }
}

#[allow(clippy::result_large_err)]
fn peer_key_sha256(der: &[u8]) -> Result<Sha256, Status> {
    let hash = ca_hash_of_cert_der(der)
        .map_err(|e| Status::permission_denied(format!("unreadable client certificate: {e}")))?;
    hash.trim_start_matches(membrane_crypto::ca::CA_HASH_PREFIX)
        .parse()
        .map_err(|_| Status::internal("key digest of the client certificate"))
}

#[tonic::async_trait]
impl CertAuthority for CaService {
    async fn fetch_key(
        &self,
        req: Request<CaKeyRequest>,
    ) -> Result<Response<CaKeyResponse>, Status> {
        let caller = authorized_caller(&req)?;
        if caller.role != Role::Voter {
            let caller = caller.node_id;
            warn!(caller, "CA key refused: the caller is not a voter");
            return Err(Status::permission_denied(format!(
                "node {caller} is not a voter of the current membership; only voters hold the CA key"
            )));
        }
        let ca = if req.get_ref().next {
            let new_pem = self
                .client
                .local(|r| r.ca_rotation().map(|r| r.new_ca_cert_pem.clone()))
                .ok_or_else(|| Status::failed_precondition("no CA rotation is under way"))?;
            // After the new CA began signing here, its key is this node's signing key.
            let promoted = || {
                self.custody
                    .ca()
                    .filter(|ca| crate::ca::bundle::same(ca.cert_pem(), &[new_pem.as_str()]))
            };
            self.custody
                .next_ca(&new_pem)
                .or_else(promoted)
                .ok_or_else(|| {
                    Status::failed_precondition(
                        "this node does not hold the new CA's key (yet); ask another voter",
                    )
                })?
        } else {
            self.signing_ca()?
        };
        info!(
            caller = caller.node_id,
            next = req.get_ref().next,
            "CA key handed to a voter"
        );
        Ok(Response::new(CaKeyResponse {
            ca_cert_pem: ca.cert_pem().to_string(),
            ca_key_pem: ca.key_pem().to_string(),
        }))
    }

    async fn key_status(
        &self,
        req: Request<CaKeyStatusRequest>,
    ) -> Result<Response<CaKeyStatusResponse>, Status> {
        authorized_caller(&req)?;
        let ca = self.custody.ca();
        Ok(Response::new(CaKeyStatusResponse {
            has_key: ca.is_some(),
            ca_hash: ca.map(|c| c.hash()).unwrap_or_default(),
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let caller = authorized_caller(&req)?.node_id;
        let peer_key = req
            .peer_certs()
            .and_then(|c| c.first().map(|d| peer_key_sha256(d.as_ref())))
            .ok_or_else(|| Status::unauthenticated("no client certificate"))??;
        let csr = req.into_inner().csr_der;
        let csr_key: Sha256 = csr_public_key_sha256(&csr)
            .map_err(|e| Status::invalid_argument(format!("bad certificate signing request: {e}")))?
            .parse()
            .map_err(|_| Status::internal("key digest of the CSR"))?;
        if csr_key != peer_key {
            return Err(Status::permission_denied(
                "the CSR is for another key than the certificate presented; renewal keeps the node's key (re-join the node to change it)",
            ));
        }
        let ca = self.signing_ca()?;
        let pem = ca
            .sign_node_csr(&csr, caller)
            .map_err(|e| Status::internal(format!("signing the node certificate failed: {e}")))?;
        let info = membrane_crypto::cert_info::cert_info_from_pem(&pem)
            .map_err(|e| Status::internal(format!("reading the new certificate: {e}")))?;
        let cert = CertRecord {
            serial: info.serial_hex,
            not_before: info.not_before,
            not_after: info.not_after,
            tls_key_sha256: csr_key,
        };
        let serial = cert.serial.clone();
        match self
            .client
            .write(Command::RecordCertificate {
                node_id: caller,
                cert,
            })
            .await
        {
            Ok(RegistryResponse::Ok) => {}
            Ok(other) => {
                return Err(Status::internal(format!(
                    "unexpected registry response {other:?}"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        info!(node_id = caller, %serial, "node certificate renewed");
        Ok(Response::new(RenewResponse {
            node_cert_pem: pem,
            ca_cert_pem: ca.cert_pem().to_string(),
        }))
    }
}

impl CaService {
    #[allow(clippy::result_large_err)]
    fn signing_ca(&self) -> Result<membrane_crypto::ca::ClusterCa, Status> {
        self.custody.ca().ok_or_else(|| {
            Status::failed_precondition(
                "this node does not hold the CA key (it is not a voter, or has not received the key yet); ask a voter",
            )
        })
    }
}
