//! openraft's network over tonic: the client side ([`Network`], one [`PeerClient`] per
//! target) and the server side ([`RaftService`]).
//!
//! The wire is `membrane.v1.Raft` (proto/proto/membrane/v1/raft.proto): three unary RPCs
//! whose `RaftPayload.data` holds an openraft request or `Result<response, RaftError>`
//! encoded with bincode. openraft owns those types; mirroring them field by field in protobuf
//! would only add a translation layer to keep in step.
//!
//! Error mapping, which decides how openraft retries:
//! - the peer cannot be reached (connect failure, `Unavailable`, deadline exceeded, broken
//!   connection) -> [`RPCError::Unreachable`], so replication backs off instead of spinning;
//! - the peer answered with a Raft error -> [`RPCError::RemoteError`], carried as is;
//! - anything else (bad payload, unexpected status) -> [`RPCError::Network`].
//!
//! TLS: the caller builds the [`ClientTlsConfig`] (mutual TLS with the cluster CA and this
//! node's certificate) and the server's TLS; this module only uses them, and makes each
//! target's channel verify that target's own name, `node-<id>.membrane`
//! ([`membrane_crypto::ca::node_server_name`]), so a certificate of another node is refused.
//!
//! Authorization: [`RaftService`] asks a [`RaftAuthorizer`] about every decoded request
//! before openraft sees it, passing the node the request claims to come from (the leader of
//! its vote, or the candidate); a refused request never reaches openraft, so it changes no
//! vote and no log. The authorizer is the caller's (the agent's), so this crate stays free of
//! registry lookups on the request path.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use membrane_proto::v1::raft_client::RaftClient;
use membrane_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use membrane_proto::v1::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::{NodeId, TypeConfig};

/// How long to wait for a TCP (and TLS) connection to a peer. Short: a peer that does not
/// answer in a second is treated as unreachable and retried after openraft's backoff.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Upper bound for any single RPC. Each call also carries openraft's own deadline
/// ([`RPCOption::hard_ttl`]), which is shorter for heartbeats and longer for snapshot chunks;
/// this bound only stops a call that nothing else would.
pub const MAX_RPC_TIME: Duration = Duration::from_secs(120);

/// The largest Raft message (defined beside the other decoding limits).
pub use crate::codec::MAX_MESSAGE_BYTES;

/// Shorthand for the error types openraft's network trait uses.
type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// Creates connections to peers for openraft, one cached channel per target node.
#[derive(Clone)]
pub struct Network {
    /// `None` only for [`Network::plaintext`] (tests).
    tls: Option<ClientTlsConfig>,
    /// Channels by target, with the address they were made for: a node that moved gets a
    /// fresh channel. A tonic `Channel` multiplexes calls and reconnects by itself.
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A network whose connections use `tls` (mutual TLS with the cluster CA). Peers are
    /// reached at `https://{node.addr}`.
    pub fn new(tls: ClientTlsConfig) -> Self {
        Self {
            tls: Some(tls),
            channels: Arc::default(),
        }
    }

    /// A network without TLS, reaching peers at `http://{node.addr}`. For tests on loopback
    /// only: Raft traffic carries the registry, including the cluster CA key.
    pub fn plaintext() -> Self {
        Self {
            tls: None,
            channels: Arc::default(),
        }
    }

    /// The cached channel to `target` at `addr`, or a new lazy one. Lazy: openraft creates
    /// clients for peers that may be down, and the first call is where failure belongs.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached_addr, channel)) = channels.get(&target) {
            if cached_addr == addr {
                return Ok(channel.clone());
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(MAX_RPC_TIME)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            // Verify the node we mean to reach, not merely some node of the cluster.
            let name = membrane_crypto::ca::node_server_name(target);
            endpoint = endpoint.tls_config(tls.clone().domain_name(name))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(target, (addr.to_string(), channel.clone()));
        tracing::debug!(
            target_node = target,
            addr,
            tls = self.tls.is_some(),
            "new Raft channel"
        );
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self
            .channel(target, &node.addr)
            .map(|ch| {
                RaftClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })
            .map_err(|e| {
                tracing::warn!(target_node = target, addr = %node.addr, error = %e, "invalid peer address");
                Arc::new(e)
            });
        PeerClient {
            target,
            node: node.clone(),
            client,
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: NodeId,
    node: BasicNode,
    /// An address that does not make an endpoint is kept as the error, reported (as
    /// unreachable) on every call, since `new_client` cannot fail.
    client: Result<RaftClient<Channel>, Arc<tonic::transport::Error>>,
}

/// Which Raft RPC: for logs, and for [`RaftAuthorizer`] decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    /// Sends `req` with `rpc` and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e.as_ref()))),
        };
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let payload = match result {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                let unreachable = is_unreachable(&status);
                tracing::debug!(
                    target_node = self.target, addr = %self.node.addr, ?rpc,
                    code = ?status.code(), unreachable, error = %status, "Raft RPC failed"
                );
                return Err(if unreachable {
                    RPCError::Unreachable(Unreachable::new(&status))
                } else {
                    RPCError::Network(NetworkError::new(&status))
                });
            }
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = crate::codec::decode(&payload.data, crate::codec::MAX_RPC_PAYLOAD_BYTES).map_err(|e| {
            tracing::warn!(target_node = self.target, ?rpc, error = %e, "undecodable Raft response");
            RPCError::Network(NetworkError::new(&e))
        })?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// Whether a failed call means "the peer cannot be reached now" (back off) rather than "the
/// peer answered something wrong".
fn is_unreachable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        // tonic reports some connection failures (TLS handshake, reset) as Unknown with the
        // transport or IO error as the source.
        Code::Unknown => {
            let mut source = status.source();
            while let Some(e) = source {
                if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
                    return true;
                }
                source = e.source();
            }
            false
        }
        _ => false,
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// Decides whether a decoded Raft request may reach openraft.
///
/// `claimed` is the node the request speaks for: the leader id of the vote carried by an
/// AppendEntries or InstallSnapshot, the candidate of a Vote. `extensions` are the gRPC
/// request's, where the server's authentication layer left the caller's identity. Return a
/// `Status` (normally PermissionDenied, saying why) to refuse.
pub trait RaftAuthorizer: Send + Sync + 'static {
    /// Accepts or refuses one request.
    #[allow(clippy::result_large_err)]
    fn authorize(
        &self,
        rpc: Rpc,
        claimed: NodeId,
        extensions: &tonic::Extensions,
    ) -> Result<(), Status>;
}

