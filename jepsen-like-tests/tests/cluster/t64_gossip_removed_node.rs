use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};

fn counter(c: &Cluster, host: usize, name: &str) -> anyhow::Result<u64> {
    Ok(c.status(host)?["gossip"][name].as_u64().unwrap_or(0))
}

/// `membrane node remove` of a node that keeps running with its keys and state: its gossip
/// is dropped on every remaining node, as from an unknown sender at once and, once the
/// removal's automatic key rotation is done, as sealed with an unknown key; the remaining
/// nodes all seal with the new key and stay alive to each other.
#[test]
fn t64_a_removed_nodes_gossip_is_dropped_everywhere() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("gossrm", 4)?;
    c.wait_all_alive(Duration::from_secs(30))?;
    let before_key: Vec<u64> = (1..=3)
        .map(|h| counter(&c, h, "dropped_unknown_key"))
        .collect::<anyhow::Result<_>>()?;
    let old_primary = c.status(1)?["gossip"]["primary_key"].as_u64().unwrap_or(0);
    // Node 4 is not stopped: it goes on gossiping with everything it had.
    c.cli(1, &["node", "remove", "4"])?;
    // The removal returned after the rotation: every remaining node seals with a new key.
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        Ok((1..=3).all(|h| {
            c.status(h)
                .map(|s| {
                    let p = s["gossip"]["primary_key"].as_u64().unwrap_or(0);
                    p != old_primary
                        && s["gossip"]["key_ids"].as_array().map(|k| k.len()) == Some(1)
                })
                .unwrap_or(false)
        }))
    })?;
    // Node 4 still holds only the old key: its datagrams are unknown-key on every node.
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        Ok((1..=3)
            .all(|h| counter(&c, h, "dropped_unknown_key").unwrap_or(0) > before_key[h - 1] + 3))
    })?;
    for h in 1..=3 {
        let g = c.status(h)?["gossip"].clone();
        // Between the removal and the rotation they were refused as from a non-member.
        assert!(
            g["dropped_unknown_sender"].as_u64().unwrap_or(0) > 0
                || g["dropped_unknown_key"].as_u64().unwrap_or(0) > before_key[h - 1],
            "node {h}: {g}"
        );
        assert_eq!(g["dropped_forged"].as_u64(), Some(0), "node {h}: {g}");
    }
    // The remaining nodes still hear each other, and see node 4 down.
    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        let nodes = c.cli_json(1, &["node", "list"])?;
        Ok(nodes["nodes"]
            .as_array()
            .map(|n| n.len() == 3 && n.iter().all(|n| n["gossip_state"] == "alive"))
            .unwrap_or(false))
    })?;
    let r1 = counter(&c, 2, "received")?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        counter(&c, 2, "received")? > r1 + 5,
        "node 2 stopped hearing gossip"
    );

    // The removed node restarted from its saved state directory (keys, Raft store with the
    // old keyring, replay file): its gossip is still refused everywhere, and nobody lists it.
    c.lab().kill(4)?;
    let at_restart: Vec<u64> = (1..=3)
        .map(|h| counter(&c, h, "dropped_unknown_key"))
        .collect::<anyhow::Result<_>>()?;
    c.lab().restart(4)?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok((1..=3)
            .all(|h| counter(&c, h, "dropped_unknown_key").unwrap_or(0) > at_restart[h - 1] + 3))
    })?;
    for h in 1..=3 {
        let nodes = c.cli_json(h, &["node", "list"])?;
        let ids: Vec<u64> = nodes["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["id"].as_u64()).collect())
            .unwrap_or_default();
        assert!(
            !ids.contains(&4),
            "node {h} lists the removed node: {nodes}"
        );
        let g = c.status(h)?["gossip"].clone();
        assert_eq!(g["dropped_forged"].as_u64(), Some(0), "node {h}: {g}");
    }
    Ok(())
}
