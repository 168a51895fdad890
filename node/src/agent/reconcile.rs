//! The agent's one reconcile loop: whenever the registry's applied index or the local
//! endpoints change (and every few seconds regardless) it brings the ipcache and then the
//! policy side of the datapath to what the registry says (the ipcache's key index from the
//! tunnel's ready keys); it publishes the enforced policy
//! revision in gossip and collects expired conntrack entries.
//!
//! Deciding is pure ([`plan`], unit-tested); acting is the loop in [`run`]. Within one tick
//! `run` acts on the plan until it is empty, so a revision the sync just enforced is
//! published in the same tick, as before the split.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::cluster::gossip::GossipSlot;
use crate::datapath::NodeDatapath;
use crate::endpoints::EndpointManager;
use crate::ipcache::sync_once;
use crate::policy::apply::PolicySync;
use crate::registry::RegistryClient;
use crate::tunnel::control::TunnelShared;

/// How often the maps are checked even when the registry did not change.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How often the registry's applied index is polled.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often expired conntrack entries are collected.
const CT_GC_EVERY: Duration = Duration::from_secs(30);

/// What a sync depends on: the registry's applied index and the local endpoints' generation.
pub type Seen = (Option<u64>, u64);

/// What the loop knows when it decides.
#[derive(Clone, Debug)]
pub struct State {
    /// As observed at the start of this tick.
    pub seen: Seen,
    /// What the last successful sync saw.
    pub synced: Option<Seen>,
    /// The last sync attempt (successful or not), or the loop's start.
    pub last_sync: Instant,
    /// A sync was attempted in this tick: a failed one is retried in the next tick.
    pub synced_this_tick: bool,
    /// The last conntrack GC, or the loop's start.
    pub last_gc: Instant,
    /// The policy revision the datapath enforces.
    pub enforced: u64,
    /// The revision last published in gossip.
    pub published: Option<u64>,
    /// Whether gossip runs (there is somewhere to publish).
    pub gossip_up: bool,
}

impl State {
    /// The state of a loop started at `now`: nothing synced, published or collected yet.
    pub fn new(now: Instant) -> State {
        State {
            seen: (None, 0),
            synced: None,
            last_sync: now,
            synced_this_tick: false,
            last_gc: now,
            enforced: 0,
            published: None,
            gossip_up: false,
        }
    }
}

/// One thing for the loop to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bring the ipcache, then the policy side, to what the registry says.
    SyncIpcacheAndPolicy,
    /// Publish this enforced policy revision in gossip.
    PublishRevision(u64),
    /// Collect expired conntrack entries.
    CollectConntrack,
}

/// What to do at `now`.
pub fn plan(s: &State, now: Instant) -> Vec<Step> {
    let mut steps = Vec::new();
    let sync = !s.synced_this_tick
        && (s.synced != Some(s.seen) || now.saturating_duration_since(s.last_sync) >= RESYNC_EVERY);
    if sync {
        steps.push(Step::SyncIpcacheAndPolicy);
    } else if s.gossip_up && s.published != Some(s.enforced) {
        // After any sync of this tick: it may move the enforced revision.
        steps.push(Step::PublishRevision(s.enforced));
    }
    if now.saturating_duration_since(s.last_gc) >= CT_GC_EVERY {
        steps.push(Step::CollectConntrack);
    }
    steps
}

