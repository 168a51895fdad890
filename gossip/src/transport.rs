//! chitchat's transport, sealed: every datagram is a [`membrane_crypto::seal`] packet.
//!
//! Sending: serialise chitchat's envelope, seal it with the primary key under this node's
//! (id, epoch, counter). Receiving: open, check the replay window, then deserialise. Anything
//! that fails is dropped before chitchat sees it and counted by reason, so a stranger on the
//! network can neither inject state nor replay old gossip; the worst it can do is cost us a
//! decryption attempt per packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use membrane_crypto::replay::ReplayGuard;
use membrane_crypto::seal::{Keyring, SealError};
use tracing::debug;

/// How long a plaintext handed to chitchat's codec may take to come back decoded.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Largest datagram we read.
const MAX_DATAGRAM: usize = 65_507;

/// Packet counters of one node's gossip socket.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub dropped_truncated: AtomicU64,
    pub dropped_unknown_key: AtomicU64,
    pub dropped_forged: AtomicU64,
    pub dropped_replay: AtomicU64,
    pub dropped_malformed: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub sent: u64,
    pub received: u64,
    pub dropped_truncated: u64,
    pub dropped_unknown_key: u64,
    pub dropped_forged: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            sent: g(&self.sent),
            received: g(&self.received),
            dropped_truncated: g(&self.dropped_truncated),
            dropped_unknown_key: g(&self.dropped_unknown_key),
            dropped_forged: g(&self.dropped_forged),
            dropped_replay: g(&self.dropped_replay),
            dropped_malformed: g(&self.dropped_malformed),
        }
    }
}

/// The sealing transport. Cheap to clone; clones share the keyring and counters.
#[derive(Clone)]
pub struct SealedTransport {
    node_id: u64,
    epoch: u64,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<Counters>,
}

impl SealedTransport {
    /// `epoch` is this process's start time in ms: it keeps nonces unique across restarts.
    pub fn new(node_id: u64, epoch: u64, keyring: Keyring) -> Self {
        SealedTransport { node_id, epoch, keyring: Arc::new(RwLock::new(keyring)), counters: Arc::default() }
    }

    /// Replaces the keyring (rotation); takes effect for the next packet.
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().expect("keyring lock") = keyring;
    }

    pub fn keyring(&self) -> Keyring {
        self.keyring.read().expect("keyring lock").clone()
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outer = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind {listen_addr}/UDP for gossip"))?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let inner = chitchat::transport::UdpSocket::open(loopback).await?;
        let inner_addr = inner.local_addr()?;
        let relay = tokio::net::UdpSocket::bind(loopback).await.context("cannot bind the gossip relay socket")?;
        Ok(Box::new(SealedSocket {
            transport: self.clone(),
            outer,
            inner,
            inner_addr,
            relay,
            pending_from: std::collections::VecDeque::new(),
            counter: 0,
            replay: Mutex::new(ReplayGuard::default()),
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

/// chitchat 0.13 keeps its wire encoding crate-private, so the sealed socket borrows
/// chitchat's own UDP socket (`inner`, on loopback) as its codec: to send, chitchat encodes
/// an envelope to the `relay` socket, whose bytes are sealed and sent on `outer`; to
/// receive, an opened packet is handed from `relay` to `inner` for chitchat to decode. The
/// loopback hops carry only authenticated plaintext and never leave the host.
struct SealedSocket {
    transport: SealedTransport,
    outer: tokio::net::UdpSocket,
    inner: chitchat::transport::UdpSocket,
    inner_addr: SocketAddr,
    relay: tokio::net::UdpSocket,
    /// Senders of the plaintexts handed to `inner` and not yet returned by it, in order.
    pending_from: std::collections::VecDeque<SocketAddr>,
    counter: u64,
    replay: Mutex<ReplayGuard>,
    buf: Box<[u8]>,
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outer.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let relay_addr = self.relay.local_addr()?;
        self.inner.send(relay_addr, envelope).await?;
        let (n, _) = self.relay.recv_from(&mut self.buf).await.context("gossip relay")?;
        self.counter += 1;
        let t = &self.transport;
        let packet = t
            .keyring
            .read()
            .expect("keyring lock")
            .seal(t.node_id, t.epoch, self.counter, &self.buf[..n])
            .map_err(|e| anyhow::anyhow!("cannot seal gossip: {e}"))?;
        match self.outer.send_to(&packet, to).await {
            Ok(n) => {
                t.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(SendOutcome { num_bytes_sent: n })
            }
            // A peer that is gone is the failure detector's business, not a broken socket.
            Err(e) => {
                debug!(%to, error = %e, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    /// Cancellation-safe: every await point either loses nothing or leaves the datagram
    /// queued where the next call picks it up.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(from) = self.pending_from.front().copied() {
                // The plaintext is already queued on `inner`, so a decodable one returns at
                // once; chitchat silently skips one it cannot decode, hence the bound.
                match tokio::time::timeout(RELAY_WAIT, self.inner.recv()).await {
                    Ok(out) => {
                        let mut out = out?;
                        self.pending_from.pop_front();
                        out.from_addr = from;
                        self.transport.counters.received.fetch_add(1, Ordering::Relaxed);
                        return Ok(out);
                    }
                    Err(_) => {
                        self.pending_from.pop_front();
                        self.transport.counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                        debug!(%from, "authenticated gossip packet did not decode");
                        continue;
                    }
                }
            }
            let (n, from) = match self.outer.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "gossip receive error");
                    continue;
                }
            };
            let c = &self.transport.counters;
            let opened = self.transport.keyring.read().expect("keyring lock").open(&self.buf[..n]);
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    let counter = match e {
                        SealError::Truncated(_) => &c.dropped_truncated,
                        SealError::UnknownKey(_) => &c.dropped_unknown_key,
                        SealError::UnknownVersion(_) | SealError::Forged | SealError::NoPrimaryKey => &c.dropped_forged,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, error = %e, "gossip packet dropped");
                    continue;
                }
            };
            if opened.sender == self.transport.node_id {
                continue;
            }
            if let Err(e) = self.replay.lock().expect("replay lock").check_and_update(opened.sender, opened.epoch, opened.counter) {
                c.dropped_replay.fetch_add(1, Ordering::Relaxed);
                debug!(%from, sender = opened.sender, error = %e, "gossip replay dropped");
                continue;
            }
            // No await between accepting the packet and queueing it for chitchat.
            match self.relay.try_send_to(&opened.plaintext, self.inner_addr) {
                Ok(_) => self.pending_from.push_back(from),
                Err(e) => {
                    c.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, error = %e, "gossip relay to chitchat failed");
                }
            }
        }
    }
}
