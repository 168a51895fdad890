//! Printing: aligned text tables for people, JSON (`--output json`) for scripts.

use membrane_proto::v1 as pb;
use serde_json::{json, Value};

use super::{flow, Format};
use crate::init::InitReport;

pub struct Output {
    format: Format,
}

/// Lays rows out as columns padded to the widest cell, one line each.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    out
}

pub(super) fn time(unix: i64) -> String {
    // RFC 3339 in UTC without pulling a date crate into the CLI.
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Appends one line to a text rendering.
macro_rules! line {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// What `node certs` shows for a node without a certificate record.
const UNKNOWN_CERT: &str = "unknown (issued before issue 11)";

impl Output {
    pub fn new(format: Format) -> Self {
        Output { format }
    }

    /// The one place a command's output picks its format: pretty JSON for
    /// scripts, else the text (which carries its own line ends) for people.
    /// Each side is built only when it is printed.
    fn print(&self, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
        match self.format {
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json()).unwrap_or_default()
            ),
            Format::Text => print!("{}", text()),
        }
    }

    /// A streamed event: one compact JSON object or one text line per event.
    fn print_event(&self, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
        match self.format {
            Format::Json => println!("{}", json()),
            Format::Text => println!("{}", text()),
        }
    }

    pub fn message(&self, text: &str, v: Value) {
        self.print(|| v, || format!("{text}\n"));
    }

    pub fn init(&self, r: &InitReport) {
        self.print(
            || serde_json::to_value(r).unwrap_or_default(),
            || {
                let mut o = String::new();
                line!(
                    o,
                    "Cluster {:?} (id {}) created in {}; this node is node {}.",
                    r.cluster_name,
                    r.cluster_id,
                    r.state_dir,
                    r.node_id
                );
                line!(
                    o,
                    "Start its agent with:\n\n  membrane agent --state-dir {}\n",
                    r.state_dir
                );
                line!(
                    o,
                    "Then join other nodes with (the token expires at {} and works once):\n",
                    time(r.token_expires_at_unix)
                );
                line!(o, "  {}\n", r.join_command);
                line!(o, "More tokens: membrane token create");
                o
            },
        );
    }

    pub fn status(&self, s: &pb::StatusResponse) {
        self.print(|| status_json(s), || status_text(s));
    }

    pub fn members(&self, members: &[pb::MemberEvent]) {
        self.print(
            || json!({"members": members.iter().map(member_json).collect::<Vec<_>>()}),
            || {
                let rows = members
                    .iter()
                    .map(|m| {
                        vec![
                            m.node_id.to_string(),
                            m.name.clone(),
                            m.kind.clone(),
                            m.rpc_addr.clone(),
                            m.version.clone(),
                            m.health.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "NAME", "STATE", "ADDRESS", "VERSION", "HEALTH"],
                    rows,
                )
            },
        );
    }

    pub fn member_event(&self, e: &pb::MemberEvent) {
        self.print_event(
            || member_json(e),
            || {
                let t = time(e.at_unix_ms.div_euclid(1000));
                format!(
                    "{} node {} ({}) {} at {}",
                    &t[11..19],
                    e.node_id,
                    e.name,
                    e.kind,
                    e.rpc_addr
                )
            },
        );
    }

    /// One flow event per line: text, or a compact JSON object (`membrane monitor`).
    pub fn flow_event(&self, m: &pb::FlowEventMessage) {
        self.print_event(
            || flow::to_json(m),
            || {
                let offset = flow::local_utc_offset(m.time_unix_ns.div_euclid(1_000_000_000));
                flow::format_line(m, offset)
            },
        );
    }

    pub fn keyring(&self, r: &pb::GossipKeyringResponse) {
        self.print(
            || {
                let keys: Vec<Value> = r
                    .keys
                    .iter()
                    .map(|k| json!({"id": k.id, "primary": k.primary}))
                    .collect();
                json!({ "keys": keys })
            },
            || {
                let mut o = String::new();
                for k in &r.keys {
                    line!(
                        o,
                        "key {}{}",
                        k.id,
                        if k.primary { " (primary)" } else { "" }
                    );
                }
                o
            },
        );
    }

    /// `node certs`: one row per node; days left from the agent's clock.
    pub fn node_certs(&self, r: &pb::NodeCertsResponse) {
        let days_left = |c: &pb::NodeCert| (c.not_after_unix - r.now_unix).div_euclid(86_400);
        self.print(
            || {
                let certs: Vec<Value> = r
                    .certs
                    .iter()
                    .map(|c| {
                        if c.known {
                            json!({"id": c.id, "name": c.name, "serial": c.serial,
                                   "not_before": time(c.not_before_unix), "not_after": time(c.not_after_unix),
                                   "not_after_unix": c.not_after_unix, "days_left": days_left(c)})
                        } else {
                            json!({"id": c.id, "name": c.name, "serial": null, "not_after": null,
                                   "days_left": null, "note": UNKNOWN_CERT})
                        }
                    })
                    .collect();
                json!({ "certs": certs })
            },
            || {
                let rows = r
                    .certs
                    .iter()
                    .map(|c| {
                        if c.known {
                            vec![
                                c.id.to_string(),
                                c.name.clone(),
                                c.serial.clone(),
                                time(c.not_after_unix),
                                days_left(c).to_string(),
                            ]
                        } else {
                            vec![
                                c.id.to_string(),
                                c.name.clone(),
                                UNKNOWN_CERT.to_string(),
                                String::new(),
                                String::new(),
                            ]
                        }
                    })
                    .collect();
                table(&["ID", "NAME", "SERIAL", "NOT AFTER", "DAYS LEFT"], rows)
            },
        );
    }

    /// `ca status`, `ca rotate`.
    pub fn encryption_status(&self, r: &pb::EncryptionStatusResponse) {
        self.print(|| encryption_json(r), || encryption_text(r));
    }

    pub fn ca_status(&self, r: &pb::CaStatusResponse) {
        self.print(
            || {
                let nodes: Vec<Value> = r
                    .nodes
                    .iter()
                    .map(|n| json!({"id": n.id, "name": n.name, "done": n.done, "finished": n.finished}))
                    .collect();
                json!({"ca_hash": r.ca_hash, "rotating": r.rotating, "phase": r.phase,
                       "old_ca_hash": r.old_ca_hash, "new_ca_hash": r.new_ca_hash,
                       "started_at": time(r.started_at_unix), "nodes": nodes})
            },
            || {
                let mut o = format!("signing CA: {}\n", r.ca_hash);
                if !r.rotating {
                    o.push_str("no rotation under way\n");
                    return o;
                }
                o.push_str(&format!(
                    "rotation from {} to {}, phase {} (started {})\n",
                    r.old_ca_hash,
                    r.new_ca_hash,
                    r.phase,
                    time(r.started_at_unix)
                ));
                let rows = r
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.to_string(),
                            n.name.clone(),
                            if n.done.is_empty() { "-".into() } else { n.done.clone() },
                            if n.finished { "yes".into() } else { "no".into() },
                        ]
                    })
                    .collect();
                o.push_str(&table(&["ID", "NAME", "DONE", "PHASE FINISHED"], rows));
                o
            },
        );
    }

    /// `node renew-cert`.
    pub fn renewed_cert(&self, c: &pb::NodeCert) {
        self.print(
            || {
                json!({"id": c.id, "name": c.name, "serial": c.serial,
                       "not_after": time(c.not_after_unix), "not_after_unix": c.not_after_unix,
                       "restarting": true})
            },
            || {
                format!(
                    "node {} certificate renewed: serial {}, valid until {}; the agent restarts to use it\n",
                    c.id,
                    c.serial,
                    time(c.not_after_unix)
                )
            },
        );
    }

    pub fn nodes(&self, r: &pb::NodeListResponse) {
        self.print(
            || {
                let nodes: Vec<Value> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({"id": n.id, "name": n.name, "rpc_addr": n.rpc_addr, "pod_cidr": n.pod_cidr,
                               "raft_role": n.raft_role, "gossip_state": n.gossip_state, "tls_key_sha256": n.tls_key_sha256,
                               "x25519_public": n.x25519_public, "joined_at": time(n.joined_at_unix)})
                    })
                    .collect();
                json!({ "nodes": nodes })
            },
            || {
                let rows = r
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.to_string(),
                            n.name.clone(),
                            n.rpc_addr.clone(),
                            n.pod_cidr.clone(),
                            n.raft_role.clone(),
                            n.gossip_state.clone(),
                            time(n.joined_at_unix),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "NAME", "ADDRESS", "POD CIDR", "RAFT", "GOSSIP", "JOINED",
                    ],
                    rows,
                )
            },
        );
    }

    pub fn token_created(&self, t: &pb::TokenCreateResponse) {
        // Only the token goes to stdout, so `$(membrane token create)` captures it alone.
        self.print(
            || {
                json!({"token": t.token, "id": t.id, "expires_at": time(t.expires_at_unix),
                       "max_uses": t.max_uses, "join_command": t.join_command})
            },
            || format!("{}\n", t.token),
        );
        if self.format == Format::Text {
            eprintln!(
                "expires {}, {} use(s). Join with:\n  {}",
                time(t.expires_at_unix),
                t.max_uses,
                t.join_command
            );
        }
    }

    pub fn tokens(&self, r: &pb::TokenListResponse) {
        self.print(
            || {
                let tokens: Vec<Value> = r
                    .tokens
                    .iter()
                    .map(|t| json!({"id": t.id, "state": t.state, "uses": t.uses, "max_uses": t.max_uses,
                                     "created_at": time(t.created_at_unix), "expires_at": time(t.expires_at_unix),
                                     "revoked": t.revoked, "description": t.description}))
                    .collect();
                json!({ "tokens": tokens })
            },
            || {
                let rows = r
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.state.clone(),
                            format!("{}/{}", t.uses, t.max_uses),
                            time(t.expires_at_unix),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "STATE", "USES", "EXPIRES", "DESCRIPTION"], rows)
            },
        );
    }

    pub fn identity(&self, r: &pb::IdentityResponse) {
        let Some(i) = &r.identity else { return };
        self.print(
            || {
                let mut v = identity_json(i);
                v["created"] = json!(r.created);
                v
            },
            || {
                format!(
                    "{}\t{}\t(references: {})\n",
                    i.id,
                    i.labels.join(","),
                    i.references
                )
            },
        );
    }

    pub fn identities(&self, r: &pb::IdentityListResponse) {
        self.print(
            || {
                let ids: Vec<Value> = r.identities.iter().map(identity_json).collect();
                json!({ "identities": ids })
            },
            || {
                let rows = r
                    .identities
                    .iter()
                    .map(|i| {
                        vec![
                            i.id.to_string(),
                            i.references.to_string(),
                            i.labels.join(","),
                        ]
                    })
                    .collect();
                table(&["ID", "REFS", "LABELS"], rows)
            },
        );
    }

    pub fn released(&self, r: &pb::ReleaseResponse) {
        let text = if r.removed {
            format!("identity {} released and removed", r.id)
        } else {
            format!(
                "identity {} released; {} reference(s) left",
                r.id, r.references
            )
        };
        self.message(
            &text,
            json!({"id": r.id, "references": r.references, "removed": r.removed}),
        );
    }

    pub fn policy_imported(&self, r: &pb::PolicyImportResponse) {
        self.message(
            &format!(
                "imported {} (revision {}); `membrane policy wait {}` returns once every node enforces it",
                r.names.join(", "),
                r.revision,
                r.revision
            ),
            json!({"revision": r.revision, "policies": r.names}),
        );
    }

    pub fn policies(&self, r: &pb::PolicyGetResponse) {
        self.print(
            || {
                let ps: Vec<Value> = r
                    .policies
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "revision": p.revision,
                            "updated_at_unix": p.updated_at_unix,
                            "yaml": p.yaml,
                        })
                    })
                    .collect();
                json!({"revision": r.revision, "policies": ps})
            },
            || {
                let mut o = String::new();
                for (i, p) in r.policies.iter().enumerate() {
                    if i > 0 {
                        line!(o, "---");
                    }
                    line!(
                        o,
                        "# revision {}, updated {}",
                        p.revision,
                        time(p.updated_at_unix)
                    );
                    // The stored YAML carries its own final newline (or not): print it as is.
                    o.push_str(&p.yaml);
                }
                if r.policies.is_empty() {
                    line!(o, "# no policies (revision {})", r.revision);
                }
                o
            },
        );
    }

    pub fn policy_waited(&self, r: &pb::PolicyWaitResponse) {
        self.print(
            || {
                let nodes: Vec<Value> = r
                    .nodes
                    .iter()
                    .map(|n| json!({"node_id": n.node_id, "name": n.name, "enforced": n.enforced, "state": n.state}))
                    .collect();
                json!({"revision": r.revision, "nodes": nodes})
            },
            || {
                let rows = r
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.node_id.to_string(),
                            n.enforced.to_string(),
                            n.state.clone(),
                        ]
                    })
                    .collect();
                format!(
                    "revision {} is enforced by every live node\n{}",
                    r.revision,
                    table(&["NODE", "ID", "ENFORCED", "STATE"], rows)
                )
            },
        );
    }

    pub fn policy_explained(&self, r: &pb::PolicyExplainResponse) {
        self.print(
            || {
                json!({
                    "verdict": r.verdict,
                    "sentence": r.sentence,
                    "egress": policy_side_json(&r.egress),
                    "ingress": policy_side_json(&r.ingress),
                })
            },
            || {
                let mut o = String::new();
                line!(o, "{}: {}", r.verdict.to_uppercase(), r.sentence);
                for s in [&r.egress, &r.ingress].into_iter().flatten() {
                    line!(o, "  {:<8} {:<6} {}", s.direction, s.verdict, s.reason);
                }
                o
            },
        );
    }

    pub fn endpoints(&self, r: &pb::EndpointListResponse) {
        self.print(
            || {
                let eps: Vec<Value> = r.endpoints.iter().map(endpoint_json).collect();
                json!({ "endpoints": eps })
            },
            || {
                let rows = r
                    .endpoints
                    .iter()
                    .map(|e| {
                        vec![
                            e.node_name.clone(),
                            e.id.to_string(),
                            short_id(&e.container_id),
                            e.ipv4.clone(),
                            e.identity.to_string(),
                            e.labels.join(","),
                            e.state.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NODE",
                        "ID",
                        "CONTAINER",
                        "IPV4",
                        "IDENTITY",
                        "LABELS",
                        "STATE",
                    ],
                    rows,
                )
            },
        );
    }

    pub fn endpoint(&self, e: &pb::EndpointDetail) {
        self.print(
            || endpoint_json(e),
            || {
                let rows = [
                    ("id", e.id.to_string()),
                    ("container", e.container_id.clone()),
                    ("node", format!("{} ({})", e.node_name, e.node_id)),
                    ("state", e.state.clone()),
                    ("ipv4", e.ipv4.clone()),
                    ("identity", e.identity.to_string()),
                    ("labels", e.labels.join(",")),
                    ("interface", format!("{} in {}", e.ifname, e.netns)),
                    ("mac", e.mac.clone()),
                    ("host interface", e.host_ifname.clone()),
                    ("created", time(e.created_at_unix)),
                ];
                let mut o = String::new();
                for (k, v) in rows {
                    line!(o, "{k:<15} {v}");
                }
                o
            },
        );
    }

    pub fn bpf_ipcache(&self, r: &pb::BpfIpcacheResponse) {
        self.print(
            || {
                let entries: Vec<Value> = r
                    .entries
                    .iter()
                    .map(|e| {
                        json!({
                            "cidr": e.cidr,
                            "identity": e.identity,
                            "tunnel_endpoint": e.tunnel_endpoint,
                            "flags": e.flags,
                        })
                    })
                    .collect();
                json!({ "entries": entries })
            },
            || {
                let rows = r
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.cidr.clone(),
                            e.identity.to_string(),
                            if e.tunnel_endpoint.is_empty() {
                                "-".to_string()
                            } else {
                                e.tunnel_endpoint.clone()
                            },
                        ]
                    })
                    .collect();
                table(&["PREFIX", "IDENTITY", "TUNNEL ENDPOINT"], rows)
            },
        );
    }

    pub fn bpf_endpoints(&self, r: &pb::BpfEndpointResponse) {
        self.print(
            || {
                let entries: Vec<Value> = r
                    .entries
                    .iter()
                    .map(|e| {
                        json!({
                            "ipv4": e.ipv4,
                            "endpoint_id": e.endpoint_id,
                            "ifindex": e.ifindex,
                            "identity": e.identity,
                            "mac": e.mac,
                            "host_mac": e.host_mac,
                        })
                    })
                    .collect();
                json!({ "entries": entries, "pin_dir": r.pin_dir })
            },
            || {
                let rows = r
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.ipv4.clone(),
                            e.endpoint_id.to_string(),
                            e.ifindex.to_string(),
                            e.identity.to_string(),
                            e.mac.clone(),
                            e.host_mac.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["IPV4", "ENDPOINT", "IFINDEX", "IDENTITY", "MAC", "HOST MAC"],
                    rows,
                )
            },
        );
    }
}

