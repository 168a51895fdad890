use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

/// A node can join through any member: a follower forwards the admission to the leader and
/// signs the certificate with the CA it holds in its own copy of the registry.
#[test]
fn t14_a_node_joins_through_a_follower() -> anyhow::Result<()> {
    require_root()?;
    let (c, _) = Cluster::init("viafollower", 3)?;
    c.start_first()?;
    c.join(2, &c.create_token(1)?)?;
    wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        Ok(c.status(2)
            .map(|s| s["raft_state"] == "follower")
            .unwrap_or(false))
    })?;
    let token = c.cli_json(2, &["token", "create"])?["token"]
        .as_str()
        .unwrap()
        .to_string();
    c.join_via(3, &token, 2)?;
    c.wait_for_voters(3, Duration::from_secs(30))?;
    let nodes = c.cli_json(3, &["node", "list"])?;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 3);
    Ok(())
}
