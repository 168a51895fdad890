//! Traffic between namespaces: echo servers, round trips and a long-lived stream.
//!
//! Sockets are created inside a namespace with [`in_netns`] and then used from ordinary
//! threads (a socket keeps the namespace it was made in). Everything is bounded: every call
//! takes a timeout, servers poll a stop flag and stop when dropped, and a stream's writer
//! paces itself so that a test's traffic never starves the agents of the CPU.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::in_netns;

/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Most connections one echo server serves at once; more are closed on accept, so a
/// misbehaving test cannot grow threads without bound.
const MAX_CONNECTIONS: usize = 64;

/// A TCP echo server in a namespace: every connection gets back what it sends. Stops (and
/// joins its threads) when dropped.
pub struct TcpEchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEchoServer {
    /// Listens on `ip:port` inside `netns` (`ip` may be 0.0.0.0).
    pub fn start(netns: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<TcpEchoServer> {
        let bind = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let listener = in_netns(netns, move || TcpListener::bind(bind))?
            .with_context(|| format!("cannot listen on {bind} in {netns}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, flag));
        Ok(TcpEchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>) {
    let live = Arc::new(AtomicU64::new(0));
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                if live.load(Ordering::Relaxed) as usize >= MAX_CONNECTIONS {
                    continue; // dropped: closed
                }
                live.fetch_add(1, Ordering::Relaxed);
                let (stop, live) = (stop.clone(), live.clone());
                workers.push(std::thread::spawn(move || {
                    echo(conn, &stop);
                    live.fetch_sub(1, Ordering::Relaxed);
                }));
                workers.retain(|w| !w.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL / 5),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `netns` to `to` within `timeout` (TCP_NODELAY set).
pub fn tcp_connect(netns: &str, to: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let conn = in_netns(netns, move || TcpStream::connect_timeout(&to, timeout))?
        .with_context(|| format!("cannot connect from {netns} to {to}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// One TCP connection from `netns` to an echo server at `to`: sends a message naming the
/// pair and checks that the same bytes come back, all within `timeout`.
pub fn tcp_round_trip(netns: &str, to: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut conn = tcp_connect(netns, to, timeout)?;
    let msg = format!("tcp {netns} -> {to}");
    conn.write_all(msg.as_bytes())
        .with_context(|| format!("tcp {netns} -> {to}: send"))?;
    let mut back = vec![0u8; msg.len()];
    conn.set_read_timeout(Some(timeout.saturating_sub(start.elapsed()).max(POLL)))?;
    conn.read_exact(&mut back)
        .with_context(|| format!("tcp {netns} -> {to}: no echo"))?;
    if back != msg.as_bytes() {
        bail!(
            "tcp {netns} -> {to}: echo differs: {:?}",
            String::from_utf8_lossy(&back)
        );
    }
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

/// A UDP echo server in a namespace: every datagram is sent back to its sender. Stops when
/// dropped.
pub struct UdpEchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Binds `ip:port` inside `netns`.
    pub fn start(netns: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<UdpEchoServer> {
        let bind = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let sock = in_netns(netns, move || UdpSocket::bind(bind))?
            .with_context(|| format!("cannot bind UDP {bind} in {netns}"))?;
        sock.set_read_timeout(Some(POLL))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(UdpEchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A datagram from `netns` to a UDP echo server at `to` and its echo, within `timeout`.
/// Resent every 300 ms, since UDP may lose the first datagram while neighbours resolve; a
/// reply must carry exactly what was sent.
pub fn udp_round_trip(netns: &str, to: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let sock = in_netns(netns, || UdpSocket::bind("0.0.0.0:0"))?
        .with_context(|| format!("cannot open a UDP socket in {netns}"))?;
    let msg = format!("udp {netns} -> {to}");
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        sock.send_to(msg.as_bytes(), to)
            .with_context(|| format!("udp {netns} -> {to}: send"))?;
        let wait =
            Duration::from_millis(300).min(deadline.saturating_duration_since(Instant::now()));
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == to && &buf[..n] == msg.as_bytes() => return Ok(()),
            Ok((n, from)) => bail!(
                "udp {netns} -> {to}: unexpected reply from {from}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(anyhow!("udp {netns} -> {to}: {e}")),
        }
    }
    bail!("udp {netns} -> {to}: no echo within {timeout:?}")
}

/// What a [`TcpStreamProbe`] has seen so far.
#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    /// Bytes the writer handed to the kernel.
    pub sent: u64,
    /// Bytes the reader got.
    pub received: u64,
    /// Errors on either end (a reset shows up here), in order.
    pub errors: Vec<String>,
    /// The longest time the reader went without data, while the stream ran.
    pub longest_stall: Duration,
}

struct Shared {
    stop: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    errors: Mutex<Vec<String>>,
    longest_stall: Mutex<Duration>,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
}

/// One long-lived TCP connection from a client namespace to a server namespace, written at
/// a steady pace by one thread and read by another, counting bytes and recording any
/// error, e.g. to check that a stream survives an agent restart. Stops when dropped.
pub struct TcpStreamProbe {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Bytes per write and the pause between writes: about 1 MiB/s, enough to notice a stall
/// within a few milliseconds and little enough to leave the CPU to the agents.
const CHUNK: usize = 8 * 1024;
const PACE: Duration = Duration::from_millis(8);

impl TcpStreamProbe {
    /// Listens on `server_ip:port` in `server_ns`, connects from `client_ns` and starts the
    /// writer (client) and reader (server) threads.
    pub fn start(
        server_ns: &str,
        server_ip: Ipv4Addr,
        port: u16,
        client_ns: &str,
        timeout: Duration,
    ) -> anyhow::Result<TcpStreamProbe> {
        let bind = SocketAddr::V4(SocketAddrV4::new(server_ip, port));
        let listener = in_netns(server_ns, move || TcpListener::bind(bind))?
            .with_context(|| format!("cannot listen on {bind} in {server_ns}"))?;
        let mut writer = tcp_connect(client_ns, bind, timeout)?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let mut reader = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => bail!("stream {client_ns} -> {bind}: accept: {e}"),
            }
        };
        reader.set_nonblocking(false)?;
        reader.set_read_timeout(Some(POLL))?;
        writer.set_write_timeout(Some(POLL))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            longest_stall: Mutex::new(Duration::ZERO),
        });
        let w = shared.clone();
        let writer_thread = std::thread::spawn(move || {
            let chunk = vec![0x5au8; CHUNK];
            while !w.stop.load(Ordering::Relaxed) {
                let mut off = 0;
                while off < chunk.len() && !w.stop.load(Ordering::Relaxed) {
                    match writer.write(&chunk[off..]) {
                        Ok(n) => {
                            off += n;
                            w.sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => {
                            w.error(format!("writer: {e} ({:?})", e.kind()));
                            return;
                        }
                    }
                }
                std::thread::sleep(PACE);
            }
            let _ = writer.shutdown(Shutdown::Write);
        });
        let r = shared.clone();
        let reader_thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut last = Instant::now();
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return, // the writer shut down cleanly
                    Ok(n) => {
                        r.received.fetch_add(n as u64, Ordering::Relaxed);
                        let gap = last.elapsed();
                        let mut longest = r.longest_stall.lock().unwrap_or_else(|p| p.into_inner());
                        *longest = (*longest).max(gap);
                        last = Instant::now();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        // Once stopped, the writer's FIN is due soon; give up after a while.
                        if r.stop.load(Ordering::Relaxed) && last.elapsed() > Duration::from_secs(5)
                        {
                            r.error("reader: no FIN within 5 s of stopping".into());
                            return;
                        }
                    }
                    Err(e) => {
                        r.error(format!("reader: {e} ({:?})", e.kind()));
                        return;
                    }
                }
            }
        });
        Ok(TcpStreamProbe {
            shared,
            threads: vec![writer_thread, reader_thread],
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            received: self.shared.received.load(Ordering::Relaxed),
            errors: self
                .shared
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            longest_stall: *self
                .shared
                .longest_stall
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Waits until the reader has `bytes` more than now, failing on an error or after
    /// `timeout`.
    pub fn wait_for_more(&self, bytes: u64, timeout: Duration) -> anyhow::Result<()> {
        let target = self.stats().received + bytes;
        crate::wait_until(timeout, Duration::from_millis(20), || {
            let s = self.stats();
            if !s.errors.is_empty() {
                bail!("stream broke: {:?}", s.errors);
            }
            Ok(s.received >= target)
        })
    }

    /// Stops the writer, lets the reader drain to the FIN, and returns the final counters
    /// (`received == sent` when nothing was lost).
    pub fn finish(mut self) -> StreamStats {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for TcpStreamProbe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How one TCP attempt of [`tcp_attempt`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpAttempt {
    /// Connected and the echo came back.
    Echoed,
    /// The connect got no answer within the timeout: what a policy drop of the SYN looks
    /// like (a refused port answers with a RST instead).
    TimedOut,
    /// The peer answered with a RST: the packet got through and nothing listens.
    Refused,
    /// Anything else (the text says what).
    Failed(String),
}

/// One connect to an echo server at `to` and one echoed message, within `timeout`, told
/// apart by how it ends, so that a test can insist on a timeout (a drop) rather than on
/// any failure.
pub fn tcp_attempt(netns: &str, to: SocketAddr, timeout: Duration) -> anyhow::Result<TcpAttempt> {
    let conn = in_netns(netns, move || TcpStream::connect_timeout(&to, timeout))?;
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            return Ok(TcpAttempt::TimedOut)
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(TcpAttempt::Refused),
        Err(e) => return Ok(TcpAttempt::Failed(format!("connect: {e}"))),
    };
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let msg = format!("attempt {netns} -> {to}");
    if let Err(e) = conn.write_all(msg.as_bytes()) {
        return Ok(TcpAttempt::Failed(format!("send: {e}")));
    }
    let mut back = vec![0u8; msg.len()];
    Ok(match conn.read_exact(&mut back) {
        Ok(()) if back == msg.as_bytes() => TcpAttempt::Echoed,
        Ok(()) => TcpAttempt::Failed(format!(
            "echo differs: {:?}",
            String::from_utf8_lossy(&back)
        )),
        Err(e) => TcpAttempt::Failed(format!("no echo: {e}")),
    })
}