fn status_json(s: &pb::StatusResponse) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| json!({"node_id": m.node_id, "rpc_addr": m.rpc_addr, "role": m.role}))
        .collect();
    json!({
        "cluster_id": s.cluster_id, "cluster_name": s.cluster_name,
        "node_id": s.node_id, "node_name": s.node_name, "rpc_addr": s.rpc_addr, "pod_cidr": s.pod_cidr,
        "raft_state": s.raft_state, "term": s.term,
        "leader_id": if s.leader_id == 0 { Value::Null } else { json!(s.leader_id) },
        "commit_index": s.commit_index, "applied_index": s.applied_index, "last_log_index": s.last_log_index,
        "members": members,
        "gossip": s.gossip.as_ref().map(|g| json!({
            "sent": g.sent, "received": g.received, "dropped_truncated": g.dropped_truncated,
            "dropped_unknown_key": g.dropped_unknown_key, "dropped_forged": g.dropped_forged,
            "dropped_replay": g.dropped_replay, "dropped_malformed": g.dropped_malformed,
            "dropped_unknown_sender": g.dropped_unknown_sender, "dropped_future_epoch": g.dropped_future_epoch,
            "key_ids": g.key_ids, "primary_key": g.primary_key,
        })),
    })
}

fn status_text(s: &pb::StatusResponse) -> String {
    let mut o = String::new();
    line!(o, "Cluster:      {} (id {})", s.cluster_name, s.cluster_id);
    line!(
        o,
        "Node:         {} (id {}) at {}",
        s.node_name,
        s.node_id,
        s.rpc_addr
    );
    let pod_cidr = if s.pod_cidr.is_empty() {
        "-"
    } else {
        &s.pod_cidr
    };
    line!(o, "Pod CIDR:     {pod_cidr}");
    line!(o, "Raft:         {}, term {}", s.raft_state, s.term);
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("node {}", s.leader_id)
    };
    line!(o, "Leader:       {leader}");
    line!(
        o,
        "Commit index: {} (applied {}, last log {})",
        s.commit_index,
        s.applied_index,
        s.last_log_index
    );
    line!(o, "Members:");
    for m in &s.members {
        line!(o, "  node {:<4} {:<8} {}", m.node_id, m.role, m.rpc_addr);
    }
    if let Some(g) = &s.gossip {
        line!(
            o,
            "Gossip:       {} sent, {} received; dropped {} forged, {} replayed, {} truncated, {} unknown key, {} unknown sender, {} future epoch",
            g.sent, g.received, g.dropped_forged, g.dropped_replay, g.dropped_truncated, g.dropped_unknown_key,
            g.dropped_unknown_sender, g.dropped_future_epoch
        );
    }
    o
}

