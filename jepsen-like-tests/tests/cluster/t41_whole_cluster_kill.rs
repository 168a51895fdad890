use std::collections::BTreeSet;
use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

/// SIGKILL every node at once, right after a burst of acknowledged writes, and restart them:
/// the cluster comes back from disk alone, with every acknowledged write.
#[test]
fn t41_killing_every_node_loses_no_acknowledged_write() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("killall", 3)?;
    let mut acknowledged = BTreeSet::new();
    for k in 0..30 {
        let v = c.cli_json(1 + k % 3, &["identity", "allocate", &format!("app=k{k}")])?;
        acknowledged.insert(v["id"].as_u64().unwrap());
    }
    for h in 1..=3 {
        c.lab().kill(h)?;
    }
    for h in 1..=3 {
        c.lab().restart(h)?;
    }
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok((1..=3).any(|h| {
            c.status(h)
                .map(|s| s["raft_state"] == "leader")
                .unwrap_or(false)
        }))
    })?;
    for h in 1..=3 {
        let v = c.cli_json(h, &["identity", "list"])?;
        let ids: BTreeSet<u64> = v["identities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, acknowledged, "host {h}");
    }
    c.cli(2, &["identity", "allocate", "app=after"])?;
    Ok(())
}
