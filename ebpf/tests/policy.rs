//! Policy, conntrack, events and metrics in the kernel (needs root). Same harness as
//! tests/datapath.rs: per-test namespaces and pin dirs, removed in Drop even on panic.
//!
//! Run with `cargo test -p membrane-ebpf -- --test-threads=1`.

mod common;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::Duration,
};

use common::*;
use ipnet::Ipv4Net;
use membrane_ebpf::{
    ct_timeout, ktime_now_ns, proto, CtKey, CtValue, Datapath, DatapathConfig, Direction,
    EventKind, EventReader, IpcacheValue, PolicyKey, PolicyTable, PolicyValue, Reason,
    IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD,
};

/// How long a connection attempt that policy drops is given before it counts as refused.
const NOPE: Duration = Duration::from_millis(400);
const ID_C: u32 = 300;

fn sock(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, port))
}

/// An allow entry for `ep` from rule `rule`; `port` is `(port, prefix length)`.
fn allow(
    dp: &mut Datapath,
    ep: &Ep,
    dir: Direction,
    id: u32,
    proto: u8,
    port: (u16, u8),
    rule: u32,
) {
    let key = PolicyKey::new(ep_id(ep), dir, id, proto, port.0, port.1).expect("policy key");
    dp.upsert_policy(&key, &PolicyValue::allow(rule))
        .expect("upsert_policy");
}

fn metric_in(dp: &Datapath, d: Direction, r: Reason) -> u64 {
    dp.metric_in(d, r).expect("metrics").0
}

/// The conntrack entries of the TCP/UDP connection from `client` port `sport`.
fn entries_of(dp: &Datapath, client: Ipv4Addr, sport: u16) -> Vec<(CtKey, CtValue)> {
    dp.conntrack_entries()
        .expect("conntrack_entries")
        .into_iter()
        .filter(|(k, _)| {
            (k.saddr() == client && k.sport() == sport)
                || (k.daddr() == client && k.dport() == sport)
        })
        .collect()
}

/// A third endpoint C (identity 300) on the same node.
fn add_c(env: &mut SameNode, dp: &mut Datapath) -> Ep {
    let c = env
        .lab
        .endpoint(&env.node, "c", 3, Ipv4Addr::new(10, 128, 0, 7), GW);
    c.attach(dp);
    c.register(dp, ID_C);
    c
}

fn ping(ns: &str, to: Ipv4Addr, wait: &str) -> bool {
    let ping = require_tool("ping", "iputils-ping");
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(ping)
        .args(["-n", "-q", "-c", "1", "-W", wait])
        .arg(to.to_string())
        .output()
        .expect("run ping (iputils-ping)")
        .status
        .success()
}

