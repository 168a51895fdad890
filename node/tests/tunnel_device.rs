//! The tunnel device for real (root): two network namespaces joined by a veth, a
//! TunnelDevice in each, two Tunnel states that hold fixed test secrets for each other.
//! Each namespace has a "pod" address on lo inside its pod CIDR and a route to the other's
//! pod CIDR via its TUN. Checked: ping and a multi-megabyte TCP echo cross byte for byte;
//! the datagrams on the veth never carry the payload marker; a packet for a destination
//! with no peer is a `no-key` drop; an authenticated packet whose inner source its sender
//! does not own is an `inner-source` drop and reaches nobody; stop removes the TUN.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use membrane::tunnel::device::{
    DeviceConfig, Drop, PeerRoute, PeerRoutes, TunnelDevice, DEFAULT_MTU,
};
use membrane_crypto::tunnel::{CipherKind, EpochSecret, Tunnel};

const PORT: u16 = 8473;
const MARKER: &[u8] = b"MEMBRANE-PLAINTEXT-MARKER-7f3a";
const CLUSTER: u8 = 7;
const EPOCH: u32 = 1;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// A namespace removed on drop (with everything in it: veth end, TUN, routes).
struct Netns(String);

impl std::ops::Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a thread inside the namespace; a panic there is re-raised here.
fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

struct Node {
    ns: String,
    id: u64,
    underlay: Ipv4Addr,
    pod: Ipv4Addr,
    cidr: &'static str,
}

fn secret(id: u64) -> EpochSecret {
    EpochSecret::from_bytes([id as u8 * 17 + 3; 32])
}

fn tunnel_state(me: &Node, peer: &Node, boot: u32) -> Arc<Tunnel> {
    let t = Tunnel::new(CLUSTER, me.id, boot, CipherKind::Ring);
    t.set_local_secret(EPOCH, secret(me.id));
    t.set_peer(
        peer.id,
        BTreeMap::from([(EPOCH, secret(peer.id).public())]),
        Some(EPOCH),
    );
    Arc::new(t)
}

fn route_to(peer: &Node) -> PeerRoute {
    PeerRoute {
        peer: peer.id,
        pod_cidr: peer.cidr.parse().expect("cidr"),
        node_ip: peer.underlay,
        underlay: SocketAddrV4::new(peer.underlay, PORT),
    }
}

fn start(node: &Node, peer: &Node, tun: &str, workers: usize) -> TunnelDevice {
    let tunnel = tunnel_state(node, peer, 1);
    let routes = Arc::new(PeerRoutes::new());
    routes.update(vec![route_to(peer)]).expect("routes");
    let cfg = DeviceConfig {
        tun_name: tun.to_string(),
        listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        mtu: DEFAULT_MTU,
        workers,
    };
    let dev =
        within(&node.ns, move || TunnelDevice::start(cfg, tunnel, routes)).expect("start device");
    let peer_cidr = peer.cidr.to_string();
    let src = node.pod.to_string();
    in_ns(
        &node.ns,
        &["ip", "route", "add", &peer_cidr, "dev", tun, "src", &src],
    );
    dev
}

