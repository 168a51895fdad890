//! The namespaces, endpoints and traffic helpers the kernel tests share.
#![allow(dead_code)]

use std::{
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use ipnet::Ipv4Net;
use membrane_ebpf::{
    Datapath, DatapathConfig, EndpointValue, EventReader, FlowEvent, IpcacheValue, Reason,
};

pub static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The path of `program` on PATH; panics naming the program and its Debian package, so a
/// missing tool fails as itself rather than as a verdict of the datapath under test.
pub fn require_tool(program: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed: run scripts/deps.sh (Debian package {package})")
        })
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip(8); install iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh thread inside network namespace `ns`. Sockets created there stay in
/// that namespace wherever they are used afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            let file = fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// Namespaces and the pin directory of one test, removed in Drop.
pub struct Lab {
    pub id: String,
    pub namespaces: Vec<String>,
    pub pin_root: PathBuf,
}

impl Lab {
    pub fn new() -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("mbt{}-{n}", std::process::id());
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/membrane-test-{}-{n}",
            std::process::id()
        ));
        Lab {
            id,
            namespaces: Vec::new(),
            pin_root,
        }
    }

    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.pin_root.join(node)
    }

    pub fn netns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.id);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A node namespace with forwarding explicitly off: only BPF can move packets through.
    pub fn node(&mut self, role: &str) -> String {
        let ns = self.netns(role);
        in_netns(&ns, || fs::write("/proc/sys/net/ipv4/ip_forward", "0")).expect("ip_forward");
        ns
    }

    /// An endpoint as docs/datapath.md sets it up: /32, link route to the gateway, default
    /// route, permanent neighbour gateway -> host-side MAC; host side in `node` without
    /// address or route.
    pub fn endpoint(
        &mut self,
        node: &str,
        role: &str,
        idx: u8,
        addr: Ipv4Addr,
        gw: Ipv4Addr,
    ) -> Ep {
        let ns = self.netns(role);
        plug(node, &ns, &format!("h{role}"), idx, addr, gw)
    }
}

/// Turns IPv6 off on `ifname` in namespace `ns` (absent IPv6 support is fine).
fn disable_ipv6(ns: &str, ifname: &str) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!("net.ipv6.conf.{ifname}.disable_ipv6=1"))
        .status();
}

/// The veth pair and endpoint-side configuration of an endpoint in namespace `ns`.
pub fn plug(node: &str, ns: &str, host_if: &str, idx: u8, addr: Ipv4Addr, gw: Ipv4Addr) -> Ep {
    let (ns, host_if) = (ns.to_owned(), host_if.to_owned());
    let host_mac = [0x02, 0, 0, 0, idx, 0x01];
    let mac = [0x02, 0, 0, 0, idx, 0x02];
    ip(&[
        "-n",
        node,
        "link",
        "add",
        &host_if,
        "address",
        &fmt_mac(host_mac),
        "mtu",
        "1450",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        &fmt_mac(mac),
        "mtu",
        "1450",
        "netns",
        &ns,
    ]);
    // As the agent does before bringing an endpoint up: no IPv6, so neither side sends
    // router solicitations or MLD reports, which the datapath drops (unsupported-l3) and
    // which would add events to tests that count them.
    disable_ipv6(node, &host_if);
    disable_ipv6(&ns, "eth0");
    ip(&["-n", node, "link", "set", &host_if, "up"]);
    ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{addr}/32"),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        &gw.to_string(),
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        &gw.to_string(),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &ns,
        "neigh",
        "add",
        &gw.to_string(),
        "lladdr",
        &fmt_mac(host_mac),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let ifindex = in_netns(node, || Datapath::ifindex(&host_if)).expect("ifindex");
    Ep {
        ns,
        node: node.to_owned(),
        host_if,
        addr,
        mac,
        host_mac,
        ifindex,
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths, which detaches their programs.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if let Err(e) = Datapath::remove_pins(&self.pin_root) {
            eprintln!("cleanup: {e}");
        }
    }
}

pub struct Ep {
    pub ns: String,
    pub node: String,
    pub host_if: String,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub ifindex: u32,
}

