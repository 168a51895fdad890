//! The trust rules of issue 12 in the real kernel (needs root): the datapath fails closed
//! on anything but IPv4 and ARP, the plaintext overlay accepts only registered nodes
//! speaking for their own pods, endpoints cannot reach node control ports without an
//! explicit allow, pod-pool sources from the host stack are refused, and with encryption
//! on remote pod traffic goes through a real TUN device (strict mode: no key, no packet).
//!
//! Run with `cargo test -p membrane-ebpf --test trust -- --test-threads=1`. Every test
//! has a control packet that must pass, so none of them passes with a datapath that
//! simply drops everything.

mod common;

use std::{
    fs,
    io::{self},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use common::*;
use ipnet::Ipv4Net;
use membrane_ebpf::{
    proto, Datapath, DatapathConfig, Direction, IpcacheValue, PolicyKey, PolicyValue, Reason,
    IDENTITY_HOST, IDENTITY_REMOTE_NODE,
};

fn metric_in(dp: &Datapath, d: Direction, r: Reason) -> u64 {
    dp.metric_in(d, r).expect("metrics").0
}

fn wait_metric_in(dp: &Datapath, d: Direction, r: Reason, at_least: u64) -> u64 {
    let deadline = Instant::now() + LONG;
    loop {
        let n = metric_in(dp, d, r);
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn sysctl(ns: &str, key: &str, value: &str) {
    in_netns(ns, || fs::write(format!("/proc/sys/{key}"), value))
        .unwrap_or_else(|e| panic!("sysctl {key}={value} in {ns}: {e}"));
}

#[test]
fn f_non_ipv4_from_or_to_an_endpoint_is_dropped() {
    let (lab, dp) = same_node("node");
    let (a, b) = (&lab.a, &lab.b);
    // The interfaces' own IPv6 chatter (DAD, MLD, router solicitations) would be counted
    // too: turn it off, let what is queued pass, and count from a baseline.
    for ns in [&lab.node, &a.ns, &b.ns] {
        sysctl(ns, "net/ipv6/conf/all/disable_ipv6", "1");
    }
    thread::sleep(Duration::from_millis(300));
    let base_out = metric_in(&dp, Direction::Egress, Reason::DropUnsupportedL3);
    let base_in = metric_in(&dp, Direction::Ingress, Reason::DropUnsupportedL3);
    let rx = udp_listener(&b.ns, SocketAddr::from((b.addr, 7001)));
    let tx = raw_socket(&a.ns, "eth0");
    let udp = ipv4_udp(a.addr, b.addr, 4000, 7001, b"plain");

    // Control: a plain IPv4 frame built the same way arrives.
    send_frame(&tx, &eth_frame(a.host_mac, a.mac, 0x0800, &udp));
    assert_eq!(received(&rx, SHORT), vec![b"plain".to_vec()]);

    // IPv6 (a minimal header: version 6, UDP next header).
    let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v6.extend_from_slice(&[0x0f, 0xa0, 0x1b, 0x59, 0, 8, 0, 0]);
    send_frame(&tx, &eth_frame(a.host_mac, a.mac, 0x86dd, &v6));
    // VLAN-tagged IPv4 (802.1Q and 802.1ad): the kernel moves the tag into metadata
    // before tc, so the inner EtherType alone would look like plain IPv4.
    for tpid in [0x8100u16, 0x88a8] {
        let mut tagged = vec![0x00, 0x05];
        tagged.extend_from_slice(&0x0800u16.to_be_bytes());
        tagged.extend_from_slice(&ipv4_udp(a.addr, b.addr, 4000, 7001, b"tagged"));
        send_frame(&tx, &eth_frame(a.host_mac, a.mac, tpid, &tagged));
    }
    assert_eq!(
        wait_metric_in(
            &dp,
            Direction::Egress,
            Reason::DropUnsupportedL3,
            base_out + 3
        ),
        base_out + 3,
        "{:?}",
        dp.metrics()
    );
    assert!(received(&rx, SHORT).is_empty(), "a non-IPv4 frame arrived");

    // ARP still goes to the stack, or neighbours would never resolve.
    let to_stack = metric_in(&dp, Direction::Egress, Reason::ToStack);
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&a.mac);
    arp.extend_from_slice(&a.addr.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&GW.octets());
    send_frame(&tx, &eth_frame([0xff; 6], a.mac, 0x0806, &arp));
    assert!(wait_metric_in(&dp, Direction::Egress, Reason::ToStack, to_stack + 1) > to_stack);
    assert_eq!(
        metric_in(&dp, Direction::Egress, Reason::DropUnsupportedL3),
        base_out + 3
    );

    // Towards an endpoint: IPv6 sent into b's veth from the node is dropped by to_endpoint.
    let host_tx = raw_socket(&lab.node, &b.host_if);
    // tc egress drops it, which the sender sees as ENOBUFS.
    match try_send_frame(&host_tx, &eth_frame(b.mac, b.host_mac, 0x86dd, &v6)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
        Err(e) => panic!("send towards b: {e}"),
    }
    assert_eq!(
        wait_metric_in(
            &dp,
            Direction::Ingress,
            Reason::DropUnsupportedL3,
            base_in + 1
        ),
        base_in + 1
    );
}

#[test]
fn g_control_ports_need_an_explicit_allow() {
    let (lab, mut dp) = same_node("node");
    let a = &lab.a;
    let node_ip = Ipv4Addr::new(192, 168, 77, 1);
    let other_node = Ipv4Addr::new(192, 168, 77, 2);
    dp.set_config(&DatapathConfig::new(0, node_ip).with_control_ports([7700, 7701, 8473, 8472]))
        .unwrap();
    dp.upsert_ipcache(
        host_net(other_node),
        &IpcacheValue::local(IDENTITY_REMOTE_NODE),
    )
    .unwrap();
    let udp = in_netns(&a.ns, || UdpSocket::bind((a.addr, 0))).unwrap();

    // Control: a node address on another port goes to the stack.
    udp.send_to(b"other port", (node_ip, 9999)).unwrap();
    assert_eq!(
        wait_metric_in(&dp, Direction::Egress, Reason::ToStack, 1),
        1
    );
    // RPC on this node (config node_ip), VXLAN and encryption on another node: refused,
    // although egress is not enforced (a default allow does not count).
    udp.send_to(b"rpc", (node_ip, 7700)).unwrap();
    udp.send_to(b"vxlan", (other_node, 8472)).unwrap();
    udp.send_to(b"tunnel", (other_node, 8473)).unwrap();
    assert_eq!(
        wait_metric_in(&dp, Direction::Egress, Reason::DropControlPort, 3),
        3
    );
    assert_eq!(metric_in(&dp, Direction::Egress, Reason::ToStack), 1);
    // A TCP SYN to the gossip port too.
    let _ = connect(
        &a.ns,
        SocketAddr::from((other_node, 7701)),
        Duration::from_millis(200),
    );
    assert!(wait_metric_in(&dp, Direction::Egress, Reason::DropControlPort, 4) >= 4);

    // An allow for any identity (entity all) is not one that names the node.
    let any = PolicyKey::new(ep_id(a), Direction::Egress, 0, proto::UDP, 7700, 16).unwrap();
    dp.upsert_policy(&any, &PolicyValue::allow(41)).unwrap();
    udp.send_to(b"rpc via all", (node_ip, 7700)).unwrap();
    assert!(wait_metric_in(&dp, Direction::Egress, Reason::DropControlPort, 5) >= 5);
    assert_eq!(metric_in(&dp, Direction::Egress, Reason::ToStack), 1);

    // An explicit allow for (host, UDP, 7700) opens exactly that.
    let key = PolicyKey::new(
        ep_id(a),
        Direction::Egress,
        IDENTITY_HOST,
        proto::UDP,
        7700,
        16,
    )
    .unwrap();
    dp.upsert_policy(&key, &PolicyValue::allow(42)).unwrap();
    let dropped = metric_in(&dp, Direction::Egress, Reason::DropControlPort);
    udp.send_to(b"rpc allowed", (node_ip, 7700)).unwrap();
    assert_eq!(
        wait_metric_in(&dp, Direction::Egress, Reason::ToStack, 2),
        2
    );
    udp.send_to(b"vxlan still", (other_node, 8472)).unwrap();
    assert_eq!(
        wait_metric_in(&dp, Direction::Egress, Reason::DropControlPort, dropped + 1),
        dropped + 1
    );
}

/// Two nodes whose endpoints e1 (on n1) and e2 (on n2) talk over plaintext VXLAN.
struct Overlay {
    nodes: TwoNodes,
    dp1: Datapath,
    dp2: Datapath,
    e1: Ep,
    e2: Ep,
}

const ID1: u32 = 1001;
const ID2: u32 = 2002;

fn overlay() -> Overlay {
    let (mut nodes, mut dp1, mut dp2) = two_nodes();
    let (n1, n2, u1, u2) = (nodes.n1.clone(), nodes.n2.clone(), nodes.u1_ip, nodes.u2_ip);
    let e1 = nodes.lab.endpoint(
        &n1,
        "e1",
        1,
        Ipv4Addr::new(10, 128, 1, 5),
        Ipv4Addr::new(10, 128, 1, 1),
    );
    let e2 = nodes.lab.endpoint(
        &n2,
        "e2",
        2,
        Ipv4Addr::new(10, 128, 2, 5),
        Ipv4Addr::new(10, 128, 2, 1),
    );
    e1.attach(&mut dp1);
    e1.register(&mut dp1, ID1);
    e2.attach(&mut dp2);
    e2.register(&mut dp2, ID2);
    let cidr1: Ipv4Net = "10.128.1.0/24".parse().unwrap();
    let cidr2: Ipv4Net = "10.128.2.0/24".parse().unwrap();
    dp1.upsert_ipcache(cidr2, &IpcacheValue::remote(0, u2))
        .unwrap();
    dp1.upsert_ipcache(host_net(e2.addr), &IpcacheValue::remote(ID2, u2))
        .unwrap();
    dp2.upsert_ipcache(cidr1, &IpcacheValue::remote(0, u1))
        .unwrap();
    dp2.upsert_ipcache(host_net(e1.addr), &IpcacheValue::remote(ID1, u1))
        .unwrap();
    Overlay {
        nodes,
        dp1,
        dp2,
        e1,
        e2,
    }
}

#[test]
fn h_overlay_accepts_only_registered_nodes_for_their_own_pods() {
    let mut o = overlay();
    let (u1, u2) = (o.nodes.u1_ip, o.nodes.u2_ip);
    let rx = udp_listener(&o.e2.ns, SocketAddr::from((o.e2.addr, 7002)));
    let tx = in_netns(&o.e1.ns, || UdpSocket::bind((o.e1.addr, 0))).unwrap();
    let to_e2 = SocketAddr::V4(SocketAddrV4::new(o.e2.addr, 7002));
    let ingress = |dp: &Datapath, r| metric_in(dp, Direction::Ingress, r);

    // n1 is not (yet) a registered node on n2: its VXLAN is a stranger's.
    tx.send_to(b"stranger", to_e2).unwrap();
    assert_eq!(
        wait_metric_in(&o.dp2, Direction::Ingress, Reason::DropOverlaySource, 1),
        1
    );
    // Known, but with the wrong identity: still a stranger.
    o.dp2
        .upsert_ipcache(host_net(u1), &IpcacheValue::local(IDENTITY_HOST))
        .unwrap();
    tx.send_to(b"stranger", to_e2).unwrap();
    assert_eq!(
        wait_metric_in(&o.dp2, Direction::Ingress, Reason::DropOverlaySource, 2),
        2
    );
    assert!(received(&rx, SHORT).is_empty());

    for (dp, peer) in [(&mut o.dp1, u2), (&mut o.dp2, u1)] {
        dp.upsert_ipcache(host_net(peer), &IpcacheValue::local(IDENTITY_REMOTE_NODE))
            .unwrap();
    }
    // Control: registered node, inner source its own pod, VNI = that pod's identity.
    tx.send_to(b"legit", to_e2).unwrap();
    assert_eq!(received(&rx, SHORT), vec![b"legit".to_vec()]);
    assert!(ingress(&o.dp2, Reason::FromOverlay) >= 1);

    // The VNI claims another identity than n2's ipcache has for e1.
    o.dp2
        .upsert_ipcache(host_net(o.e1.addr), &IpcacheValue::remote(ID1 + 1, u1))
        .unwrap();
    tx.send_to(b"wrong identity", to_e2).unwrap();
    // The inner source is owned by another node than the sender.
    let elsewhere = Ipv4Addr::new(192, 168, 200, 9);
    o.dp2
        .upsert_ipcache(host_net(o.e1.addr), &IpcacheValue::remote(ID1, elsewhere))
        .unwrap();
    tx.send_to(b"not its pod", to_e2).unwrap();
    // Only the pod CIDR is known (identity 0, unknown): no identity to vouch for.
    o.dp2.remove_ipcache(host_net(o.e1.addr)).unwrap();
    tx.send_to(b"unknown identity", to_e2).unwrap();
    assert_eq!(
        wait_metric_in(&o.dp2, Direction::Ingress, Reason::DropOverlayIdentity, 3),
        3,
        "{:?}",
        o.dp2.metrics()
    );
    assert!(received(&rx, SHORT).is_empty());

    // Back to correct: it passes again; then with encryption on, plaintext VXLAN is refused.
    o.dp2
        .upsert_ipcache(host_net(o.e1.addr), &IpcacheValue::remote(ID1, u1))
        .unwrap();
    tx.send_to(b"legit again", to_e2).unwrap();
    assert_eq!(received(&rx, SHORT), vec![b"legit again".to_vec()]);
    let cfg = o.dp2.config().unwrap();
    o.dp2.set_config(&cfg.with_encryption(1)).unwrap();
    tx.send_to(b"plaintext", to_e2).unwrap();
    assert_eq!(
        wait_metric_in(&o.dp2, Direction::Ingress, Reason::DropPlaintextOverlay, 1),
        1
    );
    assert!(received(&rx, SHORT).is_empty());
    assert_eq!(ingress(&o.dp1, Reason::DropOverlaySource), 0);
}

#[test]
fn i_pod_pool_sources_from_the_host_stack_are_dropped() {
    let mut lab = Lab::new();
    let node = lab.node("node");
    let outside = lab.netns("out");
    let a = lab.endpoint(&node, "a", 1, Ipv4Addr::new(10, 128, 0, 5), GW);
    let mut dp = Datapath::load(&lab.pin_dir("node")).expect("load");
    a.attach(&mut dp);
    a.register(&mut dp, ID_A);
    dp.set_config(
        &DatapathConfig::new(0, Ipv4Addr::new(192, 168, 90, 1))
            .with_pod_pool("10.128.0.0/16".parse().unwrap()),
    )
    .unwrap();
    // The node routes for its endpoint, as the agent sets it up; an underlay neighbour
    // routes the pod pool to it.
    let (ux_mac, uy_mac) = ([0x02, 0, 0, 0, 0x90, 1], [0x02, 0, 0, 0, 0x90, 2]);
    ip(&[
        "-n",
        &node,
        "link",
        "add",
        "ux",
        "address",
        &fmt_mac(ux_mac),
        "type",
        "veth",
        "peer",
        "name",
        "uy",
        "address",
        &fmt_mac(uy_mac),
        "netns",
        &outside,
    ]);
    ip(&["-n", &node, "addr", "add", "192.168.90.1/24", "dev", "ux"]);
    ip(&[
        "-n",
        &outside,
        "addr",
        "add",
        "192.168.90.2/24",
        "dev",
        "uy",
    ]);
    ip(&["-n", &outside, "addr", "add", "10.128.3.3/32", "dev", "lo"]);
    ip(&["-n", &node, "link", "set", "ux", "up"]);
    ip(&["-n", &outside, "link", "set", "uy", "up"]);
    ip(&[
        "-n",
        &outside,
        "route",
        "add",
        "10.128.0.0/16",
        "via",
        "192.168.90.1",
    ]);
    ip(&[
        "-n",
        &node,
        "route",
        "add",
        &format!("{}/32", a.addr),
        "dev",
        &a.host_if,
    ]);
    ip(&[
        "-n",
        &node,
        "neigh",
        "add",
        &a.addr.to_string(),
        "lladdr",
        &fmt_mac(a.mac),
        "dev",
        &a.host_if,
        "nud",
        "permanent",
    ]);
    // The default route in the endpoint answers through the gateway, which only BPF
    // carries: the answer is not what this test is about.
    sysctl(&node, "net/ipv4/conf/all/rp_filter", "0");
    sysctl(&node, "net/ipv4/ip_forward", "1");

    let rx = udp_listener(&a.ns, SocketAddr::from((a.addr, 7003)));
    // Control: an underlay source is routed in and delivered.
    let plain = in_netns(&outside, || UdpSocket::bind(("192.168.90.2", 0))).unwrap();
    plain.send_to(b"from the underlay", (a.addr, 7003)).unwrap();
    assert_eq!(received(&rx, SHORT), vec![b"from the underlay".to_vec()]);
    // A pod-pool source routed in from the underlay, and one claiming the local
    // endpoint's own address: neither came through an endpoint, the overlay or the tunnel.
    let spoof = in_netns(&outside, || UdpSocket::bind(("10.128.3.3", 0))).unwrap();
    spoof.send_to(b"pod source", (a.addr, 7003)).unwrap();
    let local = ipv4_udp(a.addr, a.addr, 4000, 7003, b"local source");
    let ux = raw_socket(&outside, "uy");
    send_frame(&ux, &eth_frame(ux_mac, uy_mac, 0x0800, &local));
    assert_eq!(
        wait_metric_in(&dp, Direction::Ingress, Reason::DropPodSource, 2),
        2,
        "{:?}",
        dp.metrics()
    );
    assert!(received(&rx, SHORT).is_empty());
}

/// Opens a TUN device (IFF_TUN | IFF_NO_PI, non-blocking) named `name` in `ns` and sets
/// it up. The device lives as long as the fd.
fn open_tun(ns: &str, name: &str) -> OwnedFd {
    let fd = in_netns(ns, || {
        // SAFETY: open(2) and ioctl(TUNSETIFF) with a zeroed ifreq whose name fits.
        unsafe {
            let fd = libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            assert!(fd >= 0, "open /dev/net/tun: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            let rc = libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &ifr);
            assert_eq!(rc, 0, "TUNSETIFF: {}", io::Error::last_os_error());
            fd
        }
    });
    ip(&["-n", ns, "link", "set", name, "up"]);
    fd
}

/// The IPv4 packets read from the TUN within `within` (the kernel's own IPv6 chatter on
/// the device is skipped).
fn tun_read(fd: &OwnedFd, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length; fd is an open TUN.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            if buf[0] >> 4 == 4 {
                out.push(buf[..n as usize].to_vec());
            }
        } else {
            thread::sleep(Duration::from_millis(10));
        }
    }
    out
}

fn tun_write(fd: &OwnedFd, packet: &[u8]) {
    // SAFETY: packet is valid for its length; fd is an open TUN.
    let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    assert_eq!(
        n,
        packet.len() as isize,
        "write to TUN: {}",
        io::Error::last_os_error()
    );
}

#[test]
fn j_encryption_goes_through_the_tun_and_back() {
    let mut lab = Lab::new();
    let node = lab.node("node");
    let e1 = lab.endpoint(
        &node,
        "e1",
        1,
        Ipv4Addr::new(10, 128, 1, 5),
        Ipv4Addr::new(10, 128, 1, 1),
    );
    let mut dp = Datapath::load(&lab.pin_dir("node")).expect("load");
    e1.attach(&mut dp);
    e1.register(&mut dp, ID1);
    let tun = open_tun(&node, "mbtun0");
    let tun_ifindex = in_netns(&node, || Datapath::ifindex("mbtun0")).unwrap();
    in_netns(&node, || dp.attach_tunnel("mbtun0")).expect("attach_tunnel");
    let peer = Ipv4Addr::new(192, 168, 200, 2);
    dp.set_config(
        &DatapathConfig::new(0, Ipv4Addr::new(192, 168, 200, 1))
            .with_encryption(tun_ifindex)
            .with_pod_pool("10.128.0.0/16".parse().unwrap()),
    )
    .unwrap();
    let cidr2: Ipv4Net = "10.128.2.0/24".parse().unwrap();
    let r = Ipv4Addr::new(10, 128, 2, 5);
    dp.upsert_ipcache(cidr2, &IpcacheValue::remote(0, peer))
        .unwrap();
    dp.upsert_ipcache(host_net(r), &IpcacheValue::remote(ID2, peer))
        .unwrap();
    // What the agent does for the endpoint, and what lets the stack forward from the TUN.
    ip(&[
        "-n",
        &node,
        "route",
        "add",
        &format!("{}/32", e1.addr),
        "dev",
        &e1.host_if,
    ]);
    ip(&[
        "-n",
        &node,
        "neigh",
        "add",
        &e1.addr.to_string(),
        "lladdr",
        &fmt_mac(e1.mac),
        "dev",
        &e1.host_if,
        "nud",
        "permanent",
    ]);
    sysctl(&node, "net/ipv4/conf/all/rp_filter", "0");
    sysctl(&node, "net/ipv4/ip_forward", "1");

    let tx = in_netns(&e1.ns, || UdpSocket::bind((e1.addr, 7004))).unwrap();
    // Strict mode: no key ready (key_index 0): dropped, nothing in the TUN, no VXLAN.
    tx.send_to(b"no key yet", (r, 9)).unwrap();
    assert_eq!(
        wait_metric_in(&dp, Direction::Egress, Reason::DropNoKey, 1),
        1
    );
    assert!(tun_read(&tun, SHORT).is_empty());
    assert_eq!(metric(&dp, Reason::ForwardedOverlay), 0);

    // Key ready: the packet comes out of the TUN as a bare IPv4 packet.
    for (net, id) in [(cidr2, 0), (host_net(r), ID2)] {
        dp.upsert_ipcache(net, &IpcacheValue::remote(id, peer).with_key_index(1))
            .unwrap();
    }
    tx.send_to(b"sealed please", (r, 9)).unwrap();
    let got = tun_read(&tun, SHORT);
    assert_eq!(got.len(), 1, "{got:?}");
    let p = &got[0];
    assert_eq!(p[0] >> 4, 4, "not IPv4: {p:?}");
    assert_eq!(&p[12..16], &e1.addr.octets());
    assert_eq!(&p[16..20], &r.octets());
    assert!(p.ends_with(b"sealed please"));
    assert_eq!(
        metric_in(&dp, Direction::Egress, Reason::ForwardedTunnel),
        1
    );

    // Back through the TUN: ingress on e1 is enforced and only ID2 may reach UDP 7004,
    // so delivery proves from_tunnel gave the packet the ipcache identity of its source.
    enforce(&mut dp, &e1, ID1, true, false);
    let key = PolicyKey::new(ep_id(&e1), Direction::Ingress, ID2, proto::UDP, 7004, 16).unwrap();
    dp.upsert_policy(&key, &PolicyValue::allow(7)).unwrap();
    tx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Source port 10: not the reply of e1's earlier packets to port 9, so no conntrack
    // entry lets it in.
    tun_write(&tun, &ipv4_udp(r, e1.addr, 10, 7004, b"opened"));
    assert_eq!(received(&tx, SHORT), vec![b"opened".to_vec()]);
    assert_eq!(metric_in(&dp, Direction::Ingress, Reason::FromTunnel), 1);

    // A source only the pod CIDR covers (identity unknown) and a local endpoint's address
    // vouch for nothing.
    tun_write(
        &tun,
        &ipv4_udp(Ipv4Addr::new(10, 128, 2, 6), e1.addr, 9, 7004, b"unknown"),
    );
    tun_write(&tun, &ipv4_udp(e1.addr, e1.addr, 9, 7004, b"local"));
    assert_eq!(
        wait_metric_in(&dp, Direction::Ingress, Reason::DropOverlayIdentity, 2),
        2,
        "{:?}",
        dp.metrics()
    );
    assert!(received(&tx, SHORT).is_empty());

    // Encryption off again: the same destination goes to VXLAN (not configured here).
    let cfg = dp.config().unwrap();
    dp.set_config(&cfg.without_encryption()).unwrap();
    tx.send_to(b"plain", (r, 9)).unwrap();
    assert_eq!(
        wait_metric_in(&dp, Direction::Egress, Reason::DropNoOverlay, 1),
        1
    );
    assert!(tun_read(&tun, SHORT).is_empty());
}
