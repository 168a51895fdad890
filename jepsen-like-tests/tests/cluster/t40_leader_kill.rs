use std::collections::BTreeSet;
use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

fn identity_ids(c: &Cluster, host: usize) -> anyhow::Result<BTreeSet<u64>> {
    let v = c.cli_json(host, &["identity", "list"])?;
    Ok(v["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect())
}

/// SIGKILL the leader of a 3-node cluster: a new leader is elected, every acknowledged write
/// survives, writes keep working, and the old leader catches up from its own disk.
#[test]
fn t40_killing_the_leader_loses_no_acknowledged_write() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("kill", 3)?;
    let mut acknowledged = BTreeSet::new();
    for k in 0..15 {
        let host = 1 + k % 3;
        let v = c.cli_json(host, &["identity", "allocate", &format!("app=before-{k}")])?;
        acknowledged.insert(v["id"].as_u64().unwrap());
    }
    let old = c.leader_seen_by(1)?.expect("a leader") as usize;
    let old_applied = c.status(old)?["applied_index"].as_u64().unwrap();
    c.lab().kill(old)?;

    let survivors: Vec<usize> = (1..=3).filter(|h| *h != old).collect();
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let leaders: BTreeSet<Option<u64>> = survivors
            .iter()
            .map(|h| c.leader_seen_by(*h).unwrap_or(None))
            .collect();
        Ok(leaders.len() == 1
            && leaders
                .iter()
                .next()
                .unwrap()
                .is_some_and(|l| l as usize != old))
    })?;
    for k in 0..10 {
        let host = survivors[k % 2];
        let v = c.cli_json(host, &["identity", "allocate", &format!("app=after-{k}")])?;
        acknowledged.insert(v["id"].as_u64().unwrap());
    }
    for h in &survivors {
        let ids = identity_ids(&c, *h)?;
        assert!(
            acknowledged.is_subset(&ids),
            "host {h} lost writes: {:?}",
            acknowledged.difference(&ids)
        );
    }

    // The old leader restarts from its own disk and catches up.
    c.lab().restart(old)?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let Ok(mine) = c.status(old) else {
            return Ok(false);
        };
        let leader = c.status(survivors[0])?;
        let applied = mine["applied_index"].as_u64().unwrap_or(0);
        Ok(
            applied >= old_applied
                && applied >= leader["commit_index"].as_u64().unwrap_or(u64::MAX),
        )
    })
    .map_err(|e| anyhow::anyhow!("{e}; log: {}", c.log_tail(old)))?;
    let ids = identity_ids(&c, old)?;
    assert!(acknowledged.is_subset(&ids));
    let v = c.cli_json(old, &["identity", "allocate", "app=after-restart"])?;
    assert_eq!(v["created"], true);
    Ok(())
}
