//! The `Cluster` RPC: registry writes and reads forwarded to this node as leader, each
//! allowed by the caller's role ([`crate::authz::rules`]) before anything is proposed.

use std::sync::Arc;

use membrane_consensus::Command;
use membrane_proto::v1::cluster_server::Cluster;
use membrane_proto::v1::{ForwardRequest, ForwardResponse};
use tonic::{Request, Response, Status};

use crate::authz::{caller_of, rules};
use crate::registry::client::{decode, encode, ClientError, RegistryClient};
use crate::registry::query::Query;

pub struct ClusterService {
    pub client: Arc<RegistryClient>,
}

fn not_leader(e: ClientError) -> Status {
    match e {
        // The caller retries on this exact wording.
        ClientError::NotLeader => Status::unavailable("not the leader"),
        other => other.into(),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn write(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let caller = caller_of(req.extensions())?;
        let cmd: Command =
            decode(&req.into_inner().data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        rules::write(&cmd, &caller).map_err(|denial| {
            tracing::warn!(node_id = caller.node_id, role = %caller.role, reason = %denial, "forwarded write refused");
            Status::from(denial)
        })?;
        // A refusal travels inside the response (Response::Err), not as a Status.
        let resp = self.client.write_as_leader(cmd).await.map_err(not_leader)?;
        Ok(Response::new(ForwardResponse {
            data: encode(&resp),
        }))
    }

    async fn read(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let caller = caller_of(req.extensions())?;
        let query: Query =
            decode(&req.into_inner().data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        rules::read(&query, &caller)?;
        let result = self
            .client
            .query_as_leader(&query)
            .await
            .map_err(not_leader)?;
        Ok(Response::new(ForwardResponse {
            data: encode(&rules::redact(result)),
        }))
    }
}
