//! `membrane gossip rotate-key`: install a new gossip key, switch to it, drop the old ones,
//! each step only once every live node has taken the previous one (as gossip reports it),
//! so that no node ever seals with a key another live node cannot open.

use std::time::{Duration, Instant};

use membrane_consensus::registry::{GossipKey, GossipKeyring};
use membrane_consensus::Command;
use membrane_gossip::{Gossip, MemberState};
use tonic::Status;
use tracing::info;

use crate::registry::client::RegistryClient;

/// How long a step waits for every live node.
const STEP_WAIT: Duration = Duration::from_secs(30);

pub async fn rotate(client: &RegistryClient, gossip: &Gossip) -> Result<GossipKeyring, Status> {
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
        gossip,
        |_, ids| ids.contains(&new_id),
        &format!("install key {new_id}"),
    )
    .await?;
    client.write(Command::UseGossipKey { id: new_id }).await?;
    wait_all(
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

/// Waits until this node and every live member report a keyring satisfying `done`.
async fn wait_all(
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
            if state != MemberState::Alive {
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
