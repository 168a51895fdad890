//! Real BPF in the kernel (needs root): network namespaces joined by veth pairs, the
//! programs attached by `Datapath`, and TCP between endpoints that only the BPF redirects
//! can carry (the node namespaces have no forwarding and no routes to the endpoints).
//!
//! Run with `cargo test -p membrane-ebpf -- --test-threads=1`. Every namespace and pin
//! directory is unique to the test and removed in Drop, also on panic.

mod common;

use std::{
    fs,
    io::{self, Read},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use common::*;
use ipnet::Ipv4Net;
use membrane_ebpf::{
    Datapath, DatapathConfig, DatapathError, Direction, IpcacheValue, Reason, IDENTITY_REMOTE_NODE,
};

#[test]
fn a_same_node_traffic_goes_only_through_bpf() {
    let (env, mut dp) = same_node("node");
    let started = Instant::now();
    let to_b = SocketAddr::V4(SocketAddrV4::new(env.b.addr, 5000));
    let _server = EchoServer::start(&env.b.ns, to_b);

    let mut conn = connect(&env.a.ns, to_b, LONG).expect("TCP connect a -> b through BPF");
    roundtrip(&mut conn, b"hello over bpf", LONG).expect("echo a -> b");
    assert!(
        metric(&dp, Reason::ForwardedLocal) >= 4,
        "{:?}",
        dp.metrics()
    );
    assert!(metric(&dp, Reason::Delivered) >= 4, "{:?}", dp.metrics());
    assert_eq!(metric(&dp, Reason::DropSpoofed), 0);

    // The node itself cannot carry this traffic: without b's endpoints entry the packet
    // goes to the host stack, which has no forwarding and no route, and is lost.
    assert!(dp.remove_endpoint(env.b.addr).unwrap());
    assert!(
        !dp.remove_endpoint(env.b.addr).unwrap(),
        "second remove finds nothing"
    );
    let to_stack = metric(&dp, Reason::ToStack);
    assert!(
        roundtrip(&mut conn, b"lost", SHORT).is_err(),
        "traffic must stop"
    );
    assert!(
        connect(&env.a.ns, to_b, SHORT).is_err(),
        "new connections must fail"
    );
    assert!(metric(&dp, Reason::ToStack) > to_stack);

    // Back in the map, the same connection recovers (TCP retransmits the lost bytes).
    dp.upsert_endpoint(env.b.addr, &env.b.value(ID_B)).unwrap();
    let mut rest = [0u8; 4];
    conn.set_read_timeout(Some(LONG)).unwrap();
    conn.read_exact(&mut rest)
        .expect("retransmitted data echoed");
    assert_eq!(&rest, b"lost");

    // Map reads give back what was written, in host terms.
    let eps = dp.endpoints().unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0], (env.a.addr, env.a.value(ID_A)));
    assert_eq!(eps[1], (env.b.addr, env.b.value(ID_B)));
    let ipc = dp.ipcache().unwrap();
    assert!(
        ipc.contains(&(host_net(env.a.addr), IpcacheValue::local(ID_A))),
        "{ipc:?}"
    );
    assert!(dp.remove_ipcache(host_net(env.a.addr)).unwrap());
    assert!(!dp.remove_ipcache(host_net(env.a.addr)).unwrap());
    let _ = &env.node;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn d_spoofed_source_is_dropped_and_counted() {
    let (env, dp) = same_node("node");
    let b_addr = SocketAddr::V4(SocketAddrV4::new(env.b.addr, 6000));
    let receiver = in_netns(&env.b.ns, || UdpSocket::bind(b_addr)).expect("bind udp");
    receiver.set_read_timeout(Some(SHORT)).unwrap();
    let mut buf = [0u8; 64];

    // Control: a's own address gets through.
    let genuine = in_netns(&env.a.ns, || UdpSocket::bind((env.a.addr, 0))).unwrap();
    genuine.send_to(b"genuine", b_addr).unwrap();
    let (n, from) = receiver
        .recv_from(&mut buf)
        .expect("genuine datagram delivered");
    assert_eq!(&buf[..n], b"genuine");
    assert_eq!(from.ip(), env.a.addr);

    // An address nobody owns: dropped, b never sees it.
    let before = metric(&dp, Reason::DropSpoofed);
    let bogus = Ipv4Addr::new(10, 128, 0, 99);
    ip(&[
        "-n",
        &env.a.ns,
        "addr",
        "add",
        &format!("{bogus}/32"),
        "dev",
        "eth0",
    ]);
    let from_bogus = in_netns(&env.a.ns, || UdpSocket::bind((bogus, 0))).unwrap();
    from_bogus.send_to(b"spoofed", b_addr).unwrap();
    assert!(
        receiver.recv_from(&mut buf).is_err(),
        "spoofed datagram must not arrive"
    );
    assert_eq!(metric(&dp, Reason::DropSpoofed) - before, 1);

    // Another endpoint's address sent from a's interface: in the map, wrong ifindex.
    ip(&[
        "-n",
        &env.a.ns,
        "addr",
        "add",
        &format!("{}/32", env.b.addr),
        "dev",
        "eth0",
    ]);
    let as_b = in_netns(&env.a.ns, || UdpSocket::bind((env.b.addr, 0))).unwrap();
    as_b.send_to(b"as-b", (Ipv4Addr::new(10, 128, 0, 7), 6000))
        .unwrap();
    let dropped = wait_metric(&dp, Reason::DropSpoofed, before + 2) - before;
    assert!(dropped >= 2, "spoofed drops counted: {dropped}");
    let (_, bytes) = dp
        .metric_in(Direction::Egress, Reason::DropSpoofed)
        .unwrap();
    assert!(bytes >= 2 * (14 + 20 + 8), "bytes counted too: {bytes}");
    assert_eq!(Reason::DropSpoofed.as_str(), "spoofed-source");
}