/// Captures frames on an interface (AF_PACKET) until `stop`, returning the UDP payloads
/// to `port` (IPv4 only; Ethernet header skipped).
fn capture(
    ns: &str,
    ifname: &str,
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    let ifname = ifname.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is closed at the end of the thread.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let cname = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: sockaddr_ll bound to the interface; timeouts so the loop sees `stop`.
        unsafe {
            let idx = libc::if_nametoindex(cname.as_ptr());
            assert!(idx > 0);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = idx as i32;
            let r = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind AF_PACKET");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        ready_tx.send(()).expect("ready");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 17];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let f = &buf[..n as usize];
            // Ethernet (14) + IPv4 + UDP to `port`.
            if f.len() < 14 + 28 || f[12] != 0x08 || f[13] != 0x00 || f[14 + 9] != 17 {
                continue;
            }
            let ihl = ((f[14] & 0x0f) as usize) * 4;
            let udp = &f[14 + ihl..];
            if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != port {
                continue;
            }
            out.push(udp[8..].to_vec());
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        out
    });
    ready_rx.recv().expect("capture ready");
    h
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A UDP/IPv4 packet (checksum 0 = none) from src to dst:port carrying `payload`.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    membrane::tunnel::device::gso::set_ipv4_checksum(&mut p[..20]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two namespaces joined by a veth, a TunnelDevice in each, routes between the pod CIDRs.
struct Pair {
    a: Node,
    b: Node,
    tun: String,
    vb: String,
    dev_a: Option<TunnelDevice>,
    dev_b: Option<TunnelDevice>,
    // Dropped last (fields drop in order): the devices stop before their namespaces go.
    _ga: Netns,
    _gb: Netns,
}

impl Pair {
    fn new(workers: usize) -> Pair {
        let tag = format!("{:05}", std::process::id() % 100_000);
        let a = Node {
            ns: format!("mtd{tag}a"),
            id: 1,
            underlay: Ipv4Addr::new(172, 31, 250, 1),
            pod: Ipv4Addr::new(10, 210, 1, 1),
            cidr: "10.210.1.0/24",
        };
        let b = Node {
            ns: format!("mtd{tag}b"),
            id: 2,
            underlay: Ipv4Addr::new(172, 31, 250, 2),
            pod: Ipv4Addr::new(10, 210, 2, 1),
            cidr: "10.210.2.0/24",
        };
        let (va, vb) = (format!("mtdv{tag}a"), format!("mtdv{tag}b"));
        let tun = format!("mtdt{tag}");
        run("ip", &["netns", "add", &a.ns]);
        let ga = Netns(a.ns.clone());
        run("ip", &["netns", "add", &b.ns]);
        let gb = Netns(b.ns.clone());
        run(
            "ip",
            &[
                "link", "add", &va, "netns", &a.ns, "type", "veth", "peer", "name", &vb, "netns",
                &b.ns,
            ],
        );
        for (n, v) in [(&a, &va), (&b, &vb)] {
            in_ns(&n.ns, &["ip", "link", "set", "lo", "up"]);
            in_ns(
                &n.ns,
                &["ip", "addr", "add", &format!("{}/24", n.underlay), "dev", v],
            );
            in_ns(&n.ns, &["ip", "link", "set", v, "up"]);
            in_ns(
                &n.ns,
                &["ip", "addr", "add", &format!("{}/32", n.pod), "dev", "lo"],
            );
            in_ns(&n.ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        }
        let dev_a = start(&a, &b, &tun, workers);
        let dev_b = start(&b, &a, &tun, workers);
        Pair {
            a,
            b,
            tun,
            vb,
            dev_a: Some(dev_a),
            dev_b: Some(dev_b),
            _ga: ga,
            _gb: gb,
        }
    }

    fn dev_a(&self) -> &TunnelDevice {
        self.dev_a.as_ref().expect("device A running")
    }

    fn dev_b(&self) -> &TunnelDevice {
        self.dev_b.as_ref().expect("device B running")
    }
}

fn is_root() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (network namespaces, TUN)");
        return false;
    }
    true
}

