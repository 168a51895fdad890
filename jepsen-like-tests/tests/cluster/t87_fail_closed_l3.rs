use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use membrane_jepsen::endpoint::Endpoint;
use membrane_jepsen::observe::{scrape, value};
use membrane_jepsen::rawpkt::{
    eth_frame, ipv4_udp, ipv6_udp, mac_of, neighbour_mac, received, udp_listen, vlan_frame,
    RawSocket, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6,
};
use membrane_jepsen::{require_root, wait_until, Cluster};

const UNSUPPORTED: &str =
    r#"membrane_datapath_packets_total{direction="egress",reason="unsupported-l3"}"#;

fn gateway(ep: &Endpoint) -> anyhow::Result<Ipv4Addr> {
    ep.result["ips"][0]["gateway"]
        .as_str()
        .context("the CNI result names no gateway")?
        .parse()
        .context("the CNI result's gateway is not IPv4")
}

/// Fail closed: from inside an endpoint, an IPv6 frame and VLAN-tagged (802.1Q and 802.1ad)
/// IPv4 frames sent on a raw AF_PACKET socket reach no other endpoint and are counted under
/// `unsupported-l3`; a plain IPv4 frame built and sent the same way does arrive.
#[test]
fn t87_ipv6_and_vlan_frames_from_an_endpoint_are_dropped_and_counted() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t87", 1)?;
    let a = c.add_endpoint(1, "a", &["app=a"])?;
    let b = c.add_endpoint(1, "b", &["app=b"])?;
    c.wait_endpoints_listed(&[&a, &b], Duration::from_secs(20))?;

    let rx = udp_listen(&b.netns, SocketAddr::from((b.ip, 7087)))?;
    let tx = RawSocket::open(&a.netns, &a.ifname)?;
    let src_mac = mac_of(&a.netns, &a.ifname)?;
    let gw_mac = neighbour_mac(&a.netns, &a.ifname, gateway(&a)?)?;
    let udp = |m: &[u8]| ipv4_udp(a.ip, b.ip, 40087, 7087, m);

    // Control: a plain IPv4 frame arrives (retried while the maps fill).
    wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        tx.send(&eth_frame(gw_mac, src_mac, ETH_P_IP, &udp(b"plain")))?;
        Ok(received(&rx, Duration::from_millis(300)).contains(&b"plain".to_vec()))
    })
    .context("a plain IPv4 frame from a to b never arrived")?;

    let before = value(&scrape(&c, 1)?, UNSUPPORTED);
    tx.send(&eth_frame(
        gw_mac,
        src_mac,
        ETH_P_IPV6,
        &ipv6_udp(7087, b"v6"),
    ))?;
    for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
        tx.send(&vlan_frame(
            gw_mac,
            src_mac,
            tpid,
            5,
            ETH_P_IP,
            &udp(b"tagged"),
        ))?;
    }
    let got = received(&rx, Duration::from_secs(1));
    assert!(got.is_empty(), "a non-IPv4 frame reached b: {got:?}");
    let mut after = before;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        after = value(&scrape(&c, 1)?, UNSUPPORTED);
        Ok(after >= before + 3.0)
    })
    .with_context(|| {
        format!(
            "unsupported-l3 went {before} -> {after}, expected +3; log: {}",
            c.log_tail(1)
        )
    })?;

    // And the control again, after the drops: the endpoint still works.
    tx.send(&eth_frame(gw_mac, src_mac, ETH_P_IP, &udp(b"still")))?;
    assert_eq!(
        received(&rx, Duration::from_secs(1)),
        vec![b"still".to_vec()]
    );
    Ok(())
}
