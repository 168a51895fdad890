use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use membrane_jepsen::observe::{scrape, value};
use membrane_jepsen::rawpkt::{
    eth_frame, ipv4_udp, received, udp_listen, udp_send, vxlan_payload, ETH_P_IP,
};
use membrane_jepsen::{ip_in, require_root, wait_until, Cluster};

fn series(direction: &str, reason: &str) -> String {
    format!(r#"membrane_datapath_packets_total{{direction="{direction}",reason="{reason}"}}"#)
}

fn v4(ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(v) => anyhow::bail!("{v} is not IPv4"),
    }
}

/// The last host address of an IPv4 CIDR ("10.128.2.0/24" -> 10.128.2.254).
fn last_host(cidr: &str) -> anyhow::Result<Ipv4Addr> {
    let (net, len) = cidr.split_once('/').context("a CIDR has a /")?;
    let net: Ipv4Addr = net.parse()?;
    let len: u32 = len.parse()?;
    anyhow::ensure!((8..=30).contains(&len), "unexpected pod CIDR {cidr}");
    Ok(Ipv4Addr::from(u32::from(net) + (1u32 << (32 - len)) - 2))
}

/// Waits until `series` on host `i` reaches `at_least`; the error names both values.
fn wait_count(c: &Cluster, i: usize, series: &str, at_least: f64) -> anyhow::Result<()> {
    let mut last = 0.0;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        last = value(&scrape(c, i)?, series);
        Ok(last >= at_least)
    })
    .with_context(|| format!("h{i} {series} = {last}, expected >= {at_least}"))
}

/// With encryption off, the plaintext overlay trusts no stranger. Against a listener in
/// endpoint e1 on h1, each of these reaches nothing while a legitimate packet from e2 on
/// h2 does arrive: VXLAN from a non-node address on the underlay (overlay-source on h1),
/// VXLAN sent by an endpoint to a node address (control-port on h2), and packets with
/// pod-pool sources routed to h1 from the underlay (pod-source on h1).
#[test]
fn t88_no_stranger_can_inject_into_the_overlay() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t88", 2)?;
    let e1 = c.add_endpoint(1, "e1", &["app=target"])?;
    let e2 = c.add_endpoint(2, "e2", &["app=peer"])?;
    c.wait_endpoints_listed(&[&e1, &e2], Duration::from_secs(20))?;
    let e2_identity = c.cli_json(2, &["endpoint", "get", &e2.container_id])?["identity"]
        .as_u64()
        .context("e2 has no identity")? as u32;
    let (h1, h2) = (v4(c.lab().host(1).ip())?, v4(c.lab().host(2).ip())?);
    let target = SocketAddr::from((e1.ip, 7088));
    let rx = udp_listen(&e1.netns, target)?;

    // Control: e2 -> e1 across the overlay arrives (retried while the ipcaches fill).
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        udp_send(&e2.netns, SocketAddr::from((e2.ip, 0)), target, b"legit")?;
        Ok(received(&rx, Duration::from_millis(300)).contains(&b"legit".to_vec()))
    })
    .context("e2 -> e1 never arrived: the test cannot tell a drop from a broken overlay")?;

    // The VXLAN a forger sends: the inner packet claims e2's address and identity.
    let inner = eth_frame(
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        ETH_P_IP,
        &ipv4_udp(e2.ip, e1.ip, 40088, 7088, b"forged"),
    );
    let vxlan = vxlan_payload(e2_identity, &inner);

    // 1. From a stranger on the underlay.
    let ul = c.lab().underlay_netns().to_string();
    ip_in(&ul, &["addr", "add", "10.77.0.250/24", "dev", "br0"])?;
    let source_before = value(&scrape(&c, 1)?, &series("ingress", "overlay-source"));
    udp_send(
        &ul,
        SocketAddr::from(([10, 77, 0, 250], 40000)),
        SocketAddr::from((h1, 8472)),
        &vxlan,
    )?;
    wait_count(
        &c,
        1,
        &series("ingress", "overlay-source"),
        source_before + 1.0,
    )?;

    // 2. From an endpoint, to its own node's and to the other node's address.
    let port_before = value(&scrape(&c, 2)?, &series("egress", "control-port"));
    for node in [h1, h2] {
        udp_send(
            &e2.netns,
            SocketAddr::from((e2.ip, 0)),
            SocketAddr::from((node, 8472)),
            &vxlan,
        )?;
    }
    wait_count(&c, 2, &series("egress", "control-port"), port_before + 2.0)?;

    // 3. Pod-pool sources routed to h1 from the underlay: an address of h2's pod CIDR
    //    that no endpoint has, and e2's own address.
    let cidr1 = c.pod_cidr(1)?;
    let fake = last_host(&c.pod_cidr(2)?)?;
    ip_in(&ul, &["route", "add", &cidr1, "via", &h1.to_string()])?;
    let pod_before = value(&scrape(&c, 1)?, &series("ingress", "pod-source"));
    for src in [fake, e2.ip] {
        ip_in(&ul, &["addr", "add", &format!("{src}/32"), "dev", "lo"])?;
        udp_send(&ul, SocketAddr::from((src, 0)), target, b"pod source")?;
    }
    wait_count(&c, 1, &series("ingress", "pod-source"), pod_before + 2.0)?;

    let got = received(&rx, Duration::from_secs(1));
    assert!(got.is_empty(), "an injected packet reached e1: {got:?}");

    // The overlay still works for the legitimate peer.
    udp_send(
        &e2.netns,
        SocketAddr::from((e2.ip, 0)),
        target,
        b"legit again",
    )?;
    assert_eq!(
        received(&rx, Duration::from_secs(1)),
        vec![b"legit again".to_vec()]
    );
    Ok(())
}