#[test]
fn c_restart_keeps_connections_and_maps() {
    let (env, dp) = same_node("node");
    let to_b = SocketAddr::V4(SocketAddrV4::new(env.b.addr, 5001));
    let _server = EchoServer::start(&env.b.ns, to_b);
    let mut conn = connect(&env.a.ns, to_b, LONG).expect("connect");
    roundtrip(&mut conn, b"before", LONG).unwrap();

    let old_in = tcx_programs(&env.node, &env.a.host_if, TcAttachType::Ingress);
    let old_eg = tcx_programs(&env.node, &env.a.host_if, TcAttachType::Egress);
    assert_eq!((old_in.len(), old_eg.len()), (1, 1), "one program per hook");
    let eps_before = dp.endpoints().unwrap();
    let ipc_before = dp.ipcache().unwrap();
    let fwd_before = metric(&dp, Reason::ForwardedLocal);

    // The agent goes away: every fd this process held is closed.
    drop(dp);
    roundtrip(&mut conn, b"while no agent runs", LONG).expect("traffic without an agent");

    // A new agent: fresh load from the same pins, re-attach.
    let pin = env.lab.pin_dir("node");
    let mut dp = Datapath::load(&pin).expect("reload");
    assert_eq!(dp.endpoints().unwrap(), eps_before, "endpoints survived");
    assert_eq!(dp.ipcache().unwrap(), ipc_before, "ipcache survived");
    assert!(
        metric(&dp, Reason::ForwardedLocal) > fwd_before,
        "metrics kept counting"
    );

    // Traffic keeps flowing while the programs are swapped.
    let stop = Arc::new(AtomicBool::new(false));
    let mut probe = conn.try_clone().unwrap();
    let stop2 = stop.clone();
    let pinger = thread::spawn(move || {
        let mut n = 0u32;
        while !stop2.load(Ordering::SeqCst) {
            roundtrip(&mut probe, b"ping", LONG)?;
            n += 1;
            thread::sleep(Duration::from_millis(2));
        }
        Ok::<u32, io::Error>(n)
    });
    env.a.attach(&mut dp);
    env.b.attach(&mut dp);
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let pings = pinger
        .join()
        .unwrap()
        .expect("no ping failed during the swap");
    assert!(pings > 0);

    let new_in = tcx_programs(&env.node, &env.a.host_if, TcAttachType::Ingress);
    let new_eg = tcx_programs(&env.node, &env.a.host_if, TcAttachType::Egress);
    assert_eq!(
        (new_in.len(), new_eg.len()),
        (1, 1),
        "replaced, not added: {new_in:?}"
    );
    assert_ne!(new_in, old_in, "the new program is the one attached");
    assert_ne!(new_eg, old_eg);
    roundtrip(&mut conn, b"after", LONG).expect("connection survived the restart");

    // Attaching twice in one process is idempotent too.
    env.a.attach(&mut dp);
    assert_eq!(
        tcx_programs(&env.node, &env.a.host_if, TcAttachType::Ingress),
        new_in
    );

    // Detach removes the programs: the BPF path is gone, so is the traffic.
    in_netns(&env.node, || dp.detach_endpoint(&env.a.host_if)).unwrap();
    assert!(tcx_programs(&env.node, &env.a.host_if, TcAttachType::Ingress).is_empty());
    assert!(tcx_programs(&env.node, &env.a.host_if, TcAttachType::Egress).is_empty());
    assert!(roundtrip(&mut conn, b"gone", SHORT).is_err());
    // Detaching an interface that no longer exists succeeds.
    in_netns(&env.node, || dp.detach_endpoint("nosuchif0")).unwrap();
}

