//! Authorization bound to membership (issue 11), with real agents and real TLS: a removed
//! node's certificate is refused by every node for every Raft and Cluster RPC; a client
//! refuses a server presenting another node's certificate; a Vote speaking for another node
//! is refused before it can move anyone's term.

use std::time::Duration;

use membrane_consensus::network::Network;
use membrane_consensus::registry::LabelSet;
use membrane_consensus::{Command, TypeConfig};
use membrane_jepsen::{in_netns, require_root, wait_until, Cluster};

use membrane_proto::v1::cluster_client::ClusterClient;
use membrane_proto::v1::raft_client::RaftClient;
use membrane_proto::v1::{ForwardRequest, RaftPayload};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{
    BasicNode, CommittedLeaderId, LogId, RaftNetwork, RaftNetworkFactory, SnapshotMeta, Vote,
};
use tonic::transport::Channel;

use crate::support::{runtime, SavedTls};

/// `Query::Nodes` of the agent's registry client: bincode's tag of the first variant.
const QUERY_NODES: [u8; 4] = [0, 0, 0, 0];

/// An openraft request as the Raft service's payload.
macro_rules! bin {
    ($v:expr) => {
        RaftPayload {
            data: bincode::serialize($v).expect("encodes"),
        }
    };
}

/// Every Raft and Cluster RPC, each with a payload that decodes and speaks for node `me`,
/// and harmless if accepted (term 0, nothing to append). Returns (name, result code).
async fn every_rpc(ch: Channel, me: u64) -> Vec<(&'static str, tonic::Code, String)> {
    let vote = Vote::new(0, me);
    let labels = LabelSet::parse(&["app=t31".to_string()]).expect("labels");
    let write: Command = Command::AllocateIdentity { labels };
    let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let snapshot: InstallSnapshotRequest<TypeConfig> = InstallSnapshotRequest {
        vote,
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "t31".into(),
        },
        offset: 0,
        data: vec![],
        done: false,
    };
    let code = |r: Result<(), tonic::Status>| match r {
        Ok(()) => (tonic::Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    };
    let mut cluster = ClusterClient::new(ch.clone());
    let mut raft = RaftClient::new(ch);
    let mut out = Vec::new();
    let r = cluster
        .write(ForwardRequest {
            data: bincode::serialize(&write).expect("encodes"),
        })
        .await
        .map(drop);
    out.push(("Cluster.Write", code(r)));
    let r = cluster
        .read(ForwardRequest {
            data: QUERY_NODES.to_vec(),
        })
        .await
        .map(drop);
    out.push(("Cluster.Read", code(r)));
    let r = raft
        .vote(bin!(&VoteRequest {
            vote,
            last_log_id: None,
        }))
        .await
        .map(drop);
    out.push(("Raft.Vote", code(r)));
    let r = raft.append_entries(bin!(&append)).await.map(drop);
    out.push(("Raft.AppendEntries", code(r)));
    let r = raft.install_snapshot(bin!(&snapshot)).await.map(drop);
    out.push(("Raft.InstallSnapshot", code(r)));
    out.into_iter().map(|(n, (c, m))| (n, c, m)).collect()
}

#[test]
fn t31_a_removed_nodes_saved_certificate_is_refused_everywhere() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("authz-removed", 4)?;
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        Ok(c.status(1)?["members"].as_array().unwrap().len() == 4)
    })?;
    let leader = c.leader_seen_by(1)?.expect("a leader");
    let victim = 4u64;
    assert_ne!(leader, victim);
    // What a thief would keep: the node's tls/ and keys/.
    let saved = SavedTls::read(&c.lab().host(victim as usize).state_dir())?;
    let netns = c.lab().host(victim as usize).netns().to_string();
    let targets: Vec<(u64, String)> = (1..=3u64)
        .map(|i| (i, c.lab().host(i as usize).rpc_addr().to_string()))
        .collect();

    // While it is a member, its certificate is accepted: the Read reaches the service.
    {
        let (saved, targets) = (saved.clone(), targets.clone());
        in_netns(&netns, move || -> anyhow::Result<()> {
            runtime()?.block_on(async move {
                for (id, addr) in &targets {
                    let mut cl = ClusterClient::new(saved.channel(addr, *id)?);
                    let r = cl
                        .read(ForwardRequest {
                            data: QUERY_NODES.to_vec(),
                        })
                        .await;
                    if let Err(s) = &r {
                        // A follower answers "not the leader": that too is past authorization.
                        assert_eq!(s.code(), tonic::Code::Unavailable, "node {id}: {s:?}");
                        assert!(s.message().contains("not the leader"), "node {id}: {s:?}");
                    }
                }
                Ok(())
            })
        })??;
    }

    c.cli(leader as usize, &["node", "remove", &victim.to_string()])?;
    c.lab().kill(victim as usize)?;
    // Every remaining node applies the removal.
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        for i in 1..=3 {
            let nodes = c.cli_json(i, &["node", "list"])?;
            let present = nodes["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"].as_u64() == Some(victim));
            if present {
                return Ok(false);
            }
        }
        Ok(true)
    })?;

    let results = in_netns(&netns, move || -> anyhow::Result<Vec<_>> {
        runtime()?.block_on(async move {
            let mut all = Vec::new();
            for (id, addr) in &targets {
                // The node's local copy may apply the removal a moment after `node list`.
                let mut last = Vec::new();
                for _ in 0..50 {
                    last = every_rpc(saved.channel(addr, *id)?, victim).await;
                    if last
                        .iter()
                        .all(|(_, code, _)| *code == tonic::Code::PermissionDenied)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                all.push((*id, last));
            }
            Ok(all)
        })
    })??;
    for (id, rpcs) in results {
        for (name, code, msg) in rpcs {
            assert_eq!(
                code,
                tonic::Code::PermissionDenied,
                "node {id} {name}: {msg}"
            );
            assert!(
                msg.contains(&format!("node {victim} is not a current member")),
                "node {id} {name}: {msg}"
            );
        }
    }
    // The cluster still works without the removed node.
    c.cli(2, &["identity", "allocate", "app=after-t31"])?;

    // Coming back takes a new token and gives a new id: the old identity is not revived.
    c.lab().stop(victim as usize)?;
    let state = c.lab().host(victim as usize).state_dir();
    std::fs::remove_dir_all(&state)?;
    std::fs::create_dir_all(&state)?;
    let token = c.create_token(1)?;
    c.join(victim as usize, &token)?;
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        let nodes = c.cli_json(1, &["node", "list"])?;
        let back = nodes["nodes"].as_array().unwrap().iter().any(|n| {
            n["name"] == c.lab().host(victim as usize).name() && n["id"].as_u64() > Some(victim)
        });
        Ok(back)
    })?;
    Ok(())
}

