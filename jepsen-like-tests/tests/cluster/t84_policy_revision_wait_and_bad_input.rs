use std::time::{Duration, Instant};

use membrane_jepsen::{require_root, wait_until, Cluster};
use serde_json::Value;

const GOOD: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

/// Line 7, column 24 is where `matchLabel` starts.
const UNKNOWN_FIELD: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: db2}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabel: {app: web}}]
"#;

/// An unclosed quote: a YAML syntax error, reported where the stream ends (line 6).
const BAD_SYNTAX: &str = "apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata: {name: \"db3}\nspec:\n  endpointSelector: {}\n";

/// A valid first document and an invalid second one: all or none, so neither is stored.
const HALF_GOOD: &str = r#"apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: fine}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [host]}]
---
apiVersion: membrane.io/v1
kind: NetworkPolicy
metadata: {name: broken}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [hots]}]
"#;

/// `membrane ARGS` on host `i`, which must fail: its stderr.
fn must_fail(c: &Cluster, i: usize, args: &[&str]) -> anyhow::Result<String> {
    let out = c.lab().cli(i, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        !out.status.success(),
        "`membrane {}` succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(stderr)
}

/// The wait's per-node rows, checked: every registered node listed, each live one at or past
/// `rev`.
fn check_wait_rows(v: &Value, rev: u64, nodes: usize, host: usize) -> anyhow::Result<()> {
    let rows = v["nodes"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(
        rows.len() == nodes,
        "h{host}: wait lists {} nodes, not {nodes}: {v}",
        rows.len()
    );
    for r in &rows {
        let enforced = r["enforced"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            r["state"] != "alive" || enforced >= rev,
            "h{host}: wait for {rev} returned with a live node at {enforced}: {v}"
        );
    }
    Ok(())
}

/// `policy wait` returns once every live node enforces the revision (each node's answer
/// lists all nodes at or past it, and skips a node that is down), times out with a clear
/// error for a revision nobody has; bad files are refused by validate and import naming
/// file, line and field, and store nothing; deleting an unknown policy fails clearly.
#[test]
fn t84_policy_wait_covers_every_node_and_bad_input_stores_nothing() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("t84", 3)?;

    let rev = c.policy_import(1, GOOD)?;
    for i in 1..=3 {
        let v = c.policy_wait(i, rev, 30)?;
        assert_eq!(v["revision"].as_u64(), Some(rev), "{v}");
        check_wait_rows(&v, rev, 3, i)?;
        let alive = v["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|r| r["state"] == "alive").count());
        assert_eq!(alive, Some(3), "h{i}: {v}");
    }

    // A revision nobody has: a deadline error naming it, after the timeout, not before.
    let far = (rev + 1000).to_string();
    let start = Instant::now();
    let err = must_fail(&c, 2, &["policy", "wait", &far, "--timeout", "2"])?;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "took {took:?}: {err}"
    );
    assert!(
        err.contains(&far) && err.contains("not enforced"),
        "unclear error: {err}"
    );

    // Bad input: validate (no agent) and import both refuse it, naming file:line:col and field.
    let before = c.cli_json(1, &["policy", "get"])?;
    let bad_cases = [
        (
            UNKNOWN_FIELD,
            ":7:24:",
            "spec.ingress[0].fromEndpoints[0].matchLabel",
        ),
        (BAD_SYNTAX, ":6:", "db3"),
        (HALF_GOOD, ":13:", "spec.ingress[0].fromEntities[0]"),
    ];
    for (yaml, at, field) in bad_cases {
        let file = c.policy_file(yaml)?;
        let name = file.display().to_string();
        for (host, verb) in [(1, "validate"), (1, "import"), (3, "import")] {
            let err = must_fail(&c, host, &["policy", verb, &name])?;
            assert!(
                err.contains(&format!("{name}{at}")) && (err.contains(field) || field == "db3"),
                "h{host} {verb} of {name}: want {at} and {field} in: {err}"
            );
        }
    }
    // The syntax error names the quoted scalar's line too.
    let file = c.policy_file(BAD_SYNTAX)?;
    let err = must_fail(&c, 1, &["policy", "validate", &file.display().to_string()])?;
    assert!(err.contains("line 3"), "{err}");

    // Unknown name: a clear error, nothing changes.
    let err = must_fail(&c, 2, &["policy", "delete", "no-such-policy"])?;
    assert!(
        err.contains("no-such-policy"),
        "the error names the policy: {err}"
    );
    let err = must_fail(&c, 2, &["policy", "get", "no-such-policy"])?;
    assert!(err.contains("no-such-policy"), "{err}");

    for i in 1..=3 {
        // Every node has the same registry copy once it caught up; none stored anything.
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            Ok(c.cli_json(i, &["policy", "get"])? == before)
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "h{i} policies changed: {e:#}: {}",
                c.cli(i, &["policy", "get"]).unwrap_or_default()
            )
        })?;
    }
    assert_eq!(before["revision"].as_u64(), Some(rev), "{before}");
    let names: Vec<&str> = before["policies"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["db"], "{before}");

    // A node that is down does not hold a wait up: it is listed as down.
    c.lab().kill(3)?;
    let rev2 = c.policy_import(1, &GOOD.replace("5432", "5433"))?;
    assert!(rev2 > rev, "{rev2} after {rev}");
    let v = c.policy_wait(1, rev2, 20)?;
    check_wait_rows(&v, rev2, 3, 1)?;
    let down: Vec<&Value> = v["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|r| r["state"] == "down").collect())
        .unwrap_or_default();
    assert_eq!(down.len(), 1, "exactly h3 is down: {v}");
    assert_eq!(down[0]["name"], c.lab().host(3).name(), "{v}");

    // Back up, it catches up, and a wait from it covers it again.
    c.restart_agent(3)?;
    let v = c.policy_wait(3, rev2, 30)?;
    check_wait_rows(&v, rev2, 3, 3)?;
    let v = c.policy_wait(1, rev2, 30)?;
    check_wait_rows(&v, rev2, 3, 1)?;
    Ok(())
}