#[test]
fn c2_recreated_interface_gets_a_fresh_link() {
    let (env, mut dp) = same_node("node");
    // The veth is deleted and re-created under the same name (new ifindex): the old pin
    // is stale and must not be reused.
    ip(&["-n", &env.node, "link", "del", &env.a.host_if]);
    let lab = env.lab;
    let gw = Ipv4Addr::new(10, 128, 0, 1);
    let a2 = plug(&env.node, &env.a.ns, &env.a.host_if, 1, env.a.addr, gw);
    assert_ne!(a2.ifindex, env.a.ifindex);
    a2.attach(&mut dp);
    a2.register(&mut dp, ID_A);
    assert_eq!(
        tcx_programs(&env.node, &a2.host_if, TcAttachType::Ingress).len(),
        1
    );
    let links: Vec<_> = fs::read_dir(lab.pin_dir("node").join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&format!("{}:", a2.host_if)))
        .collect();
    assert_eq!(
        links.len(),
        2,
        "one pin per direction, stale ones removed: {links:?}"
    );
    let to_b = SocketAddr::V4(SocketAddrV4::new(env.b.addr, 5002));
    let _server = EchoServer::start(&env.b.ns, to_b);
    let mut conn = connect(&a2.ns, to_b, LONG).expect("connect from re-created endpoint");
    roundtrip(&mut conn, b"again", LONG).unwrap();
}

/// Reads every queued frame from an AF_PACKET socket and returns (VNI, inner source) of
/// the VXLAN (UDP 8472) ones.
fn vxlan_frames(sock: &OwnedFd) -> Vec<(u32, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: buf is valid for buf.len() bytes; the fd is an open packet socket.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        let f = &buf[..n as usize];
        if f.len() < 14 + 20 + 8 + 8 + 14 + 20 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if u16::from_be_bytes([f[udp + 2], f[udp + 3]]) != 8472 {
            continue;
        }
        let vx = udp + 8;
        let vni = u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]);
        let inner_ip = vx + 8 + 14;
        let src = Ipv4Addr::new(
            f[inner_ip + 12],
            f[inner_ip + 13],
            f[inner_ip + 14],
            f[inner_ip + 15],
        );
        out.push((vni, src));
    }
    out
}

fn packet_socket(ns: &str, ifname: &str) -> OwnedFd {
    in_netns(ns, || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2)/bind(2) calls with a zeroed, filled sockaddr_ll.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = Datapath::ifindex(ifname).unwrap() as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind packet socket: {}", io::Error::last_os_error());
            fd
        }
    })
}