#[test]
fn p1_no_policy_allows_all_tracks_and_traces() {
    let (env, mut dp) = same_node("node");
    let mut events = dp.take_event_reader().expect("event reader");
    assert!(dp.take_event_reader().is_none(), "one reader only");
    dp.set_config(&DatapathConfig::new(0, Ipv4Addr::new(192, 168, 1, 1)).with_trace(true))
        .unwrap();
    let to_b = sock(env.b.addr, 5000);
    let _server = EchoServer::start(&env.b.ns, to_b);
    let mut conn = connect(&env.a.ns, to_b, LONG).expect("no policy: allowed");
    roundtrip(&mut conn, b"default allow", LONG).unwrap();
    let sport = conn.local_addr().unwrap().port();

    // One entry per policy point, neither naming a rule: nothing was enforced.
    let mut entries = entries_of(&dp, env.a.addr, sport);
    entries.sort_by_key(|(k, _)| k.direction);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (ik, iv) = entries[0];
    let (ek, ev) = entries[1];
    assert_eq!(ik.direction(), Some(Direction::Ingress));
    assert_eq!(
        (iv.endpoint_id, iv.remote_identity, iv.rule_id),
        (ep_id(&env.b), ID_A, 0)
    );
    assert_eq!(ek.direction(), Some(Direction::Egress));
    assert_eq!(
        (ev.endpoint_id, ev.remote_identity, ev.rule_id),
        (ep_id(&env.a), ID_B, 0)
    );
    for (k, v) in [entries[0], entries[1]] {
        assert_eq!(
            (k.saddr(), k.daddr(), k.dport()),
            (env.a.addr, env.b.addr, 5000)
        );
        assert_ne!(v.flags & CtValue::ESTABLISHED, 0, "{v:?}");
        assert!(v.packets >= 3, "{v:?}");
    }
    assert!(metric_in(&dp, Direction::Egress, Reason::CtNew) >= 1);
    assert!(metric_in(&dp, Direction::Ingress, Reason::CtNew) >= 1);
    assert!(metric_in(&dp, Direction::Egress, Reason::CtReply) >= 1);
    assert!(metric_in(&dp, Direction::Ingress, Reason::CtEstablished) >= 1);

    // Trace events for both hops; no verdict event, since no rule decided.
    let fwd = wait_event(&mut events, "trace forwarded-local", |e| {
        e.kind == EventKind::Trace && e.reason == Some(Reason::ForwardedLocal)
    });
    assert_eq!(
        (fwd.direction, fwd.endpoint_id, fwd.remote_identity),
        (Direction::Egress, ep_id(&env.a), ID_B)
    );
    assert_eq!(fwd.ifindex, env.a.ifindex);
    let del = wait_event(&mut events, "trace delivered", |e| {
        e.kind == EventKind::Trace && e.reason == Some(Reason::Delivered)
    });
    assert_eq!(
        (del.direction, del.endpoint_id, del.remote_identity),
        (Direction::Ingress, ep_id(&env.b), ID_A)
    );
    let ts = del.ts_ns;
    let now = ktime_now_ns();
    assert!(
        ts <= now && now - ts < 10_000_000_000,
        "ts {ts} vs now {now}"
    );
    let rest = events.drain();
    assert!(
        rest.iter()
            .all(|e| e.kind == EventKind::Trace && e.rule_id == 0),
        "{rest:?}"
    );
    assert_eq!(metric(&dp, Reason::EventsRingbufFull), 0);
}

