//! The tunnel device loop: packets the datapath redirects into a TUN are sealed by
//! [`membrane_crypto::tunnel::Tunnel`] and sent as UDP to the peer node; UDP from peers is
//! opened, its inner source checked against the sealing node's addresses, and written back
//! into the TUN, where `from_tunnel` gives it the sender's identity.
//!
//! Layout (docs/encryption.md, "The device loop"):
//! - `tun.rs`: the TUN, one queue per worker, virtio-net header, TSO/checksum offload;
//! - `gso.rs`: pure splitting of TSO super-packets into segments, checksum completion;
//! - `udp.rs`: sendmmsg/recvmmsg, UDP GSO/GRO, big buffers, one SO_REUSEPORT socket per worker;
//! - `routes.rs`: peer table (destination -> peer, peer -> allowed inner sources);
//! - `counters.rs`: drops by reason, per-peer traffic;
//! - `worker.rs`: the hot loop, one std thread per worker (no async runtime on this path).
//!
//! Threads: worker `k` owns TUN queue `k` and UDP socket `k`. The kernel steers every flow
//! to one TUN queue, so a flow is always sealed by one worker, in order; the receive side
//! of a socket is served by the worker that owns it, so one peer's datagrams (one 4-tuple,
//! hence one reuseport socket) are opened in order too.

mod counters;
pub mod gso;
mod routes;
mod tun;
pub mod udp;
mod worker;

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use membrane_crypto::tunnel::Tunnel;
use thiserror::Error;

pub use counters::{DeviceCounters, Drop, PeerTraffic};
pub use routes::{PeerRoute, PeerRoutes, RoutesError, RoutesSnapshot};

/// Smallest TUN MTU accepted (IPv4's minimum datagram).
pub const MIN_MTU: u32 = 576;
/// Largest TUN MTU accepted: a sealed packet must fit one UDP datagram.
pub const MAX_MTU: u32 = 65_535 - 28 - membrane_crypto::tunnel::OVERHEAD as u32;
/// The default TUN MTU for a 1500-byte underlay: 1500 - 20 (IP) - 8 (UDP) - 44 (tunnel).
pub const DEFAULT_MTU: u32 = 1500 - 28 - membrane_crypto::tunnel::OVERHEAD as u32;
/// Upper bound on worker threads.
pub const MAX_WORKERS: usize = 64;

/// How to run the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The TUN's name (`--encryption-device`, default `membrane_tun`).
    pub tun_name: String,
    /// Where to receive sealed UDP (node IP or 0.0.0.0 : `--encryption-port`).
    pub listen: SocketAddrV4,
    /// The TUN's MTU (inner packets); the underlay must carry MTU + 72 bytes.
    pub mtu: u32,
    /// Worker threads (`--tunnel-workers`), each with its own TUN queue and socket.
    pub workers: usize,
}

