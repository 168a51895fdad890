use std::time::Duration;

use membrane_jepsen::endpoint::endpoint_links;
use membrane_jepsen::{require_root, wait_until, Cluster};

fn queued(c: &Cluster) -> anyhow::Result<usize> {
    let dir = c.lab().host(1).cni_queue_dir();
    if !dir.exists() {
        return Ok(0);
    }
    Ok(std::fs::read_dir(&dir)?.filter_map(Result::ok).count())
}

/// A DEL while the agent is down succeeds (runtimes retry DEL forever otherwise) and is
/// queued; the agent applies the queue when it starts: the endpoint is gone, the queue empty.
#[test]
fn t77_a_delete_while_the_agent_is_down_is_applied_on_start() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t77", 1)?;
    let h = c.lab().host(1).netns().to_string();
    let ep = c.add_endpoint(1, "a", &["app=t77"])?;
    let keep = c.add_endpoint(1, "b", &["app=t77"])?;
    assert_eq!(endpoint_links(&h)?.len(), 2);

    c.lab().stop(1)?;
    let out = c.del_endpoint(&ep)?;
    assert!(out.exit_ok, "{out}");
    assert!(
        queued(&c)? >= 1,
        "nothing in {}",
        c.lab().host(1).cni_queue_dir().display()
    );

    c.restart_agent(1)?;
    wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let listed = c.endpoints(1)?;
        Ok(queued(&c)? == 0
            && !listed
                .iter()
                .any(|e| e["container_id"] == ep.container_id.as_str())
            && endpoint_links(&h)?.len() == 1)
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "the queued DEL was not applied: {e:#}; queue {:?}; log: {}",
            queued(&c),
            c.log_tail(1)
        )
    })?;
    let ip = ep.ip.to_string();
    assert!(!c.bpf_endpoints(1)?.iter().any(|e| e["ipv4"] == ip.as_str()));
    // The other endpoint was left alone.
    let listed = c.endpoints(1)?;
    assert!(listed
        .iter()
        .any(|e| e["container_id"] == keep.container_id.as_str()));
    Ok(())
}
