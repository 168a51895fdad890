//! The agent's Prometheus endpoint (`--metrics-addr`, default 127.0.0.1:9962).
//!
//! Everything is read at scrape time into a [`Snapshot`] (the BPF per-CPU counters summed
//! over CPUs, Raft, gossip, endpoints, policy revisions, map fill levels, lost events) and
//! encoded by a custom collector in the Prometheus text format (0.0.4). Nothing is counted
//! twice in the agent: the counters live where they are kept (the kernel, openraft, the
//! gossip transport), so a scrape costs nothing between scrapes.
//!
//! This module is the pure part (what a scrape shows, and its text); [`serve`] is the HTTP
//! side, served with hyper.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use membrane_ebpf::{Direction, MapUsage, Reason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::cluster::gossip::GossipSlot;
use crate::endpoints::EndpointsSlot;
use crate::observe::monitor::Monitor;
use crate::registry::client::RegistryClient;

mod serve;

pub use serve::{bind, respond, serve};

/// The default `--metrics-addr`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9962";

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-addr {0:?} is not an address (IP:PORT, or empty to turn metrics off)")]
    BadAddress(String),
    #[error("cannot listen on {addr} for metrics: {source}; is another agent running? pass another --metrics-addr, or an empty one to turn it off")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Parses `--metrics-addr`: None (off) for an empty string.
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, MetricsError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| MetricsError::BadAddress(s.to_string()))
}

/// What a scrape reads from.
#[derive(Clone)]
pub struct Sources {
    pub client: Arc<RegistryClient>,
    pub gossip: GossipSlot,
    pub endpoints: EndpointsSlot,
    pub monitor: Monitor,
    /// The policy revision the datapath enforces, set by the policy sync.
    pub enforced_revision: Arc<AtomicU64>,
    /// Refused joins, counted by the join service.
    pub join: Arc<crate::rpc::join_service::JoinCounters>,
    /// The encryption tunnel (its keys and device).
    pub tunnel: Arc<crate::tunnel::control::TunnelShared>,
}

/// Raft's view of this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftSnapshot {
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
}