impl DeviceConfig {
    /// Checks the configuration without touching the system.
    pub fn validate(&self) -> Result<(), DeviceError> {
        tun::validate_name(&self.tun_name)?;
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(DeviceError::Config(format!(
                "tunnel MTU {} is outside {MIN_MTU}..={MAX_MTU}; use the underlay MTU minus 72 (default {DEFAULT_MTU})",
                self.mtu
            )));
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(DeviceError::Config(format!(
                "--tunnel-workers {} is outside 1..={MAX_WORKERS}",
                self.workers
            )));
        }
        if self.listen.port() == 0 {
            return Err(DeviceError::Config(
                "the encryption port must not be 0: peers must know where to send; set --encryption-port".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("invalid tunnel device configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DeviceError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DeviceError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A running device: worker threads, its TUN (removed on stop) and its sockets.
pub struct TunnelDevice {
    ifindex: u32,
    name: String,
    stop_fd: Arc<OwnedFd>,
    workers: Vec<JoinHandle<()>>,
    totals: Arc<counters::Totals>,
    features: Features,
}

/// Which offloads the kernel accepted (for logs, docs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub tun_tso4: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

impl std::fmt::Debug for TunnelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelDevice")
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .field("workers", &self.workers.len())
            .field("features", &self.features)
            .finish()
    }
}

impl TunnelDevice {
    /// Creates the TUN and the sockets in the calling thread's network namespace and starts
    /// the workers. Nothing is left behind on error.
    pub fn start(
        cfg: DeviceConfig,
        tunnel: Arc<Tunnel>,
        routes: Arc<PeerRoutes>,
    ) -> Result<TunnelDevice, DeviceError> {
        cfg.validate()?;
        let (queues, offloads, ifindex) = tun::create(&cfg.tun_name, cfg.workers, cfg.mtu)?;
        let mut socks = Vec::with_capacity(cfg.workers);
        for _ in 0..cfg.workers {
            socks.push(udp::UdpSock::bind(cfg.listen)?);
        }
        let features = Features {
            tun_tso4: offloads.tso4,
            udp_gso: socks.iter().all(|s| s.gso()),
            udp_gro: socks.iter().all(|s| s.gro()),
        };
        if !features.udp_gso || !features.udp_gro {
            tracing::warn!(
                gso = features.udp_gso,
                gro = features.udp_gro,
                "UDP segmentation offload not fully available; the tunnel works, slower"
            );
        }
        // SAFETY: plain eventfd(2).
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(DeviceError::io(
                "creating the tunnel stop eventfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: just created, owned here.
        let stop_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let totals = Arc::new(counters::Totals::default());
        let mut workers = Vec::with_capacity(cfg.workers);
        for (k, (q, s)) in queues.into_iter().zip(socks).enumerate() {
            let w = worker::Worker::new(
                k,
                q,
                s,
                tunnel.clone(),
                routes.clone(),
                totals.clone(),
                stop_fd.clone(),
                cfg.mtu,
            );
            let spawned = std::thread::Builder::new()
                .name(format!("membrane-tun-{k}"))
                .spawn(move || w.run());
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    signal(&stop_fd);
                    for h in workers {
                        let _ = h.join();
                    }
                    return Err(DeviceError::io("spawning a tunnel worker thread", e));
                }
            }
        }
        tracing::info!(tun = %cfg.tun_name, ifindex, listen = %cfg.listen, workers = cfg.workers, mtu = cfg.mtu,
            tso4 = features.tun_tso4, udp_gso = features.udp_gso, udp_gro = features.udp_gro, "tunnel device started");
        Ok(TunnelDevice {
            ifindex,
            name: cfg.tun_name,
            stop_fd,
            workers,
            totals,
            features,
        })
    }

    /// The TUN's ifindex, for `DatapathConfig::with_encryption`.
    pub fn tun_ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn tun_name(&self) -> &str {
        &self.name
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// Counters so far (merged from the workers at the end of each batch).
    pub fn counters(&self) -> DeviceCounters {
        self.totals.snapshot()
    }

    /// Stops the workers (promptly: they wait on an eventfd beside their fds) and closes
    /// the TUN queues, which removes the TUN.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        signal(&self.stop_fd);
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!(tun = %self.name, "a tunnel worker panicked");
            }
        }
    }
}

impl std::ops::Drop for TunnelDevice {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> DeviceConfig {
        DeviceConfig {
            tun_name: "membrane_tun".into(),
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8473),
            mtu: DEFAULT_MTU,
            workers: 2,
        }
    }

    #[test]
    fn config_validation() {
        assert!(cfg().validate().is_ok());
        assert_eq!(DEFAULT_MTU, 1428);
        let mut c = cfg();
        c.mtu = 100;
        assert!(c.validate().is_err());
        c = cfg();
        c.mtu = MAX_MTU + 1;
        assert!(c.validate().is_err());
        c = cfg();
        c.workers = 0;
        assert!(c.validate().is_err());
        c = cfg();
        c.listen.set_port(0);
        assert!(c.validate().is_err());
        c = cfg();
        c.tun_name = "bad/name".into();
        assert!(c.validate().is_err());
    }
}
