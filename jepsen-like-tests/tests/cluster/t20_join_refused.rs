use std::time::Duration;

use membrane_jepsen::{require_root, wait_until, Cluster};
use serde_json::Value;

/// What must not change when a join is refused: nodes, and every token's use count.
fn registry_view(c: &Cluster) -> anyhow::Result<(Value, Vec<(String, u64)>)> {
    let mut nodes = c.cli_json(1, &["node", "list"])?;
    // Liveness is not registry state.
    for n in nodes["nodes"].as_array_mut().unwrap() {
        n.as_object_mut().unwrap().remove("gossip_state");
    }
    let tokens = c.cli_json(1, &["token", "list"])?;
    let uses = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["uses"].as_u64().unwrap(),
            )
        })
        .collect();
    Ok((nodes, uses))
}

/// Starts host `i` joining with `token`/`ca_hash`, expects the agent to exit non-zero, and
/// returns its log.
fn refused_join(c: &Cluster, i: usize, token: &str, ca_hash: &str) -> anyhow::Result<String> {
    let lab = c.lab();
    lab.start(i, &c.join_args(i, token, ca_hash))?;
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        Ok(!lab.is_running(i)?)
    })?;
    let exit = lab.last_exit(i)?.expect("the agent exited");
    assert!(!exit.success(), "a refused join must exit non-zero");
    let log = std::fs::read_to_string(lab.host(i).log_path())?;
    assert!(!log.contains("panicked"), "{log}");
    // Nothing half-made: no identity in the state dir, so a later join starts clean.
    assert!(!lab.host(i).state_dir().join("node.json").exists());
    Ok(log)
}

/// Every reason a join can be refused, each with its own message, and none changes the
/// registry.
#[test]
fn t20_bad_tokens_and_wrong_ca_are_refused_and_change_nothing() -> anyhow::Result<()> {
    require_root()?;
    let (c, init) = Cluster::init("joinref", 3)?;
    c.start_first()?;
    let before = registry_view(&c)?;

    let cases: Vec<(String, String, &str)> = vec![
        ("nope".into(), init.ca_hash.clone(), "malformed --token"),
        (
            "zzzzzz.0123456789abcdef".into(),
            init.ca_hash.clone(),
            "not valid for this cluster",
        ),
        (
            format!("{}.0000000000000000", &init.token[..6]),
            init.ca_hash.clone(),
            // The same words as an unknown id: the caller cannot tell which it was.
            "not valid for this cluster",
        ),
        (
            init.token.clone(),
            format!("sha256:{}", "0".repeat(64)),
            "cannot open a trusted connection",
        ),
        (init.token.clone(), "md5:abc".into(), "malformed --ca-hash"),
    ];
    for (k, (token, hash, expected)) in cases.iter().enumerate() {
        let marker = format!("=== case {k}");
        let log = refused_join(&c, 2, token, hash)?;
        let last_start = log.rsplit("=== lab:").next().unwrap_or(&log);
        assert!(
            last_start.contains(expected),
            "{marker}: expected {expected:?} in:\n{last_start}"
        );
        assert_eq!(registry_view(&c)?, before, "{marker}: the registry changed");
    }

    // Revoked.
    let revoked = c.create_token(1)?;
    c.cli(1, &["token", "revoke", &revoked[..6]])?;
    let log = refused_join(&c, 2, &revoked, &init.ca_hash)?;
    assert!(
        log.rsplit("=== lab:")
            .next()
            .unwrap()
            .contains("has been revoked"),
        "{log}"
    );

    // Expired.
    let out = c.cli_json(1, &["token", "create", "--ttl", "1"])?;
    let expired = out["token"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let log = refused_join(&c, 2, &expired, &init.ca_hash)?;
    assert!(
        log.rsplit("=== lab:")
            .next()
            .unwrap()
            .contains("has expired"),
        "{log}"
    );

    // Used up: the init token admits host 2, then refuses host 3.
    let before_used = registry_view(&c)?;
    c.join(2, &init.token)?;
    // The autopilot adds a new node to the Raft membership a moment after it is admitted:
    // wait for that, so the view below changes only if the refused join changes it.
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let (nodes, _) = registry_view(&c)?;
        Ok(nodes["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().all(|n| n["raft_role"] != "none")))
    })?;
    let after_join = registry_view(&c)?;
    assert_ne!(after_join, before_used);
    let log = refused_join(&c, 3, &init.token, &init.ca_hash)?;
    assert!(
        log.rsplit("=== lab:")
            .next()
            .unwrap()
            .contains("used 1 time(s), its limit"),
        "{log}"
    );
    assert_eq!(registry_view(&c)?, after_join);

    let tokens = c.cli_json(1, &["token", "list"])?;
    let states: Vec<&str> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"revoked") && states.contains(&"expired") && states.contains(&"used"),
        "{states:?}"
    );
    // The registry never holds a secret.
    assert!(!tokens.to_string().contains(&init.token[7..]));
    Ok(())
}