/// Syncs the ipcache and the policy side once.
fn sync_all(
    client: &RegistryClient,
    datapath: &NodeDatapath,
    me: u64,
    endpoints: &EndpointManager,
    policy: &PolicySync,
    tunnel: &TunnelShared,
) -> anyhow::Result<()> {
    let cidrs = policy.cidr_identities();
    let (written, removed) = sync_once(client, datapath, me, &cidrs, &tunnel.keys_ready())?;
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
    tunnel: Arc<TunnelShared>,
) {
    let mut state = State::new(Instant::now());
    loop {
        let now = Instant::now();
        // The tunnel's ready keys change the ipcache too (key index): a change of either
        // generation (both only grow) changes the sum.
        state.seen = (
            client.applied_index(),
            endpoints.generation().wrapping_add(tunnel.generation()),
        );
        state.synced_this_tick = false;
        loop {
            state.enforced = policy.enforced_revision.load(Ordering::SeqCst);
            state.gossip_up = gossip.get().is_some();
            let steps = plan(&state, now);
            if steps.is_empty() {
                break;
            }
            for step in steps {
                match step {
                    Step::SyncIpcacheAndPolicy => {
                        match sync_all(&client, &datapath, me, &endpoints, &policy, &tunnel) {
                            Ok(()) => state.synced = Some(state.seen),
                            Err(e) => {
                                warn!(error = %format!("{e:#}"), "cannot sync the datapath with the registry")
                            }
                        }
                        state.last_sync = Instant::now();
                        state.synced_this_tick = true;
                    }
                    Step::PublishRevision(revision) => {
                        if let Some(g) = gossip.get() {
                            let mut meta = g.local_meta().await;
                            meta.policy_revision = revision.to_string();
                            g.set_meta(meta).await;
                        }
                        state.published = Some(revision);
                    }
                    Step::CollectConntrack => {
                        let now_ns = membrane_ebpf::ktime_now_ns();
                        match datapath.bpf().conntrack_gc(now_ns) {
                            Ok(n) if n > 0 => {
                                debug!(removed = n, "expired conntrack entries collected")
                            }
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "conntrack GC failed"),
                        }
                        state.last_gc = Instant::now();
                    }
                }
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop that synced `seen`, published `rev` and collected at `t0`.
    fn settled(t0: Instant, seen: Seen, rev: u64) -> State {
        State {
            seen,
            synced: Some(seen),
            last_sync: t0,
            synced_this_tick: false,
            last_gc: t0,
            enforced: rev,
            published: Some(rev),
            gossip_up: true,
        }
    }

    #[test]
    fn nothing_to_do_when_nothing_changed() {
        let t0 = Instant::now();
        let s = settled(t0, (Some(7), 1), 3);
        assert!(plan(&s, t0 + POLL_EVERY).is_empty());
    }

    #[test]
    fn a_new_index_or_endpoint_generation_syncs_and_the_start_syncs() {
        let t0 = Instant::now();
        let mut s = settled(t0, (Some(7), 1), 3);
        s.seen = (Some(8), 1);
        assert_eq!(plan(&s, t0), vec![Step::SyncIpcacheAndPolicy]);
        s.seen = (Some(7), 2);
        assert_eq!(plan(&s, t0), vec![Step::SyncIpcacheAndPolicy]);
        let start = State::new(t0);
        assert_eq!(plan(&start, t0), vec![Step::SyncIpcacheAndPolicy]);
    }

    #[test]
    fn the_maps_are_resynced_after_resync_every() {
        let t0 = Instant::now();
        let s = settled(t0, (Some(7), 1), 3);
        assert!(plan(&s, t0 + RESYNC_EVERY - POLL_EVERY).is_empty());
        assert_eq!(
            plan(&s, t0 + RESYNC_EVERY),
            vec![Step::SyncIpcacheAndPolicy]
        );
    }

    #[test]
    fn a_failed_sync_is_retried_in_the_next_tick_not_in_this_one() {
        let t0 = Instant::now();
        let mut s = settled(t0, (Some(7), 1), 3);
        s.seen = (Some(8), 1);
        // The sync failed: `synced` stays behind.
        s.last_sync = t0;
        s.synced_this_tick = true;
        assert!(plan(&s, t0).is_empty());
        s.synced_this_tick = false;
        assert_eq!(plan(&s, t0 + POLL_EVERY), vec![Step::SyncIpcacheAndPolicy]);
    }

    #[test]
    fn a_revision_is_published_once_after_the_sync_and_only_with_gossip() {
        let t0 = Instant::now();
        let mut s = settled(t0, (Some(7), 1), 3);
        s.seen = (Some(8), 1);
        s.enforced = 4;
        // The sync goes first; publishing waits for what it enforces.
        assert_eq!(plan(&s, t0), vec![Step::SyncIpcacheAndPolicy]);
        s.synced = Some(s.seen);
        s.synced_this_tick = true;
        s.enforced = 5;
        assert_eq!(plan(&s, t0), vec![Step::PublishRevision(5)]);
        s.published = Some(5);
        assert!(plan(&s, t0).is_empty());
        assert!(plan(&s, t0 + POLL_EVERY).is_empty());
        // Without gossip there is nowhere to publish; once it is up, it is published.
        s.enforced = 6;
        s.gossip_up = false;
        assert!(plan(&s, t0 + POLL_EVERY).is_empty());
        s.gossip_up = true;
        assert_eq!(plan(&s, t0 + POLL_EVERY), vec![Step::PublishRevision(6)]);
    }

    #[test]
    fn conntrack_is_collected_every_ct_gc_every() {
        let t0 = Instant::now();
        let mut s = settled(t0, (Some(7), 1), 3);
        s.last_sync = t0 + CT_GC_EVERY - POLL_EVERY;
        assert!(plan(&s, t0 + CT_GC_EVERY - POLL_EVERY).is_empty());
        assert_eq!(plan(&s, t0 + CT_GC_EVERY), vec![Step::CollectConntrack]);
        s.last_gc = t0 + CT_GC_EVERY;
        assert!(plan(&s, t0 + CT_GC_EVERY + POLL_EVERY).is_empty());
    }
}