impl Ep {
    pub fn value(&self, identity: u32) -> EndpointValue {
        EndpointValue::new(
            self.ifindex,
            identity,
            u32::from(self.mac[4]),
            self.mac,
            self.host_mac,
        )
    }

    pub fn attach(&self, dp: &mut Datapath) {
        in_netns(&self.node, || dp.attach_endpoint(&self.host_if)).expect("attach_endpoint");
    }

    /// Adds the endpoint to the maps of its node: endpoints entry and local /32.
    pub fn register(&self, dp: &mut Datapath, identity: u32) {
        dp.upsert_endpoint(self.addr, &self.value(identity))
            .expect("upsert_endpoint");
        dp.upsert_ipcache(host_net(self.addr), &IpcacheValue::local(identity))
            .expect("upsert_ipcache");
    }
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn host_net(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("/32")
}

/// A TCP echo server in a namespace; stops and joins its threads in Drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &str, addr: SocketAddr) -> EchoServer {
        let listener = in_netns(ns, || TcpListener::bind(addr)).expect("bind echo server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (stop2, threads2) = (stop.clone(), threads.clone());
        let accept = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let stop3 = stop2.clone();
                        let h = thread::spawn(move || echo(s, &stop3));
                        threads2.lock().unwrap().push(h);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        EchoServer {
            stop,
            threads,
            accept: Some(accept),
        }
    }
}

pub fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for h in self
            .threads
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
        {
            let _ = h.join();
        }
    }
}

pub fn connect(ns: &str, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(ns, || TcpStream::connect_timeout(&to, timeout))
}

/// Writes `msg` and expects it echoed back within `timeout`.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    Ok(())
}

pub fn metric(dp: &Datapath, r: Reason) -> u64 {
    dp.metric(r).expect("metrics").0
}

