//! What several cluster tests share: a node's saved TLS material used as a thief or a peer
//! would, a runtime for raw RPCs, and the Raft log position a test compares.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use membrane_crypto::ca::{node_server_name, NODE_SERVER_NAME};
use membrane_jepsen::Cluster;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A node's TLS material as saved in its state directory (`tls/`, `keys/`).
#[derive(Clone)]
pub struct SavedTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl SavedTls {
    pub fn read(state_dir: &Path) -> anyhow::Result<SavedTls> {
        Ok(SavedTls {
            ca: std::fs::read_to_string(state_dir.join("tls/ca.crt"))?,
            cert: std::fs::read_to_string(state_dir.join("tls/node.crt"))?,
            key: std::fs::read_to_string(state_dir.join("keys/tls.key"))?,
        })
    }

    /// What a node's own client uses: the cluster CA, this certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// A channel to node `id` at `addr`, verifying its own name.
    pub fn channel(&self, addr: &str, id: u64) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.client_config().domain_name(node_server_name(id)))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect_lazy())
    }
}

/// A single-threaded runtime for raw RPCs, with rustls' provider installed.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The last Raft log index host 1's agent reports.
pub fn last_log_index(c: &Cluster) -> anyhow::Result<u64> {
    let s = c.status(1)?;
    s["raft"]["last_log_index"]
        .as_u64()
        .or_else(|| s["last_log_index"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no last_log_index in status: {s}"))
}

/// The last log index once it has not moved for `quiet`: a freshly formed cluster still
/// commits membership changes and certificate records for a moment, which a test that
/// checks "nothing was proposed" must not count.
pub fn settled_log_index(c: &Cluster, quiet: Duration) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = last_log_index(c)?;
    let mut since = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = last_log_index(c)?;
        if now != last {
            last = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the Raft log kept moving for 30 s (last index {now})"
        );
    }
}

/// A channel that verifies the server by the pinned CA but presents no certificate, as a
/// joining node's does.
pub async fn anonymous_channel(addr: String, pin: [u8; 32]) -> anyhow::Result<Channel> {
    let config = Arc::new(membrane_crypto::tls::pinned_ca_client_config(pin)?);
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, addr) = (config.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from(NODE_SERVER_NAME)
                .unwrap()
                .to_owned();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from_static("http://node")
        .connect_with_connector(connector)
        .await?)
}

/// Frames seen on the lab's underlay (an AF_PACKET socket in the underlay namespace, every
/// interface: the bridge and its ports), scanned for byte markers; the UDP payloads sent to
/// `keep_udp_port` are kept (sealed tunnel datagrams, for replay tests). Stops when dropped.
pub struct UnderlayCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    state: std::sync::Arc<std::sync::Mutex<CaptureState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
pub struct CaptureState {
    pub markers: Vec<(Vec<u8>, u64)>,
    pub udp: Vec<Vec<u8>>,
    pub frames: u64,
}

impl UnderlayCapture {
    pub fn start(ns: &str, keep_udp_port: u16) -> anyhow::Result<UnderlayCapture> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = membrane_jepsen::in_netns(ns, || {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK,
                SockProtocol::EthAll,
            )
        })??;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = std::sync::Arc::new(std::sync::Mutex::new(CaptureState::default()));
        let (s2, st2) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                match nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut buf,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(n) => {
                        let frame = &buf[..n];
                        let mut st = st2.lock().unwrap_or_else(|p| p.into_inner());
                        st.frames += 1;
                        for (m, count) in st.markers.iter_mut() {
                            if frame.windows(m.len()).any(|w| w == m.as_slice()) {
                                *count += 1;
                            }
                        }
                        if let Some(p) = udp_payload_to(frame, keep_udp_port) {
                            if st.udp.len() < 10_000 {
                                st.udp.push(p.to_vec());
                            }
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(UnderlayCapture {
            stop,
            state,
            thread: Some(thread),
        })
    }

    /// Starts counting frames that contain `marker`.
    pub fn watch(&self, marker: &[u8]) {
        self.lock().markers.push((marker.to_vec(), 0));
    }

    /// How many frames contained `marker` so far.
    pub fn seen(&self, marker: &[u8]) -> u64 {
        self.lock()
            .markers
            .iter()
            .find(|(m, _)| m == marker)
            .map_or(0, |(_, c)| *c)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for UnderlayCapture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The UDP payload of an Ethernet/IPv4/UDP frame to `port` (unfragmented), if it is one.
pub fn udp_payload_to(frame: &[u8], port: u16) -> Option<&[u8]> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 || (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0 {
        return None;
    }
    let udp = &ip[ihl..];
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len.max(8))
}

/// `membrane encrypt status` of node `i`, as JSON.
pub fn encrypt_status(c: &Cluster, i: usize) -> anyhow::Result<serde_json::Value> {
    c.cli_json(i, &["encrypt", "status"])
}

/// Waits until every node of `nodes` has a send epoch for every other (and, if `min_epoch`,
/// at least that one).
pub fn wait_keys_ready(
    c: &Cluster,
    nodes: &[usize],
    min_epoch: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut last = String::new();
        let mut ok = true;
        for i in nodes {
            let s = encrypt_status(c, *i)?;
            // Only the peers among `nodes` (hosts are named h<i>): a node that is down
            // keeps its older send epoch.
            let names: Vec<String> = nodes.iter().map(|j| format!("h{j}")).collect();
            let peers: Vec<serde_json::Value> = s["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| names.iter().any(|n| p["name"] == n.as_str()))
                .collect();
            let ready = s["device_up"] == true
                && peers.len() + 1 >= nodes.len()
                && peers
                    .iter()
                    .all(|p| p["send_epoch"].as_u64().is_some_and(|e| e >= min_epoch));
            if !ready {
                ok = false;
                last = format!("h{i}: {s}");
            }
        }
        if ok {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("keys not ready after {timeout:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Drops by reason on node `i`'s tunnel.
pub fn tunnel_drop(c: &Cluster, i: usize, reason: &str) -> anyhow::Result<u64> {
    Ok(encrypt_status(c, i)?["drops"][reason].as_u64().unwrap_or(0))
}
