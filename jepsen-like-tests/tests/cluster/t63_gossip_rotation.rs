use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

/// `membrane gossip rotate-key` moves every node to a new key and drops the old one, without
/// any node ever losing sight of another.
#[test]
fn t63_gossip_key_rotation_keeps_everyone_alive() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("rotate", 3)?;
    c.wait_all_alive(Duration::from_secs(10))?;
    let keys = c.cli_json(2, &["gossip", "rotate-key"])?;
    assert_eq!(
        keys["keys"],
        serde_json::json!([{"id": 2, "primary": true}])
    );
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok((1..=3).all(|h| {
            c.status(h)
                .map(|s| {
                    s["gossip"]["key_ids"] == serde_json::json!([2])
                        && s["gossip"]["primary_key"] == 2
                })
                .unwrap_or(false)
        }))
    })?;
    // Everyone still sees everyone, well past the failure detector's horizon.
    std::thread::sleep(Duration::from_secs(3));
    for h in 1..=3 {
        let nodes = c.cli_json(h, &["node", "list"])?;
        assert!(
            nodes["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["gossip_state"] == "alive"),
            "host {h}: {nodes}"
        );
    }
    let members = c.cli_json(3, &["members"])?;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    Ok(())
}
