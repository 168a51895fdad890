use std::net::SocketAddr;
use std::time::Duration;

use membrane_jepsen::endpoint::{check_pair, EchoServers, Endpoint, Proto, ECHO_TCP_PORT};
use membrane_jepsen::traffic::{tcp_attempt, StreamStats, TcpAttempt, TcpStreamProbe};
use membrane_jepsen::{require_root, Cluster};

/// The port of the long-lived stream. Nothing listens on it once the stream is accepted, so
/// a new connect to it is refused (RST) when policy lets it through and times out when not.
const STREAM_PORT: u16 = 7200;

/// db takes web on the stream port and the echo port.
fn db_policy(ports: &[u16]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{port: \"{p}\", protocol: TCP}}"))
        .collect();
    format!(
        r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {{name: db}}
spec:
  endpointSelector: {{matchLabels: {{app: db}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: web}}}}]
      toPorts: [{{ports: [{}]}}]
"#,
        ports.join(", ")
    )
}

/// A policy that selects nobody here: a new revision that changes no endpoint's entries.
const UNRELATED: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: unrelated}
spec:
  endpointSelector: {matchLabels: {app: nobody}}
  ingress:
    - fromEntities: [host]
"#;

/// A 2-node cluster whose agents get `agent_args`, with db on h1 and web on h2 (the stream
/// crosses the overlay), both listed and reachable.
fn setup(hint: &str, agent_args: &[&str]) -> anyhow::Result<(Cluster, Endpoint, Endpoint)> {
    let (mut c, _) = Cluster::init(hint, 2)?;
    c.set_agent_args(agent_args);
    c.start_first()?;
    let token = c.create_token(1)?;
    c.join(2, &token)?;
    c.wait_for_voters(2, Duration::from_secs(30))?;
    for i in 1..=2 {
        c.wait_plugin_socket(i)?;
    }
    let db = c.add_endpoint(1, "db", &["app=db"])?;
    let web = c.add_endpoint(2, "web", &["app=web"])?;
    c.wait_endpoints_listed(&[&db, &web], Duration::from_secs(20))?;
    {
        let _s = EchoServers::start(&[&db])?;
        check_pair(&web, &db, Proto::Tcp, Duration::from_secs(10))?;
    }
    Ok((c, db, web))
}

fn attempt(from: &Endpoint, to: &Endpoint, port: u16) -> anyhow::Result<TcpAttempt> {
    tcp_attempt(
        &from.netns,
        SocketAddr::from((to.ip, port)),
        Duration::from_secs(1),
    )
}

fn must_flow(stream: &TcpStreamProbe, what: &str, c: &Cluster) -> anyhow::Result<()> {
    stream
        .wait_for_more(256 * 1024, Duration::from_secs(5))
        .map_err(|e| {
            anyhow::anyhow!(
                "{what}: the stream stopped: {e:#}; {:?}\nh1: {}",
                stream.stats(),
                c.log_tail(1)
            )
        })
}

/// The stream delivers nothing for a few seconds, once what was in flight is through.
fn must_be_cut(stream: &TcpStreamProbe, c: &Cluster) -> anyhow::Result<StreamStats> {
    std::thread::sleep(Duration::from_secs(2));
    let a = stream.stats();
    std::thread::sleep(Duration::from_secs(3));
    let b = stream.stats();
    anyhow::ensure!(
        b.received == a.received,
        "the stream still flows after the cut: {} -> {} bytes in 3 s\nh1: {}",
        a.received,
        b.received,
        c.log_tail(1)
    );
    Ok(b)
}

/// By default a policy change keeps the established connections it still allows (an
/// unrelated new policy, or a change to the server's own policy that keeps its port) and
/// cuts the ones it no longer allows: their bytes stop within seconds and new connects time
/// out, while what is still allowed keeps working.
#[test]
fn t83_a_policy_change_cuts_only_what_it_no_longer_allows() -> anyhow::Result<()> {
    require_root()?;
    let (c, db, web) = setup("t83cut", &[])?;
    let _echo = EchoServers::start(&[&db])?;
    c.policy_apply(&db_policy(&[STREAM_PORT, ECHO_TCP_PORT]))?;
    let stream = TcpStreamProbe::start(
        &db.netns,
        db.ip,
        STREAM_PORT,
        &web.netns,
        Duration::from_secs(5),
    )?;
    must_flow(&stream, "at the start", &c)?;
    assert_eq!(attempt(&web, &db, STREAM_PORT)?, TcpAttempt::Refused);

    c.policy_apply(&format!(
        "{}---\n{UNRELATED}",
        db_policy(&[STREAM_PORT, ECHO_TCP_PORT])
    ))?;
    must_flow(&stream, "after an unrelated policy", &c)?;
    c.policy_apply(&db_policy(&[STREAM_PORT, ECHO_TCP_PORT, 7300]))?;
    must_flow(&stream, "after db's policy grew a port", &c)?;
    let s = stream.stats();
    assert!(s.errors.is_empty(), "{s:?}");
    assert!(s.longest_stall < Duration::from_secs(2), "{s:?}");

    c.policy_apply(&db_policy(&[ECHO_TCP_PORT]))?;
    must_be_cut(&stream, &c)?;
    assert_eq!(attempt(&web, &db, STREAM_PORT)?, TcpAttempt::TimedOut);
    assert_eq!(attempt(&web, &db, ECHO_TCP_PORT)?, TcpAttempt::Echoed);
    drop(stream);
    Ok(())
}

/// With `--keep-established`, the same cutting change leaves the established stream
/// flowing while new connections to the port are refused by policy (time out).
#[test]
fn t83_keep_established_keeps_the_stream_and_refuses_new_connects() -> anyhow::Result<()> {
    require_root()?;
    let (c, db, web) = setup("t83keep", &["--keep-established"])?;
    let _echo = EchoServers::start(&[&db])?;
    c.policy_apply(&db_policy(&[STREAM_PORT, ECHO_TCP_PORT]))?;
    let stream = TcpStreamProbe::start(
        &db.netns,
        db.ip,
        STREAM_PORT,
        &web.netns,
        Duration::from_secs(5),
    )?;
    must_flow(&stream, "at the start", &c)?;

    c.policy_apply(&db_policy(&[ECHO_TCP_PORT]))?;
    assert_eq!(attempt(&web, &db, STREAM_PORT)?, TcpAttempt::TimedOut);
    must_flow(&stream, "after the change, with --keep-established", &c)?;
    std::thread::sleep(Duration::from_secs(3));
    must_flow(&stream, "3 s later", &c)?;
    assert_eq!(attempt(&web, &db, STREAM_PORT)?, TcpAttempt::TimedOut);
    assert_eq!(attempt(&web, &db, ECHO_TCP_PORT)?, TcpAttempt::Echoed);
    let end = stream.finish();
    assert!(end.errors.is_empty(), "{end:?}");
    assert_eq!(end.received, end.sent, "bytes lost: {end:?}");
    Ok(())
}