#[test]
fn two_namespaces_talk_through_the_tunnel() {
    if !is_root() {
        return;
    }
    let mut pair = Pair::new(2);
    let (a, b, tun, vb) = (&pair.a, &pair.b, pair.tun.clone(), pair.vb.clone());
    let dev_a = pair.dev_a();
    let dev_b = pair.dev_b();
    assert!(dev_a.tun_ifindex() > 0);
    eprintln!("features: {:?}", dev_a.features());

    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(&b.ns, &vb, PORT, stop.clone());

    // Ping across (the first may be lost to ARP on the veth; -c 3 with a deadline).
    let out = in_ns(
        &a.ns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-w",
            "5",
            "-I",
            &a.pod.to_string(),
            &b.pod.to_string(),
        ],
    );
    assert!(
        out.contains(" 0% packet loss") || out.contains("3 received"),
        "ping: {out}"
    );

    // A TCP echo of 4 MiB carrying the marker, checked byte for byte.
    let data: Arc<Vec<u8>> = Arc::new(
        (0..4 * 1024 * 1024u32)
            .map(|i| {
                let k = (i as usize) % 4096;
                if k < MARKER.len() {
                    MARKER[k]
                } else {
                    (i.wrapping_mul(2_654_435_761) >> 24) as u8
                }
            })
            .collect(),
    );
    let bpod = b.pod;
    let listener = within(&b.ns, move || {
        TcpListener::bind(SocketAddrV4::new(bpod, 5201)).expect("listen")
    });
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("server read");
        s.write_all(&got).expect("server write");
        (peer, got.len())
    });
    let sent = data.clone();
    let (echo, secs) = within(&a.ns, move || {
        let t0 = Instant::now();
        let mut c = TcpStream::connect(SocketAddrV4::new(bpod, 5201)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        c.write_all(&sent).expect("client write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("client read");
        (back, t0.elapsed().as_secs_f64())
    });
    let (peer, n) = server.join().expect("server");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.pod),
        "the server saw A's pod address"
    );
    assert_eq!(n, data.len());
    assert!(echo == *data, "echo differs from what was sent");
    eprintln!("4 MiB echo (8 MiB through the tunnel) in {secs:.2}s");

    stop.store(true, Ordering::Relaxed);
    let captured = cap.join().expect("capture");
    // Enough tunnel datagrams to have carried the stream, none with the marker in clear.
    let bytes: usize = captured.iter().map(|d| d.len()).sum();
    assert!(
        bytes > data.len(),
        "captured only {bytes} bytes of tunnel UDP"
    );
    assert!(
        !captured.iter().any(|d| contains(d, MARKER)),
        "the marker crossed the veth in clear"
    );
    // The capture can see a marker: a plain datagram to the same port does show it.
    let stop2 = Arc::new(AtomicBool::new(false));
    let cap2 = capture(&b.ns, &vb, PORT + 1, stop2.clone());
    let bu = b.underlay;
    within(&a.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.send_to(MARKER, SocketAddrV4::new(bu, PORT + 1))
            .expect("send");
    });
    std::thread::sleep(Duration::from_millis(300));
    stop2.store(true, Ordering::Relaxed);
    assert!(
        cap2.join()
            .expect("capture")
            .iter()
            .any(|d| contains(d, MARKER)),
        "the capture cannot see plaintext"
    );

    let ca = dev_a.counters();
    let cb = dev_b.counters();
    eprintln!("A: {ca:?}\nB: {cb:?}");
    assert!(
        ca.peer(2).sent_packets >= 3 + data.len() as u64 / DEFAULT_MTU as u64,
        "A sealed the stream"
    );
    assert!(ca.peer(2).sent_bytes > data.len() as u64);
    assert!(
        cb.peer(1).received_bytes > data.len() as u64,
        "B delivered the stream"
    );
    assert!(
        ca.peer(2).received_bytes > data.len() as u64,
        "A got the echo"
    );
    // The offloads at work: TSO super-packets (fewer reads than segments) and UDP GSO runs
    // (fewer send messages than datagrams), where the kernel took them.
    let f = dev_a.features();
    if f.tun_tso4 {
        assert!(
            ca.tun_reads * 2 < ca.peer(2).sent_packets,
            "no super-packets: {} reads",
            ca.tun_reads
        );
    }
    if f.udp_gso {
        assert!(
            ca.send_messages * 2 < ca.datagrams_sent,
            "no GSO runs: {} messages",
            ca.send_messages
        );
    }
    for d in [
        Drop::Auth,
        Drop::Replay,
        Drop::StaleEpoch,
        Drop::UnknownSender,
        Drop::InnerSource,
        Drop::Malformed,
        Drop::TunMalformed,
        Drop::Io,
    ] {
        assert_eq!(ca.drop_count(d), 0, "A {d:?}");
        assert_eq!(cb.drop_count(d), 0, "B {d:?}");
    }

    // No peer owns 10.210.9.0/24: packets routed into the TUN for it are no-key drops.
    in_ns(
        &a.ns,
        &[
            "ip",
            "route",
            "add",
            "10.210.9.0/24",
            "dev",
            &tun,
            "src",
            &a.pod.to_string(),
        ],
    );
    let before = dev_a.counters().drop_count(Drop::NoKey);
    within(&a.ns, || {
        let s = UdpSocket::bind("10.210.1.1:0").expect("bind");
        for _ in 0..3 {
            s.send_to(b"nobody", "10.210.9.9:9").expect("send");
        }
    });
    wait_for("no-key drops", Duration::from_secs(5), || {
        dev_a.counters().drop_count(Drop::NoKey) >= before + 3
    });

    // A forger holding B's real key (a later boot of node 2): an inner source in another
    // node's pod CIDR is dropped as inner-source; its own pod address gets through.
    let apod = a.pod;
    let au = a.underlay;
    let sink = within(&a.ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(apod, 6000)).expect("bind sink");
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        s
    });
    let forger = tunnel_state(b, a, 2);
    let spoofed = udp_packet(Ipv4Addr::new(10, 210, 3, 5), apod, 6000, b"spoofed");
    let honest = udp_packet(bpod, apod, 6000, b"honest");
    let mut sealed_spoofed = Vec::new();
    forger.seal(1, &spoofed, &mut sealed_spoofed).expect("seal");
    let mut sealed_honest = Vec::new();
    forger.seal(1, &honest, &mut sealed_honest).expect("seal");
    let before = dev_a.counters().drop_count(Drop::InnerSource);
    within(&b.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.send_to(&sealed_spoofed, SocketAddrV4::new(au, PORT))
            .expect("send");
        s.send_to(&sealed_honest, SocketAddrV4::new(au, PORT))
            .expect("send");
    });
    let mut buf = [0u8; 64];
    let (n, from) = sink.recv_from(&mut buf).expect("the honest packet arrives");
    assert_eq!(&buf[..n], b"honest");
    assert_eq!(from.ip(), std::net::IpAddr::V4(bpod));
    assert!(sink.recv_from(&mut buf).is_err(), "nothing else arrives");
    wait_for("inner-source drop", Duration::from_secs(3), || {
        dev_a.counters().drop_count(Drop::InnerSource) == before + 1
    });

    // Stop is prompt and removes the TUN.
    let t0 = Instant::now();
    pair.dev_a.take().expect("A").stop();
    pair.dev_b.take().expect("B").stop();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t0.elapsed()
    );
    let links = in_ns(&pair.a.ns, &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains(&pair.tun),
        "TUN still there after stop: {links}"
    );
}

