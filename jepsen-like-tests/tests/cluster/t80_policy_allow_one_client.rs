use std::time::Duration;

use membrane_jepsen::endpoint::{
    check_pair, expect_dropped, expect_echo, EchoServers, Proto, ECHO_TCP_PORT,
};
use membrane_jepsen::traffic::TcpEchoServer;
use membrane_jepsen::{require_root, Cluster};

/// The port the policy opens.
const DB_PORT: u16 = 5432;

const POLICY: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

/// Default allow, then a policy selecting the server lets exactly one client identity in, on
/// one port, on the same node and across nodes; what it refuses times out (dropped, no RST),
/// and `policy explain` gives the same verdicts.
#[test]
fn t80_a_policy_lets_one_client_identity_in_on_one_port() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t80", 2)?;
    let db = c.add_endpoint(1, "db", &["app=db"])?;
    let web1 = c.add_endpoint(1, "web", &["app=web"])?;
    let web2 = c.add_endpoint(2, "web", &["app=web"])?;
    let other = c.add_endpoint(2, "other", &["app=other"])?;
    c.wait_endpoints_listed(&[&db, &web1, &web2, &other], Duration::from_secs(20))?;
    let _echo = EchoServers::start(&[&db, &web1])?;
    let _pg = TcpEchoServer::start(&db.netns, std::net::Ipv4Addr::UNSPECIFIED, DB_PORT)?;

    // Default allow: everyone reaches both ports.
    for from in [&web1, &web2, &other] {
        check_pair(from, &db, Proto::Tcp, Duration::from_secs(10))?;
        expect_echo(from, &db, DB_PORT)?;
    }
    let explain = c.policy_explain(1, "app=other", "app=db", "5432/TCP")?;
    assert_eq!(explain["verdict"], "allow", "before any policy: {explain}");

    let rev = c.policy_apply(POLICY)?;
    assert!(rev > 0, "revision {rev}");

    expect_echo(&web1, &db, DB_PORT).map_err(|e| anyhow::anyhow!("same node: {e:#}"))?;
    expect_echo(&web2, &db, DB_PORT).map_err(|e| anyhow::anyhow!("cross node: {e:#}"))?;
    expect_dropped(&other, &db, DB_PORT)?;
    expect_dropped(&web1, &db, ECHO_TCP_PORT)?;
    expect_dropped(&web2, &db, ECHO_TCP_PORT)?;
    // The policy selects db only: other still reaches web1, which no policy selects.
    expect_echo(&other, &web1, ECHO_TCP_PORT)?;

    // explain, asked on either node, by labels and by endpoint, agrees with the datapath.
    let cases = [
        ("app=web", db.container_id.as_str(), "5432/TCP", "allow"),
        (web2.container_id.as_str(), "app=db", "5432/TCP", "allow"),
        ("app=other", "app=db", "5432/TCP", "deny"),
        ("app=web", "app=db", "7000/TCP", "deny"),
        ("app=web", "app=db", "5432/UDP", "deny"),
        ("app=other", "app=web", "7000/TCP", "allow"),
    ];
    for host in [1, 2] {
        for (from, to, port, want) in cases {
            let e = c.policy_explain(host, from, to, port)?;
            assert_eq!(
                e["verdict"], want,
                "h{host}: explain {from} -> {to} {port}: {e}"
            );
            if want == "deny" {
                assert_eq!(
                    e["ingress"]["verdict"], "deny",
                    "h{host}: {from} -> {to} {port}: {e}"
                );
            }
        }
    }
    let e = c.policy_explain(1, "app=web", "app=db", "5432/TCP")?;
    assert!(
        e["ingress"]["rule"].as_str().unwrap_or("").contains("db"),
        "the allow names its rule: {e}"
    );
    Ok(())
}
