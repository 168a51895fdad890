//! The `Join` RPC: admits a node that proves a join token, and issues its certificate.
//!
//! Order matters for "a refused join changes nothing": everything that can be checked
//! without the registry (token shape, key sizes, the CSR's signature) is checked first; then
//! one `AdmitNode` command checks the token and records the node atomically; only then is
//! the certificate signed. The new node enters the Raft membership later, through the
//! leader's membership reconciler, once it runs its server with that certificate.

use std::sync::Arc;

use membrane_consensus::registry::{NewNode, X25519Public};
use membrane_consensus::{Command, Response as RegistryResponse};
use membrane_crypto::ca::ClusterCa;
use membrane_crypto::token::JoinToken;
use membrane_proto::v1::join_server::Join;
use membrane_proto::v1::{JoinRequest, JoinResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::registry::client::{ClientError, RegistryClient};

pub struct JoinService {
    pub client: Arc<RegistryClient>,
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let result = self.admit(req).await;
        match &result {
            Ok(r) => info!(?peer, node_id = r.get_ref().node_id, "node admitted"),
            Err(status) => warn!(?peer, reason = status.message(), "join refused"),
        }
        result
    }
}

impl JoinService {
    async fn admit(&self, req: JoinRequest) -> Result<Response<JoinResponse>, Status> {
        let token = JoinToken::parse(&req.token)
            .map_err(|e| Status::invalid_argument(format!("malformed join token: {e}")))?;
        let name = req.name.trim().to_string();
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Status::invalid_argument(format!(
                "node name {name:?} is invalid; use 1-63 letters, digits, '-' or '.'"
            )));
        }
        // The edge: what the record holds is typed from here on.
        let rpc_addr: std::net::SocketAddr = req.rpc_addr.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "rpc address {:?} is not ip:port; pass --advertise-addr",
                req.rpc_addr
            ))
        })?;
        let x25519 = X25519Public::try_from(req.x25519_public.as_slice())
            .map_err(|_| Status::invalid_argument("the X25519 public key must be 32 bytes"))?;
        let tls_key_sha256 = membrane_crypto::ca::csr_public_key_sha256(&req.csr_der)
            .map_err(|e| Status::invalid_argument(format!("bad certificate signing request: {e}")))?
            .parse()
            .map_err(|e| Status::internal(format!("digest of the CSR key: {e}")))?;
        let config = self.client.local(|r| r.cluster().cloned()).ok_or_else(|| {
            Status::unavailable("this node has not caught up with the cluster yet; try again")
        })?;
        let ca = ClusterCa::from_pem(&config.ca_cert_pem, &config.ca_key_pem)
            .map_err(|e| Status::internal(format!("cluster CA unusable: {e}")))?;

        let now = crate::clock::unix_now();
        let cmd = Command::AdmitNode {
            token_id: token.id().to_string(),
            presented_hash: token.secret_hash(),
            node: NewNode {
                name,
                rpc_addr,
                tls_key_sha256,
                x25519_public: x25519,
            },
            now,
        };
        let node = match self.client.write(cmd).await {
            Ok(RegistryResponse::Node(node)) => node,
            Ok(other) => {
                return Err(Status::internal(format!(
                    "unexpected registry response {other:?}"
                )))
            }
            Err(e @ ClientError::Refused(_)) => return Err(Status::from(e)),
            Err(e) => return Err(e.into()),
        };
        let cert_pem = ca
            .sign_node_csr(&req.csr_der, node.id)
            .map_err(|e| Status::internal(format!("signing the node certificate failed: {e}")))?;
        let members = self
            .client
            .local(|r| r.nodes().map(|n| (n.id, n.rpc_addr.to_string())).collect());
        Ok(Response::new(JoinResponse {
            node_id: node.id,
            cluster_id: u32::from(config.cluster_id),
            cluster_name: config.name,
            ca_cert_pem: config.ca_cert_pem,
            node_cert_pem: cert_pem,
            pod_cidr: node.pod_cidr.to_string(),
            members,
        }))
    }
}

/// How this node admits others.
#[derive(Clone, Copy, Debug, Default)]
pub struct JoinPolicy {
    /// Admit a node whose advertised IP is not the address its join came from (NAT).
    pub allow_any_addr: bool,
    /// Failed joins per source address.
    pub limits: crate::rpc::rate_limit::Limits,
}