#[test]
fn t32_impersonation_is_refused_by_client_and_server() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("authz-imperson", 3)?;
    c.wait_for_voters(3, Duration::from_secs(30))?;
    let tls1 = SavedTls::read(&c.lab().host(1).state_dir())?;
    let tls3 = SavedTls::read(&c.lab().host(3).state_dir())?;
    let addr1 = c.lab().host(1).rpc_addr().to_string();
    let addr3 = c.lab().host(3).rpc_addr().to_string();

    // (b) Node 1's Raft client believes node 2 lives at host 3's address: host 3 presents
    // node 3's certificate, which is not node 2's, so the client refuses it. The same
    // client dialling node 3 there gets an answer, so the name is what was refused.
    let netns1 = c.lab().host(1).netns().to_string();
    let (t1, a3) = (tls1.clone(), addr3.clone());
    in_netns(&netns1, move || -> anyhow::Result<()> {
        runtime()?.block_on(async move {
            let mut network = Network::new(t1.client_config());
            let harmless = || VoteRequest {
                vote: Vote::new(0, 1),
                last_log_id: None,
            };
            let option = || RPCOption::new(Duration::from_secs(5));
            let mut as_2 = network.new_client(2, &BasicNode::new(a3.clone())).await;
            let err = as_2
                .vote(harmless(), option())
                .await
                .expect_err("host 3 is not node 2");
            assert!(
                !matches!(err, openraft::error::RPCError::RemoteError(_)),
                "the impostor was answered as node 2: {err:?}"
            );
            let mut as_3 = network.new_client(3, &BasicNode::new(a3)).await;
            let resp = as_3.vote(harmless(), option()).await?;
            assert!(!resp.vote_granted, "a term-0 vote is never granted");
            Ok(())
        })
    })??;

    // (c) A Vote claiming candidate 2, with a term far ahead, sent with node 3's certificate.
    let term_before = c.status(1)?["term"].as_u64().unwrap();
    let netns3 = c.lab().host(3).netns().to_string();
    let (t3, a1) = (tls3.clone(), addr1.clone());
    let huge = term_before + 1000;
    let (refused, control) = in_netns(&netns3, move || -> anyhow::Result<_> {
        runtime()?.block_on(async move {
            let mut raft = RaftClient::new(t3.channel(&a1, 1)?);
            let forged = VoteRequest::<u64> {
                vote: Vote::new(huge, 2),
                last_log_id: Some(LogId::new(CommittedLeaderId::new(huge, 2), u64::MAX / 2)),
            };
            let refused = raft.vote(bin!(&forged)).await.map(drop);
            // Control: the same certificate speaking for itself, harmlessly, is answered.
            let own = VoteRequest::<u64> {
                vote: Vote::new(0, 3),
                last_log_id: None,
            };
            let control = raft.vote(bin!(&own)).await.map(drop);
            Ok((refused, control))
        })
    })??;
    let status = refused.expect_err("a vote for node 2 from node 3 must be refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("claims to come from node 2"),
        "{}",
        status.message()
    );
    control.expect("node 3 speaking for itself is let through to Raft");
    let term_after = c.status(1)?["term"].as_u64().unwrap();
    assert!(
        term_after < huge,
        "the forged vote moved node 1's term to {term_after}"
    );
    assert_eq!(c.voters(1)?.len(), 3);
    Ok(())
}
