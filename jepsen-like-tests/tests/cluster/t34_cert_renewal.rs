use std::time::Duration;

use anyhow::{anyhow, Context};
use membrane_jepsen::{require_root, wait_until, Cluster};
use serde_json::Value;

fn cert_of(certs: &Value, id: u64) -> anyhow::Result<Value> {
    certs["certs"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == id).cloned())
        .ok_or_else(|| anyhow!("node {id} missing from node certs: {certs}"))
}

/// Issue 11: a node renews its certificate over mTLS (same key, signed by a voter); the
/// registry records it, `membrane node certs` shows the new serial and a 30-day expiry,
/// the agent restarts in place to use it (same pid) and keeps working with it.
#[test]
fn t34_a_node_renews_its_certificate() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("renew", 3)?;
    let before = c.cli_json(1, &["node", "certs"])?;
    let old = cert_of(&before, 3)?;
    let old_serial = old["serial"]
        .as_str()
        .ok_or_else(|| anyhow!("node 3 joined with a recorded certificate: {old}"))?
        .to_string();
    let days = old["days_left"].as_i64().unwrap_or(-1);
    assert!(
        (29..=30).contains(&days),
        "a new certificate lasts 30 days: {old}"
    );
    let crt = c.lab().host(3).state_dir().join("tls/node.crt");
    let old_pem = std::fs::read_to_string(&crt)?;
    let pid = c.lab().pid(3)?;

    // Host 3 is a voter here, so it may sign for itself; host 4 would need another voter.
    let renewed = c.cli_json(3, &["node", "renew-cert"])?;
    let new_serial = renewed["serial"].as_str().unwrap_or_default().to_string();
    assert!(
        !new_serial.is_empty() && new_serial != old_serial,
        "{renewed}"
    );

    // The agent restarts itself in place and serves again, with the new certificate.
    std::thread::sleep(Duration::from_secs(2));
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(c.status(3).is_ok())
    })
    .with_context(|| format!("host 3 did not come back: {}", c.log_tail(3)))?;
    assert_eq!(c.lab().pid(3)?, pid, "restarted in place, not exited");
    assert_ne!(std::fs::read_to_string(&crt)?, old_pem, "node.crt replaced");
    assert!(c.log_tail(3).contains("agent started") || c.lab().is_running(3)?);

    let after = c.cli_json(1, &["node", "certs"])?;
    assert_eq!(
        cert_of(&after, 3)?["serial"],
        new_serial.as_str(),
        "{after}"
    );
    // The node works with its new certificate: a write forwarded from it to the leader.
    wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        Ok(c.cli(3, &["identity", "allocate", "app=renewed"]).is_ok())
    })
    .context("host 3 cannot write after its renewal")?;
    c.wait_all_alive(Duration::from_secs(30))?;

    // The text table names every node, and a node without a record says so.
    let text = c.cli(1, &["node", "certs"])?;
    assert!(text.contains(&new_serial), "{text}");
    assert!(text.contains("DAYS LEFT"), "{text}");
    Ok(())
}
