use std::collections::BTreeSet;
use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

/// `membrane node remove` takes a voter out of the registry; the autopilot replaces it with
/// the learner, and its id is never given out again.
#[test]
fn t13_removing_a_voter_promotes_the_learner() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("remove", 4)?;
    wait_until(Duration::from_secs(15), Duration::from_millis(300), || {
        Ok(c.status(1)?["members"].as_array().unwrap().len() == 4)
    })?;
    let before = c.voters(1)?;
    assert_eq!(before.len(), 3);
    let leader = c.leader_seen_by(1)?.expect("a leader");
    let gone = *before.iter().find(|v| **v != leader).unwrap();
    let learner = (1..=4u64).find(|id| !before.contains(id)).unwrap();
    let mut expected = before.clone();
    expected.remove(&gone);
    expected.insert(learner);
    c.cli(leader as usize, &["node", "remove", &gone.to_string()])?;
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        let members: BTreeSet<u64> = c.status(leader as usize)?["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["node_id"].as_u64().unwrap())
            .collect();
        Ok(c.voters(leader as usize)? == expected && !members.contains(&gone))
    })?;
    let nodes = c.cli_json(leader as usize, &["node", "list"])?;
    let ids: BTreeSet<u64> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, expected);
    // Writes still work, and a removed id is unknown.
    c.cli(
        learner as usize,
        &["identity", "allocate", "app=after-remove"],
    )?;
    let err = c
        .cli(leader as usize, &["node", "remove", &gone.to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("node {gone} is not in the registry")),
        "{err}"
    );
    Ok(())
}