#[test]
fn b_cross_node_over_vxlan_carries_identity() {
    let (mut nodes, mut dp1, mut dp2) = two_nodes();
    let (n1, n2, u1_ip, u2_ip) = (nodes.n1.clone(), nodes.n2.clone(), nodes.u1_ip, nodes.u2_ip);
    let lab = &mut nodes.lab;
    let e1 = lab.endpoint(
        &n1,
        "e1",
        1,
        Ipv4Addr::new(10, 128, 1, 5),
        Ipv4Addr::new(10, 128, 1, 1),
    );
    let e2 = lab.endpoint(
        &n2,
        "e2",
        2,
        Ipv4Addr::new(10, 128, 2, 5),
        Ipv4Addr::new(10, 128, 2, 1),
    );
    let (id1, id2) = (1001u32, 0x00ab_cdefu32);
    for (dp, node_ip) in [(&dp1, u1_ip), (&dp2, u2_ip)] {
        assert_eq!(dp.config().unwrap().node_ip(), node_ip);
    }
    e1.attach(&mut dp1);
    e1.register(&mut dp1, id1);
    e2.attach(&mut dp2);
    e2.register(&mut dp2, id2);
    // Each node: the other's pod CIDR and endpoint through the tunnel.
    let cidr1: Ipv4Net = "10.128.1.0/24".parse().unwrap();
    let cidr2: Ipv4Net = "10.128.2.0/24".parse().unwrap();
    dp1.upsert_ipcache(cidr2, &IpcacheValue::remote(0, u2_ip))
        .unwrap();
    dp1.upsert_ipcache(host_net(e2.addr), &IpcacheValue::remote(id2, u2_ip))
        .unwrap();
    dp2.upsert_ipcache(cidr1, &IpcacheValue::remote(0, u1_ip))
        .unwrap();
    dp2.upsert_ipcache(host_net(e1.addr), &IpcacheValue::remote(id1, u1_ip))
        .unwrap();
    // Each node knows the other as a node: from_overlay accepts only registered senders.
    dp1.upsert_ipcache(host_net(u2_ip), &IpcacheValue::local(IDENTITY_REMOTE_NODE))
        .unwrap();
    dp2.upsert_ipcache(host_net(u1_ip), &IpcacheValue::local(IDENTITY_REMOTE_NODE))
        .unwrap();
    assert_eq!(dp1.ipcache().unwrap().len(), 4);

    let capture = packet_socket(&n2, "u2");
    let to_e2 = SocketAddr::V4(SocketAddrV4::new(e2.addr, 5003));
    let _server = EchoServer::start(&e2.ns, to_e2);
    let mut conn = connect(&e1.ns, to_e2, LONG).expect("TCP connect across nodes");
    roundtrip(&mut conn, b"across the overlay", LONG).expect("echo across nodes");

    for (dp, name) in [(&dp1, "n1"), (&dp2, "n2")] {
        assert!(
            metric(dp, Reason::ForwardedOverlay) >= 3,
            "{name}: {:?}",
            dp.metrics()
        );
        assert!(
            metric(dp, Reason::FromOverlay) >= 3,
            "{name}: {:?}",
            dp.metrics()
        );
        assert!(
            metric(dp, Reason::Delivered) >= 3,
            "{name}: {:?}",
            dp.metrics()
        );
        assert_eq!(metric(dp, Reason::DropNoEndpoint), 0, "{name}");
    }

    // The VNI on the wire is the sender's identity, both ways.
    let frames = vxlan_frames(&capture);
    let from1: Vec<_> = frames.iter().filter(|(_, s)| *s == e1.addr).collect();
    let from2: Vec<_> = frames.iter().filter(|(_, s)| *s == e2.addr).collect();
    assert!(
        !from1.is_empty() && !from2.is_empty(),
        "captured: {frames:?}"
    );
    assert!(from1.iter().all(|(vni, _)| *vni == id1), "{from1:?}");
    assert!(from2.iter().all(|(vni, _)| *vni == id2), "{from2:?}");

    // An overlay packet for an endpoint n2 does not have is dropped and counted there.
    dp1.upsert_ipcache(
        host_net(Ipv4Addr::new(10, 128, 2, 9)),
        &IpcacheValue::remote(0, u2_ip),
    )
    .unwrap();
    let udp = in_netns(&e1.ns, || UdpSocket::bind((e1.addr, 0))).unwrap();
    udp.send_to(b"nobody", (Ipv4Addr::new(10, 128, 2, 9), 9))
        .unwrap();
    assert_eq!(wait_metric(&dp2, Reason::DropNoEndpoint, 1), 1);

    // Without an overlay device configured, n1 drops tunnel-bound traffic with reason 18.
    dp1.set_config(&DatapathConfig::new(0, u1_ip)).unwrap();
    udp.send_to(b"no overlay", to_e2).unwrap();
    assert_eq!(wait_metric(&dp1, Reason::DropNoOverlay, 1), 1);
}

#[test]
fn e_incompatible_pinned_map_is_refused() {
    let lab = Lab::new();
    let pin = lab.pin_dir("node");
    // A first load creates the pins; an "endpoints" map of another layout replaces one.
    drop(Datapath::load(&pin).expect("load"));
    fs::remove_file(pin.join("endpoints")).unwrap();
    let out = Command::new(require_tool("bpftool", "bpftool"))
        .args(["map", "create"])
        .arg(pin.join("endpoints"))
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "endpoints",
        ])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match Datapath::load(&pin) {
        Err(e @ DatapathError::IncompatiblePinnedMap { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("value size 8, expected 28"), "{msg}");
            assert!(msg.contains("remove_pins"), "{msg}");
        }
        other => panic!("expected IncompatiblePinnedMap, got {other:?}"),
    }
}
