//! The Membrane side: the N-rule policy as YAML, imported through the CLI and counted in the
//! BPF policy map, and the peer identities its selectors name.

use std::ffi::OsStr;

use anyhow::{anyhow, Context};
use membrane_proto::v1::agent_client::AgentClient;
use membrane_proto::v1::IdentityRequest;
use serde_json::Value;

use super::other_pairs;
use super::workload::{CONN_PORT, RR_PORT};
use crate::Cluster;

/// The policy YAML for N entries: the other peers first, the client's rule last.
pub(super) fn policy_yaml(n: usize, peers: usize) -> String {
    let mut by_peer: Vec<(usize, Vec<u16>)> = Vec::new();
    for (j, port) in other_pairs(n, peers) {
        match by_peer.last_mut() {
            Some((last, ports)) if *last == j => ports.push(port),
            _ => by_peer.push((j, vec![port])),
        }
    }
    let mut y = String::from(
        "apiVersion: membrane.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench\nspec:\n  endpointSelector:\n    matchLabels: {app: server}\n  ingress:\n",
    );
    let ports = |ps: &[u16]| {
        ps.iter()
            .map(|p| format!("{{port: {p}, protocol: TCP}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (j, ps) in &by_peer {
        y += &format!(
            "  - fromEndpoints: [{{matchLabels: {{app: peer-{j}}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
            ports(ps)
        );
    }
    y += &format!(
        "  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
        ports(&[CONN_PORT, RR_PORT])
    );
    y
}

/// Imports the N-rule policy (or deletes it for N = 0) and waits until it is enforced.
pub(super) fn set_membrane_policy(
    cluster: &Cluster,
    file: &std::path::Path,
    n: usize,
    peers: usize,
    present: &mut bool,
) -> anyhow::Result<()> {
    let v = if n == 0 {
        if !*present {
            return Ok(());
        }
        cluster.cli_json(1, &["policy", "delete", "bench"])?
    } else {
        std::fs::write(file, policy_yaml(n, peers))?;
        cluster.cli_json(1, &["policy", "import", &file.display().to_string()])?
    };
    *present = n > 0;
    let rev = v["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("no revision in {v}"))?;
    cluster.cli(1, &["policy", "wait", &rev.to_string(), "--timeout", "120"])?;
    // The agent enforces the revision once the map is written; conntrack entries of the
    // previous measurement do not matter (every measured connection is new, and the
    // ping-pong connection is opened after this).
    Ok(())
}

/// Entries in the policy map, read with bpftool (what the datapath really holds).
pub(super) fn policy_map_entries(pin_dir: &std::path::Path) -> anyhow::Result<usize> {
    let pin = pin_dir.join("policy");
    let out = crate::cmd::run(
        "bpftool",
        &[
            OsStr::new("-j"),
            OsStr::new("map"),
            OsStr::new("dump"),
            OsStr::new("pinned"),
            pin.as_os_str(),
        ],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    v.as_array()
        .map(Vec::len)
        .ok_or_else(|| anyhow!("bpftool printed no array"))
}

/// Allocates app=peer-0..peers-1 through the agent's API, 64 at a time (the agent batches
/// concurrent writes into one Raft entry), so that the policy's selectors resolve.
pub(super) fn allocate_peers(socket: &std::path::Path, peers: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = crate::unix_channel(socket).await?;
        let mut next = 0;
        while next < peers {
            let mut tasks = Vec::new();
            for j in next..(next + 64).min(peers) {
                let ch = ch.clone();
                tasks.push(tokio::spawn(async move {
                    AgentClient::new(ch)
                        .identity_allocate(IdentityRequest {
                            labels: vec![format!("app=peer-{j}")],
                        })
                        .await
                }));
            }
            for t in tasks {
                t.await?.map_err(|e| anyhow!("identity allocate: {e}"))?;
            }
            next += 64;
        }
        Ok(())
    })
}
