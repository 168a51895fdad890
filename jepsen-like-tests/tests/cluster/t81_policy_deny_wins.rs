use std::time::Duration;

use membrane_jepsen::endpoint::{
    check_pair, expect_dropped, expect_echo, EchoServers, Proto, ECHO_TCP_PORT,
};
use membrane_jepsen::traffic::TcpEchoServer;
use membrane_jepsen::{require_root, Cluster};

const DB_PORT: u16 = 5432;

/// Ingress of db: everything from the cluster, except app=other on 5432. Egress of web:
/// everything, except TCP 7000 to db.
const POLICY: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEntities: [cluster]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
---
apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEntities: [all]
  egressDeny:
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
"#;

/// A deny rule beats a broader allow in the same policy: ingress (an allow-all-from-cluster
/// with one identity/port denied) and egress (an allow-all with one destination port
/// denied), same node and across nodes; every other pair and port still passes, and
/// `policy explain` names the deny rule.
#[test]
fn t81_deny_rules_beat_allows_in_both_directions() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t81", 2)?;
    let db = c.add_endpoint(1, "db", &["app=db"])?;
    let other = c.add_endpoint(1, "other", &["app=other"])?;
    let web = c.add_endpoint(2, "web", &["app=web"])?;
    let other2 = c.add_endpoint(2, "other", &["app=other"])?;
    c.wait_endpoints_listed(&[&db, &other, &web, &other2], Duration::from_secs(20))?;
    let _echo = EchoServers::start(&[&db, &other, &web, &other2])?;
    let _pg = TcpEchoServer::start(&db.netns, std::net::Ipv4Addr::UNSPECIFIED, DB_PORT)?;
    for from in [&other, &web, &other2] {
        expect_echo(from, &db, DB_PORT)?;
        expect_echo(from, &db, ECHO_TCP_PORT)?;
    }

    c.policy_apply(POLICY)?;

    // ingressDeny on db: app=other on 5432 only, local and remote.
    expect_dropped(&other, &db, DB_PORT).map_err(|e| anyhow::anyhow!("same node: {e:#}"))?;
    expect_dropped(&other2, &db, DB_PORT).map_err(|e| anyhow::anyhow!("cross node: {e:#}"))?;
    expect_echo(&other, &db, ECHO_TCP_PORT)?;
    expect_echo(&other2, &db, ECHO_TCP_PORT)?;
    expect_echo(&web, &db, DB_PORT)?;
    // egressDeny on web: TCP 7000 to db, whatever db's ingress allows.
    expect_dropped(&web, &db, ECHO_TCP_PORT)?;
    check_pair(&web, &db, Proto::Udp, Duration::from_secs(5))?;
    expect_echo(&web, &other, ECHO_TCP_PORT)?;
    expect_echo(&web, &other2, ECHO_TCP_PORT)?;
    // Replies of connections db opens pass db's ingress, deny or not.
    expect_echo(&db, &other, ECHO_TCP_PORT)?;

    let e = c.policy_explain(1, "app=other", "app=db", "5432/TCP")?;
    assert_eq!(e["verdict"], "deny", "{e}");
    assert_eq!(e["ingress"]["verdict"], "deny", "{e}");
    assert!(
        e["ingress"]["rule"]
            .as_str()
            .unwrap_or("")
            .contains("ingressDeny"),
        "the deny names its rule: {e}"
    );
    let e = c.policy_explain(2, "app=web", "app=db", "7000/TCP")?;
    assert_eq!(e["verdict"], "deny", "{e}");
    assert_eq!(e["egress"]["verdict"], "deny", "{e}");
    assert!(
        e["egress"]["rule"]
            .as_str()
            .unwrap_or("")
            .contains("egressDeny"),
        "the deny names its rule: {e}"
    );
    let e = c.policy_explain(2, "app=web", "app=db", "5432/TCP")?;
    assert_eq!(e["verdict"], "allow", "{e}");
    Ok(())
}
