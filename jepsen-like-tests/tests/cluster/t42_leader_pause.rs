use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

/// SIGSTOP the leader: the others elect a new one and keep accepting writes; SIGCONT it: it
/// steps down, catches up, and every write made while it slept is visible through it.
#[test]
fn t42_a_paused_leader_is_replaced_and_catches_up() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("pause", 3)?;
    let old = c.leader_seen_by(1)?.expect("a leader") as usize;
    c.lab().pause(old)?;
    let others: Vec<usize> = (1..=3).filter(|h| *h != old).collect();
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        Ok(c.leader_seen_by(others[0])
            .unwrap_or(None)
            .is_some_and(|l| l as usize != old))
    })?;
    for k in 0..5 {
        c.cli(
            others[k % 2],
            &["identity", "allocate", &format!("app=while-paused-{k}")],
        )?;
    }
    c.lab().resume(old)?;
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let Ok(s) = c.status(old) else {
            return Ok(false);
        };
        if s["raft_state"] == "leader" && c.leader_seen_by(others[0])? != Some(old as u64) {
            return Ok(false);
        }
        let ids = c.cli_json(old, &["identity", "list"])?;
        Ok(ids["identities"].as_array().unwrap().len() == 5)
    })?;
    Ok(())
}
