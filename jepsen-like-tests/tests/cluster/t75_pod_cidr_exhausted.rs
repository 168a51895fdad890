use membrane_jepsen::endpoint::{endpoint_links, link_names};
use membrane_jepsen::{netns_path, require_root, Cluster};
use serde_json::json;

/// A /30 pod CIDR has one address to give (network, gateway and broadcast are never given
/// out): the second ADD fails with code 100 and allocates nothing; once the first endpoint
/// is deleted, the address can be had again.
#[test]
fn t75_an_exhausted_pod_cidr_refuses_with_code_100() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start_with("t75", 1, &["--node-cidr-size", "30"])?;
    let first = c.add_endpoint(1, "a", &["app=t75-first"])?;
    let ids_before = c.identities(1)?.len();
    let ns = c.lab().add_endpoint_netns(1, "b")?;
    let out = c.cni(
        1,
        "ADD",
        "ctr-t75-b",
        Some(&netns_path(&ns)),
        "eth0",
        &json!({"labels": {"app": "t75-second"}}),
        "",
    )?;
    assert!(!out.exit_ok, "the second ADD succeeded: {out}");
    assert_eq!(out.error_code(), Some(100), "{out}");
    assert!(!out.error_msg().is_empty(), "{out}");
    assert_eq!(
        endpoint_links(c.lab().host(1).netns())?.len(),
        1,
        "a veth was left"
    );
    assert_eq!(link_names(&ns)?, vec!["lo".to_string()]);
    assert_eq!(c.endpoints(1)?.len(), 1);
    assert_eq!(
        c.identities(1)?.len(),
        ids_before,
        "an identity was allocated"
    );

    c.del_endpoint(&first)?;
    let out = c.cni(
        1,
        "ADD",
        "ctr-t75-b",
        Some(&netns_path(&ns)),
        "eth0",
        &json!({"labels": {"app": "t75-second"}}),
        "",
    )?;
    assert!(out.exit_ok, "ADD after the DEL: {out}");
    assert_eq!(membrane_jepsen::endpoint::result_ip(&out.json)?, first.ip);
    Ok(())
}
