//! `membrane gossip rotate-key`: install a new gossip key, switch to it, drop the old ones,
//! each step only once every live node has taken the previous one (as gossip reports it),
//! so that no node ever seals with a key another live node cannot open.
//!
//! Removing a node (`membrane node remove`, or the autopilot's removal of a long-dead node)
//! runs the same rotation ([`rotate_after_removal`]): once the node has left the Raft
//! membership (so the new key never reaches it through the log), a new key is installed,
//! used and the old ones removed; the removed node's datagrams, still sealed with an old key,
//! are then dropped as unknown-key everywhere. Before that they are already dropped as from
//! an unknown sender (gossip.rs). Nodes no longer registered are not waited for.

use std::time::{Duration, Instant};

use membrane_consensus::registry::{GossipKey, GossipKeyring};
use membrane_consensus::Command;
use membrane_gossip::{Gossip, MemberState};
use tonic::Status;
use tracing::{info, warn};

use crate::registry::client::RegistryClient;

/// How long a step waits for every live node.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// How long a removal waits for the removed node to leave the Raft membership.
const LEAVE_WAIT: Duration = Duration::from_secs(60);

/// One rotation at a time on this node (two removals in a row rotate twice, in turn).
static ROTATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The rotation that follows the removal of node `removed`: waits until it has left the Raft
/// membership as this node sees it, then rotates.
pub async fn rotate_after_removal(
    client: &RegistryClient,
    gossip: &Gossip,
    removed: u64,
) -> Result<GossipKeyring, Status> {
    let deadline = Instant::now() + LEAVE_WAIT;
    loop {
        let (voters, learners) = client.membership();
        if !voters.contains(&removed) && !learners.contains(&removed) {
            break;
        }
        if Instant::now() > deadline {
            return Err(Status::deadline_exceeded(format!(
                "node {removed} is still in the Raft membership after {LEAVE_WAIT:?}; the gossip key was not rotated: run `membrane gossip rotate-key` once it has left"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    info!(node_id = removed, "rotating the gossip key after a removal");
    rotate(client, gossip).await
}

pub async fn rotate(client: &RegistryClient, gossip: &Gossip) -> Result<GossipKeyring, Status> {
    let _one = ROTATING.lock().await;
    let ring = client
        .local(|r| r.gossip_keyring().cloned())
        .ok_or_else(|| Status::unavailable("no keyring yet"))?;
    let new_id = ring.keys().iter().map(|k| k.id).max().unwrap_or(0) + 1;
    let key = GossipKey {
        id: new_id,
        key_hex: hex::encode(rand::random::<[u8; 32]>()),
    };
    client.write(Command::InstallGossipKey { key }).await?;
    wait_all(
        client,
        gossip,
        |_, ids| ids.contains(&new_id),
        &format!("install key {new_id}"),
    )
    .await?;
    client.write(Command::UseGossipKey { id: new_id }).await?;
    wait_all(
        client,
        gossip,
        |p, _| p == new_id,
        &format!("switch to key {new_id}"),
    )
    .await?;
    for old in ring.keys().iter().map(|k| k.id).filter(|id| *id != new_id) {
        client.write(Command::RemoveGossipKey { id: old }).await?;
    }
    info!(key_id = new_id, "gossip key rotated");
    // The writes went through the leader; answer once this node's copy shows them.
    let deadline = Instant::now() + STEP_WAIT;
    loop {
        let ring = client
            .local(|r| r.gossip_keyring().cloned())
            .ok_or_else(|| Status::internal("keyring vanished"))?;
        if ring.keys().len() == 1 && ring.primary() == new_id || Instant::now() > deadline {
            return Ok(ring);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until this node and every live, registered member report a keyring satisfying
/// `done`.
async fn wait_all(
    client: &RegistryClient,
    gossip: &Gossip,
    done: impl Fn(u32, &[u32]) -> bool,
    step: &str,
) -> Result<(), Status> {
    let deadline = Instant::now() + STEP_WAIT;
    loop {
        let mine = gossip.keyring();
        let mut lagging: Vec<u64> = Vec::new();
        if !done(mine.primary().unwrap_or(0), &mine.ids()) {
            lagging.push(0);
        }
        for (id, (state, meta)) in gossip.members() {
            // A removed node is never waited for: it must not get the new key.
            if state != MemberState::Alive || client.local(|r| r.node(id).is_none()) {
                continue;
            }
            match meta.parse_keyring() {
                Some((p, ids)) if done(p, &ids) => {}
                _ => lagging.push(id),
            }
        }
        if lagging.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Status::deadline_exceeded(format!(
                "nodes {lagging:?} did not {step} within {STEP_WAIT:?} (0 is this node); the rotation stopped there and is safe to run again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs [`rotate_after_removal`] in the background (the autopilot's removals), logging the
/// outcome.
pub fn spawn_after_removal(
    client: std::sync::Arc<RegistryClient>,
    gossip: std::sync::Arc<Gossip>,
    removed: u64,
) {
    tokio::spawn(async move {
        match rotate_after_removal(&client, &gossip, removed).await {
            Ok(ring) => info!(
                node_id = removed,
                primary = ring.primary(),
                "gossip key rotated after removal"
            ),
            Err(e) => {
                warn!(node_id = removed, error = %e.message(), "gossip key not rotated after removal; run `membrane gossip rotate-key`")
            }
        }
    });
}