/// Accepts every request. Only for tests on loopback, where nothing else can connect; the
/// name says so at every use.
#[derive(Clone, Copy, Debug)]
pub struct AllowAllForTests;

impl RaftAuthorizer for AllowAllForTests {
    fn authorize(&self, _: Rpc, _: NodeId, _: &tonic::Extensions) -> Result<(), Status> {
        Ok(())
    }
}

/// Receives Raft RPCs from peers, has each one authorized, and hands it to the local Raft node.
#[derive(Clone)]
pub struct RaftService {
    raft: crate::Raft,
    authorizer: Arc<dyn RaftAuthorizer>,
}

impl RaftService {
    /// A service for `raft` that lets through only what `authorizer` accepts.
    pub fn new(raft: crate::Raft, authorizer: Arc<dyn RaftAuthorizer>) -> Self {
        Self { raft, authorizer }
    }

    #[allow(clippy::result_large_err)]
    fn authorize(
        &self,
        rpc: Rpc,
        claimed: NodeId,
        extensions: &tonic::Extensions,
    ) -> Result<(), Status> {
        self.authorizer
            .authorize(rpc, claimed, extensions)
            .inspect_err(|status| {
                tracing::warn!(
                    ?rpc,
                    claimed,
                    reason = status.message(),
                    "Raft request refused"
                );
            })
    }

    /// The tonic server for this service, with message limits that fit Raft batches and
    /// snapshot chunks. Add it to a `tonic::transport::Server` configured with the node's TLS.
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn decode_request<T: DeserializeOwned>(
    rpc: Rpc,
    request: Request<RaftPayload>,
) -> Result<T, Status> {
    let remote = request.remote_addr();
    crate::codec::decode(&request.into_inner().data, crate::codec::MAX_RPC_PAYLOAD_BYTES).map_err(|e| {
        tracing::warn!(?rpc, ?remote, error = %e, "undecodable Raft request");
        Status::invalid_argument(format!(
            "{rpc:?} payload is not a bincode-encoded openraft request ({e}); is the peer running a compatible membrane version?"
        ))
    })
}

fn encode_response<T: Serialize>(
    rpc: Rpc,
    value: &T,
) -> Result<tonic::Response<RaftPayload>, Status> {
    bincode::serialize(value)
        .map(|data| tonic::Response::new(RaftPayload { data }))
        .map_err(|e| {
            tracing::error!(?rpc, error = %e, "cannot encode Raft response");
            Status::internal(format!("cannot encode {rpc:?} response: {e}"))
        })
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let extensions = request.extensions().clone();
        let req: AppendEntriesRequest<TypeConfig> = decode_request(Rpc::AppendEntries, request)?;
        self.authorize(
            Rpc::AppendEntries,
            req.vote.leader_id().node_id,
            &extensions,
        )?;
        let result = self.raft.append_entries(req).await;
        encode_response(Rpc::AppendEntries, &result)
    }

    async fn vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let extensions = request.extensions().clone();
        let req: VoteRequest<NodeId> = decode_request(Rpc::Vote, request)?;
        self.authorize(Rpc::Vote, req.vote.leader_id().node_id, &extensions)?;
        let result = self.raft.vote(req).await;
        encode_response(Rpc::Vote, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let extensions = request.extensions().clone();
        let req: InstallSnapshotRequest<TypeConfig> =
            decode_request(Rpc::InstallSnapshot, request)?;
        self.authorize(
            Rpc::InstallSnapshot,
            req.vote.leader_id().node_id,
            &extensions,
        )?;
        let result = self.raft.install_snapshot(req).await;
        encode_response(Rpc::InstallSnapshot, &result)
    }
}
