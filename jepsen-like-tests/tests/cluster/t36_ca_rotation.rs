//! `membrane ca rotate` (issue 11) with real agents: a 3-voter cluster under a loop of
//! registry writes replaces its CA, phase by phase, with its leader killed once after the
//! rotation began and a fourth node joining meanwhile. At the end every node's certificate is from the new CA, every node trusts
//! the new CA only, voters hold only the new key, a certificate from the old CA is refused
//! by every node, no acknowledged write is lost, and `token create` prints the new hash.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context};
use membrane_crypto::ca::{cert_signed_by, ClusterCa};
use membrane_jepsen::{in_netns, require_root, wait_until, Cluster};
use membrane_proto::v1::cluster_client::ClusterClient;
use membrane_proto::v1::ForwardRequest;
use serde_json::Value;

use crate::support::{runtime, SavedTls};

/// `Query::Nodes` of the agent's registry client: bincode's tag of the first variant.
const QUERY_NODES: [u8; 4] = [0, 0, 0, 0];

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let mut r = pem.as_bytes();
    let der = rustls_pemfile::certs(&mut r)
        .next()
        .ok_or_else(|| anyhow!("no certificate in {pem:?}"))??
        .to_vec();
    Ok(der)
}

fn identity_ids(c: &Cluster, host: usize) -> anyhow::Result<BTreeSet<u64>> {
    let v = c.cli_json(host, &["identity", "list"])?;
    Ok(v["identities"]
        .as_array()
        .ok_or_else(|| anyhow!("no identities in {v}"))?
        .iter()
        .filter_map(|i| i["id"].as_u64())
        .collect())
}

