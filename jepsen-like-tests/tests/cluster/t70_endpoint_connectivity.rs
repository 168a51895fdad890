use std::time::Duration;

use membrane_jepsen::endpoint::{check_pair, EchoServers, Endpoint, Proto};
use membrane_jepsen::{require_root, Cluster};

/// Three nodes, two endpoints each, attached by `membrane-cni`: every endpoint reaches every
/// other over TCP and UDP, on the same node (redirected by BPF) and across nodes (VXLAN from
/// BPF); and every node's ipcache sends the other nodes' pod CIDRs to their underlay IPs.
#[test]
fn t70_every_endpoint_reaches_every_other_over_tcp_and_udp() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t70", 3)?;
    let mut eps: Vec<Endpoint> = Vec::new();
    for i in 1..=3 {
        eps.push(c.add_endpoint(i, "a", &["app=web", &format!("t70=h{i}a")])?);
        eps.push(c.add_endpoint(i, "b", &["app=db"])?);
    }
    let refs: Vec<&Endpoint> = eps.iter().collect();
    c.wait_endpoints_listed(&refs, Duration::from_secs(20))?;
    let _servers = EchoServers::start(&refs)?;

    let mut failures = Vec::new();
    for from in &eps {
        for to in &eps {
            if from.netns == to.netns {
                continue;
            }
            for proto in [Proto::Tcp, Proto::Udp] {
                if let Err(e) = check_pair(from, to, proto, Duration::from_secs(10)) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 60 checks failed:\n{}\nlogs:\nh1: {}\nh2: {}\nh3: {}",
        failures.len(),
        failures.join("\n"),
        c.log_tail(1),
        c.log_tail(2),
        c.log_tail(3)
    );

    for i in 1..=3 {
        let entries = c.bpf_ipcache(i)?;
        for j in (1..=3).filter(|j| *j != i) {
            let cidr = c.pod_cidr(j)?;
            let tunnel = c.lab().host(j).ip().to_string();
            assert!(
                entries
                    .iter()
                    .any(|e| e["cidr"] == cidr.as_str() && e["tunnel_endpoint"] == tunnel.as_str()),
                "h{i}'s ipcache has no {cidr} via {tunnel}: {entries:?}"
            );
            for ep in eps.iter().filter(|e| e.host == j) {
                let host32 = format!("{}/32", ep.ip);
                assert!(
                    entries
                        .iter()
                        .any(|e| e["cidr"] == host32.as_str()
                            && e["tunnel_endpoint"] == tunnel.as_str()),
                    "h{i}'s ipcache has no {host32} via {tunnel}: {entries:?}"
                );
            }
        }
    }
    Ok(())
}