#[test]
fn p2_ingress_by_identity_and_port_egress_enforced_replies_pass() {
    let (mut env, mut dp) = same_node("node");
    let c = add_c(&mut env, &mut dp);
    let mut events = dp.take_event_reader().unwrap();
    let b_id = ep_id(&env.b);
    enforce(&mut dp, &env.b, ID_B, true, true);
    allow(
        &mut dp,
        &env.b,
        Direction::Ingress,
        ID_A,
        proto::TCP,
        (5000, 16),
        42,
    );
    let _s1 = EchoServer::start(&env.b.ns, sock(env.b.addr, 5000));
    let _s2 = EchoServer::start(&env.b.ns, sock(env.b.addr, 5001));

    // A on the allowed port: connects, and B's replies pass B's enforced egress (no
    // egress rule exists) because they belong to the connection.
    let replies = metric_in(&dp, Direction::Egress, Reason::CtReply);
    let mut conn = connect(&env.a.ns, sock(env.b.addr, 5000), LONG).expect("A allowed");
    roundtrip(&mut conn, b"allowed", LONG).unwrap();
    assert!(metric_in(&dp, Direction::Egress, Reason::CtReply) > replies);
    assert_eq!(
        metric_in(&dp, Direction::Egress, Reason::DropPolicyDenied),
        0
    );
    let sport = conn.local_addr().unwrap().port();
    let key = CtKey::new(
        env.a.addr,
        env.b.addr,
        sport,
        5000,
        proto::TCP,
        Direction::Ingress,
    );
    let v = dp
        .conntrack_get(&key)
        .unwrap()
        .expect("B's ingress entry for A's connection");
    assert_eq!(
        (v.rule_id, v.remote_identity, v.endpoint_id),
        (42, ID_A, b_id)
    );
    assert_eq!(v.direction(), Some(Direction::Ingress));
    assert_ne!(v.flags & CtValue::SEEN_REPLY, 0);
    let verdict = wait_event(&mut events, "policy verdict for A", |e| {
        e.kind == EventKind::PolicyVerdict && e.sport == sport
    });
    assert_eq!(verdict.reason, Some(Reason::CtNew));
    assert_eq!(
        (
            verdict.direction,
            verdict.endpoint_id,
            verdict.remote_identity
        ),
        (Direction::Ingress, b_id, ID_A)
    );
    assert_eq!(verdict.rule_id, 42);
    assert_eq!(verdict.policy_table, Some(PolicyTable::IdentityProto));
    assert_eq!(
        (verdict.saddr, verdict.daddr, verdict.dport),
        (env.a.addr, env.b.addr, 5000)
    );

    // C, another identity, on the same port: dropped, and the event says so.
    let denied = metric_in(&dp, Direction::Ingress, Reason::DropPolicyDenied);
    assert!(connect(&c.ns, sock(env.b.addr, 5000), NOPE).is_err());
    let drop = wait_event(&mut events, "drop of C", |e| {
        e.kind == EventKind::Drop && e.saddr == c.addr
    });
    assert_eq!(drop.reason, Some(Reason::DropPolicyDenied));
    assert_eq!(drop.reason.map(|r| r.as_str()), Some("policy-denied"));
    assert_eq!(
        (drop.direction, drop.endpoint_id, drop.remote_identity),
        (Direction::Ingress, b_id, ID_C)
    );
    assert_eq!(
        (drop.rule_id, drop.policy_table),
        (0, None),
        "no rule matched"
    );
    assert_eq!((drop.proto, drop.dport), (proto::TCP, 5000));
    assert_eq!(drop.tcp_flags & 0x12, 0x02, "the SYN");
    assert!(metric_in(&dp, Direction::Ingress, Reason::DropPolicyDenied) > denied);
    // A denied connection leaves no entry at the point that denied it.
    let from_c = dp
        .conntrack_entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.saddr() == c.addr && k.direction() == Some(Direction::Ingress))
        .count();
    assert_eq!(from_c, 0);

    // A on a port that is not allowed.
    assert!(connect(&env.a.ns, sock(env.b.addr, 5001), NOPE).is_err());
    let drop = wait_event(&mut events, "drop of A:5001", |e| {
        e.kind == EventKind::Drop && e.saddr == env.a.addr && e.dport == 5001
    });
    assert_eq!(
        (drop.reason, drop.remote_identity),
        (Some(Reason::DropPolicyDenied), ID_A)
    );

    // B's egress is enforced too: B cannot open a connection of its own to A.
    let _sa = EchoServer::start(&env.a.ns, sock(env.a.addr, 7000));
    assert!(connect(&env.b.ns, sock(env.a.addr, 7000), NOPE).is_err());
    let drop = wait_event(&mut events, "egress drop of B", |e| {
        e.kind == EventKind::Drop && e.saddr == env.b.addr && e.dport == 7000
    });
    assert_eq!(
        (drop.direction, drop.endpoint_id, drop.remote_identity),
        (Direction::Egress, b_id, ID_A)
    );
    assert!(metric_in(&dp, Direction::Egress, Reason::DropPolicyDenied) >= 1);
    // The allowed connection is still fine.
    roundtrip(&mut conn, b"still", LONG).unwrap();
}

