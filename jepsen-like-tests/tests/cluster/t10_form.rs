use std::collections::BTreeSet;
use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

/// Three nodes form a cluster: every node sees the same leader, three voters, distinct pod
/// CIDRs, and identity allocation is stable and reference counted across nodes.
#[test]
fn t10_three_nodes_form_a_cluster() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("form", 3)?;

    let leaders: BTreeSet<Option<u64>> = (1..=3)
        .map(|i| c.leader_seen_by(i))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        leaders.len(),
        1,
        "nodes disagree on the leader: {leaders:?}"
    );
    assert!(leaders.iter().next().unwrap().is_some());

    let nodes = c.cli_json(2, &["node", "list"])?;
    let nodes = nodes["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 3);
    let cidrs: BTreeSet<&str> = nodes
        .iter()
        .map(|n| n["pod_cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs.len(), 3, "pod CIDRs must differ: {cidrs:?}");
    assert!(nodes.iter().all(|n| n["raft_role"] == "voter"), "{nodes:?}");
    let ids: Vec<u64> = nodes.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3]);

    // Same labels on two nodes, in a different order: one identity, two references.
    let a = c.cli_json(2, &["identity", "allocate", "app=web", "tier=fe"])?;
    let b = c.cli_json(3, &["identity", "allocate", "tier=fe", "app=web"])?;
    assert_eq!(a["id"], b["id"]);
    assert_eq!(a["id"].as_u64(), Some((1 << 16) | 256));
    assert_eq!(b["references"], 2);
    assert_eq!(b["created"], false);
    let list = c.cli_json(1, &["identity", "list"])?;
    assert_eq!(list["identities"].as_array().unwrap().len(), 1);
    c.cli(1, &["identity", "release", "app=web", "tier=fe"])?;
    let released = c.cli_json(1, &["identity", "release", "app=web", "tier=fe"])?;
    assert_eq!(released["removed"], true);
    let err = c
        .cli(1, &["identity", "release", "app=web", "tier=fe"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no identity has the labels"), "{err}");
    let err = c
        .cli(1, &["identity", "allocate", "app"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in the form key=value"), "{err}");

    // Every node's status agrees on the commit index eventually.
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let idx: BTreeSet<u64> = (1..=3)
            .map(|i| {
                c.status(i)
                    .map(|s| s["applied_index"].as_u64().unwrap_or(0))
            })
            .collect::<Result<_, _>>()?;
        Ok(idx.len() == 1)
    })?;
    let text = c.cli(3, &["status"])?;
    assert!(text.contains("Cluster:      lab (id 1)"), "{text}");
    Ok(())
}

/// A fourth node joins as a learner: the voter set stays at three.
#[test]
fn t11_fourth_node_is_a_learner() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("learner", 4)?;
    wait_until(Duration::from_secs(15), Duration::from_millis(300), || {
        let nodes = c.cli_json(4, &["node", "list"])?;
        let roles: Vec<String> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["raft_role"].as_str().unwrap().to_string())
            .collect();
        // Which three vote depends on who caught up first; the shape does not.
        let voters = roles.iter().filter(|r| *r == "voter").count();
        let learners = roles.iter().filter(|r| *r == "learner").count();
        Ok(voters == 3 && learners == 1)
    })?;
    // A learner forwards writes to the leader.
    let nodes = c.cli_json(1, &["node", "list"])?;
    let learner = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["raft_role"] == "learner")
        .unwrap()["id"]
        .as_u64()
        .unwrap() as usize;
    let v = c.cli_json(learner, &["identity", "allocate", "app=from-learner"])?;
    assert_eq!(v["created"], true);
    Ok(())
}
