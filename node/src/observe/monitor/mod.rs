//! Flow events of this node's datapath, for `membrane monitor`.
//!
//! One task owns the ring buffer's [`EventReader`] (there is one consumer per ring buffer),
//! decorates each [`FlowEvent`](membrane_ebpf::FlowEvent) with what the agent knows (the
//! local endpoint's labels, the remote identity's labels from the registry copy, the rule's
//! name) and broadcasts it. A subscriber that reads too slowly is never waited for: the
//! broadcast channel is bounded, and the subscriber gets an "N events lost" notice instead
//! of the events it missed.
//!
//! The reader here does the IO; decoration ([`decorate`]) and filtering ([`filter`]) are
//! pure and tested without a datapath. Printing events is the CLI's (cli/flow.rs).

mod decorate;
mod filter;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use membrane_ebpf::{EventReader, FlowEvent};
use membrane_proto::v1 as pb;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub use crate::policy::apply::RuleNames;
#[cfg(test)]
pub(crate) use decorate::testing;
pub use decorate::{decorate, lost_notice, reserved_labels, rule_display, Local};
pub use filter::{Filter, KindFilter};

use crate::endpoints::EndpointManager;
use crate::registry::client::RegistryClient;

/// Events buffered per subscriber before the slowest one starts losing them.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Events the monitor could not deliver, by cause (the datapath's own losses are in its
/// metrics map: events-rate-limited, events-ringbuf-full).
#[derive(Debug, Default)]
pub struct MonitorStats {
    /// Events a slow subscriber missed (summed over subscribers).
    pub lagged: AtomicU64,
    /// Ring buffer records that did not decode (a newer datapath's kinds).
    pub undecodable: AtomicU64,
}

/// The publishing side of the event stream; cheap to clone.
#[derive(Clone, Debug)]
pub struct Monitor {
    tx: broadcast::Sender<Arc<pb::FlowEventMessage>>,
    stats: Arc<MonitorStats>,
}

impl Monitor {
    pub fn new(capacity: usize) -> Monitor {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Monitor {
            tx,
            stats: Arc::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<pb::FlowEventMessage>> {
        self.tx.subscribe()
    }

    pub fn stats(&self) -> &Arc<MonitorStats> {
        &self.stats
    }

    fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&self, msg: pb::FlowEventMessage) {
        // Err only means nobody listens right now.
        let _ = self.tx.send(Arc::new(msg));
    }
}

/// Drains the ring buffer for as long as the agent runs, decorating and broadcasting each
/// event while anyone listens. Drains even when nobody does, so the datapath does not
/// count a full ring buffer against a later subscriber.
pub async fn run_reader(
    monitor: Monitor,
    reader: EventReader,
    client: Arc<RegistryClient>,
    endpoints: Arc<EndpointManager>,
    rule_names: RuleNames,
) {
    // SAFETY: the reader owns the ring buffer's fd for its whole life and always returns
    // that same fd; the AsyncFd owns the reader, so the fd outlives the registration.
    let registered = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the events ring buffer; membrane monitor shows nothing");
            return;
        }
    };
    info!("flow event reader running");
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "polling the events ring buffer failed; the event reader stops");
                return;
            }
        };
        let reader = guard.get_inner_mut();
        let events = reader.drain();
        monitor
            .stats
            .undecodable
            .store(reader.undecodable(), Ordering::Relaxed);
        // Only after the buffer was seen empty: the next wakeup is for new records.
        guard.clear_ready();
        if events.is_empty() || !monitor.has_subscribers() {
            continue;
        }
        let clock = Clock::now();
        let mut ctx = Lookup::new(&client, &endpoints, &rule_names);
        for ev in &events {
            let msg = ctx.decorate(ev, clock.unix_ns(ev.ts_ns));
            monitor.publish(msg);
        }
    }
}

/// Maps CLOCK_MONOTONIC (event timestamps) to the wall clock, read once per batch.
#[derive(Clone, Copy, Debug)]
struct Clock {
    mono_ns: u64,
    unix_ns: i64,
}

impl Clock {
    fn now() -> Clock {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Clock {
            mono_ns: membrane_ebpf::ktime_now_ns(),
            unix_ns,
        }
    }

    fn unix_ns(&self, ts_ns: u64) -> i64 {
        let age = i64::try_from(self.mono_ns.saturating_sub(ts_ns)).unwrap_or(i64::MAX);
        self.unix_ns.saturating_sub(age)
    }
}

/// The labels and rule names one batch of events needs, looked up once per batch.
struct Lookup<'a> {
    client: &'a RegistryClient,
    rule_names: &'a RuleNames,
    local: BTreeMap<u32, Local>,
    identities: BTreeMap<u32, Vec<String>>,
}
impl<'a> Lookup<'a> {
    fn new(
        client: &'a RegistryClient,
        endpoints: &EndpointManager,
        rule_names: &'a RuleNames,
    ) -> Self {
        let local = endpoints
            .list_live()
            .into_iter()
            .map(|ep| {
                (
                    ep.record.id,
                    Local {
                        labels: ep.record.labels.to_strings(),
                        identity: ep.record.identity,
                    },
                )
            })
            .collect();
        Lookup {
            client,
            rule_names,
            local,
            identities: BTreeMap::new(),
        }
    }

    fn decorate(&mut self, ev: &FlowEvent, time_unix_ns: i64) -> pb::FlowEventMessage {
        let remote_labels = match self.identities.get(&ev.remote_identity) {
            Some(l) => l.clone(),
            None => {
                let id = ev.remote_identity;
                let l = self
                    .client
                    .local(|r| r.identity(id).map(|i| i.labels.to_strings()))
                    .unwrap_or_else(|| reserved_labels(id));
                self.identities.insert(id, l.clone());
                l
            }
        };
        let rule = {
            let names = self
                .rule_names
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rule_display(ev.rule_id, &names)
        };
        let local = self.local.get(&u32::from(ev.endpoint_id));
        decorate(ev, time_unix_ns, local, remote_labels, rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_lags_without_blocking_the_publisher() {
        let m = Monitor::new(4);
        let mut slow = m.subscribe();
        for _ in 0..10 {
            m.publish(lost_notice(1)); // any message will do
        }
        match slow.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