#[test]
fn p3_lookup_order_and_port_prefixes() {
    let (mut env, mut dp) = same_node("node");
    let c = add_c(&mut env, &mut dp);
    let mut events = dp.take_event_reader().unwrap();
    let b = &env.b;
    enforce(&mut dp, b, ID_B, true, false);
    let put = |dp: &mut Datapath, id, proto, port, plen, v: PolicyValue| {
        let key = PolicyKey::new(ep_id(b), Direction::Ingress, id, proto, port, plen).unwrap();
        dp.upsert_policy(&key, &v).unwrap();
    };
    // (any, TCP, any port) allow 1; (A, TCP, 4096/4 = 4096..8191) allow 2;
    // (A, TCP, 5000) deny 3; (A, any proto) deny 4; (any, any) allow 5.
    put(&mut dp, 0, proto::TCP, 0, 0, PolicyValue::allow(1));
    put(&mut dp, ID_A, proto::TCP, 4096, 4, PolicyValue::allow(2));
    put(&mut dp, ID_A, proto::TCP, 5000, 16, PolicyValue::deny(3));
    put(&mut dp, ID_A, 0, 0, 0, PolicyValue::deny(4));
    put(&mut dp, 0, 0, 0, 0, PolicyValue::allow(5));
    assert_eq!(dp.policy_entries().unwrap().len(), 5);
    let _s1 = EchoServer::start(&b.ns, sock(b.addr, 5000));
    let _s2 = EchoServer::start(&b.ns, sock(b.addr, 5001));

    // A:5000 -> the exact deny beats the /4 allow in the same table and the general
    // allow of a later table.
    assert!(connect(&env.a.ns, sock(b.addr, 5000), NOPE).is_err());
    let d = wait_event(&mut events, "deny rule 3", |e| {
        e.kind == EventKind::Drop && e.dport == 5000
    });
    assert_eq!(d.reason, Some(Reason::DropPolicyDenyRule));
    assert_eq!(
        (d.rule_id, d.policy_table),
        (3, Some(PolicyTable::IdentityProto))
    );
    // A:5001 -> the /4 allow.
    let mut conn = connect(&env.a.ns, sock(b.addr, 5001), LONG).expect("A:5001 allowed");
    roundtrip(&mut conn, b"x", LONG).unwrap();
    let v = wait_event(&mut events, "allow rule 2", |e| {
        e.kind == EventKind::PolicyVerdict && e.saddr == env.a.addr
    });
    assert_eq!(
        (v.rule_id, v.policy_table),
        (2, Some(PolicyTable::IdentityProto))
    );
    // C:5000 -> (any, TCP).
    let mut conn = connect(&c.ns, sock(b.addr, 5000), LONG).expect("C:5000 allowed");
    roundtrip(&mut conn, b"x", LONG).unwrap();
    let v = wait_event(&mut events, "allow rule 1", |e| {
        e.kind == EventKind::PolicyVerdict && e.saddr == c.addr
    });
    assert_eq!(
        (v.rule_id, v.policy_table),
        (1, Some(PolicyTable::AnyIdentityProto))
    );

    // UDP: A hits (A, any) deny before (any, any) allow; C gets (any, any).
    let rx = in_netns(&b.ns, || UdpSocket::bind((b.addr, 6000))).unwrap();
    rx.set_read_timeout(Some(SHORT)).unwrap();
    let mut buf = [0u8; 16];
    let ua = in_netns(&env.a.ns, || UdpSocket::bind((env.a.addr, 0))).unwrap();
    ua.send_to(b"from a", (b.addr, 6000)).unwrap();
    let d = wait_event(&mut events, "deny rule 4", |e| {
        e.kind == EventKind::Drop && e.proto == proto::UDP
    });
    assert_eq!(
        (d.rule_id, d.policy_table, d.reason),
        (
            4,
            Some(PolicyTable::IdentityAnyProto),
            Some(Reason::DropPolicyDenyRule)
        )
    );
    let uc = in_netns(&c.ns, || UdpSocket::bind((c.addr, 0))).unwrap();
    uc.send_to(b"from c", (b.addr, 6000)).unwrap();
    let (n, from) = rx.recv_from(&mut buf).expect("C's datagram allowed");
    assert_eq!((&buf[..n], from.ip()), (&b"from c"[..], c.addr.into()));
    let v = wait_event(&mut events, "allow rule 5", |e| {
        e.kind == EventKind::PolicyVerdict && e.proto == proto::UDP
    });
    assert_eq!(
        (v.rule_id, v.policy_table),
        (5, Some(PolicyTable::AnyIdentityAnyProto))
    );

    // Removing an entry: exactly that key.
    let key = PolicyKey::new(ep_id(b), Direction::Ingress, ID_A, proto::TCP, 5000, 16).unwrap();
    assert!(dp.remove_policy(&key).unwrap());
    assert!(!dp.remove_policy(&key).unwrap());
}

