//! Flow events of this node's datapath, for `membrane monitor`.
//!
//! One task owns the ring buffer's [`EventReader`] (there is one consumer per ring buffer),
//! decorates each [`FlowEvent`] with what the agent knows (the local endpoint's labels, the
//! remote identity's labels from the registry copy, the rule's name) and broadcasts it. A
//! subscriber that reads too slowly is never waited for: the broadcast channel is bounded,
//! and the subscriber gets an "N events lost" notice instead of the events it missed.
//!
//! Decoration, filtering and formatting are pure functions below the task, tested without a
//! datapath.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use membrane_ebpf::{proto, Direction, EventKind, EventReader, FlowEvent};
use membrane_proto::v1 as pb;
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub use crate::policy::sync::RuleNames;

use crate::endpoints::EndpointManager;
use crate::registry::client::RegistryClient;

/// Events buffered per subscriber before the slowest one starts losing them.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Reserved identities (docs/datapath.md): not in the registry, named here.
const RESERVED: [(u32, &str); 3] = [
    (membrane_ebpf::IDENTITY_HOST, "reserved:host"),
    (membrane_ebpf::IDENTITY_WORLD, "reserved:world"),
    (6, "reserved:remote-node"),
];

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

/// What decoration needs of a local endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    pub labels: Vec<String>,
    pub identity: u32,
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

/// Labels shown for an identity the registry has no record of.
pub fn reserved_labels(identity: u32) -> Vec<String> {
    RESERVED
        .iter()
        .filter(|(id, _)| *id == identity)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// The rule's name, `rule N` when the policy sync has not named it, empty for rule 0.
pub fn rule_display(rule_id: u32, names: &BTreeMap<u32, String>) -> String {
    match rule_id {
        0 => String::new(),
        id => names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("rule {id}")),
    }
}

/// The message for one event, given what the agent knows about both sides.
pub fn decorate(
    ev: &FlowEvent,
    time_unix_ns: i64,
    local: Option<&Local>,
    remote_labels: Vec<String>,
    rule: String,
) -> pb::FlowEventMessage {
    pb::FlowEventMessage {
        time_unix_ns,
        kind: ev.kind.as_str().to_string(),
        direction: ev.direction.as_str().to_string(),
        endpoint_id: u32::from(ev.endpoint_id),
        endpoint_labels: local.map(|l| l.labels.clone()).unwrap_or_default(),
        endpoint_identity: local.map(|l| l.identity).unwrap_or(0),
        src: ev.saddr.to_string(),
        dst: ev.daddr.to_string(),
        sport: u32::from(ev.sport),
        dport: u32::from(ev.dport),
        proto: u32::from(ev.proto),
        tcp_flags: u32::from(ev.tcp_flags),
        reason: match ev.reason {
            Some(r) => r.as_str().to_string(),
            None => format!("reason {}", ev.reason_code),
        },
        remote_identity: ev.remote_identity,
        remote_labels,
        rule_id: ev.rule_id,
        rule,
        len: ev.len,
        ifindex: ev.ifindex,
        icmp_type: u32::from(ev.icmp_type),
        lost: 0,
    }
}

/// The notice a subscriber gets in place of `n` events it missed.
pub fn lost_notice(n: u64) -> pb::FlowEventMessage {
    pb::FlowEventMessage {
        lost: n,
        ..Default::default()
    }
}

// ---- filters ------------------------------------------------------------------------------

/// Which kinds of events a subscriber wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KindFilter {
    #[default]
    All,
    Drop,
    Policy,
    Trace,
}

/// A subscriber's filter (MonitorRequest); empty fields match everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub endpoint_id: Option<u32>,
    /// Either side's identity.
    pub identity: Option<u32>,
    pub kind: KindFilter,
}

impl Filter {
    /// The filter a request asks for; None when it names a type this build does not know.
    pub fn from_request(req: &pb::MonitorRequest) -> Option<Filter> {
        let kind = match pb::MonitorType::try_from(req.r#type).ok()? {
            pb::MonitorType::All => KindFilter::All,
            pb::MonitorType::Drop => KindFilter::Drop,
            pb::MonitorType::Policy => KindFilter::Policy,
            pb::MonitorType::Trace => KindFilter::Trace,
        };
        Some(Filter {
            endpoint_id: (req.endpoint_id != 0).then_some(req.endpoint_id),
            identity: (req.identity != 0).then_some(req.identity),
            kind,
        })
    }

