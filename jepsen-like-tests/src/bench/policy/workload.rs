//! The two measurements, the same for both sides: the connection-rate client and its server,
//! and the persistent ping-pong connection to an echo server.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::stats::{median_of, micros, Summary};
use crate::in_netns;
use crate::netns::nsenter;
use crate::traffic::{tcp_connect, TcpEchoServer};

/// Server ports: new connections (one request each) and the persistent ping-pong.
pub(super) const CONN_PORT: u16 = 7400;
pub(super) const RR_PORT: u16 = 7401;
/// Bytes per request and per response.
const MSG: usize = crate::bench::stats::RR_MESSAGE;

/// One pair of namespaces to measure between, with servers running in the server one.
pub(super) struct Setup {
    client_ns: String,
    server_ip: Ipv4Addr,
    _conn_server: ConnServer,
    _rr_server: TcpEchoServer,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sample {
    pub(super) conn_per_s: f64,
    pub(super) conn_p50_us: f64,
    pub(super) conn_p99_us: f64,
    pub(super) rr_p50_us: f64,
    pub(super) rr_p99_us: f64,
}

/// The medians over runs of each figure.
pub(super) fn median(v: &[Sample]) -> Sample {
    Sample {
        conn_per_s: median_of(v, |s| s.conn_per_s),
        conn_p50_us: median_of(v, |s| s.conn_p50_us),
        conn_p99_us: median_of(v, |s| s.conn_p99_us),
        rr_p50_us: median_of(v, |s| s.rr_p50_us),
        rr_p99_us: median_of(v, |s| s.rr_p99_us),
    }
}

/// Both measurements on `s`: `seconds` of new connections, then `round_trips` of ping-pong.
pub(super) fn measure(s: &Setup, seconds: u32, round_trips: usize) -> anyhow::Result<Sample> {
    let conn = connection_rate(s, Duration::from_secs(u64::from(seconds)))?;
    let rr = ping_pong(s, round_trips)?;
    Ok(Sample {
        conn_per_s: conn.ops_per_sec(),
        conn_p50_us: micros(conn.p50),
        conn_p99_us: micros(conn.p99),
        rr_p50_us: micros(rr.p50),
        rr_p99_us: micros(rr.p99),
    })
}

/// New connections back to back for `length`, from one thread living in the client
/// namespace (so no per-connection namespace switch): connect, 64 bytes out, 64 back, close.
fn connection_rate(s: &Setup, length: Duration) -> anyhow::Result<Summary> {
    let to = SocketAddr::new(IpAddr::V4(s.server_ip), CONN_PORT);
    let one = move || -> std::io::Result<()> {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(&[0x42; MSG])?;
        let mut back = [0u8; MSG];
        c.read_exact(&mut back)?;
        Ok(())
    };
    let (lat, errors, elapsed, first_error) = in_netns(&s.client_ns, move || {
        // Warm-up: ARP, caches, the server's accept loop.
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(200) {
            let _ = one();
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        let start = Instant::now();
        while start.elapsed() < length {
            let t = Instant::now();
            match one() {
                Ok(()) => lat.push(t.elapsed()),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        (lat, errors, start.elapsed(), first_error)
    })?;
    let summary = Summary::new(lat, errors, elapsed);
    // A few refused or timed-out connects would bias the rate; many mean a broken setup.
    if errors * 100 > summary.ops.max(1) {
        bail!(
            "{errors} of {} connections failed: {}",
            errors + summary.ops,
            first_error.unwrap_or_default()
        );
    }
    Ok(summary)
}

/// 64-byte messages echoed over one TCP connection (TCP_NODELAY on both ends), one at a time,
/// as in `bench datapath`.
fn ping_pong(s: &Setup, round_trips: usize) -> anyhow::Result<Summary> {
    let to = SocketAddr::new(IpAddr::V4(s.server_ip), RR_PORT);
    let mut conn = tcp_connect(&s.client_ns, to, Duration::from_secs(5))?;
    crate::bench::stats::ping_pong(&mut conn, round_trips)
}

impl Setup {
    pub(super) fn new(
        client_ns: &str,
        server_ns: &str,
        server_ip: Ipv4Addr,
    ) -> anyhow::Result<Setup> {
        Ok(Setup {
            client_ns: client_ns.into(),
            server_ip,
            _conn_server: ConnServer::start(server_ns, server_ip, CONN_PORT)?,
            _rr_server: TcpEchoServer::start(server_ns, server_ip, RR_PORT)?,
        })
    }
}

/// The connection-rate server: one thread, blocking accept, each connection served inline
/// (read 64 bytes, echo them, wait for the client's close), so that the client's sequential
/// connections never wait on a poll interval or a thread start. The client closes first, so
/// TIME_WAIT stays on its side, where tcp_tw_reuse recycles ports.
struct ConnServer {
    addr: SocketAddr,
    server_ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnServer {
    fn start(ns: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<ConnServer> {
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        let listener = in_netns(ns, move || TcpListener::bind(addr))?
            .with_context(|| format!("cannot listen on {addr} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    continue;
                };
                let _ = c.set_nodelay(true);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; MSG];
                if c.read_exact(&mut buf).is_ok() && c.write_all(&buf).is_ok() {
                    let _ = c.read(&mut buf); // the client's FIN
                }
            }
        });
        Ok(ConnServer {
            addr,
            server_ns: ns.into(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept from inside the server's namespace (over lo, which no
        // policy or rule covers).
        let addr = self.addr;
        let _ = in_netns(&self.server_ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lets the client namespace open tens of thousands of connections a minute: the whole
/// ephemeral range, and TIME_WAIT ports reused for new outgoing connections.
pub(super) fn client_sysctls(ns: &str) -> anyhow::Result<()> {
    for kv in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        let out = nsenter(ns)
            .args(["sysctl", "-q", "-w", kv])
            .stdin(Stdio::null())
            .output()
            .context("cannot run sysctl")?;
        if !out.status.success() {
            bail!(
                "sysctl {kv} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}
