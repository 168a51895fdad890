use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use membrane_jepsen::{require_root, wait_until, Cluster};

/// The base64 lines of a PEM key: what any copy of the key, in any file, would contain.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

/// Every file under `dir` that contains one of `needles`.
fn files_containing(dir: &Path, needles: &[String]) -> anyhow::Result<Vec<String>> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            hits.extend(files_containing(&path, needles)?);
        } else if entry.file_type()?.is_file() {
            let bytes = std::fs::read(&path)?;
            if needles
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == n.as_bytes()))
            {
                hits.push(path.display().to_string());
            }
        }
    }
    Ok(hits)
}

/// Host i runs node i (the lab joins them in order); returns the hosts of learners.
fn learner_hosts(c: &Cluster, hosts: usize) -> anyhow::Result<Vec<usize>> {
    let voters = c.voters(1)?;
    Ok((1..=hosts)
        .filter(|i| !voters.contains(&(*i as u64)))
        .collect())
}

/// Issue 11: after a 3-voter + 2-learner cluster forms, the CA key is in every voter's
/// `keys/ca.key` and nowhere on a learner (sled files, snapshots, the whole state dir); a
/// join through a learner still succeeds (the learner forwards it to a voter that signs),
/// and a voter that is removed deletes its copy.
#[test]
fn t33_the_ca_key_lives_on_voters_only() -> anyhow::Result<()> {
    require_root()?;
    let (c, _) = Cluster::init("cakey", 6)?;
    c.start_first()?;
    for i in 2..=5 {
        c.join(i, &c.create_token(1)?)?;
    }
    c.wait_for_voters(3, Duration::from_secs(60))?;
    let voters: BTreeSet<u64> = c.voters(1)?;
    assert_eq!(voters.len(), 3, "{voters:?}");
    let key_path = |i: usize| c.lab().host(i).state_dir().join("keys/ca.key");

    // Every voter receives the key (node 1 from init, the others over mTLS).
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(voters.iter().all(|v| key_path(*v as usize).exists()))
    })
    .with_context(|| {
        format!(
            "not every voter got the CA key; logs: {}",
            voters
                .iter()
                .map(|v| c.log_tail(*v as usize))
                .collect::<Vec<_>>()
                .join("\n---\n")
        )
    })?;
    let ca_key = std::fs::read_to_string(key_path(1))?;
    assert!(
        ca_key.contains("PRIVATE KEY"),
        "node 1's ca.key is not a PEM key"
    );
    for v in &voters {
        assert_eq!(
            std::fs::read_to_string(key_path(*v as usize))?,
            ca_key,
            "voter {v} holds another key"
        );
    }
    let needles = key_lines(&ca_key);
    assert!(!needles.is_empty());

    // Let the learners catch up fully, with writes after they joined.
    c.cli(1, &["identity", "allocate", "app=t33"])?;
    let learners = learner_hosts(&c, 5)?;
    assert_eq!(learners.len(), 2, "{learners:?}");
    std::thread::sleep(Duration::from_secs(3));
    for l in &learners {
        let hits = files_containing(&c.lab().host(*l).state_dir(), &needles)?;
        assert!(
            hits.is_empty(),
            "learner on host {l} holds the CA key in {hits:?}"
        );
        assert!(!key_path(*l).exists());
    }

    // A join through a learner: it forwards to a voter, which signs. Tokens are made on a
    // voter (docs/security.md: a learner may not create them).
    let via = learners[0];
    let token = c.cli_json(1, &["token", "create"])?["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token printed"))?
        .to_string();
    c.join_via(6, &token, via)?;
    let nodes = c.cli_json(6, &["node", "list"])?;
    assert_eq!(nodes["nodes"].as_array().map(|n| n.len()), Some(6));
    let hits = files_containing(&c.lab().host(6).state_dir(), &needles)?;
    assert!(
        hits.is_empty(),
        "the new learner holds the CA key in {hits:?}"
    );

    // A removed voter deletes its copy (the registry's removal reaches it first).
    let gone = *voters.iter().max().expect("three voters");
    c.cli(1, &["node", "remove", &gone.to_string()])?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(!key_path(gone as usize).exists())
    })
    .with_context(|| {
        format!(
            "removed voter {gone} kept the CA key: {}",
            c.log_tail(gone as usize)
        )
    })?;
    // And the new voter that replaced it received the key.
    wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let v = c.voters(1)?;
        Ok(v.len() == 3 && !v.contains(&gone))
    })
    .context("the autopilot did not replace the removed voter")?;
    let now_voters = c.voters(1)?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(now_voters.iter().all(|v| key_path(*v as usize).exists()))
    })
    .with_context(|| {
        format!("a promoted voter did not receive the CA key; voters {now_voters:?}")
    })?;
    Ok(())
}