/// Everything one scrape shows. Sections that are not up yet (the datapath, gossip) are
/// None and their families are left out rather than reported as zero.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `(direction, reason, packets, bytes)`, summed over CPUs.
    pub datapath: Option<Vec<(Direction, Reason, u64, u64)>>,
    pub maps: Option<Vec<MapUsage>>,
    pub raft: RaftSnapshot,
    /// `(kind, packets)`.
    pub gossip: Option<Vec<(&'static str, u64)>>,
    pub endpoints: Option<u64>,
    pub policy_revision: u64,
    pub policy_enforced_revision: u64,
    /// `(why, events)`.
    pub events_lost: Vec<(&'static str, u64)>,
    /// `(reason, joins)`; empty: not counted.
    pub join_refused: Vec<(&'static str, u64)>,
    /// The encryption tunnel; None while its device does not run.
    pub tunnel: Option<TunnelSnapshot>,
}

/// The tunnel's counters: drops by reason, and per peer what was sealed and opened.
#[derive(Clone, Debug, Default)]
pub struct TunnelSnapshot {
    /// `(reason, packets)`.
    pub drops: Vec<(&'static str, u64)>,
    /// `(peer, sealed packets, sealed bytes, opened packets, opened bytes)`.
    pub peers: Vec<(u64, u64, u64, u64, u64)>,
    pub active_epoch: u64,
}

/// Reads every source once.
pub async fn snapshot(src: &Sources) -> Snapshot {
    let m = src.client.raft().metrics().borrow().clone();
    // 0.9's metrics carry no commit index; ask the Raft core for it.
    let commit_index = src
        .client
        .raft()
        .with_raft_state(|st| st.committed.map(|l| l.index).unwrap_or(0))
        .await
        .unwrap_or(0);
    let raft = RaftSnapshot {
        term: m.current_term,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        is_leader: m.state == openraft::ServerState::Leader,
    };
    let gossip = src.gossip.get().map(|g| {
        let c = g.counters();
        vec![
            ("sent", c.sent),
            ("send_failed", c.send_failed),
            ("received", c.received),
            ("dropped_truncated", c.dropped_truncated),
            ("dropped_unknown_version", c.dropped_unknown_version),
            ("dropped_unknown_key", c.dropped_unknown_key),
            ("dropped_forged", c.dropped_forged),
            ("dropped_replay", c.dropped_replay),
            ("dropped_malformed", c.dropped_malformed),
            ("dropped_unknown_sender", c.dropped_unknown_sender),
            ("dropped_future_epoch", c.dropped_future_epoch),
        ]
    });
    let manager = src.endpoints.get().cloned();
    // Walking the maps takes the datapath mutex and a syscall per entry: off the runtime.
    let bpf = match manager.clone() {
        Some(mgr) => tokio::task::spawn_blocking(move || {
            let dp = mgr.datapath().bpf();
            let counters = dp.metrics().map_err(|e| e.to_string());
            let maps = dp.map_usage().map_err(|e| e.to_string());
            (counters, maps)
        })
        .await
        .ok(),
        None => None,
    };
    let (datapath, maps) = match bpf {
        Some((counters, maps)) => (
            counters
                .inspect_err(|e| warn!(error = %e, "cannot read the BPF metrics map"))
                .ok(),
            maps.inspect_err(|e| warn!(error = %e, "cannot count BPF map entries"))
                .ok(),
        ),
        None => (None, None),
    };
    let stats = src.monitor.stats();
    let datapath_lost = |reason: Reason| {
        datapath
            .iter()
            .flatten()
            .filter(|(_, r, _, _)| *r == reason)
            .map(|(_, _, p, _)| *p)
            .fold(0u64, u64::wrapping_add)
    };
    let events_lost = vec![
        ("rate_limited", datapath_lost(Reason::EventsRateLimited)),
        ("ringbuf_full", datapath_lost(Reason::EventsRingbufFull)),
        ("subscriber_lagged", stats.lagged.load(Ordering::Relaxed)),
        ("undecodable", stats.undecodable.load(Ordering::Relaxed)),
    ];
    Snapshot {
        datapath,
        maps,
        raft,
        gossip,
        endpoints: manager.map(|m| m.list_live().len() as u64),
        policy_revision: src.client.local(|r| r.policy_revision()),
        policy_enforced_revision: src.enforced_revision.load(Ordering::Relaxed),
        events_lost,
        join_refused: src.join.refused(),
        tunnel: tunnel_snapshot(src),
    }
}

fn tunnel_snapshot(src: &Sources) -> Option<TunnelSnapshot> {
    let (_, counters) = src.tunnel.device()?;
    let tunnel = src.tunnel.tunnel()?;
    let drops = crate::tunnel::device::Drop::ALL
        .iter()
        .map(|d| (d.as_str(), counters.drop_count(*d)))
        .collect();
    let peers = tunnel
        .peers()
        .map(|p| {
            let c = tunnel.stats(p);
            (
                p,
                c.sealed_packets,
                c.sealed_bytes,
                c.opened_packets,
                c.opened_bytes,
            )
        })
        .collect();
    Some(TunnelSnapshot {
        drops,
        peers,
        active_epoch: u64::from(src.client.local(|r| r.encryption().active.unwrap_or(0))),
    })
}

/// Encodes a snapshot at scrape time.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// Labels as `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = series.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.1.metric_type())?;
    if let [(labels, value)] = series.as_slice() {
        if labels.is_empty() {
            // A single series without labels: `name value`, not `name{} value`.
            return value.encode(metric);
        }
    }
    for (labels, value) in &series {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        if let Some(dp) = &s.datapath {
            // The event counters count events not emitted, not packets: they are in
            // membrane_events_lost_total.
            let rows: Vec<_> = dp
                .iter()
                .filter(|(_, r, _, _)| {
                    !matches!(r, Reason::EventsRateLimited | Reason::EventsRingbufFull)
                })
                .collect();
            let labels = |d: &Direction, r: &Reason| -> Labels {
                vec![
                    ("direction", d.as_str().to_string()),
                    ("reason", r.as_str().to_string()),
                ]
            };
            family(
                &mut e,
                "membrane_datapath_packets",
                "Packets the BPF datapath counted, by direction (ingress = into endpoints) and reason (docs/datapath.md); each packet is counted once by the policy stage and once by the forwarding stage",
                rows.iter()
                    .map(|(d, r, p, _)| (labels(d, r), ConstCounter::new(*p)))
                    .collect(),
            )?;
            family(
                &mut e,
                "membrane_datapath_bytes",
                "Bytes (Ethernet header included) the BPF datapath counted, by direction and reason",
                rows.iter()
                    .map(|(d, r, _, b)| (labels(d, r), ConstCounter::new(*b)))
                    .collect(),
            )?;
        }
        if let Some(maps) = &s.maps {
            family(
                &mut e,
                "membrane_bpf_map_entries",
                "Entries in a BPF map",
                maps.iter()
                    .map(|m| (vec![("map", m.name.to_string())], gauge(m.entries as u64)))
                    .collect(),
            )?;
            family(
                &mut e,
                "membrane_bpf_map_capacity",
                "max_entries of a BPF map",
                maps.iter()
                    .map(|m| {
                        (
                            vec![("map", m.name.to_string())],
                            gauge(u64::from(m.capacity)),
                        )
                    })
                    .collect(),
            )?;
        }
        let one = |name: &str, help: &str, v: u64, e: &mut DescriptorEncoder| {
            family(e, name, help, vec![(Labels::new(), gauge(v))])
        };
        one(
            "membrane_raft_term",
            "Current Raft term",
            s.raft.term,
            &mut e,
        )?;
        one(
            "membrane_raft_commit_index",
            "Highest Raft log index known committed",
            s.raft.commit_index,
            &mut e,
        )?;
        one(
            "membrane_raft_applied_index",
            "Highest Raft log index applied to this node's registry copy",
            s.raft.applied_index,
            &mut e,
        )?;
        one(
            "membrane_raft_is_leader",
            "1 when this node is the Raft leader",
            u64::from(s.raft.is_leader),
            &mut e,
        )?;
        if let Some(g) = &s.gossip {
            family(
                &mut e,
                "membrane_gossip_packets",
                "Gossip datagrams sent, received and dropped (by why)",
                g.iter()
                    .map(|(k, v)| (vec![("kind", k.to_string())], ConstCounter::new(*v)))
                    .collect(),
            )?;
        }
        if let Some(n) = s.endpoints {
            one(
                "membrane_endpoints",
                "Live endpoints of this node",
                n,
                &mut e,
            )?;
        }
        one(
            "membrane_policy_revision",
            "Policy revision in this node's registry copy",
            s.policy_revision,
            &mut e,
        )?;
        one(
            "membrane_policy_enforced_revision",
            "Policy revision the datapath enforces",
            s.policy_enforced_revision,
            &mut e,
        )?;
        family(
            &mut e,
            "membrane_events_lost",
            "Flow events lost: rate_limited and ringbuf_full in the datapath, subscriber_lagged by slow monitors, undecodable records",
            s.events_lost
                .iter()
                .map(|(why, v)| (vec![("why", why.to_string())], ConstCounter::new(*v)))
                .collect(),
        )?;
        if let Some(t) = &s.tunnel {
            family(
                &mut e,
                "membrane_tunnel_drops",
                "Packets the encryption tunnel dropped, by reason (auth, replay, stale-epoch, unknown-sender, no-key, ...; docs/encryption.md)",
                t.drops
                    .iter()
                    .map(|(why, v)| (vec![("reason", why.to_string())], ConstCounter::new(*v)))
                    .collect(),
            )?;
            let per_peer = |pick: fn(&(u64, u64, u64, u64, u64)) -> u64| {
                t.peers
                    .iter()
                    .map(|p| (vec![("peer", p.0.to_string())], ConstCounter::new(pick(p))))
                    .collect::<Vec<_>>()
            };
            family(
                &mut e,
                "membrane_tunnel_sealed_packets",
                "Packets sealed to a peer node",
                per_peer(|p| p.1),
            )?;
            family(
                &mut e,
                "membrane_tunnel_sealed_bytes",
                "Inner bytes sealed to a peer node",
                per_peer(|p| p.2),
            )?;
            family(
                &mut e,
                "membrane_tunnel_opened_packets",
                "Packets from a peer node that authenticated and passed the replay window",
                per_peer(|p| p.3),
            )?;
            family(
                &mut e,
                "membrane_tunnel_opened_bytes",
                "Inner bytes opened from a peer node",
                per_peer(|p| p.4),
            )?;
            one(
                "membrane_tunnel_active_epoch",
                "The cluster's active tunnel key epoch (0: none)",
                t.active_epoch,
                &mut e,
            )?;
        }
        family(
            &mut e,
            "membrane_join_refused",
            "Join requests this node refused, by reason (rate_limited, malformed, token, address, other)",
            s.join_refused
                .iter()
                .map(|(why, v)| (vec![("reason", why.to_string())], ConstCounter::new(*v)))
                .collect(),
        )?;
        Ok(())
    }
}

/// The exposition text of a snapshot.
pub fn encode(s: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(s)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        // Writing to a String cannot fail; a collector bug would show as a short page.
        warn!(error = %e, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn full() -> Snapshot {
        Snapshot {
            datapath: Some(vec![
                (Direction::Egress, Reason::ForwardedLocal, 10, 1000),
                (Direction::Ingress, Reason::Delivered, 9, 900),
                (Direction::Egress, Reason::DropPolicyDenied, 2, 148),
                (Direction::Egress, Reason::EventsRateLimited, 4, 400),
            ]),
            maps: Some(vec![MapUsage {
                name: "conntrack",
                entries: 3,
                capacity: 65536,
            }]),
            raft: RaftSnapshot {
                term: 3,
                commit_index: 40,
                applied_index: 39,
                is_leader: true,
            },
            gossip: Some(vec![("sent", 5), ("received", 4), ("dropped_forged", 1)]),
            endpoints: Some(2),
            policy_revision: 7,
            policy_enforced_revision: 6,
            events_lost: vec![("rate_limited", 4), ("subscriber_lagged", 0)],
            join_refused: vec![("token", 3), ("rate_limited", 0)],
            tunnel: Some(TunnelSnapshot {
                drops: vec![("auth", 2), ("no-key", 0)],
                peers: vec![(2, 10, 1000, 9, 900)],
                active_epoch: 3,
            }),
        }
    }

    /// Parses the exposition text back: family -> (help, type, samples).
    /// family -> (HELP, TYPE, samples).
    type Families = BTreeMap<String, (String, String, Vec<(String, f64)>)>;

    fn parse(text: &str) -> Families {
        let mut fams: Families = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                fams.entry(name.into()).or_default().0 = help.into();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE name type");
                fams.entry(name.into()).or_default().1 = ty.into();
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line}");
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let name = series.split('{').next().unwrap_or(series);
                let v: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("{line}: not a number"));
                let fam = fams
                    .get_mut(name)
                    .unwrap_or_else(|| panic!("{name} sampled before its HELP/TYPE"));
                fam.2.push((series.to_string(), v));
            }
        }
        fams
    }

    #[test]
    fn every_family_has_help_type_and_numeric_samples() {
        let text = encode(full());
        let fams = parse(&text);
        let want: BTreeSet<&str> = [
            "membrane_datapath_packets_total",
            "membrane_datapath_bytes_total",
            "membrane_bpf_map_entries",
            "membrane_bpf_map_capacity",
            "membrane_raft_term",
            "membrane_raft_commit_index",
            "membrane_raft_applied_index",
            "membrane_raft_is_leader",
            "membrane_gossip_packets_total",
            "membrane_endpoints",
            "membrane_policy_revision",
            "membrane_policy_enforced_revision",
            "membrane_events_lost_total",
            "membrane_join_refused_total",
            "membrane_tunnel_drops_total",
            "membrane_tunnel_sealed_packets_total",
            "membrane_tunnel_sealed_bytes_total",
            "membrane_tunnel_opened_packets_total",
            "membrane_tunnel_opened_bytes_total",
            "membrane_tunnel_active_epoch",
        ]
        .into();
        let got: BTreeSet<&str> = fams.keys().map(String::as_str).collect();
        assert_eq!(got, want, "{text}");
        for (name, (help, ty, samples)) in &fams {
            assert!(!help.is_empty(), "{name} has no HELP");
            let expect_ty = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(ty, expect_ty, "{name}");
            assert!(!samples.is_empty(), "{name} has no samples");
        }
        let value = |series: &str| {
            fams.values()
                .flat_map(|f| f.2.iter())
                .find(|(s, _)| s == series)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no {series} in {text}"))
        };
        assert_eq!(
            value(
                r#"membrane_datapath_packets_total{direction="egress",reason="forwarded-local"}"#
            ),
            10.0
        );
        assert_eq!(value(r#"membrane_join_refused_total{reason="token"}"#), 3.0);
        assert_eq!(value(r#"membrane_tunnel_drops_total{reason="auth"}"#), 2.0);
        assert_eq!(
            value(r#"membrane_tunnel_opened_bytes_total{peer="2"}"#),
            900.0
        );
        assert_eq!(
            value(r#"membrane_datapath_bytes_total{direction="ingress",reason="delivered"}"#),
            900.0
        );
        assert_eq!(
            value(r#"membrane_bpf_map_capacity{map="conntrack"}"#),
            65536.0
        );
        assert_eq!(value("membrane_raft_is_leader"), 1.0);
        assert_eq!(value("membrane_policy_enforced_revision"), 6.0);
        assert_eq!(
            value(r#"membrane_gossip_packets_total{kind="dropped_forged"}"#),
            1.0
        );
        assert_eq!(
            value(r#"membrane_events_lost_total{why="rate_limited"}"#),
            4.0
        );
        // Events not emitted are not packets.
        assert!(!text.contains(r#"reason="events-rate-limited""#), "{text}");
    }

    #[test]
    fn sections_not_up_yet_are_left_out() {
        let text = encode(Snapshot::default());
        let fams = parse(&text);
        assert!(fams.contains_key("membrane_raft_term"));
        assert!(!fams.contains_key("membrane_datapath_packets_total"));
        assert!(!fams.contains_key("membrane_gossip_packets_total"));
        assert!(!fams.contains_key("membrane_endpoints"));
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("").unwrap(), None);
        assert_eq!(
            parse_addr(DEFAULT_ADDR).unwrap(),
            Some("127.0.0.1:9962".parse().unwrap())
        );
        assert!(parse_addr("localhost").is_err());
    }
}