    /// Whether `m` passes. Lost notices always pass: the subscriber must know about gaps.
    pub fn matches(&self, m: &pb::FlowEventMessage) -> bool {
        if m.lost != 0 {
            return true;
        }
        let kind_ok = match self.kind {
            KindFilter::All => true,
            KindFilter::Drop => m.kind == EventKind::Drop.as_str(),
            KindFilter::Policy => m.kind == EventKind::PolicyVerdict.as_str(),
            KindFilter::Trace => m.kind == EventKind::Trace.as_str(),
        };
        kind_ok
            && self.endpoint_id.is_none_or(|id| m.endpoint_id == id)
            && self
                .identity
                .is_none_or(|id| m.remote_identity == id || m.endpoint_identity == id)
    }
}

// ---- formatting ---------------------------------------------------------------------------

/// TCP flag names in the order people read them.
const TCP_FLAGS: [(u8, &str); 8] = [
    (0x02, "SYN"),
    (0x10, "ACK"),
    (0x01, "FIN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

pub fn tcp_flag_names(flags: u32) -> Vec<&'static str> {
    TCP_FLAGS
        .iter()
        .filter(|(bit, _)| flags & u32::from(*bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

pub fn proto_name(p: u32) -> String {
    match u8::try_from(p) {
        Ok(proto::TCP) => "TCP".into(),
        Ok(proto::UDP) => "UDP".into(),
        Ok(proto::ICMP) => "ICMP".into(),
        _ => format!("proto {p}"),
    }
}

pub fn icmp_type_name(t: u32) -> String {
    match t {
        0 => "echo-reply".into(),
        3 => "unreachable".into(),
        5 => "redirect".into(),
        8 => "echo-request".into(),
        11 => "time-exceeded".into(),
        _ => format!("type {t}"),
    }
}

fn has_ports(m: &pb::FlowEventMessage) -> bool {
    m.proto == u32::from(proto::TCP) || m.proto == u32::from(proto::UDP)
}

fn labels_suffix(labels: &[String]) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!(" ({})", labels.join(","))
    }
}

fn addr(ip: &str, port: u32, with_port: bool) -> String {
    if with_port {
        format!("{ip}:{port}")
    } else {
        ip.to_string()
    }
}

/// `HH:MM:SS.mmm` of a wall-clock time, shifted by `utc_offset_secs` (local time).
pub fn clock(unix_ns: i64, utc_offset_secs: i64) -> String {
    let ms = unix_ns.div_euclid(1_000_000) + utc_offset_secs * 1000;
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// The local time zone's offset from UTC at `unix_secs`, 0 when it cannot be read.
pub fn local_utc_offset(unix_secs: i64) -> i64 {
    let t: libc::time_t = unix_secs as libc::time_t;
    // SAFETY: tm is plain data that localtime_r fills; both pointers are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

/// One text line: `10:01:02.123 ep 1234 (app=web) -> 10.128.1.7:5432 (app=db) TCP SYN
/// policy-denied`. Egress reads endpoint -> remote, ingress remote -> endpoint.
pub fn format_line(m: &pb::FlowEventMessage, utc_offset_secs: i64) -> String {
    if m.lost != 0 {
        return format!("{} events lost (this monitor read too slowly)", m.lost);
    }
    let ports = has_ports(m);
    let egress = m.direction == Direction::Egress.as_str();
    let (ep_ip, ep_port, remote_ip, remote_port) = if egress {
        (&m.src, m.sport, &m.dst, m.dport)
    } else {
        (&m.dst, m.dport, &m.src, m.sport)
    };
    let ep = if m.endpoint_id != 0 {
        format!("ep {}{}", m.endpoint_id, labels_suffix(&m.endpoint_labels))
    } else {
        // Dropped before the endpoint was known (a spoofed source, say): the address.
        addr(ep_ip, ep_port, ports)
    };
    let remote = format!(
        "{}{}",
        addr(remote_ip, remote_port, ports),
        labels_suffix(&m.remote_labels)
    );
    let (left, right) = if egress { (ep, remote) } else { (remote, ep) };
    let mut line = format!(
        "{} {left} -> {right} {}",
        clock(m.time_unix_ns, utc_offset_secs),
        proto_name(m.proto)
    );
    if m.proto == u32::from(proto::TCP) {
        let flags = tcp_flag_names(m.tcp_flags);
        if !flags.is_empty() {
            let _ = write!(line, " {}", flags.join("|"));
        }
    } else if m.proto == u32::from(proto::ICMP) {
        let _ = write!(line, " {}", icmp_type_name(m.icmp_type));
    }
    if m.kind == EventKind::PolicyVerdict.as_str() {
        line.push_str(" allowed");
    } else {
        let _ = write!(line, " {}", m.reason);
    }
    if !m.rule.is_empty() {
        let _ = write!(line, " ({})", m.rule);
    }
    line
}

/// RFC 3339 in UTC with milliseconds (as cli/output.rs, without a date crate).
pub fn rfc3339_ms(unix_ns: i64) -> String {
    let ms = unix_ns.div_euclid(1_000_000);
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = crate::civil::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// One JSON object per event (`membrane monitor -o json`); a lost notice is `{"lost": N}`.
pub fn to_json(m: &pb::FlowEventMessage) -> Value {
    if m.lost != 0 {
        return json!({ "lost": m.lost });
    }
    json!({
        "time": rfc3339_ms(m.time_unix_ns),
        "kind": m.kind,
        "direction": m.direction,
        "endpoint_id": m.endpoint_id,
        "endpoint_labels": m.endpoint_labels,
        "endpoint_identity": m.endpoint_identity,
        "src": m.src,
        "dst": m.dst,
        "sport": m.sport,
        "dport": m.dport,
        "proto": proto_name(m.proto),
        "tcp_flags": tcp_flag_names(m.tcp_flags),
        "icmp_type": (m.proto == u32::from(proto::ICMP)).then_some(m.icmp_type),
        "reason": m.reason,
        "remote_identity": m.remote_identity,
        "remote_labels": m.remote_labels,
        "rule_id": m.rule_id,
        "rule": (!m.rule.is_empty()).then_some(&m.rule),
        "len": m.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_ebpf::Reason;
    use std::net::Ipv4Addr;

    fn event(kind: EventKind, direction: Direction, reason: Reason) -> FlowEvent {
        FlowEvent {
            ts_ns: 0,
            kind,
            direction,
            reason: Some(reason),
            reason_code: reason.code() as u16,
            saddr: Ipv4Addr::new(10, 128, 0, 5),
            daddr: Ipv4Addr::new(10, 128, 1, 7),
            sport: 40000,
            dport: 5432,
            proto: proto::TCP,
            tcp_flags: 0x02,
            endpoint_id: 1234,
            remote_identity: 300,
            rule_id: 0,
            policy_table: None,
            ifindex: 9,
            len: 74,
            icmp_type: 0,
        }
    }

    fn web() -> Local {
        Local {
            labels: vec!["app=web".into()],
            identity: 200,
        }
    }

    // 10:01:02.123 UTC on some day.
    const T: i64 =
        ((10 * 3600 + 60 + 2) * 1000 + 123) * 1_000_000 + 19_000 * 86_400 * 1_000_000_000;

    #[test]
    fn egress_drop_reads_endpoint_to_remote() {
        let ev = event(EventKind::Drop, Direction::Egress, Reason::DropPolicyDenied);
        let m = decorate(&ev, T, Some(&web()), vec!["app=db".into()], String::new());
        assert_eq!(
            format_line(&m, 0),
            "10:01:02.123 ep 1234 (app=web) -> 10.128.1.7:5432 (app=db) TCP SYN policy-denied"
        );
    }

    #[test]
    fn ingress_reads_remote_to_endpoint_and_local_time_shifts() {
        let mut ev = event(EventKind::Trace, Direction::Ingress, Reason::Delivered);
        ev.saddr = Ipv4Addr::new(10, 128, 1, 7);
        ev.sport = 5432;
        ev.daddr = Ipv4Addr::new(10, 128, 0, 5);
        ev.dport = 40000;
        ev.tcp_flags = 0x12;
        let m = decorate(&ev, T, Some(&web()), vec!["app=db".into()], String::new());
        assert_eq!(
            format_line(&m, 2 * 3600),
            "12:01:02.123 10.128.1.7:5432 (app=db) -> ep 1234 (app=web) TCP SYN|ACK delivered"
        );
    }

    #[test]
    fn rules_verdicts_icmp_and_unknown_endpoints() {
        let mut names = BTreeMap::new();
        names.insert(7, "allow-web".to_string());
        assert_eq!(rule_display(7, &names), "allow-web");
        assert_eq!(rule_display(8, &names), "rule 8");
        assert_eq!(rule_display(0, &names), "");

        let mut ev = event(EventKind::PolicyVerdict, Direction::Egress, Reason::CtNew);
        ev.rule_id = 8;
        let m = decorate(&ev, T, Some(&web()), vec![], rule_display(8, &names));
        assert!(
            format_line(&m, 0).ends_with("TCP SYN allowed (rule 8)"),
            "{}",
            format_line(&m, 0)
        );

        let mut ev = event(EventKind::Drop, Direction::Egress, Reason::DropSpoofed);
        ev.endpoint_id = 0;
        ev.proto = proto::ICMP;
        ev.icmp_type = 8;
        ev.remote_identity = 2;
        let m = decorate(&ev, T, None, reserved_labels(2), String::new());
        assert_eq!(
            format_line(&m, 0),
            "10:01:02.123 10.128.0.5 -> 10.128.1.7 (reserved:world) ICMP echo-request spoofed-source"
        );

        let mut ev = event(EventKind::Drop, Direction::Ingress, Reason::DropMalformed);
        ev.reason = None;
        ev.reason_code = 40;
        ev.proto = 47;
        let m = decorate(&ev, T, None, vec![], String::new());
        assert!(
            format_line(&m, 0).ends_with("proto 47 reason 40"),
            "{}",
            format_line(&m, 0)
        );
        assert_eq!(
            format_line(&lost_notice(12), 0),
            "12 events lost (this monitor read too slowly)"
        );
    }

    #[test]
    fn json_has_every_field() {
        let mut ev = event(
            EventKind::Drop,
            Direction::Egress,
            Reason::DropPolicyDenyRule,
        );
        ev.rule_id = 7;
        let m = decorate(
            &ev,
            T,
            Some(&web()),
            vec!["app=db".into()],
            "deny-db".into(),
        );
        let v = to_json(&m);
        for f in [
            "time",
            "kind",
            "direction",
            "endpoint_id",
            "endpoint_labels",
            "src",
            "dst",
            "sport",
            "dport",
            "proto",
            "tcp_flags",
            "reason",
            "remote_identity",
            "remote_labels",
            "rule_id",
            "rule",
            "len",
        ] {
            assert!(v.get(f).is_some(), "no {f} in {v}");
        }
        assert_eq!(v["time"], "2022-01-08T10:01:02.123Z");
        assert_eq!(v["kind"], "drop");
        assert_eq!(v["proto"], "TCP");
        assert_eq!(v["tcp_flags"], json!(["SYN"]));
        assert_eq!(v["reason"], "policy-deny-rule");
        assert_eq!(v["rule"], "deny-db");
        assert_eq!(v["endpoint_labels"], json!(["app=web"]));
        assert_eq!(v["dport"], 5432);
        assert_eq!(v["icmp_type"], Value::Null);
        assert_eq!(to_json(&lost_notice(3)), json!({"lost": 3}));
    }

    #[test]
    fn filters_by_kind_endpoint_and_either_identity() {
        let drop = decorate(
            &event(EventKind::Drop, Direction::Egress, Reason::DropPolicyDenied),
            T,
            Some(&web()),
            vec![],
            String::new(),
        );
        let trace = decorate(
            &event(EventKind::Trace, Direction::Egress, Reason::ForwardedLocal),
            T,
            Some(&web()),
            vec![],
            String::new(),
        );
        let req = |endpoint_id, identity, t: pb::MonitorType| pb::MonitorRequest {
            endpoint_id,
            identity,
            r#type: t as i32,
        };
        let all = Filter::from_request(&req(0, 0, pb::MonitorType::All)).unwrap();
        assert!(all.matches(&drop) && all.matches(&trace));
        let drops = Filter::from_request(&req(0, 0, pb::MonitorType::Drop)).unwrap();
        assert!(drops.matches(&drop) && !drops.matches(&trace));
        let traces = Filter::from_request(&req(0, 0, pb::MonitorType::Trace)).unwrap();
        assert!(!traces.matches(&drop) && traces.matches(&trace));
        let policy = Filter::from_request(&req(0, 0, pb::MonitorType::Policy)).unwrap();
        assert!(!policy.matches(&drop) && !policy.matches(&trace));
        assert!(Filter::from_request(&req(1234, 0, pb::MonitorType::All))
            .unwrap()
            .matches(&drop));
        assert!(!Filter::from_request(&req(1, 0, pb::MonitorType::All))
            .unwrap()
            .matches(&drop));
        // Remote (300) and local (200) identities both match; another does not.
        for (id, want) in [(300, true), (200, true), (5, false)] {
            let f = Filter::from_request(&req(0, id, pb::MonitorType::All)).unwrap();
            assert_eq!(f.matches(&drop), want, "identity {id}");
        }
        // A gap is always reported, whatever the filter.
        assert!(Filter::from_request(&req(1, 5, pb::MonitorType::Policy))
            .unwrap()
            .matches(&lost_notice(1)));
        assert!(Filter::from_request(&pb::MonitorRequest {
            r#type: 99,
            ..Default::default()
        })
        .is_none());
    }

    #[test]
    fn clock_and_dates() {
        assert_eq!(clock(T, 0), "10:01:02.123");
        assert_eq!(clock(T, -11 * 3600), "23:01:02.123");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(tcp_flag_names(0x11), vec!["ACK", "FIN"]);
        assert_eq!(icmp_type_name(0), "echo-reply");
        assert_eq!(reserved_labels(6), vec!["reserved:remote-node"]);
        assert!(reserved_labels(300).is_empty());
    }

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
