use membrane_jepsen::endpoint::{endpoint_links, link_names};
use membrane_jepsen::{ip_in, netns_path, require_root, Cluster};
use serde_json::json;

/// ADD is idempotent for the same container id and netns, and refuses (101) the same
/// container id in another netns, and an interface name already taken inside the netns;
/// refusals leave nothing behind.
#[test]
fn t76_repeated_and_colliding_adds() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t76", 1)?;
    let h = c.lab().host(1).netns().to_string();
    let ep = c.add_endpoint(1, "a", &["app=t76"])?;
    let again = c
        .cni(
            1,
            "ADD",
            &ep.container_id,
            Some(&ep.netns_path()),
            "eth0",
            &json!({"labels": {"app": "t76"}}),
            "",
        )?
        .ok()?;
    assert_eq!(
        again.json["ips"], ep.result["ips"],
        "a repeated ADD changed the result"
    );
    assert_eq!(again.json["interfaces"], ep.result["interfaces"]);
    assert_eq!(endpoint_links(&h)?.len(), 1);
    let refs = c
        .identities(1)?
        .iter()
        .find(|i| {
            i["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l == "app=t76"))
        })
        .and_then(|i| i["references"].as_u64());
    assert_eq!(refs, Some(1), "a repeated ADD took a second reference");

    // Same container id, another netns.
    let other = c.lab().add_endpoint_netns(1, "b")?;
    let out = c.cni(
        1,
        "ADD",
        &ep.container_id,
        Some(&netns_path(&other)),
        "eth0",
        &json!({"labels": {"app": "t76"}}),
        "",
    )?;
    assert!(!out.exit_ok, "{out}");
    assert_eq!(out.error_code(), Some(101), "{out}");
    assert_eq!(link_names(&other)?, vec!["lo".to_string()]);

    // The container-side name is taken inside the netns.
    let taken = c.lab().add_endpoint_netns(1, "c")?;
    // A bridge, as the kernel may lack the dummy module; any device type will do.
    ip_in(&taken, &["link", "add", "eth0", "type", "bridge"])?;
    let out = c.cni(
        1,
        "ADD",
        "ctr-t76-c",
        Some(&netns_path(&taken)),
        "eth0",
        &json!({"labels": {"app": "t76-c"}}),
        "",
    )?;
    assert!(!out.exit_ok, "{out}");
    assert_eq!(out.error_code(), Some(101), "{out}");
    let links = endpoint_links(&h)?;
    assert_eq!(links.len(), 1, "a veth was left: {links:?}");
    let mine = ip_in(&taken, &["-d", "link", "show", "eth0"])?;
    assert!(
        mine.contains("bridge"),
        "eth0 in {taken} was replaced: {mine}"
    );
    let listed = c.endpoints(1)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        !c.identities(1)?.iter().any(|i| i["labels"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l == "app=t76-c"))),
        "the refused ADD left an identity"
    );
    Ok(())
}