#[test]
fn p4_cutting_entries_cuts_connections_that_policy_no_longer_allows() {
    let (env, mut dp) = same_node("node");
    let mut events = dp.take_event_reader().unwrap();
    enforce(&mut dp, &env.b, ID_B, true, false);
    allow(
        &mut dp,
        &env.b,
        Direction::Ingress,
        ID_A,
        proto::TCP,
        (5000, 16),
        7,
    );
    let to_b = sock(env.b.addr, 5000);
    let _server = EchoServer::start(&env.b.ns, to_b);
    let open = || -> (TcpStream, u16) {
        let mut s = connect(&env.a.ns, to_b, LONG).expect("connect");
        roundtrip(&mut s, b"open", LONG).unwrap();
        let port = s.local_addr().unwrap().port();
        (s, port)
    };
    let (mut kept, kept_port) = open();
    let (mut cut, cut_port) = open();
    let (mut no_ct, no_ct_port) = open();

    // Entries removed, allow still there: packets go through policy one by one and pass;
    // mid-stream packets create no new entry.
    for (k, _) in entries_of(&dp, env.a.addr, no_ct_port) {
        assert!(dp.conntrack_remove(&k).unwrap());
        assert!(!dp.conntrack_remove(&k).unwrap());
    }
    let allowed = metric_in(&dp, Direction::Ingress, Reason::PolicyAllowed);
    roundtrip(&mut no_ct, b"no entry, still allowed", LONG).expect("allow kept: connection kept");
    assert!(metric_in(&dp, Direction::Ingress, Reason::PolicyAllowed) > allowed);
    assert!(entries_of(&dp, env.a.addr, no_ct_port).is_empty());

    // The allow goes. A connection whose entries stay is kept (cutting is the agent's
    // decision); the one whose entries are removed is cut.
    let key = PolicyKey::new(
        ep_id(&env.b),
        Direction::Ingress,
        ID_A,
        proto::TCP,
        5000,
        16,
    )
    .unwrap();
    assert!(dp.remove_policy(&key).unwrap());
    for (k, _) in entries_of(&dp, env.a.addr, cut_port) {
        assert!(dp.conntrack_remove(&k).unwrap());
    }
    roundtrip(&mut kept, b"entry kept", LONG).expect("entry kept: connection kept");
    assert!(roundtrip(&mut cut, b"cut", SHORT).is_err(), "must be cut");
    let d = wait_event(&mut events, "drop of the cut connection", |e| {
        e.kind == EventKind::Drop && e.sport == cut_port
    });
    assert_eq!(d.reason, Some(Reason::DropPolicyDenied));
    assert!(
        roundtrip(&mut no_ct, b"gone", SHORT).is_err(),
        "no entry, no allow"
    );
    // And a new connection is refused.
    assert!(connect(&env.a.ns, to_b, NOPE).is_err());
    let _ = kept_port;
}

#[test]
fn p5_udp_and_icmp_echo_are_tracked() {
    let (mut env, mut dp) = same_node("node");
    let c = add_c(&mut env, &mut dp);
    let b = &env.b;
    enforce(&mut dp, b, ID_B, true, true);
    allow(
        &mut dp,
        b,
        Direction::Ingress,
        ID_A,
        proto::UDP,
        (6000, 16),
        8,
    );
    // ICMP: the "port" is the type; 8 = echo request.
    allow(
        &mut dp,
        b,
        Direction::Ingress,
        ID_A,
        proto::ICMP,
        (8, 16),
        9,
    );

    let rx = in_netns(&b.ns, || UdpSocket::bind((b.addr, 6000))).unwrap();
    rx.set_read_timeout(Some(LONG)).unwrap();
    let tx = in_netns(&env.a.ns, || UdpSocket::bind((env.a.addr, 0))).unwrap();
    tx.set_read_timeout(Some(LONG)).unwrap();
    tx.send_to(b"question", (b.addr, 6000)).unwrap();
    let mut buf = [0u8; 32];
    let (n, from) = rx.recv_from(&mut buf).expect("allowed datagram");
    assert_eq!(&buf[..n], b"question");
    rx.send_to(b"answer", from).unwrap();
    let (n, _) = tx
        .recv_from(&mut buf)
        .expect("the reply passes B's enforced egress");
    assert_eq!(&buf[..n], b"answer");
    let sport = tx.local_addr().unwrap().port();
    let key = CtKey::new(
        env.a.addr,
        b.addr,
        sport,
        6000,
        proto::UDP,
        Direction::Ingress,
    );
    let v = dp.conntrack_get(&key).unwrap().expect("UDP entry");
    assert_eq!((v.rule_id, v.remote_identity), (8, ID_A));
    assert_ne!(v.flags & CtValue::SEEN_REPLY, 0);
    assert_eq!(v.packets, 2);
    // The datapath's clock is CLOCK_MONOTONIC: the expiry is about now + 60 s.
    let now = ktime_now_ns();
    let left = v.remaining(now);
    assert!(
        left <= ct_timeout::UDP && left > ct_timeout::UDP - Duration::from_secs(5),
        "expires in {left:?}"
    );

    // ICMP echo: the request opens an entry (identifier in both ports), the reply passes.
    let replies = metric_in(&dp, Direction::Egress, Reason::CtReply);
    assert!(ping(&env.a.ns, b.addr, "2"), "A's ping is allowed");
    assert!(metric_in(&dp, Direction::Egress, Reason::CtReply) > replies);
    let icmp: Vec<_> = dp
        .conntrack_entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.proto == proto::ICMP && k.direction() == Some(Direction::Ingress))
        .collect();
    assert_eq!(icmp.len(), 1, "{icmp:?}");
    let (k, v) = icmp[0];
    assert_eq!((k.saddr(), k.daddr()), (env.a.addr, b.addr));
    assert_eq!(k.sport(), k.dport(), "echo identifier in both ports");
    assert_eq!((v.rule_id, v.remote_identity), (9, ID_A));
    // C has no ICMP allow; B cannot ping A (egress enforced, echo request is new).
    assert!(!ping(&c.ns, b.addr, "0.4"));
    assert!(!ping(&b.ns, env.a.addr, "0.4"));
    assert!(metric_in(&dp, Direction::Egress, Reason::DropPolicyDenied) >= 1);
}

