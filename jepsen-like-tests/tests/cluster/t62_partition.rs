use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use membrane_jepsen::{membrane_binary, require_root, wait_until, Cluster};

fn gossip_state(c: &Cluster, observer: usize, node: u64) -> anyhow::Result<String> {
    let nodes = c.cli_json(observer, &["node", "list"])?;
    Ok(nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .map(|n| n["gossip_state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Streams `membrane members --watch` on `host`; sends (host, event) for every line.
fn watch(
    c: &Cluster,
    host: usize,
    tx: mpsc::Sender<(usize, serde_json::Value)>,
) -> anyhow::Result<Child> {
    let mut child = Command::new(membrane_binary()?)
        .arg("--socket")
        .arg(c.lab().host(host).socket())
        .args(["members", "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send((host, v));
            }
        }
    });
    Ok(child)
}

/// Cut one host off: every other node marks it down within 3 s (timed by the agents' own
/// event timestamps, not by polling); after the heal it is alive again and nothing in the
/// registry was lost.
#[test]
fn t62_a_partitioned_node_is_marked_down_and_comes_back() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("partition", 4)?;
    for k in 0..10 {
        c.cli(1 + k % 4, &["identity", "allocate", &format!("app=p{k}")])?;
    }
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok((1..=3).all(|o| {
            gossip_state(&c, o, 4)
                .map(|s| s == "alive")
                .unwrap_or(false)
        }))
    })?;
    // Let the failure detector learn the heartbeat intervals of a settled cluster.
    std::thread::sleep(Duration::from_secs(2));

    let (tx, rx) = mpsc::channel();
    let mut watchers = Vec::new();
    for o in 1..=3 {
        watchers.push(watch(&c, o, tx.clone())?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let cut_at = now_ms();
    c.lab().cut(4)?;
    let mut detected = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while detected.len() < 3 && std::time::Instant::now() < deadline {
        if let Ok((host, e)) = rx.recv_timeout(Duration::from_millis(200)) {
            if e["kind"] == "down" && e["node_id"] == 4 {
                detected
                    .entry(host)
                    .or_insert(e["at_unix_ms"].as_i64().unwrap() - cut_at);
            }
        }
    }
    for mut w in watchers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert_eq!(
        detected.len(),
        3,
        "not every node saw node 4 go down: {detected:?}"
    );
    for (host, ms) in &detected {
        assert!(*ms < 3000, "host {host} marked node 4 down after {ms} ms");
    }

    c.lab().heal(4)?;
    wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        Ok((1..=3).all(|o| {
            gossip_state(&c, o, 4)
                .map(|s| s == "alive")
                .unwrap_or(false)
        }))
    })?;
    let ids = c.cli_json(4, &["identity", "list"])?;
    assert_eq!(ids["identities"].as_array().unwrap().len(), 10);
    Ok(())
}