fn member_json(e: &pb::MemberEvent) -> Value {
    json!({"kind": e.kind, "node_id": e.node_id, "name": e.name, "rpc_addr": e.rpc_addr, "pod_cidr": e.pod_cidr,
           "version": e.version, "health": e.health, "at_unix_ms": e.at_unix_ms})
}

fn identity_json(i: &pb::IdentityInfo) -> Value {
    json!({"id": i.id, "labels": i.labels, "references": i.references})
}

fn policy_side_json(s: &Option<pb::PolicySide>) -> Option<Value> {
    s.as_ref().map(|s| {
        json!({
            "direction": s.direction,
            "verdict": s.verdict,
            "rule": s.rule,
            "selected_by": s.selected_by,
            "remote_identity": s.remote_identity,
            "reason": s.reason,
        })
    })
}

fn endpoint_json(e: &pb::EndpointDetail) -> Value {
    json!({
        "id": e.id,
        "container_id": e.container_id,
        "ifname": e.ifname,
        "netns": e.netns,
        "host_ifname": e.host_ifname,
        "ipv4": e.ipv4,
        "mac": e.mac,
        "identity": e.identity,
        "labels": e.labels,
        "node_id": e.node_id,
        "node_name": e.node_name,
        "state": e.state,
        "created_at_unix": e.created_at_unix,
    })
}