#[test]
fn p6_cross_node_policy_uses_the_identity_in_the_vni() {
    let (mut nodes, mut dp1, mut dp2) = two_nodes();
    let (n1, n2) = (nodes.n1.clone(), nodes.n2.clone());
    let gw1 = Ipv4Addr::new(10, 128, 1, 1);
    let e1 = nodes
        .lab
        .endpoint(&n1, "e1", 1, Ipv4Addr::new(10, 128, 1, 5), gw1);
    let e3 = nodes
        .lab
        .endpoint(&n1, "e3", 3, Ipv4Addr::new(10, 128, 1, 6), gw1);
    let e2 = nodes.lab.endpoint(
        &n2,
        "e2",
        2,
        Ipv4Addr::new(10, 128, 2, 5),
        Ipv4Addr::new(10, 128, 2, 1),
    );
    let (id1, id3, id2) = (1001u32, 1003u32, 2002u32);
    for (ep, id) in [(&e1, id1), (&e3, id3)] {
        ep.attach(&mut dp1);
        ep.register(&mut dp1, id);
    }
    e2.attach(&mut dp2);
    e2.register(&mut dp2, id2);
    let cidr1: Ipv4Net = "10.128.1.0/24".parse().unwrap();
    let cidr2: Ipv4Net = "10.128.2.0/24".parse().unwrap();
    dp1.upsert_ipcache(cidr2, &IpcacheValue::remote(0, nodes.u2_ip))
        .unwrap();
    dp1.upsert_ipcache(host_net(e2.addr), &IpcacheValue::remote(id2, nodes.u2_ip))
        .unwrap();
    // n2 knows n1 as a node and its endpoints by identity, as the agent's ipcache does:
    // from_overlay accepts the VNI only when it is the ipcache identity of the inner
    // source (docs/datapath.md, "Trust rules"), and policy matches on it.
    dp2.upsert_ipcache(cidr1, &IpcacheValue::remote(0, nodes.u1_ip))
        .unwrap();
    for (ep, id) in [(&e1, id1), (&e3, id3)] {
        dp2.upsert_ipcache(host_net(ep.addr), &IpcacheValue::remote(id, nodes.u1_ip))
            .unwrap();
    }
    dp2.upsert_ipcache(
        host_net(nodes.u1_ip),
        &IpcacheValue::local(IDENTITY_REMOTE_NODE),
    )
    .unwrap();
    dp1.upsert_ipcache(
        host_net(nodes.u2_ip),
        &IpcacheValue::local(IDENTITY_REMOTE_NODE),
    )
    .unwrap();
    enforce(&mut dp2, &e2, id2, true, false);
    allow(
        &mut dp2,
        &e2,
        Direction::Ingress,
        id1,
        proto::TCP,
        (5003, 16),
        11,
    );
    let mut events2 = dp2.take_event_reader().unwrap();

    let to_e2 = sock(e2.addr, 5003);
    let _server = EchoServer::start(&e2.ns, to_e2);
    let mut conn = connect(&e1.ns, to_e2, LONG).expect("e1 allowed by its VNI identity");
    roundtrip(&mut conn, b"over the overlay", LONG).unwrap();
    let sport = conn.local_addr().unwrap().port();
    let key = CtKey::new(
        e1.addr,
        e2.addr,
        sport,
        5003,
        proto::TCP,
        Direction::Ingress,
    );
    let v = dp2.conntrack_get(&key).unwrap().expect("n2 ingress entry");
    assert_eq!((v.remote_identity, v.rule_id), (id1, 11));
    let verdict = wait_event(&mut events2, "verdict on n2", |e| {
        e.kind == EventKind::PolicyVerdict
    });
    assert_eq!((verdict.remote_identity, verdict.rule_id), (id1, 11));
    // n1 tracked its egress side too.
    let egress = CtKey::new(e1.addr, e2.addr, sport, 5003, proto::TCP, Direction::Egress);
    assert!(dp1.conntrack_get(&egress).unwrap().is_some());

    assert!(connect(&e3.ns, to_e2, NOPE).is_err(), "e3 is not allowed");
    let d = wait_event(&mut events2, "drop of e3 on n2", |e| {
        e.kind == EventKind::Drop && e.saddr == e3.addr
    });
    assert_eq!(
        (d.reason, d.remote_identity, d.direction),
        (Some(Reason::DropPolicyDenied), id3, Direction::Ingress)
    );
    assert!(
        dp2.metric_in(Direction::Ingress, Reason::FromOverlay)
            .unwrap()
            .0
            >= 3
    );
    let _ = (&n2, &mut dp1);
}

