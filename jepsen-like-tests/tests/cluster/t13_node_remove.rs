use std::collections::BTreeSet;
use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

fn voters(c: &Cluster, host: usize) -> anyhow::Result<BTreeSet<u64>> {
    let s = c.status(host)?;
    Ok(s["members"].as_array().unwrap().iter().filter(|m| m["role"] == "voter").map(|m| m["node_id"].as_u64().unwrap()).collect())
}

/// `membrane node remove` takes a voter out of the registry; the autopilot replaces it with
/// the learner, and its id is never given out again.
#[test]
fn t13_removing_a_voter_promotes_the_learner() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("remove", 4)?;
    assert_eq!(voters(&c, 1)?, BTreeSet::from([1, 2, 3]));
    c.cli(3, &["node", "remove", "2"])?;
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        let members: BTreeSet<u64> =
            c.status(1)?["members"].as_array().unwrap().iter().map(|m| m["node_id"].as_u64().unwrap()).collect();
        Ok(voters(&c, 1)? == BTreeSet::from([1, 3, 4]) && !members.contains(&2))
    })?;
    let nodes = c.cli_json(1, &["node", "list"])?;
    let ids: Vec<u64> = nodes["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 3, 4]);
    // Writes still work, and a removed id is unknown.
    c.cli(4, &["identity", "allocate", "app=after-remove"])?;
    let err = c.cli(1, &["node", "remove", "2"]).unwrap_err().to_string();
    assert!(err.contains("node 2 is not in the registry"), "{err}");
    Ok(())
}