/// Container ids are usually 64 hex digits; 12 are enough to tell them apart on screen.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

fn epoch_or_none(e: u32) -> String {
    if e == 0 {
        "-".into()
    } else {
        e.to_string()
    }
}

pub(super) fn encryption_json(r: &pb::EncryptionStatusResponse) -> Value {
    let epochs: Vec<Value> = r
        .epochs
        .iter()
        .map(|e| {
            json!({"epoch": e.epoch, "state": e.state, "keys": e.keys,
                   "waiting_for": e.waiting_for, "begun_at": time(e.begun_at_unix),
                   "activated_at": (e.activated_at_unix != 0).then(|| time(e.activated_at_unix))})
        })
        .collect();
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|p| {
            json!({"node_id": p.node_id, "name": p.name, "underlay": p.underlay,
                   "send_epoch": (p.send_epoch != 0).then_some(p.send_epoch),
                   "accepted_epochs": p.accepted_epochs,
                   "sealed_packets": p.sealed_packets, "sealed_bytes": p.sealed_bytes,
                   "opened_packets": p.opened_packets, "opened_bytes": p.opened_bytes})
        })
        .collect();
    let drops: serde_json::Map<String, Value> = r
        .drops
        .iter()
        .map(|d| (d.reason.clone(), json!(d.count)))
        .collect();
    json!({"enabled": r.enabled, "node_id": r.node_id, "device": r.device,
           "device_up": r.device_up, "boot": r.boot,
           "active_epoch": (r.active_epoch != 0).then_some(r.active_epoch),
           "pending_epoch": (r.pending_epoch != 0).then_some(r.pending_epoch),
           "epochs": epochs, "peers": peers, "drops": drops})
}