#[test]
fn p7_host_stack_to_endpoint_is_policed_by_ipcache_identity() {
    let (env, mut dp) = same_node("node");
    let mut events = dp.take_event_reader().unwrap();
    let b = &env.b;
    // The node reaches B through the host stack: an address of its own, a route and a
    // neighbour entry on B's host side.
    let host_ip = Ipv4Addr::new(10, 99, 0, 1);
    ip(&["-n", &env.node, "addr", "add", "10.99.0.1/32", "dev", "lo"]);
    ip(&[
        "-n",
        &env.node,
        "route",
        "add",
        &format!("{}/32", b.addr),
        "dev",
        &b.host_if,
        "src",
        "10.99.0.1",
    ]);
    ip(&[
        "-n",
        &env.node,
        "neigh",
        "add",
        &b.addr.to_string(),
        "lladdr",
        &fmt_mac(b.mac),
        "dev",
        &b.host_if,
        "nud",
        "permanent",
    ]);
    let to_b = sock(b.addr, 5000);
    let _server = EchoServer::start(&b.ns, to_b);
    let mut conn = connect(&env.node, to_b, LONG).expect("host -> B without policy");
    roundtrip(&mut conn, b"host", LONG).unwrap();
    drop(conn);

    // Enforced: the host address is not in the ipcache, so it is world, and denied.
    enforce(&mut dp, b, ID_B, true, false);
    assert!(connect(&env.node, to_b, NOPE).is_err());
    let d = wait_event(&mut events, "drop of the host", |e| {
        e.kind == EventKind::Drop && e.saddr == host_ip
    });
    assert_eq!(
        (d.reason, d.remote_identity, d.endpoint_id),
        (Some(Reason::DropPolicyDenied), IDENTITY_WORLD, ep_id(b))
    );
    // The ipcache names it host (1) and policy allows the host: connects again.
    dp.upsert_ipcache(host_net(host_ip), &IpcacheValue::local(IDENTITY_HOST))
        .unwrap();
    allow(
        &mut dp,
        b,
        Direction::Ingress,
        IDENTITY_HOST,
        proto::TCP,
        (5000, 16),
        12,
    );
    let mut conn = connect(&env.node, to_b, LONG).expect("host allowed");
    roundtrip(&mut conn, b"host again", LONG).unwrap();
    let v = wait_event(&mut events, "verdict for the host", |e| {
        e.kind == EventKind::PolicyVerdict
    });
    assert_eq!((v.remote_identity, v.rule_id), (IDENTITY_HOST, 12));
}

