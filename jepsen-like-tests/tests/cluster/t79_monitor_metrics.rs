use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::Context;
use membrane_jepsen::endpoint::{check_pair, EchoServers, Endpoint, Proto, ECHO_UDP_PORT};
use membrane_jepsen::observe::{http_get, scrape, value, MonitorProc};
use membrane_jepsen::{in_netns, ip_in, require_root, wait_until, Cluster};
use serde_json::Value;

fn has_label(v: &Value, field: &str, label: &str) -> bool {
    v[field]
        .as_array()
        .is_some_and(|a| a.iter().any(|l| l == label))
}

/// Two nodes with `--monitor-trace`: `membrane monitor -o json` on node 1 shows trace
/// events that name both endpoints of a TCP exchange across nodes and a drop with its
/// reason for a spoofed source; the metrics endpoint shows forwarded counters rising and
/// the Raft, gossip and endpoint families.
#[test]
fn t79_monitor_streams_events_and_metrics_count_packets() -> anyhow::Result<()> {
    require_root()?;
    let (mut c, _) = Cluster::init("t79", 2)?;
    c.set_agent_args(&["--monitor-trace"]);
    c.start_first()?;
    let token = c.create_token(1)?;
    c.join(2, &token)?;
    c.wait_for_voters(2, Duration::from_secs(30))?;
    c.wait_plugin_socket(1)?;
    c.wait_plugin_socket(2)?;

    let web = c.add_endpoint(1, "web", &["app=web"])?;
    let db = c.add_endpoint(2, "db", &["app=db"])?;
    let eps: Vec<&Endpoint> = vec![&web, &db];
    c.wait_endpoints_listed(&eps, Duration::from_secs(20))?;
    let _servers = EchoServers::start(&eps)?;
    check_pair(&web, &db, Proto::Tcp, Duration::from_secs(20))?;

    let overlay_out =
        r#"membrane_datapath_packets_total{direction="egress",reason="forwarded-overlay"}"#;
    let before = scrape(&c, 1)?;
    let forwarded_before = value(&before, overlay_out);

    let monitor = MonitorProc::start(&c, 1)?;
    // The subscription starts a moment after the process: keep the traffic going until
    // the events show up.
    let web_ip = web.ip.to_string();
    let db_ip = db.ip.to_string();
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        check_pair(&web, &db, Proto::Tcp, Duration::from_secs(5))?;
        let out = monitor.find(|v| {
            v["kind"] == "trace"
                && v["direction"] == "egress"
                && v["proto"] == "TCP"
                && v["src"] == web_ip.as_str()
                && v["dst"] == db_ip.as_str()
                && has_label(v, "endpoint_labels", "app=web")
                && has_label(v, "remote_labels", "app=db")
        });
        let back = monitor.find(|v| {
            v["kind"] == "trace"
                && v["direction"] == "ingress"
                && v["src"] == db_ip.as_str()
                && v["dst"] == web_ip.as_str()
                && has_label(v, "endpoint_labels", "app=web")
                && has_label(v, "remote_labels", "app=db")
        });
        Ok(out.is_some() && back.is_some())
    })
    .with_context(|| {
        format!(
            "no trace events naming both endpoints: {}",
            monitor.sample()
        )
    })?;
    let ev = monitor
        .find(|v| v["kind"] == "trace" && v["src"] == web_ip.as_str())
        .context("trace event gone")?;
    for field in [
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
        assert!(ev.get(field).is_some(), "no {field} in {ev}");
    }
    assert_ne!(ev["endpoint_id"], 0, "{ev}");
    assert_eq!(ev["reason"], "forwarded-overlay", "{ev}");
    eprintln!("t79: a trace event: {ev}");

    // A datagram from an address that is not the endpoint's: dropped at from_endpoint.
    let spoofed = Ipv4Addr::new(192, 0, 2, 77);
    ip_in(
        &web.netns,
        &["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"],
    )?;
    let to = SocketAddr::from((db.ip, ECHO_UDP_PORT));
    wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let sock = in_netns(&web.netns, move || UdpSocket::bind((spoofed, 0)))??;
        sock.send_to(b"spoofed", to)?;
        Ok(monitor
            .find(|v| {
                v["kind"] == "drop"
                    && v["reason"] == "spoofed-source"
                    && v["src"] == spoofed.to_string().as_str()
                    && v["direction"] == "egress"
            })
            .is_some())
    })
    .with_context(|| format!("no spoofed-source drop event: {}", monitor.sample()))?;

    // Metrics: the forwarded counter rose, and every family is there.
    let after = scrape(&c, 1)?;
    assert!(
        value(&after, overlay_out) > forwarded_before,
        "{overlay_out} did not rise from {forwarded_before}:\n{after}"
    );
    assert!(
        value(
            &after,
            r#"membrane_datapath_packets_total{direction="egress",reason="spoofed-source"}"#
        ) > 0.0,
        "{after}"
    );
    wait_until(Duration::from_secs(10), Duration::from_millis(300), || {
        let text = scrape(&c, 1)?;
        Ok(text.contains("membrane_gossip_packets_total{kind=\"sent\"}"))
    })
    .context("no gossip counters")?;
    for family in [
        "membrane_datapath_packets_total",
        "membrane_datapath_bytes_total",
        "membrane_raft_term",
        "membrane_raft_commit_index",
        "membrane_raft_applied_index",
        "membrane_raft_is_leader",
        "membrane_gossip_packets_total",
        "membrane_endpoints",
        "membrane_policy_revision",
        "membrane_policy_enforced_revision",
        "membrane_bpf_map_entries",
        "membrane_bpf_map_capacity",
        "membrane_events_lost_total",
    ] {
        assert!(
            after.contains(&format!("# TYPE {family} ")),
            "no {family} family:\n{after}"
        );
    }
    assert_eq!(value(&after, "membrane_endpoints"), 1.0, "{after}");
    assert!(value(&after, "membrane_raft_term") >= 1.0, "{after}");
    assert!(
        value(&after, r#"membrane_bpf_map_entries{map="endpoints"}"#) >= 1.0,
        "{after}"
    );
    let (status, _) = http_get(&c, 1, "/")?;
    assert!(status.contains("404"), "GET / answered {status}");
    drop(monitor);
    Ok(())
}