pub(super) fn encryption_text(r: &pb::EncryptionStatusResponse) -> String {
    let mut o = format!(
        "encryption: {}; device {} {}; active epoch {}, pending {}\n",
        if r.enabled { "enabled" } else { "disabled" },
        r.device,
        if r.device_up { "up" } else { "down" },
        epoch_or_none(r.active_epoch),
        epoch_or_none(r.pending_epoch),
    );
    if !r.epochs.is_empty() {
        let rows = r
            .epochs
            .iter()
            .map(|e| {
                vec![
                    e.epoch.to_string(),
                    e.state.clone(),
                    format!("{:?}", e.keys),
                    format!("{:?}", e.waiting_for),
                ]
            })
            .collect();
        o.push_str(&table(&["EPOCH", "STATE", "KEYS", "WAITING FOR"], rows));
    }
    let rows = r
        .peers
        .iter()
        .map(|p| {
            vec![
                p.node_id.to_string(),
                p.name.clone(),
                p.underlay.clone(),
                epoch_or_none(p.send_epoch),
                format!("{:?}", p.accepted_epochs),
                format!("{}/{}", p.sealed_packets, p.sealed_bytes),
                format!("{}/{}", p.opened_packets, p.opened_bytes),
            ]
        })
        .collect();
    o.push_str(&table(
        &[
            "PEER",
            "NAME",
            "UNDERLAY",
            "SEND EPOCH",
            "ACCEPTED",
            "SEALED PKTS/BYTES",
            "OPENED PKTS/BYTES",
        ],
        rows,
    ));
    let drops: Vec<String> = r
        .drops
        .iter()
        .map(|d| format!("{} {}", d.reason, d.count))
        .collect();
    o.push_str(&format!("drops: {}\n", drops.join(", ")));
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_time_formats_as_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let rows = vec![vec![
            "1".to_string(),
            "long-name".to_string(),
            String::new(),
        ]];
        assert_eq!(
            super::table(&["ID", "NAME", "X"], rows),
            "ID  NAME       X\n1   long-name\n"
        );
    }
}