#[test]
fn p8_gc_removes_expired_entries_only() {
    let lab = Lab::new();
    let mut dp = Datapath::load(&lab.pin_dir("node")).expect("load");
    let now = ktime_now_ns();
    let key = |port| {
        CtKey::new(
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(10, 1, 0, 2),
            port,
            80,
            proto::TCP,
            Direction::Egress,
        )
    };
    let value = |expires_ns| CtValue {
        expires_ns,
        flags: CtValue::SYN_SEEN | CtValue::ESTABLISHED,
        direction: Direction::Egress.code(),
        ..CtValue::default()
    };
    dp.conntrack_upsert(&key(1), &value(now - 1)).unwrap();
    dp.conntrack_upsert(&key(2), &value(now.saturating_sub(1_000_000_000)))
        .unwrap();
    dp.conntrack_upsert(&key(3), &value(now + 60_000_000_000))
        .unwrap();
    assert_eq!(dp.conntrack_entries().unwrap().len(), 3);
    assert_eq!(dp.conntrack_gc(ktime_now_ns()).unwrap(), 2);
    let left = dp.conntrack_entries().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, key(3));
    assert_eq!(dp.conntrack_gc(ktime_now_ns()).unwrap(), 0);
    assert!(dp.conntrack_remove(&key(3)).unwrap());
    assert!(!dp.conntrack_remove(&key(3)).unwrap());
    assert!(dp.conntrack_get(&key(3)).unwrap().is_none());

    // Values the datapath could not carry are refused, not truncated.
    let ep = |endpoint_id, identity| {
        membrane_ebpf::EndpointValue::new(1, identity, endpoint_id, [0; 6], [0; 6])
    };
    let ip = Ipv4Addr::new(10, 1, 0, 9);
    let err = dp.upsert_endpoint(ip, &ep(70_000, 300)).unwrap_err();
    assert!(err.to_string().contains("below 65536"), "{err}");
    assert!(dp.upsert_endpoint(ip, &ep(7, 1 << 24)).is_err());
    dp.upsert_endpoint(ip, &ep(65_535, (1 << 24) - 1)).unwrap();
}

#[test]
fn p9_events_over_the_budget_are_counted_not_emitted() {
    let (env, mut dp) = same_node("node");
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    const BUDGET: u32 = 5;
    dp.set_config(
        &DatapathConfig::new(0, Ipv4Addr::new(192, 168, 1, 1)).with_events_per_sec(BUDGET),
    )
    .unwrap();
    let mut events = dp.take_event_reader().unwrap();
    enforce(&mut dp, &env.b, ID_B, true, false);

    const SENT: u64 = 60;
    let tx = in_netns(&env.a.ns, || UdpSocket::bind((env.a.addr, 0))).unwrap();
    for i in 0..SENT {
        // Distinct ports: each datagram is a new flow (none is allowed anyway).
        match tx.send_to(&i.to_be_bytes(), (env.b.addr, 6000 + i as u16)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("send: {e}"),
        }
    }
    let dropped = wait_metric_in(&dp, Direction::Ingress, Reason::DropPolicyDenied, SENT);
    assert_eq!(dropped, SENT);
    thread::sleep(Duration::from_millis(50));
    let got = events
        .drain()
        .into_iter()
        .filter(|e| e.kind == EventKind::Drop)
        .count() as u64;
    let limited = metric_in(&dp, Direction::Ingress, Reason::EventsRateLimited);
    assert_eq!(metric(&dp, Reason::EventsRingbufFull), 0);
    assert_eq!(got + limited, SENT, "every event emitted or counted");
    // The burst per CPU, plus what refilled while sending (at 5/s: at most a couple).
    assert!(
        got >= 1 && got <= cpus * (u64::from(BUDGET) + 2),
        "{got} events, {limited} rate limited"
    );
    let _ = EventReader::open(&env.lab.pin_dir("node")).expect("the pin opens too");
}

fn wait_metric_in(dp: &Datapath, d: Direction, r: Reason, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let n = metric_in(dp, d, r);
        if n >= at_least || std::time::Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