fn all_logs(c: &Cluster) -> String {
    (1..=4)
        .map(|i| format!("--- host {i}:\n{}", c.log_tail(i)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `Cluster.Read` from host 3's network namespace to every node with `tls`: the nodes
/// whose answer got past the TLS handshake and authorization (a follower's "not the
/// leader" counts), and the errors of the others.
fn reads(c: &Cluster, tls: &SavedTls) -> anyhow::Result<Vec<Result<u64, String>>> {
    let netns = c.lab().host(3).netns().to_string();
    let targets: Vec<(u64, String)> = (1..=3u64)
        .map(|i| (i, c.lab().host(i as usize).rpc_addr().to_string()))
        .collect();
    let tls = tls.clone();
    in_netns(
        &netns,
        move || -> anyhow::Result<Vec<Result<u64, String>>> {
            runtime()?.block_on(async move {
                let mut out = Vec::new();
                for (id, addr) in &targets {
                    let mut cl = ClusterClient::new(tls.channel(addr, *id)?);
                    let r = cl
                        .read(ForwardRequest {
                            data: QUERY_NODES.to_vec(),
                        })
                        .await;
                    out.push(match r {
                        Ok(_) => Ok(*id),
                        Err(s) if s.message().contains("not the leader") => Ok(*id),
                        Err(s) => Err(format!("node {id}: {s:?}")),
                    });
                }
                Ok(out)
            })
        },
    )?
}

#[test]
fn t36_the_cluster_ca_is_rotated_without_losing_quorum_or_writes() -> anyhow::Result<()> {
    require_root()?;
    // Hosts 1-3 are the voters; host 4 joins, as a learner, while the rotation runs.
    let (c, _) = Cluster::init("carot", 4)?;
    c.start_first()?;
    for i in 2..=3 {
        c.join(i, &c.create_token(1)?)?;
    }
    c.wait_for_voters(3, Duration::from_secs(60))?;
    let before = c.cli_json(1, &["ca", "status"])?;
    let old_hash = before["ca_hash"].as_str().unwrap_or_default().to_string();
    assert!(old_hash.starts_with("sha256:"), "{before}");
    assert_eq!(before["rotating"], false, "{before}");
    // Host 3's material before the rotation: a certificate from the old CA.
    let old_tls = SavedTls::read(&c.lab().host(3).state_dir())?;

    // Traffic: registry writes through the CLI, round robin, all through the rotation.
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(BTreeSet::new());
    let (status, new_hash) = std::thread::scope(|s| -> anyhow::Result<(Value, String)> {
        s.spawn(|| {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let host = 1 + k % 3;
                if let Ok(v) = c.cli_json(host, &["identity", "allocate", &format!("app=rot-{k}")])
                {
                    if let Some(id) = v["id"].as_u64() {
                        acknowledged.lock().unwrap().insert(id);
                    }
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // Stops the traffic however the rotation part ends (a panic included), so that the
        // scope can end.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop_guard = StopOnDrop(&stop);
        let result = (|| {
            let started = c.cli_json(1, &["ca", "rotate"])?;
            assert_eq!(started["rotating"], true, "{started}");
            assert_eq!(started["phase"], "trusting", "{started}");
            assert_eq!(started["old_ca_hash"], old_hash.as_str(), "{started}");
            let new_hash = started["new_ca_hash"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(new_hash.starts_with("sha256:") && new_hash != old_hash);
            let again = c.cli(1, &["ca", "rotate"]);
            assert!(
                again.is_err(),
                "a second rotation while one runs: {again:?}"
            );

            // The leader dies once after the rotation began, and comes back.
            // (Host 1 may be restarting itself for the rotation: ask until someone answers.)
            let mut leader = 0;
            wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
                for h in 1..=3 {
                    if let Ok(Some(l)) = c.leader_seen_by(h) {
                        leader = l as usize;
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .context("no leader after the rotation began")?;
            c.lab().kill(leader)?;
            std::thread::sleep(Duration::from_secs(3));
            c.lab().restart(leader)?;

            // A node joins while the rotation runs (it may also end first: a rotation of
            // four nodes takes some 30 s here), with a token and the CA hash it prints at
            // that moment; a try that meets a restarting node is repeated.
            wait_until(Duration::from_secs(120), Duration::from_secs(1), || {
                let Ok(token) = c.cli_json(1, &["token", "create"]) else {
                    return Ok(false);
                };
                let (Some(secret), Some(join)) =
                    (token["token"].as_str(), token["join_command"].as_str())
                else {
                    return Ok(false);
                };
                let Some(hash) = join.split_whitespace().last() else {
                    return Ok(false);
                };
                let _ = c.lab().kill(4);
                c.lab().start(4, &c.join_args(4, secret, hash))?;
                let joined =
                    wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
                        Ok(c.lab().is_running(4)? && c.status(4).is_ok())
                    });
                Ok(joined.is_ok())
            })
            .with_context(|| format!("host 4 did not join mid-rotation: {}", c.log_tail(4)))?;
            wait_until(Duration::from_secs(400), Duration::from_secs(2), || {
                let Ok(v) = c.cli_json(1, &["ca", "status"]) else {
                    return Ok(false);
                };
                Ok(v["rotating"] == false && v["ca_hash"] == new_hash.as_str())
            })
            .with_context(|| {
                format!(
                    "the rotation did not finish: {:?}\n{}",
                    c.cli(1, &["ca", "status"]),
                    all_logs(&c)
                )
            })?;
            c.wait_all_alive(Duration::from_secs(60))?;
            Ok((c.cli_json(2, &["ca", "status"])?, new_hash))
        })();
        drop(stop_guard);
        result
    })?;
    assert_eq!(
        status["ca_hash"],
        new_hash.as_str(),
        "every copy agrees: {status}"
    );

    // Every node trusts the new CA only, and its certificate is from it; voters hold only
    // the new CA's key.
    let voters = c.voters(1)?;
    let mut new_ca_pem = None;
    assert_eq!(voters.len(), 3, "{voters:?}");
    assert!(!voters.contains(&4), "host 4 joined as a learner");
    for i in 1..=4usize {
        let dir = c.lab().host(i).state_dir();
        let ca = std::fs::read_to_string(dir.join("tls/ca.crt"))?;
        assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 1, "host {i}: {ca}");
        let ca_der = pem_der(&ca)?;
        assert_eq!(
            membrane_crypto::ca::ca_hash_of_cert_der(&ca_der)?,
            new_hash,
            "host {i} trusts the new CA"
        );
        let cert = std::fs::read_to_string(dir.join("tls/node.crt"))?;
        assert!(
            cert_signed_by(&pem_der(&cert)?, &ca_der),
            "host {i}'s certificate is not from the new CA"
        );
        assert!(!dir.join("keys/ca-next.key").exists(), "host {i}");
        if voters.contains(&(i as u64)) {
            let key = std::fs::read_to_string(dir.join("keys/ca.key"))?;
            ClusterCa::from_pem(&ca, &key).context("a voter's key is the new CA's")?;
        } else {
            assert!(
                !dir.join("keys/ca.key").exists(),
                "learner {i} holds a CA key"
            );
        }
        new_ca_pem = Some(ca);
    }

    // A client with the old CA's certificate is refused by every node; the same key with
    // the new certificate is accepted.
    let new_ca_pem = new_ca_pem.unwrap_or_default();
    let old_cert_new_trust = SavedTls {
        ca: new_ca_pem.clone(),
        ..old_tls.clone()
    };
    for r in reads(&c, &old_cert_new_trust)? {
        assert!(r.is_err(), "an old-CA certificate was accepted by {r:?}");
    }
    let current = SavedTls::read(&c.lab().host(3).state_dir())?;
    for r in reads(&c, &current)? {
        r.map_err(|e| anyhow!("the new certificate is refused: {e}"))?;
    }

    // No acknowledged write is lost, on any node.
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() >= 10,
        "too few writes went through: {acknowledged:?}"
    );
    for h in 1..=4 {
        wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
            Ok(acknowledged.is_subset(&identity_ids(&c, h)?))
        })
        .with_context(|| format!("host {h} lost acknowledged writes"))?;
    }
    // A join token now pins the new CA.
    for h in 1..=3 {
        let token = c.cli_json(h, &["token", "create"])?;
        let join = token["join_command"].as_str().unwrap_or_default();
        assert!(join.contains(&new_hash), "host {h}: {token}");
        assert!(!join.contains(&old_hash), "host {h}: {token}");
    }
    Ok(())
}