/// Issue 11, migration: the state directories of a 2-voter cluster written by the code
/// before issue 11 (the CA key in the registry: in the Raft log, the snapshot and stale
/// sled pages) start with this code; without any operator step, each voter moves the key to
/// `keys/ca.key`, the leader drops it from the registry once both hold it, and every node's
/// Raft storage ends without a private key (snapshot, purge, database rewrite at a restart
/// in place). The cluster keeps working, and `node certs` shows the old certificates.
#[test]
fn t33_an_upgraded_cluster_moves_the_key_out_of_its_raft_storage() -> anyhow::Result<()> {
    require_root()?;
    membrane_jepsen::ensure_bpffs()?;
    let lab = membrane_jepsen::Lab::new("cakeyup", 2)?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pre-issue-11");
    for i in 1..=2 {
        let dst = lab.host(i).state_dir();
        let _ = std::fs::remove_dir_all(&dst);
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(fixture.join(format!("h{i}/state")))
            .arg(&dst)
            .status()?;
        anyhow::ensure!(copied.success(), "copying the fixture for host {i}");
        // git does not keep modes; the agent refuses readable key files.
        let modes = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod 600 {0}/keys/* && chmod 700 {0}",
                dst.display()
            ))
            .status()?;
        anyhow::ensure!(modes.success());
    }
    let label = ["PRIVATE KEY".to_string()];
    let raft_hits = |i: usize| files_containing(&lab.host(i).state_dir().join("raft"), &label);
    assert!(
        !raft_hits(1)?.is_empty(),
        "the fixture holds the key in its Raft storage"
    );
    for i in 1..=2 {
        let h = lab.host(i);
        let args: Vec<String> = [
            "--socket",
            &h.socket().display().to_string(),
            "agent",
            "--state-dir",
            &h.state_dir().display().to_string(),
            "--plugin-socket",
            &h.plugin_socket().display().to_string(),
            "--bpf-pin-dir",
            &h.bpf_pin_dir().display().to_string(),
            "--cni-queue-dir",
            &h.cni_queue_dir().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        lab.start(i, &args)?;
    }
    let key_path = |i: usize| lab.host(i).state_dir().join("keys/ca.key");
    wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        Ok(key_path(1).exists()
            && key_path(2).exists()
            && raft_hits(1)?.is_empty()
            && raft_hits(2)?.is_empty())
    })
    .with_context(|| {
        let logs: Vec<String> = (1..=2)
            .map(|i| {
                let log = std::fs::read_to_string(lab.host(i).log_path()).unwrap_or_default();
                let ca_lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("CA key")
                            || l.contains("restart")
                            || l.contains("Raft database")
                            || l.contains("WARN")
                    })
                    .collect();
                format!(
                    "host {i}: raft files with a key {:?}, ca.key {}:\n{}",
                    raft_hits(i).ok(),
                    key_path(i).exists(),
                    ca_lines.join("\n")
                )
            })
            .collect();
        format!(
            "the key did not leave the Raft storage; {}",
            logs.join("\n")
        )
    })?;
    let ca_key = std::fs::read_to_string(key_path(1))?;
    assert_eq!(std::fs::read_to_string(key_path(2))?, ca_key);
    // Nothing else in either state dir holds it either (bootstrap.json is long gone).
    let needles = key_lines(&ca_key);
    for i in 1..=2 {
        let mut hits = files_containing(&lab.host(i).state_dir(), &needles)?;
        hits.retain(|h| !h.ends_with("keys/ca.key"));
        assert!(
            hits.is_empty(),
            "host {i} still holds the CA key in {hits:?}"
        );
    }
    // The restarted agents still form the cluster and accept writes.
    wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        Ok(lab
            .cli(2, &["identity", "allocate", "app=upgraded"])?
            .status
            .success())
    })
    .context("the upgraded cluster does not accept writes")?;
    let certs = lab.cli(1, &["node", "certs", "-o", "json"])?;
    let certs: serde_json::Value = serde_json::from_slice(&certs.stdout)?;
    assert_eq!(
        certs["certs"].as_array().map(|a| a.len()),
        Some(2),
        "{certs}"
    );
    Ok(())
}
