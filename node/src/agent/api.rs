//! The local agent API (Unix socket) that the CLI talks to: each call goes to the slice of
//! its capability (cluster, endpoints, ipcache, observe, policy).

use membrane_proto::v1 as pb;
use membrane_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::cluster::api::{ClusterApi, MemberStream};
use crate::endpoints::api::EndpointsApi;
use crate::ipcache::api::IpcacheApi;
use crate::observe::api::{FlowStream, ObserveApi};
use crate::policy::api::{self as policy_api, PolicyApi};

pub use crate::cluster::api::{join_command, DEFAULT_TOKEN_TTL_SECS, DEFAULT_TOKEN_USES};

pub struct AgentApi {
    /// Status, nodes, member events, tokens, the gossip keyring, identities.
    pub cluster: ClusterApi,
    /// Endpoint list and get, the BPF endpoints map.
    pub endpoints: EndpointsApi,
    /// The BPF ipcache map.
    pub ipcache: IpcacheApi,
    /// Flow events of this node's datapath.
    pub observe: ObserveApi,
    /// Import, get, delete, wait, explain.
    pub policy: PolicyApi,
    /// Node certificates: list, renew.
    pub ca: crate::ca::api::CaApi,
    /// Encryption: enable, disable, rotate, status.
    pub encryption: crate::tunnel::api::EncryptionApi,
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn status(&self, _: Request<pb::Empty>) -> Result<Response<pb::StatusResponse>, Status> {
        self.cluster.status().await.map(Response::new)
    }

    async fn node_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::NodeListResponse>, Status> {
        self.cluster.node_list().await.map(Response::new)
    }

    async fn node_certs(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::NodeCertsResponse>, Status> {
        Ok(Response::new(self.ca.node_certs()))
    }

    async fn renew_certificate(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::NodeCert>, Status> {
        self.ca.renew().await.map(Response::new)
    }

    async fn ca_rotate(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::CaStatusResponse>, Status> {
        self.ca.ca_rotate().await.map(Response::new)
    }

    async fn encryption_set(
        &self,
        req: Request<pb::EncryptionSetRequest>,
    ) -> Result<Response<pb::EncryptionStatusResponse>, Status> {
        self.encryption
            .set(req.into_inner().enabled)
            .await
            .map(Response::new)
    }

    async fn encryption_rotate(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::EncryptionStatusResponse>, Status> {
        self.encryption.rotate().await.map(Response::new)
    }

    async fn encryption_status(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::EncryptionStatusResponse>, Status> {
        Ok(Response::new(self.encryption.status()))
    }

    async fn ca_status(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::CaStatusResponse>, Status> {
        Ok(Response::new(self.ca.ca_status()))
    }

    async fn node_remove(
        &self,
        req: Request<pb::NodeRemoveRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.cluster
            .node_remove(req.into_inner())
            .await
            .map(Response::new)
    }

    type WatchMembersStream = MemberStream;

    async fn watch_members(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::WatchMembersStream>, Status> {
        self.cluster.watch_members().map(Response::new)
    }

    type MonitorStream = FlowStream;

    async fn monitor(
        &self,
        req: Request<pb::MonitorRequest>,
    ) -> Result<Response<Self::MonitorStream>, Status> {
        self.observe.monitor(req.into_inner()).map(Response::new)
    }

    async fn gossip_keyring(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::GossipKeyringResponse>, Status> {
        self.cluster.gossip_keyring().map(Response::new)
    }

    async fn gossip_rotate_key(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::GossipKeyringResponse>, Status> {
        self.cluster.gossip_rotate_key().await.map(Response::new)
    }

    async fn token_create(
        &self,
        req: Request<pb::TokenCreateRequest>,
    ) -> Result<Response<pb::TokenCreateResponse>, Status> {
        self.cluster
            .token_create(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn token_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::TokenListResponse>, Status> {
        self.cluster.token_list().await.map(Response::new)
    }

    async fn token_revoke(
        &self,
        req: Request<pb::TokenRevokeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.cluster
            .token_revoke(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn identity_allocate(
        &self,
        req: Request<pb::IdentityRequest>,
    ) -> Result<Response<pb::IdentityResponse>, Status> {
        self.cluster
            .identity_allocate(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn identity_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::IdentityListResponse>, Status> {
        self.cluster.identity_list().await.map(Response::new)
    }

    async fn identity_release(
        &self,
        req: Request<pb::IdentityRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.cluster
            .identity_release(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn endpoint_list(
        &self,
        req: Request<pb::EndpointListRequest>,
    ) -> Result<Response<pb::EndpointListResponse>, Status> {
        Ok(Response::new(self.endpoints.list(req.into_inner())))
    }

    async fn endpoint_get(
        &self,
        req: Request<pb::EndpointGetRequest>,
    ) -> Result<Response<pb::EndpointDetail>, Status> {
        self.endpoints.get(req.into_inner()).map(Response::new)
    }

    async fn bpf_ipcache_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::BpfIpcacheResponse>, Status> {
        self.ipcache.bpf_list().map(Response::new)
    }

    async fn policy_import(
        &self,
        req: Request<pb::PolicyImportRequest>,
    ) -> Result<Response<pb::PolicyImportResponse>, Status> {
        policy_api::import(&self.policy, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_get(
        &self,
        req: Request<pb::PolicyGetRequest>,
    ) -> Result<Response<pb::PolicyGetResponse>, Status> {
        policy_api::get(&self.policy, req.into_inner()).map(Response::new)
    }

    async fn policy_delete(
        &self,
        req: Request<pb::PolicyDeleteRequest>,
    ) -> Result<Response<pb::PolicyRevisionResponse>, Status> {
        policy_api::delete(&self.policy, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_wait(
        &self,
        req: Request<pb::PolicyWaitRequest>,
    ) -> Result<Response<pb::PolicyWaitResponse>, Status> {
        policy_api::wait(&self.policy, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_explain(
        &self,
        req: Request<pb::PolicyExplainRequest>,
    ) -> Result<Response<pb::PolicyExplainResponse>, Status> {
        policy_api::explain(&self.policy, req.into_inner()).map(Response::new)
    }

    async fn bpf_endpoint_list(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::BpfEndpointResponse>, Status> {
        self.endpoints.bpf_list().map(Response::new)
    }
}
