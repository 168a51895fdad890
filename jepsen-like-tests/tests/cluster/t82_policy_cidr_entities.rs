use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use membrane_jepsen::endpoint::{EchoServers, Endpoint, ECHO_TCP_PORT};
use membrane_jepsen::traffic::{tcp_attempt, TcpAttempt, TcpEchoServer};
use membrane_jepsen::{ip_in, require_root, wait_until, Cluster};

/// Port of the echo servers outside the endpoints (underlay addresses, host namespaces).
const PORT: u16 = 7500;
/// Addresses outside the cluster, added to the underlay bridge: the "world" of the lab. A
/// node's own underlay address is not one: the ipcache gives it host (1) or remote-node (6).
const OUT_ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// Inside the except 10.77.0.200/29.
const OUT_EXCEPTED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
/// Inside the except too, but also in a longer CIDR that a rule allows.
const OUT_REALLOWED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 204);

fn egress_policy(egress: &str) -> String {
    format!(
        r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {{name: client-out}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
{egress}"#
    )
}

const CIDR_RULES: &str = r#"    - toCIDRSet: [{cidr: 10.77.0.0/24, except: [10.77.0.200/29]}]
    - toCIDR: [10.77.0.204/32]
"#;

/// Where the client may go, and what each attempt must come to.
struct Targets {
    out: Vec<(Ipv4Addr, &'static str)>,
    own_host: SocketAddr,
    remote_host: SocketAddr,
    peer: SocketAddr,
}

fn expect(
    client: &Endpoint,
    to: SocketAddr,
    what: &str,
    allowed: bool,
    phase: &str,
) -> anyhow::Result<()> {
    if allowed {
        let mut last = TcpAttempt::TimedOut;
        wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            last = tcp_attempt(&client.netns, to, Duration::from_secs(2))?;
            Ok(last == TcpAttempt::Echoed)
        })
        .map_err(|e| {
            anyhow::anyhow!("{phase}: client -> {what} {to} should pass: {last:?} ({e:#})")
        })
    } else {
        for _ in 0..2 {
            let got = tcp_attempt(&client.netns, to, Duration::from_secs(1))?;
            anyhow::ensure!(
                got == TcpAttempt::TimedOut,
                "{phase}: client -> {what} {to} should be dropped, got {got:?}"
            );
        }
        Ok(())
    }
}

