//! Real Raft clusters in one process: sled stores in temporary directories, the tonic
//! network over plaintext loopback (ports chosen by binding port 0). Every test is bounded by
//! [`TEST_TIMEOUT`].

mod common;
use common::{bootstrap_cmd, token};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use membrane_consensus::network::{AllowAllForTests, Network, RaftAuthorizer, RaftService, Rpc};
use membrane_consensus::registry::{Command, Response};
use membrane_consensus::store::{self, RegistryHandle};
use membrane_consensus::{NodeId, Raft};
use membrane_proto::v1::raft_client::RaftClient;
use membrane_proto::v1::RaftPayload;
use openraft::error::{RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Config, RaftNetwork, RaftNetworkFactory, SnapshotPolicy, Vote};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(20);

/// Short timers for loopback, still well above sled's flush latency (openraft wants the
/// election timeout at least 10x the append latency). Snapshots every few entries, with the
/// log purged behind them, so that a node that was down catches up by snapshot.
fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

struct TestNode {
    id: NodeId,
    addr: SocketAddr,
    dir: PathBuf,
    raft: Raft,
    registry: RegistryHandle,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestNode {
    /// Opens the store in `dir` and serves Raft on `listener`.
    async fn start(id: NodeId, listener: TcpListener, dir: &Path) -> TestNode {
        Self::start_with(id, listener, dir, Arc::new(AllowAllForTests)).await
    }

    /// Like [`TestNode::start`], with Raft requests gated by `authorizer`.
    async fn start_with(
        id: NodeId,
        listener: TcpListener,
        dir: &Path,
        authorizer: Arc<dyn RaftAuthorizer>,
    ) -> TestNode {
        let addr = listener.local_addr().expect("local addr");
        let (log, sm) = store::open(dir).expect("open store");
        let registry = sm.registry();
        let raft = Raft::new(id, config(), Network::plaintext(), log, sm)
            .await
            .expect("start raft");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = RaftService::new(raft.clone(), authorizer).into_server();
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = result {
                eprintln!("server of node {id} failed: {e}");
            }
        });
        TestNode {
            id,
            addr,
            dir: dir.to_path_buf(),
            raft,
            registry,
            stop_server: Some(stop_tx),
            server: Some(server),
        }
    }

    /// Stops Raft and the server, releasing the sled database.
    async fn stop(mut self) -> (NodeId, SocketAddr, PathBuf) {
        self.raft.shutdown().await.expect("raft shutdown");
        self.stop_server().await;
        (self.id, self.addr, self.dir.clone())
    }

    async fn stop_server(&mut self) {
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "applied")
            .await
            .unwrap_or_else(|e| panic!("node {} did not apply index {index}: {e}", self.id));
    }
}

/// Binds the same address again after a node stopped (the old socket may linger briefly).
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("cannot bind {addr} again");
}

