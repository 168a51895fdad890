use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use membrane_jepsen::observe::{scrape, value};
use membrane_jepsen::rawpkt::udp_send;
use membrane_jepsen::{require_root, tcp_reachable, wait_until, Cluster, RPC_PORT};

const CONTROL_PORT: &str =
    r#"membrane_datapath_packets_total{direction="egress",reason="control-port"}"#;

const ALLOW_RPC: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: ops-rpc}
spec:
  endpointSelector: {matchLabels: {app: ops}}
  egress:
    - toEntities: [host, remote-node]
      toPorts: [{ports: [{port: "7700", protocol: TCP}]}]
"#;

/// An endpoint cannot reach a node's RPC (TCP) or gossip (UDP) port, neither its own
/// node's nor another node's, although nothing enforces its egress: the datapath drops it
/// as `control-port`. An egress policy that names the node entities and the RPC port opens
/// exactly that (and a port that is not a control port stays reachable throughout, so a
/// drop is not a broken path).
#[test]
fn t89_endpoints_reach_node_control_ports_only_when_a_policy_allows() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t89", 2)?;
    let ops = c.add_endpoint(1, "ops", &["app=ops"])?;
    c.wait_endpoints_listed(&[&ops], Duration::from_secs(20))?;
    let nodes: Vec<IpAddr> = (1..=2).map(|i| c.lab().host(i).ip()).collect();
    let quick = Duration::from_millis(500);

    // Control: a port that is not a control port answers (RST: nothing listens) on both
    // node addresses, through the same path.
    for node in &nodes {
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            tcp_reachable(&ops.netns, *node, 9, quick)
        })
        .with_context(|| format!("{node}:9 never answered the endpoint"))?;
    }

    let before = value(&scrape(&c, 1)?, CONTROL_PORT);
    for node in &nodes {
        assert!(
            !tcp_reachable(&ops.netns, *node, RPC_PORT, quick)?,
            "the endpoint reached the RPC port of {node}"
        );
        udp_send(
            &ops.netns,
            SocketAddr::from((ops.ip, 0)),
            SocketAddr::new(*node, RPC_PORT + 1),
            b"gossip",
        )?;
    }
    let mut after = before;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        after = value(&scrape(&c, 1)?, CONTROL_PORT);
        // At least one SYN per RPC attempt and one datagram per gossip send.
        Ok(after >= before + 4.0)
    })
    .with_context(|| format!("control-port went {before} -> {after}, expected +4"))?;

    // With an explicit allow the RPC port answers; gossip stays closed.
    c.policy_apply(ALLOW_RPC)?;
    for node in &nodes {
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            tcp_reachable(&ops.netns, *node, RPC_PORT, quick)
        })
        .with_context(|| format!("with the policy, {node}:{RPC_PORT} is still unreachable"))?;
    }
    let before = value(&scrape(&c, 1)?, CONTROL_PORT);
    udp_send(
        &ops.netns,
        SocketAddr::from((ops.ip, 0)),
        SocketAddr::new(nodes[0], RPC_PORT + 1),
        b"gossip",
    )?;
    let mut after = before;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        after = value(&scrape(&c, 1)?, CONTROL_PORT);
        Ok(after > before)
    })
    .with_context(|| format!("gossip after the policy: control-port {before} -> {after}"))?;
    Ok(())
}
