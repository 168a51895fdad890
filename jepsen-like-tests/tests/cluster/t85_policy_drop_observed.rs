use std::net::SocketAddr;
use std::time::Duration;

use membrane_jepsen::endpoint::{EchoServers, Endpoint};
use membrane_jepsen::observe::{scrape, value, MonitorProc};
use membrane_jepsen::traffic::{tcp_attempt, TcpAttempt};
use membrane_jepsen::{require_root, wait_until, Cluster};
use serde_json::Value;

const POLICY: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
"#;

const DENIED: &str =
    r#"membrane_datapath_packets_total{direction="ingress",reason="policy-denied"}"#;

fn labelled(v: &Value, field: &str, label: &str) -> bool {
    v[field]
        .as_array()
        .is_some_and(|a| a.iter().any(|l| l == label))
}

fn to(ep: &Endpoint) -> SocketAddr {
    (ep.ip, 7000).into()
}

/// A connection the policy refuses shows in `membrane monitor` on the server's node as a
/// drop with reason `policy-denied`, naming the server endpoint and the client's identity
/// and labels, and in the metrics as ingress policy-denied packets; one it allows shows as a
/// policy verdict naming the rule.
#[test]
fn t85_a_policy_drop_shows_in_the_monitor_and_the_metrics() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t85", 2)?;
    let db = c.add_endpoint(1, "db", &["app=db"])?;
    let web = c.add_endpoint(1, "web", &["app=web"])?;
    let other = c.add_endpoint(2, "other", &["app=other"])?;
    let eps = [&db, &web, &other];
    c.wait_endpoints_listed(&eps, Duration::from_secs(20))?;
    let _servers = EchoServers::start(&[&db])?;
    c.policy_apply(POLICY)?;

    let db_id = c.cli_json(1, &["endpoint", "get", &db.container_id])?["id"].clone();
    let other_identity =
        c.cli_json(1, &["endpoint", "get", &other.container_id])?["identity"].clone();
    let denied_before = value(&scrape(&c, 1)?, DENIED);
    let monitor = MonitorProc::start(&c, 1)?;
    let db_ip = db.ip.to_string();

    // The subscription starts a moment after the process: keep trying until both events
    // have arrived.
    let mut drop = None;
    let mut verdict = None;
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let got = tcp_attempt(&other.netns, to(&db), Duration::from_millis(500))?;
        anyhow::ensure!(
            got == TcpAttempt::TimedOut,
            "app=other must be dropped, got {got:?}"
        );
        let ok = tcp_attempt(&web.netns, to(&db), Duration::from_secs(2))?;
        anyhow::ensure!(ok == TcpAttempt::Echoed, "app=web must get in, got {ok:?}");
        drop = monitor.find(|v| {
            v["kind"] == "drop"
                && v["reason"] == "policy-denied"
                && v["direction"] == "ingress"
                && v["dst"] == db_ip.as_str()
                && v["dport"] == 7000
        });
        verdict = monitor.find(|v| v["kind"] == "policy-verdict" && v["dst"] == db_ip.as_str());
        Ok(drop.is_some() && verdict.is_some())
    })
    .map_err(|e| anyhow::anyhow!("{e:#}; monitor saw {}", monitor.sample()))?;

    let drop = drop.unwrap_or_default();
    assert_eq!(
        drop["endpoint_id"], db_id,
        "the drop names the server endpoint: {drop}"
    );
    assert_eq!(drop["remote_identity"], other_identity, "{drop}");
    assert!(labelled(&drop, "remote_labels", "app=other"), "{drop}");
    assert!(labelled(&drop, "endpoint_labels", "app=db"), "{drop}");
    let verdict = verdict.unwrap_or_default();
    assert!(
        verdict["rule"]
            .as_str()
            .is_some_and(|r| r.contains("db: spec.ingress[0]")),
        "the allowed connection names its rule: {verdict}"
    );
    assert!(labelled(&verdict, "remote_labels", "app=web"), "{verdict}");

    let denied_after = value(&scrape(&c, 1)?, DENIED);
    assert!(
        denied_after > denied_before,
        "ingress policy-denied packets should rise: {denied_before} -> {denied_after}"
    );
    Ok(())
}