/// Throughput through the two devices with iperf3 (1 and 4 streams). Not a check: a
/// measurement for docs/encryption.md; run it in release:
/// `cargo test --release -p membrane --test tunnel_device -- --ignored --nocapture iperf3`
#[test]
#[ignore]
fn iperf3_through_the_tunnel() {
    if !is_root() {
        return;
    }
    let workers: usize = std::env::var("TUNNEL_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let pair = Pair::new(workers);
    eprintln!("features: {:?}, workers {workers}", pair.dev_a().features());
    let bpod = pair.b.pod.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &pair.b.ns, "iperf3", "-s", "-B", &bpod, "-1", "-p", "5202",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    for streams in ["1", "4"] {
        std::thread::sleep(Duration::from_millis(300));
        if streams == "4" {
            let _ = server.wait();
            server = Command::new("ip")
                .args([
                    "netns", "exec", &pair.b.ns, "iperf3", "-s", "-B", &bpod, "-1", "-p", "5202",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("iperf3 server");
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = in_ns(
            &pair.a.ns,
            &[
                "iperf3",
                "-c",
                &bpod,
                "-B",
                &pair.a.pod.to_string(),
                "-p",
                "5202",
                "-t",
                "5",
                "-P",
                streams,
                "-f",
                "m",
            ],
        );
        let summary: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("sender") || l.contains("receiver"))
            .collect();
        eprintln!("iperf3 -P {streams}:\n{}", summary.join("\n"));
    }
    let _ = server.wait();
    eprintln!("A: {:?}", pair.dev_a().counters());
}
