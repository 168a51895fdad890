use membrane_jepsen::endpoint::{endpoint_links, link_names, CniCall, CniOutcome};
use membrane_jepsen::{netns_path, require_root, Cluster};
use serde_json::json;

/// Asserts a CNI error: non-zero exit, one of the `codes`, and a message.
fn assert_error(what: &str, out: &CniOutcome, codes: &[u64]) {
    assert!(!out.exit_ok, "{what}: succeeded: {out}");
    let code = out.error_code();
    assert!(
        code.is_some_and(|c| codes.contains(&c)),
        "{what}: code {code:?}, want one of {codes:?}: {out}"
    );
    assert!(!out.error_msg().trim().is_empty(), "{what}: no msg: {out}");
}

/// Bad CNI input is refused with the right code and a message, and leaves nothing behind:
/// no `mb*` veth, no endpoint, no identity, nothing inside the netns.
#[test]
fn t74_bad_input_gets_the_right_code_and_leaves_nothing() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t74", 1)?;
    let ns = c.lab().add_endpoint_netns(1, "x")?;
    let path = netns_path(&ns);
    let identities_before = c.identities(1)?.len();
    let labels = json!({"labels": {"app": "t74"}});
    let good = |command: &str| CniCall {
        command: command.into(),
        container_id: "ctr-t74".into(),
        netns: Some(path.clone()),
        ifname: "eth0".into(),
        args: String::new(),
        stdin: serde_json::to_vec(&c.cni_config(1, &labels)).unwrap(),
    };

    let mut call = good("ADD");
    call.stdin = Vec::new();
    assert_error("missing config", &c.cni_call(1, &call)?, &[6, 7]);

    let mut call = good("ADD");
    call.stdin = br#"{"cniVersion": "1.0.0", "name": "membrane", "type": "#.to_vec();
    assert_error("malformed JSON", &c.cni_call(1, &call)?, &[6]);

    assert_error("unknown command", &c.cni_call(1, &good("FROB"))?, &[4]);

    let mut call = good("ADD");
    call.netns = None;
    assert_error("missing CNI_NETNS", &c.cni_call(1, &call)?, &[4]);

    let mut call = good("ADD");
    call.container_id = String::new();
    assert_error("missing CNI_CONTAINERID", &c.cni_call(1, &call)?, &[4]);

    let mut call = good("ADD");
    call.netns = Some(netns_path(&format!("{}-h1-nonexistent", c.lab().id())));
    assert_error("netns that does not exist", &c.cni_call(1, &call)?, &[3]);

    let check_clean = |what: &str| -> anyhow::Result<()> {
        let h = c.lab().host(1).netns();
        assert_eq!(
            endpoint_links(h)?,
            Vec::<String>::new(),
            "{what}: a veth left in {h}"
        );
        assert_eq!(
            link_names(&ns)?,
            vec!["lo".to_string()],
            "{what}: left in {ns}"
        );
        if c.lab().is_running(1)? {
            assert!(c.endpoints(1)?.is_empty(), "{what}: an endpoint is listed");
            let ids = c.identities(1)?;
            assert_eq!(
                ids.len(),
                identities_before,
                "{what}: a new identity: {ids:?}"
            );
        }
        Ok(())
    };
    check_clean("after the bad requests")?;

    c.lab().stop(1)?;
    let out = c.cni_call(1, &good("ADD"))?;
    assert_error("agent not running", &out, &[11]);
    check_clean("agent not running")?;
    c.restart_agent(1)?;
    check_clean("agent not running, after its restart")?;

    // The same request is fine once nothing is wrong with it.
    let out = c.cni_call(1, &good("ADD"))?;
    assert!(out.exit_ok, "a good ADD: {out}; log: {}", c.log_tail(1));
    Ok(())
}
