use std::time::Duration;

use membrane_jepsen::endpoint::{check_pair, EchoServers, Proto};
use membrane_jepsen::{require_root, wait_until, Cluster};

/// A node removed from the registry takes its pod CIDR and its endpoints' /32s out of every
/// other node's ipcache within a few seconds; the others still reach each other.
#[test]
fn t73_a_removed_node_leaves_every_ipcache() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t73", 3)?;
    let eps = [
        c.add_endpoint(1, "a", &["app=t73"])?,
        c.add_endpoint(2, "a", &["app=t73"])?,
        c.add_endpoint(3, "a", &["app=t73"])?,
    ];
    let gone_cidr = c.pod_cidr(3)?;
    let gone_id = c.node_id(3)?;
    let gone_ep = format!("{}/32", eps[2].ip);
    let present = |i: usize| -> anyhow::Result<(bool, bool)> {
        let entries = c.bpf_ipcache(i)?;
        Ok((
            entries.iter().any(|e| e["cidr"] == gone_cidr.as_str()),
            entries.iter().any(|e| e["cidr"] == gone_ep.as_str()),
        ))
    };
    for i in [1, 2] {
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            Ok(present(i)? == (true, true))
        })
        .map_err(|e| anyhow::anyhow!("h{i} never learnt h3's entries: {e:#}"))?;
    }

    c.lab().kill(3)?;
    c.cli(1, &["node", "remove", &gone_id.to_string()])?;
    for i in [1, 2] {
        wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            Ok(present(i)? == (false, false))
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "h{i} still has {gone_cidr} or {gone_ep}: {e:#}; ipcache {:?}; log: {}",
                c.bpf_ipcache(i).ok(),
                c.log_tail(i)
            )
        })?;
    }
    let listed = c.endpoints(1)?;
    assert!(
        listed
            .iter()
            .all(|e| e["container_id"] != eps[2].container_id.as_str()),
        "the removed node's endpoint is still listed: {listed:?}"
    );
    let _s = EchoServers::start(&[&eps[0], &eps[1]])?;
    check_pair(&eps[0], &eps[1], Proto::Tcp, Duration::from_secs(10))?;
    check_pair(&eps[1], &eps[0], Proto::Udp, Duration::from_secs(10))?;
    Ok(())
}