/// Egress CIDR and entity rules, on an endpoint whose traffic to addresses outside the
/// cluster leaves through the host stack (masqueraded): toCIDRSet with an except, a longer
/// toCIDR inside the except, toEntities world, cluster and host; the ipcache carries the
/// CIDR identities while a policy names them. And fromEntities host: the node's own
/// namespace reaches a local endpoint only while a rule admits the host.
#[test]
fn t82_cidr_and_entity_rules_decide_by_destination() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t82", 2)?;
    let client = c.add_endpoint(1, "client", &["app=client"])?;
    let peer = c.add_endpoint(2, "peer", &["app=peer"])?;
    let web = c.add_endpoint(1, "web", &["app=web"])?;
    c.wait_endpoints_listed(&[&client, &peer, &web], Duration::from_secs(20))?;
    let _echo = EchoServers::start(&[&peer, &web])?;

    let ul = c.lab().underlay_netns().to_string();
    let mut servers = Vec::new();
    for ip in [OUT_ALLOWED, OUT_EXCEPTED, OUT_REALLOWED] {
        ip_in(&ul, &["addr", "add", &format!("{ip}/24"), "dev", "br0"])?;
        servers.push(TcpEchoServer::start(&ul, ip, PORT)?);
    }
    let host_ip = |i: usize| match c.lab().host(i).ip() {
        std::net::IpAddr::V4(v) => v,
        other => panic!("IPv4 lab, got {other}"),
    };
    for i in 1..=2 {
        servers.push(TcpEchoServer::start(
            c.lab().host(i).netns(),
            host_ip(i),
            PORT,
        )?);
    }
    let t = Targets {
        out: vec![
            (OUT_ALLOWED, "world (in the CIDR set)"),
            (OUT_EXCEPTED, "world (in the except)"),
            (OUT_REALLOWED, "world (in the except and a /32 rule)"),
        ],
        own_host: (host_ip(1), PORT).into(),
        remote_host: (host_ip(2), PORT).into(),
        peer: (peer.ip, ECHO_TCP_PORT).into(),
    };
    // (world x3, own host, remote host, peer endpoint) for each phase.
    let check = |phase: &str, want: [bool; 6]| -> anyhow::Result<()> {
        for (k, (ip, what)) in t.out.iter().enumerate() {
            expect(&client, (*ip, PORT).into(), what, want[k], phase)?;
        }
        expect(&client, t.own_host, "its own node", want[3], phase)?;
        expect(&client, t.remote_host, "the other node", want[4], phase)?;
        expect(&client, t.peer, "a cluster endpoint", want[5], phase)
    };
    check("default allow", [true; 6])?;

    c.policy_apply(&egress_policy(CIDR_RULES))?;
    check(
        "toCIDRSet with except",
        [true, false, true, false, false, false],
    )?;
    // Every CIDR of the policy has its identity in the ipcache, above 2^24.
    let entries = c.bpf_ipcache(1)?;
    for cidr in ["10.77.0.0/24", "10.77.0.200/29", "10.77.0.204/32"] {
        let e = entries.iter().find(|e| e["cidr"] == cidr);
        let id = e.and_then(|e| e["identity"].as_u64()).unwrap_or(0);
        assert!(
            id & 0xff00_0000 == 0x0100_0000,
            "no CIDR identity for {cidr}: {entries:?}"
        );
    }
    let e = c.policy_explain(1, "app=client", &OUT_EXCEPTED.to_string(), "7500/TCP")?;
    assert_eq!(e["verdict"], "deny", "{e}");
    let e = c.policy_explain(1, "app=client", &OUT_REALLOWED.to_string(), "7500/TCP")?;
    assert_eq!(e["verdict"], "allow", "{e}");

    c.policy_apply(&egress_policy("    - toEntities: [world]\n"))?;
    check("toEntities world", [true, true, true, false, false, false])?;
    // No policy names a CIDR any more: their identities leave the ipcache.
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok(!c
            .bpf_ipcache(1)?
            .iter()
            .any(|e| e["cidr"] == "10.77.0.200/29"))
    })?;

    c.policy_apply(&egress_policy("    - toEntities: [cluster]\n"))?;
    check(
        "toEntities cluster",
        [false, false, false, true, true, true],
    )?;

    c.policy_apply(&egress_policy("    - toEntities: [host]\n"))?;
    check("toEntities host", [false, false, false, true, false, false])?;

    // fromEntities host on web (h1): h1's own namespace gets in, an endpoint does not. (The
    // other node's namespace has no route to h1's pod CIDR: only endpoints use the overlay.)
    let to_web: SocketAddr = (web.ip, ECHO_TCP_PORT).into();
    let from = |i: usize| tcp_attempt(c.lab().host(i).netns(), to_web, Duration::from_secs(1));
    assert_eq!(from(1)?, TcpAttempt::Echoed, "before any ingress policy");
    let ingress = |rule: &str| {
        format!(
            "apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web-in}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n    - {rule}\n"
        )
    };
    c.policy_apply(&ingress("fromEntities: [host]"))?;
    assert_eq!(
        from(1)?,
        TcpAttempt::Echoed,
        "fromEntities host admits the node itself"
    );
    let e = tcp_attempt(&peer.netns, to_web, Duration::from_secs(1))?;
    assert_eq!(e, TcpAttempt::TimedOut, "an endpoint is not the host");
    c.policy_apply(&ingress("fromEndpoints: [{matchLabels: {app: peer}}]"))?;
    assert_eq!(
        from(1)?,
        TcpAttempt::TimedOut,
        "without a host rule the node is refused"
    );
    let e = tcp_attempt(&peer.netns, to_web, Duration::from_secs(2))?;
    assert_eq!(e, TcpAttempt::Echoed, "the endpoint rule admits peer");
    Ok(())
}
