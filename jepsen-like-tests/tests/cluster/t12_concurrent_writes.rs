use std::collections::BTreeMap;

use membrane_jepsen::{require_root, unix_channel, Cluster};
use membrane_proto::v1::agent_client::AgentClient;
use membrane_proto::v1::IdentityRequest;

/// Many concurrent writes on every node are batched by the agents; each caller must still
/// get the answer to its own command, and the registry must count every one of them.
#[test]
fn t12_concurrent_writes_each_get_their_own_answer() -> anyhow::Result<()> {
    require_root()?;
    let c = Cluster::start("concurrent", 3)?;
    let sockets: Vec<_> = (1..=3).map(|i| c.lab().host(i).socket()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let answers: Vec<(String, u32, u64)> = rt.block_on(async move {
        let mut channels = Vec::new();
        for s in sockets {
            channels.push(unix_channel(&s).await?);
        }
        let mut tasks = Vec::new();
        for k in 0..240usize {
            let ch = channels[k % 3].clone();
            tasks.push(tokio::spawn(async move {
                let label = format!("app=a{}", k % 16);
                let r = AgentClient::new(ch)
                    .identity_allocate(IdentityRequest {
                        labels: vec![label.clone()],
                    })
                    .await?
                    .into_inner();
                let id = r.identity.expect("an identity");
                anyhow::ensure!(
                    id.labels == vec![label.clone()],
                    "answer for {:?} is about {:?}",
                    label,
                    id.labels
                );
                Ok::<_, anyhow::Error>((label, id.id, id.references))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;

    // One id per label set, and references that count every allocation exactly once.
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut refs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (label, id, r) in answers {
        assert_eq!(
            *ids.entry(label.clone()).or_insert(id),
            id,
            "{label} got two ids"
        );
        refs.entry(label).or_default().push(r);
    }
    for (label, mut seen) in refs {
        seen.sort();
        assert_eq!(
            seen,
            (1..=15).collect::<Vec<u64>>(),
            "{label}: each allocation sees its own count"
        );
    }
    let list = c.cli_json(2, &["identity", "list"])?;
    let listed = list["identities"].as_array().unwrap();
    assert_eq!(listed.len(), 16);
    assert!(listed.iter().all(|i| i["references"] == 15));
    Ok(())
}