async fn start_cluster(dirs: &[TempDir]) -> Vec<TestNode> {
    let mut listeners = Vec::new();
    for _ in dirs {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let mut nodes = Vec::new();
    for (i, (listener, dir)) in listeners.into_iter().zip(dirs).enumerate() {
        nodes.push(TestNode::start(i as NodeId + 1, listener, dir.path()).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
        .collect();
    nodes[0].raft.initialize(members).await.expect("initialize");
    nodes
}

async fn leader_of(nodes: &[TestNode]) -> NodeId {
    let m = nodes[0]
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .expect("no leader elected");
    m.current_leader.expect("leader")
}

fn node(nodes: &[TestNode], id: NodeId) -> &TestNode {
    nodes.iter().find(|n| n.id == id).expect("node by id")
}

/// Writes through the leader, retrying while leadership settles. Returns the log index.
async fn write(nodes: &[TestNode], cmd: Command) -> (u64, Response) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leader = leader_of(nodes).await;
        match node(nodes, leader).raft.client_write(cmd.clone()).await {
            Ok(resp) => return (resp.log_id.index, resp.data),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("write via {leader} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

fn has_token(registry: &RegistryHandle, id: &str) -> bool {
    registry.read(|r| r.token(id).is_some())
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_write_on_leader_is_read_on_all_nodes_and_survives_restarts() {
    bounded(async {
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("temp dir")).collect();
        let mut nodes = start_cluster(&dirs).await;

        let (_, resp) = write(&nodes, bootstrap_cmd()).await;
        assert!(matches!(resp, Response::Node(_)), "{resp:?}");
        let (index, resp) = write(&nodes, Command::CreateToken { token: token("t1") }).await;
        assert_eq!(resp, Response::Ok);
        for n in &nodes {
            n.wait_applied(index).await;
            assert!(has_token(&n.registry, "t1"), "node {} lacks t1", n.id);
            assert_eq!(n.registry.read(|r| r.nodes().count()), 1);
        }

        // --- a follower goes down, the cluster moves on (past several snapshots and purges),
        // and the follower comes back from its sled directory.
        let leader = leader_of(&nodes).await;
        let pos = nodes
            .iter()
            .position(|n| n.id != leader)
            .expect("a follower");
        let follower = nodes.remove(pos);
        let follower_last = follower.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let (id, addr, dir) = follower.stop().await;
        let mut last = 0;
        for i in 2..=15 {
            last = write(
                &nodes,
                Command::CreateToken {
                    token: token(&format!("t{i}")),
                },
            )
            .await
            .0;
        }
        // The leader has purged the entries the follower lacks: it can only catch up through
        // install_snapshot over the network.
        node(&nodes, leader)
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > follower_last),
                "log purged past the follower",
            )
            .await
            .expect("leader purges its log behind snapshots");
        let restarted = TestNode::start(id, rebind(addr).await, &dir).await;
        restarted.wait_applied(last).await;
        assert!(has_token(&restarted.registry, "t1"));
        assert!(has_token(&restarted.registry, "t15"));
        nodes.push(restarted);

        // --- the whole cluster stops; one node restarted alone (no quorum: nothing new commits) must
        // rebuild its registry from its own snapshot and committed log.
        for n in &nodes {
            n.wait_applied(last).await;
        }
        let mut stopped = Vec::new();
        for n in nodes {
            stopped.push(n.stop().await);
        }
        let (id, addr, dir) = stopped[0].clone();
        let alone = TestNode::start(id, rebind(addr).await, &dir).await;
        alone.wait_applied(last).await;
        for i in 1..=15 {
            assert!(
                has_token(&alone.registry, &format!("t{i}")),
                "t{i} missing after restart"
            );
        }

        // --- and the cluster as a whole restarts, elects a leader and takes writes.
        let mut nodes = vec![alone];
        for (id, addr, dir) in stopped.into_iter().skip(1) {
            nodes.push(TestNode::start(id, rebind(addr).await, &dir).await);
        }
        let (index, _) = write(
            &nodes,
            Command::CreateToken {
                token: token("after"),
            },
        )
        .await;
        for n in &nodes {
            n.wait_applied(index).await;
            assert!(has_token(&n.registry, "after"));
            assert!(has_token(&n.registry, "t15"));
        }
        for n in nodes {
            n.stop().await;
        }
    })
    .await;
}

fn vote_request() -> VoteRequest<NodeId> {
    VoteRequest {
        vote: Vote::new(1, 9),
        last_log_id: None,
    }
}

#[tokio::test]
async fn t20_unreachable_peer_maps_to_unreachable() {
    bounded(async {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        }; // closed again: nothing listens there
        let mut network = Network::plaintext();
        let mut client = network
            .new_client(2, &BasicNode::new(addr.to_string()))
            .await;
        let err = client
            .vote(vote_request(), RPCOption::new(Duration::from_secs(2)))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

        let mut client = network
            .new_client(3, &BasicNode::new("not a valid address"))
            .await;
        let err = client
            .vote(vote_request(), RPCOption::new(Duration::from_secs(2)))
            .await
            .expect_err("bad address");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn t30_bad_payload_is_invalid_argument_and_remote_errors_come_back() {
    bounded(async {
        let dir = TempDir::new().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut n = TestNode::start(1, listener, dir.path()).await;

        let mut raw = RaftClient::connect(format!("http://{}", n.addr))
            .await
            .expect("connect");
        let status = raw
            .append_entries(RaftPayload {
                data: b"garbage".to_vec(),
            })
            .await
            .expect_err("garbage payload");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("AppendEntries"),
            "{}",
            status.message()
        );

        // A served vote comes back as a response...
        let mut network = Network::plaintext();
        let mut client = network
            .new_client(1, &BasicNode::new(n.addr.to_string()))
            .await;
        let option = || RPCOption::new(Duration::from_secs(5));
        let resp = client
            .vote(vote_request(), option())
            .await
            .expect("vote served");
        assert!(resp.vote_granted, "{resp:?}");

        // ...and a Raft error on the peer comes back as a remote error, not a network one.
        n.raft.shutdown().await.expect("shutdown");
        let err = client
            .vote(vote_request(), option())
            .await
            .expect_err("raft is stopped");
        match err {
            RPCError::RemoteError(e) => {
                assert_eq!(e.target, 1);
                assert!(matches!(e.source, RaftError::Fatal(_)), "{:?}", e.source);
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        n.stop_server().await;
    })
    .await;
}

/// Accepts only requests claiming to come from `allowed`: a gate whose answer the test knows.
struct OnlyFrom {
    allowed: NodeId,
}

impl RaftAuthorizer for OnlyFrom {
    fn authorize(
        &self,
        _rpc: Rpc,
        claimed: NodeId,
        _: &tonic::Extensions,
    ) -> Result<(), tonic::Status> {
        if claimed == self.allowed {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "node {claimed} may not"
            )))
        }
    }
}

#[tokio::test]
async fn t40_a_refused_vote_never_reaches_openraft() {
    bounded(async {
        let dir = TempDir::new().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut n =
            TestNode::start_with(1, listener, dir.path(), Arc::new(OnlyFrom { allowed: 7 })).await;
        let before = n.raft.metrics().borrow().vote;

        let mut network = Network::plaintext();
        let mut client = network
            .new_client(1, &BasicNode::new(n.addr.to_string()))
            .await;
        let option = || RPCOption::new(Duration::from_secs(5));
        // Candidate 9 (vote_request) is refused as a network error carrying the denial...
        let err = client
            .vote(vote_request(), option())
            .await
            .expect_err("candidate 9 is refused");
        assert!(
            matches!(&err, RPCError::Network(e) if e.to_string().contains("node 9 may not")),
            "{err:?}"
        );
        assert_eq!(
            n.raft.metrics().borrow().vote,
            before,
            "a refused vote moved the vote"
        );

        // ...and the same request from candidate 7 is granted, so the gate was the reason.
        let resp = client
            .vote(
                VoteRequest {
                    vote: Vote::new(1, 7),
                    last_log_id: None,
                },
                option(),
            )
            .await
            .expect("vote served");
        assert!(resp.vote_granted, "{resp:?}");
        assert_eq!(n.raft.metrics().borrow().vote, Vote::new(1, 7));
        n.raft.shutdown().await.expect("shutdown");
        n.stop_server().await;
    })
    .await;
}