/// Waits (bounded) until `reason` reaches `at_least` packets: a packet sent from a socket
/// may still be in the peer's backlog when send returns.
pub fn wait_metric(dp: &Datapath, r: Reason, at_least: u64) -> u64 {
    let deadline = Instant::now() + LONG;
    loop {
        let n = metric(dp, r);
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn tcx_programs(ns: &str, ifname: &str, t: TcAttachType) -> Vec<u32> {
    in_netns(ns, || SchedClassifier::query_tcx(ifname, t))
        .expect("query_tcx")
        .1
        .iter()
        .map(|p| p.id())
        .collect()
}

pub const SHORT: Duration = Duration::from_millis(800);
pub const LONG: Duration = Duration::from_secs(3);

/// One node, two endpoints on it, programs attached and maps filled.
pub struct SameNode {
    pub lab: Lab,
    pub node: String,
    pub a: Ep,
    pub b: Ep,
}

pub const ID_A: u32 = 100;
pub const ID_B: u32 = 200;

pub fn same_node(dp_pin: &str) -> (SameNode, Datapath) {
    let mut lab = Lab::new();
    let node = lab.node("node");
    let gw = Ipv4Addr::new(10, 128, 0, 1);
    let a = lab.endpoint(&node, "a", 1, Ipv4Addr::new(10, 128, 0, 5), gw);
    let b = lab.endpoint(&node, "b", 2, Ipv4Addr::new(10, 128, 0, 6), gw);
    let mut dp = Datapath::load(&lab.pin_dir(dp_pin)).expect("load datapath");
    a.attach(&mut dp);
    b.attach(&mut dp);
    a.register(&mut dp, ID_A);
    b.register(&mut dp, ID_B);
    (SameNode { lab, node, a, b }, dp)
}

pub const GW: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);

/// The endpoint id `Ep::value` gives an endpoint (its MAC's index byte).
pub fn ep_id(ep: &Ep) -> u16 {
    u16::from(ep.mac[4])
}

/// Rewrites the endpoint's map entry with the given enforcement.
pub fn enforce(dp: &mut Datapath, ep: &Ep, identity: u32, ingress: bool, egress: bool) {
    dp.upsert_endpoint(
        ep.addr,
        &ep.value(identity).with_enforcement(ingress, egress),
    )
    .expect("upsert_endpoint");
}

/// Reads events until one satisfies `pred` (bounded by LONG); panics with what was seen.
pub fn wait_event(r: &mut EventReader, what: &str, pred: impl Fn(&FlowEvent) -> bool) -> FlowEvent {
    let deadline = Instant::now() + LONG;
    let mut seen = Vec::new();
    loop {
        while let Some(ev) = r.read() {
            if pred(&ev) {
                return ev;
            }
            seen.push(ev);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("no event {what}; saw {seen:#?}");
        }
        let _ = r.wait(left.min(Duration::from_millis(100)));
    }
}

/// Two nodes joined by an underlay veth (192.168.200.1/.2), each with a VXLAN device in
/// external mode carrying `from_overlay`, the config written and the datapath loaded.
pub struct TwoNodes {
    pub lab: Lab,
    pub n1: String,
    pub n2: String,
    pub u1_ip: Ipv4Addr,
    pub u2_ip: Ipv4Addr,
}

pub fn two_nodes() -> (TwoNodes, Datapath, Datapath) {
    let mut lab = Lab::new();
    let n1 = lab.node("n1");
    let n2 = lab.node("n2");
    let (u1_ip, u2_ip) = (
        Ipv4Addr::new(192, 168, 200, 1),
        Ipv4Addr::new(192, 168, 200, 2),
    );
    ip(&[
        "-n", &n1, "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", &n2,
    ]);
    ip(&["-n", &n1, "addr", "add", "192.168.200.1/24", "dev", "u1"]);
    ip(&["-n", &n2, "addr", "add", "192.168.200.2/24", "dev", "u2"]);
    for (ns, dev) in [(&n1, "u1"), (&n2, "u2")] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "membrane_vx",
            "type",
            "vxlan",
            "external",
            "dstport",
            "8472",
            "nolearning",
        ]);
        ip(&["-n", ns, "link", "set", "membrane_vx", "up"]);
    }
    let mut dp1 = Datapath::load(&lab.pin_dir("n1")).expect("load n1");
    let mut dp2 = Datapath::load(&lab.pin_dir("n2")).expect("load n2");
    for (dp, ns, node_ip) in [(&mut dp1, &n1, u1_ip), (&mut dp2, &n2, u2_ip)] {
        in_netns(ns, || dp.attach_overlay("membrane_vx")).expect("attach_overlay");
        let vx = in_netns(ns, || Datapath::ifindex("membrane_vx")).expect("vx ifindex");
        dp.set_config(&DatapathConfig::new(vx, node_ip))
            .expect("set_config");
    }
    (
        TwoNodes {
            lab,
            n1,
            n2,
            u1_ip,
            u2_ip,
        },
        dp1,
        dp2,
    )
}

/// An AF_PACKET socket bound to `ifname` in `ns` (all protocols): sends raw frames out of
/// that interface and receives what crosses it.
pub fn raw_socket(ns: &str, ifname: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
            sll.sll_ifindex = Datapath::ifindex(ifname).expect("ifindex") as i32;
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

/// Sends one raw frame on a socket from [`raw_socket`].
pub fn send_frame(sock: &std::os::fd::OwnedFd, frame: &[u8]) {
    try_send_frame(sock, frame).expect("send frame");
}

/// Sends one raw frame; a frame that tc egress drops fails with ENOBUFS (NET_XMIT_DROP).
pub fn try_send_frame(sock: &std::os::fd::OwnedFd, frame: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: frame is valid for frame.len() bytes; the fd is a bound packet socket.
    let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if n == frame.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An Ethernet frame: dst, src, EtherType, payload.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4/UDP packet (header checksum set, UDP checksum 0 = none), TTL 64.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The Internet checksum of an IPv4 header whose checksum field is 0.
pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP socket bound in `ns` with a short read timeout, for "did anything arrive".
pub fn udp_listener(ns: &str, addr: SocketAddr) -> std::net::UdpSocket {
    let s = in_netns(ns, || std::net::UdpSocket::bind(addr)).expect("bind UDP listener");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    s
}

/// Every datagram that arrives on `s` within `within` (payloads).
pub fn received(s: &std::net::UdpSocket, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}
