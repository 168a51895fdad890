//! The agent's one reconcile loop: whenever the registry's applied index or the local
//! endpoints change (and every few seconds regardless) it brings the ipcache and then the
//! policy side of the datapath to what the registry says; it publishes the enforced policy
//! revision in gossip and collects expired conntrack entries.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::cluster::gossip::GossipSlot;
use crate::datapath::NodeDatapath;
use crate::endpoints::EndpointManager;
use crate::ipcache::sync_once;
use crate::policy::sync::PolicySync;
use crate::registry::RegistryClient;

/// How often the maps are checked even when the registry did not change.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How often the registry's applied index is polled.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often expired conntrack entries are collected.
const CT_GC_EVERY: Duration = Duration::from_secs(30);

/// Syncs the ipcache and the policy side once.
fn sync_all(
    client: &RegistryClient,
    datapath: &NodeDatapath,
    me: u64,
    endpoints: &EndpointManager,
    policy: &PolicySync,
) -> anyhow::Result<()> {
    let cidrs = policy.cidr_identities();
    let (written, removed) = sync_once(client, datapath, me, &cidrs)?;
    if written + removed > 0 {
        debug!(written, removed, "ipcache synced with the registry");
    }
    policy.sync(&endpoints.live_records())?;
    Ok(())
}

/// Runs forever: syncs when the registry's applied index or the local endpoints change,
/// and every few seconds regardless; publishes the enforced policy revision in gossip;
/// collects expired conntrack entries.
pub async fn run(
    client: Arc<RegistryClient>,
    datapath: Arc<NodeDatapath>,
    me: u64,
    endpoints: Arc<EndpointManager>,
    policy: Arc<PolicySync>,
    gossip: GossipSlot,
) {
    let mut last_seen = None;
    let mut last_sync = tokio::time::Instant::now();
    let mut last_gc = tokio::time::Instant::now();
    let mut published = None;
    loop {
        let seen = (client.applied_index(), endpoints.generation());
        if Some(seen) != last_seen || last_sync.elapsed() >= RESYNC_EVERY {
            match sync_all(&client, &datapath, me, &endpoints, &policy) {
                Ok(()) => last_seen = Some(seen),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot sync the datapath with the registry")
                }
            }
            last_sync = tokio::time::Instant::now();
        }
        let enforced = policy.enforced_revision.load(Ordering::SeqCst);
        if published != Some(enforced) {
            if let Some(g) = gossip.get() {
                let mut meta = g.local_meta().await;
                meta.policy_revision = enforced.to_string();
                g.set_meta(meta).await;
                published = Some(enforced);
            }
        }
        if last_gc.elapsed() >= CT_GC_EVERY {
            let now = membrane_ebpf::ktime_now_ns();
            match datapath.bpf().conntrack_gc(now) {
                Ok(n) if n > 0 => debug!(removed = n, "expired conntrack entries collected"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "conntrack GC failed"),
            }
            last_gc = tokio::time::Instant::now();
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
