use std::time::Duration;

use membrane_jepsen::endpoint::{endpoint_links, Endpoint};
use membrane_jepsen::{require_root, wait_until, Cluster};
use serde_json::Value;

fn references(c: &Cluster, label: &str) -> anyhow::Result<Option<u64>> {
    Ok(c.identities(1)?
        .iter()
        .find(|i| {
            i["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l == label))
        })
        .and_then(|i| i["references"].as_u64()))
}

fn host_ifname(c: &Cluster, ep: &Endpoint) -> anyhow::Result<String> {
    let v = c.cli_json(ep.host, &["endpoint", "get", &ep.container_id])?;
    v["host_ifname"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no host_ifname in {v}"))
}

fn bpf_has(c: &Cluster, ip: &str) -> anyhow::Result<bool> {
    Ok(c.bpf_endpoints(1)?.iter().any(|e| e["ipv4"] == ip))
}

/// DEL undoes ADD: the host veth, the endpoint record, the BPF entry and the identity
/// reference go; the address rests (not handed to the next endpoint, which could otherwise
/// inherit flows peers still track for it); a second DEL still succeeds.
#[test]
fn t72_delete_frees_the_veth_address_identity_and_map_entry() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t72", 1)?;
    let h = c.lab().host(1).netns().to_string();
    let a = c.add_endpoint(1, "a", &["app=t72"])?;
    let b = c.add_endpoint(1, "b", &["app=t72"])?;
    assert_eq!(
        references(&c, "app=t72")?,
        Some(2),
        "two endpoints share the identity"
    );
    let a_if = host_ifname(&c, &a)?;
    assert!(endpoint_links(&h)?.contains(&a_if), "no {a_if} in {h}");
    let a_ip = a.ip.to_string();
    assert!(bpf_has(&c, &a_ip)?, "{a_ip} not in the endpoints map");

    c.del_endpoint(&a)?;
    let links = endpoint_links(&h)?;
    assert!(!links.contains(&a_if), "{a_if} still in {h}: {links:?}");
    assert_eq!(links.len(), 1, "only b's veth is left: {links:?}");
    assert!(!bpf_has(&c, &a_ip)?, "{a_ip} still in the endpoints map");
    assert_eq!(references(&c, "app=t72")?, Some(1));
    let listed: Vec<Value> = c.endpoints(1)?;
    assert!(
        listed
            .iter()
            .all(|e| e["container_id"] != a.container_id.as_str()),
        "{listed:?}"
    );
    // The container side went with the pair.
    let inside = membrane_jepsen::endpoint::link_names(&a.netns)?;
    assert_eq!(inside, vec!["lo".to_string()], "{inside:?}");

    // Deleting again is a success (CNI requires DEL to be idempotent).
    c.del_endpoint(&a)?;

    // a's address is the lowest free one, but it rests: the next endpoint gets another.
    let n = c.add_endpoint(1, "n", &["app=t72-new"])?;
    assert_ne!(n.ip, a.ip, "a's address was given out again at once");
    assert_ne!(n.ip, b.ip);

    c.del_endpoint(&b)?;
    wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        Ok(references(&c, "app=t72")?.is_none())
    })
    .map_err(|e| anyhow::anyhow!("the identity outlived its last endpoint: {e:#}"))?;
    Ok(())
}
