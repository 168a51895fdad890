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
    Ok((1..=hosts).filter(|i| !voters.contains(&(*i as u64))).collect())
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
    assert!(ca_key.contains("PRIVATE KEY"), "node 1's ca.key is not a PEM key");
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

    // A join through a learner: it forwards to a voter, which signs.
    let via = learners[0];
    let token = c.cli_json(via, &["token", "create"])?["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token printed"))?
        .to_string();
    c.join_via(6, &token, via)?;
    let nodes = c.cli_json(6, &["node", "list"])?;
    assert_eq!(nodes["nodes"].as_array().map(|n| n.len()), Some(6));
    let hits = files_containing(&c.lab().host(6).state_dir(), &needles)?;
    assert!(hits.is_empty(), "the new learner holds the CA key in {hits:?}");

    // A removed voter deletes its copy (the registry's removal reaches it first).
    let gone = *voters.iter().max().expect("three voters");
    c.cli(1, &["node", "remove", &gone.to_string()])?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(!key_path(gone as usize).exists())
    })
    .with_context(|| format!("removed voter {gone} kept the CA key: {}", c.log_tail(gone as usize)))?;
    // And the new voter that replaced it received the key.
    c.wait_for_voters(3, Duration::from_secs(60))?;
    let now_voters = c.voters(1)?;
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        Ok(now_voters.iter().all(|v| key_path(*v as usize).exists()))
    })
    .with_context(|| format!("a promoted voter did not receive the CA key; voters {now_voters:?}"))?;
    Ok(())
}
