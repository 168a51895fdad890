//! How `membrane monitor` prints a flow event: one text line for people, one JSON object
//! per line for scripts (`-o json`).

use std::fmt::Write as _;

use membrane_ebpf::{proto, Direction, EventKind};
use membrane_proto::v1 as pb;
use serde_json::{json, Value};

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
    use crate::observe::monitor::testing::{event, web, T};
    use crate::observe::monitor::{decorate, lost_notice, reserved_labels, rule_display};
    use membrane_ebpf::Reason;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

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
    fn clock_and_dates() {
        assert_eq!(clock(T, 0), "10:01:02.123");
        assert_eq!(clock(T, -11 * 3600), "23:01:02.123");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(tcp_flag_names(0x11), vec!["ACK", "FIN"]);
        assert_eq!(icmp_type_name(0), "echo-reply");
    }
}
