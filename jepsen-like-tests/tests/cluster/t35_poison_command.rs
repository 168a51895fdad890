//! A poison pill through `Cluster.Write` (issue 11): a `Batch` nested thousands deep, the
//! shape that once committed, replicated and then overflowed every node's stack on apply
//! (and again on every restart), is refused at decoding by every node, and so is a flat
//! batch over the size limits. Nothing reaches the log; every node stays up and writable.

use std::time::Duration;

use membrane_consensus::registry::{BatchItem, MAX_BATCH_ITEMS};
use membrane_consensus::{Command, Response};
use membrane_jepsen::{in_netns, require_root, wait_until, Cluster};
use membrane_proto::v1::cluster_client::ClusterClient;
use membrane_proto::v1::ForwardRequest;

use crate::support::{last_log_index, runtime, SavedTls};

/// `Command::Batch` as the pre-issue-11 recursive type encoded it (bincode: u32 variant tag
/// 14, u64 length), `depth` levels deep around an empty batch.
fn nested_batch(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 12 + 12);
    for level in 0..=depth {
        out.extend_from_slice(&14u32.to_le_bytes());
        let len: u64 = if level == depth { 0 } else { 1 };
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

#[test]
fn t35_a_nested_batch_is_refused_and_every_node_stays_up() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("poison", 3)?;
    let leader = c.leader_seen_by(1)?.expect("a leader");
    let sender = if leader == 2 { 3 } else { 2 };
    let saved = SavedTls::read(&c.lab().host(sender).state_dir())?;
    let netns = c.lab().host(sender).netns().to_string();
    let targets: Vec<(u64, String)> = (1..=3u64)
        .map(|i| (i, c.lab().host(i as usize).rpc_addr().to_string()))
        .collect();
    let before = last_log_index(&c)?;

    // Over the limit but flat: a voter may remove nodes, so only the limit refuses it.
    let too_long: Command =
        Command::Batch(vec![BatchItem::RemoveNode { id: 999 }; MAX_BATCH_ITEMS + 1]);
    let too_long = bincode::serialize(&too_long)?;

    let answers = in_netns(&netns, move || -> anyhow::Result<Vec<String>> {
        runtime()?.block_on(async move {
            let mut answers = Vec::new();
            for (id, addr) in &targets {
                let mut cl = ClusterClient::new(saved.channel(addr, *id)?);
                for depth in [2_000, 5_000, 100_000] {
                    let r = cl
                        .write(ForwardRequest {
                            data: nested_batch(depth),
                        })
                        .await;
                    let s = r.expect_err("a nested batch must be refused");
                    assert_eq!(
                        s.code(),
                        tonic::Code::InvalidArgument,
                        "node {id}, depth {depth}: {s:?}"
                    );
                    answers.push(format!("node {id} depth {depth}: {}", s.message()));
                }
                match cl
                    .write(ForwardRequest {
                        data: too_long.clone(),
                    })
                    .await
                {
                    // The leader refuses it inside the response, before proposing.
                    Ok(resp) => {
                        let resp: Response = bincode::deserialize(&resp.into_inner().data)?;
                        assert!(
                            matches!(&resp, Response::Err(e) if e.to_string().contains("limit")),
                            "node {id}: {resp:?}"
                        );
                    }
                    // A follower says it is not the leader; a direct refusal is fine too.
                    Err(s) => assert!(
                        matches!(
                            s.code(),
                            tonic::Code::Unavailable | tonic::Code::InvalidArgument
                        ),
                        "node {id}: {s:?}"
                    ),
                }
            }
            Ok(answers)
        })
    })??;
    assert_eq!(answers.len(), 9, "{answers:#?}");

    for i in 1..=3 {
        assert!(c.lab().is_running(i)?, "host {i} died:\n{}", c.log_tail(i));
    }
    assert_eq!(last_log_index(&c)?, before, "nothing was proposed");
    // Every node still serves and commits writes.
    c.cli(sender, &["identity", "allocate", "app=after-poison"])?;
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok(last_log_index(&c)? > before)
    })?;
    for i in 1..=3 {
        assert!(c.lab().is_running(i)?, "host {i} died:\n{}", c.log_tail(i));
    }
    Ok(())
}
