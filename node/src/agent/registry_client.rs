//! Reading and writing the registry from any node.
//!
//! Writes go to the Raft leader: proposed locally when this node leads, otherwise forwarded
//! over the `Cluster` RPC (mutual TLS). A write is retried only when it certainly was not
//! proposed (no leader known yet, or the peer we asked is no longer the leader), so a
//! command is never applied twice by a retry of ours. Fresh reads are answered by the
//! leader after `ensure_linearizable`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use membrane_consensus::registry::Registry;
use membrane_consensus::store::RegistryHandle;
use membrane_consensus::{Command, Raft, RegistryError, Response};
use membrane_proto::v1::cluster_client::ClusterClient;
use membrane_proto::v1::ForwardRequest;
use openraft::error::{ClientWriteError, RaftError};
use tonic::transport::Channel;

use super::query::{answer, Query, QueryResult};
use crate::transport::NodeTls;

/// How long a write or read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Refused(#[from] RegistryError),
    #[error("no Raft leader is reachable after {0:?}; check that a majority of voters is up (`membrane status`)")]
    NoLeader(Duration),
    #[error("this node is not the leader")]
    NotLeader,
    #[error("the leader could not be reached: {0}")]
    Forward(String),
    #[error("raft error: {0}")]
    Raft(String),
    #[error("bad message from a peer: {0}")]
    Decode(String),
}

impl From<ClientError> for tonic::Status {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Refused(RegistryError::NotBootstrapped) => tonic::Status::unavailable(e.to_string()),
            ClientError::Refused(
                RegistryError::TokenNotFound { .. }
                | RegistryError::TokenExpired { .. }
                | RegistryError::TokenRevoked { .. }
                | RegistryError::TokenUsedUp { .. }
                | RegistryError::TokenSecretMismatch { .. },
            ) => tonic::Status::permission_denied(e.to_string()),
            ClientError::Refused(
                RegistryError::InvalidLabels(_) | RegistryError::InvalidToken(_) | RegistryError::InvalidClusterConfig(_),
            ) => tonic::Status::invalid_argument(e.to_string()),
            ClientError::Refused(RegistryError::IdentityNotFound { .. } | RegistryError::NodeNotFound { .. }) => {
                tonic::Status::not_found(e.to_string())
            }
            ClientError::Refused(_) => tonic::Status::failed_precondition(e.to_string()),
            ClientError::NotLeader | ClientError::NoLeader(_) | ClientError::Forward(_) => {
                tonic::Status::unavailable(e.to_string())
            }
            ClientError::Raft(_) | ClientError::Decode(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Encodes a value for a `Forward*` message.
pub fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("registry values always serialise")
}

/// Decodes a `Forward*` message.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ClientError> {
    bincode::deserialize(b).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Registry access for the agent's services.
pub struct RegistryClient {
    raft: Raft,
    registry: RegistryHandle,
    tls: NodeTls,
    channels: Mutex<HashMap<String, Channel>>,
}

impl RegistryClient {
    pub fn new(raft: Raft, registry: RegistryHandle, tls: NodeTls) -> Self {
        RegistryClient { raft, registry, tls, channels: Mutex::new(HashMap::new()) }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Reads this node's copy of the registry, which may lag the leader by a few entries.
    pub fn local<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        self.registry.read(f)
    }

    /// Proposes a command, wherever the leader is. A refusal by the registry is `Refused`.
    pub async fn write(&self, cmd: Command) -> Result<Response, ClientError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let attempt = match self.leader().await {
                Some((id, _)) if id == self.own_id() => self.write_as_leader(cmd.clone()).await,
                Some((_, addr)) => self.forward_write(&addr, &cmd).await,
                None => Err(ClientError::NotLeader),
            };
            match attempt {
                Err(ClientError::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ClientError::NotLeader) => return Err(ClientError::NoLeader(LEADER_WAIT)),
                Ok(Response::Err(e)) => return Err(ClientError::Refused(e)),
                other => return other,
            }
        }
    }

    /// Answers a query with linearizable freshness, wherever the leader is.
    pub async fn query(&self, query: Query) -> Result<QueryResult, ClientError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let attempt = match self.leader().await {
                Some((id, _)) if id == self.own_id() => self.query_as_leader(&query).await,
                Some((_, addr)) => self.forward_query(&addr, &query).await,
                None => Err(ClientError::NotLeader),
            };
            match attempt {
                Err(ClientError::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ClientError::NotLeader) => return Err(ClientError::NoLeader(LEADER_WAIT)),
                other => return other,
            }
        }
    }

    /// Proposes on this node, which must be the leader (used by the `Cluster.Write` RPC).
    pub async fn write_as_leader(&self, cmd: Command) -> Result<Response, ClientError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ClientError::NotLeader),
            Err(e) => Err(ClientError::Raft(e.to_string())),
        }
    }

    /// Answers on this node after confirming leadership (used by the `Cluster.Read` RPC).
    pub async fn query_as_leader(&self, query: &Query) -> Result<QueryResult, ClientError> {
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(_) => ClientError::NotLeader,
            other => ClientError::Raft(other.to_string()),
        })?;
        let (voters, learners) = self.membership();
        Ok(self.registry.read(|r| answer(query, r, voters, learners)))
    }

    /// Voter and learner ids of the current Raft membership.
    pub fn membership(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let metrics = self.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        (m.voter_ids().collect(), m.learner_ids().collect())
    }

    fn own_id(&self) -> u64 {
        self.raft.metrics().borrow().id
    }

    /// The current leader and its RPC address, if known.
    pub async fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = self.tls.channel(addr).map_err(|e| ClientError::Forward(e.to_string()))?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn forward_write(&self, addr: &str, cmd: &Command) -> Result<Response, ClientError> {
        let mut client = ClusterClient::new(self.channel(addr)?);
        match client.write(ForwardRequest { data: encode(cmd) }).await {
            Ok(resp) => decode(&resp.into_inner().data),
            Err(status) => Err(status_to_error(status)),
        }
    }

    async fn forward_query(&self, addr: &str, query: &Query) -> Result<QueryResult, ClientError> {
        let mut client = ClusterClient::new(self.channel(addr)?);
        match client.read(ForwardRequest { data: encode(query) }).await {
            Ok(resp) => decode(&resp.into_inner().data),
            Err(status) => Err(status_to_error(status)),
        }
    }
}

/// Retryable: the peer answered "not the leader" (leadership moved), or the connection was
/// never made (a dead old leader), so the command cannot have been proposed.
fn status_to_error(status: tonic::Status) -> ClientError {
    let msg = status.message();
    if status.code() == tonic::Code::Unavailable
        && (msg.contains("not the leader") || msg.contains("connect error") || msg.contains("Connection refused"))
    {
        ClientError::NotLeader
    } else {
        ClientError::Forward(format!("{}: {}", status.code(), status.message()))
    }
}
