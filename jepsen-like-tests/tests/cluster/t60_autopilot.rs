use std::time::{Duration, Instant};

use membrane_jepsen::{require_root, wait_until, Cluster};

/// Five nodes; SIGKILL a voter: within 15 s a learner takes its place, writes keep
/// succeeding, and the dead node comes back by itself (stored keys, no token) when restarted.
#[test]
fn t60_a_dead_voter_is_replaced_by_a_learner() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("autopilot", 5)?;
    let before = c.voters(1)?;
    assert_eq!(before.len(), 3);
    let leader = c.leader_seen_by(1)?.expect("a leader");
    let victim = *before.iter().find(|v| **v != leader).unwrap() as usize;
    c.lab().kill(victim)?;
    let killed_at = Instant::now();
    let survivor = (1..=5).find(|h| *h != victim).unwrap();

    wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let v = c.voters(survivor)?;
        Ok(v.len() == 3 && !v.contains(&(victim as u64)))
    })?;
    eprintln!("voter {victim} replaced after {:?}", killed_at.elapsed());
    for k in 0..5 {
        c.cli(
            survivor,
            &["identity", "allocate", &format!("app=during-{k}")],
        )?;
    }

    // The node restarts with its stored identity and keys and is a member again.
    c.lab().restart(victim)?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let nodes = c.cli_json(survivor, &["node", "list"])?;
        let n = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == victim as u64)
            .cloned();
        Ok(n.is_some_and(|n| n["gossip_state"] == "alive" && n["raft_role"] != "none"))
    })?;
    c.cli(victim, &["identity", "allocate", "app=after-rejoin"])?;
    Ok(())
}
