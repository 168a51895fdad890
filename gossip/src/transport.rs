//! chitchat's transport, sealed: every datagram is a [`membrane_crypto::seal`] packet.
//!
//! Sending: chitchat's envelope is encoded, sealed with the primary key under this node's
//! (id, epoch, counter) and sent. Receiving: the datagram is opened, its (sender, epoch,
//! counter) checked against the replay window, and only then decoded for chitchat. Anything
//! that fails is dropped before chitchat sees it and counted by reason, so a stranger on the
//! network can neither inject state nor replay old gossip; the worst it can do is cost us one
//! failed decryption per datagram. The replay window is updated only after authentication,
//! so forged headers cannot move it.
//!
//! # The codec relay
//!
//! chitchat 0.13 keeps its wire codec crate-private (`ChitchatEnvelope::serialize` is
//! `pub(crate)`), and its `Socket` trait speaks envelopes, not bytes. Rather than re-implement
//! the codec, the sealed socket uses chitchat's own `UdpSocket` bound on 127.0.0.2 as the
//! codec, with a second loopback socket (the relay) *connected* to it:
//!
//! - send: chitchat's socket encodes the envelope to the relay; the relay's bytes are sealed
//!   and sent on the real socket;
//! - receive: an opened, fresh plaintext is handed from the relay to chitchat's socket, whose
//!   `recv` decodes it.
//!
//! One plaintext is in flight at a time, so every decoded envelope is matched to the peer
//! address it came from exactly. The loopback hops carry only authenticated plaintext and
//! never leave the host. Local processes could send to the two loopback ports; the relay is
//! connected (the kernel drops anything not from the codec socket) and whatever the codec
//! socket receives from anyone but the relay is dropped and counted as forged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use membrane_crypto::replay::ReplayGuard;
use membrane_crypto::seal::{Keyring, Opened, SealError, Sealer, OVERHEAD};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The address the codec and relay sockets bind to.
const CODEC_LOOPBACK: [u8; 4] = [127, 0, 0, 2];

/// Largest UDP payload (IPv4). A sealed packet adds [`OVERHEAD`] bytes to chitchat's, so a
/// chitchat datagram larger than this minus the overhead cannot be sent (see ALGORITHM.md).
pub const MAX_DATAGRAM: usize = 65_507;

/// How long a plaintext handed to chitchat's codec may take to come back decoded. Only a
/// plaintext chitchat cannot decode (sent by a key holder with a bug) ever waits this long.
const RELAY_WAIT: Duration = Duration::from_millis(250);

/// chitchat 0.13's envelope header: magic number 45139 (little-endian), protocol version
/// (0 or 1), message type (0 to 3). Checked before relaying so garbage is refused at once.
const CHITCHAT_MAGIC: [u8; 2] = 45_139u16.to_le_bytes();

/// Packet counters of one node's gossip socket, shared with the running socket.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams sealed and sent.
    pub sent: AtomicU64,
    /// Sends that failed (sealing or the socket); the peer misses one message.
    pub send_failed: AtomicU64,
    /// Datagrams authenticated, fresh, decoded and handed to chitchat.
    pub received: AtomicU64,
    /// Dropped: shorter than a sealed header and tag.
    pub dropped_truncated: AtomicU64,
    /// Dropped: a packet format version this node does not speak.
    pub dropped_unknown_version: AtomicU64,
    /// Dropped: sealed with a key id this node does not hold (a rotation step skipped, or a
    /// node of another cluster).
    pub dropped_unknown_key: AtomicU64,
    /// Dropped: failed authentication (forged, corrupted, sealed with another key under a
    /// known id), or unauthenticated datagrams sent to the local codec socket.
    pub dropped_forged: AtomicU64,
    /// Dropped: authentic but already seen, too old for the window, or from a previous life
    /// of the sender.
    pub dropped_replay: AtomicU64,
    /// Dropped: authentic and fresh, but not a chitchat message.
    pub dropped_malformed: AtomicU64,
}

/// A copy of [`Counters`] at one moment; fields mean the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CountersSnapshot {
    pub sent: u64,
    pub send_failed: u64,
    pub received: u64,
    pub dropped_truncated: u64,
    pub dropped_unknown_version: u64,
    pub dropped_unknown_key: u64,
    pub dropped_forged: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
}

impl CountersSnapshot {
    /// Every dropped datagram, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_truncated
            + self.dropped_unknown_version
            + self.dropped_unknown_key
            + self.dropped_forged
            + self.dropped_replay
            + self.dropped_malformed
    }
}

impl Counters {
    /// The counters now.
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            sent: g(&self.sent),
            send_failed: g(&self.send_failed),
            received: g(&self.received),
            dropped_truncated: g(&self.dropped_truncated),
            dropped_unknown_version: g(&self.dropped_unknown_version),
            dropped_unknown_key: g(&self.dropped_unknown_key),
            dropped_forged: g(&self.dropped_forged),
            dropped_replay: g(&self.dropped_replay),
            dropped_malformed: g(&self.dropped_malformed),
        }
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn for_open_error(&self, e: &SealError) -> &AtomicU64 {
        match e {
            SealError::Truncated(_) => &self.dropped_truncated,
            SealError::UnknownVersion(_) => &self.dropped_unknown_version,
            SealError::UnknownKey(_) => &self.dropped_unknown_key,
            _ => &self.dropped_forged,
        }
    }
}

/// The sealing transport handed to chitchat. Cheap to clone; clones share the keyring, the
/// sealing counter and the packet counters, so the [`crate::Gossip`] handle can swap keys
/// and read counters while chitchat owns the socket.
#[derive(Clone)]
pub struct SealedTransport {
    node_id: u64,
    sealer: Arc<Sealer>,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<Counters>,
}

impl SealedTransport {
    /// A transport for node `node_id`; `epoch` is this process's start time in ms, which keeps
    /// nonces unique across restarts.
    pub fn new(node_id: u64, epoch: u64, keyring: Keyring) -> Self {
        SealedTransport {
            node_id,
            sealer: Arc::new(Sealer::new(node_id, epoch)),
            keyring: Arc::new(RwLock::new(keyring)),
            counters: Arc::default(),
        }
    }

    /// Replaces the keyring (a rotation step); takes effect for the next datagram either way.
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = keyring;
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live packet counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.sealer.seal(
            &self.keyring.read().unwrap_or_else(|p| p.into_inner()),
            plaintext,
        )
    }

    fn open(&self, packet: &[u8]) -> Result<Opened, SealError> {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .open(packet)
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outer = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind {listen_addr}/UDP for gossip"))?;
        // A loopback address of their own (Linux answers all of 127/8 on lo): ephemeral
        // ports taken here can never collide with gossip sockets bound on 127.0.0.1.
        let loopback = SocketAddr::from((CODEC_LOOPBACK, 0));
        let codec = chitchat::transport::UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let relay = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("cannot bind the gossip relay socket")?;
        relay
            .connect(codec_addr)
            .await
            .context("cannot connect the gossip relay socket")?;
        let relay_addr = relay.local_addr()?;
        Ok(Box::new(SealedSocket {
            transport: self.clone(),
            outer,
            codec,
            relay,
            relay_addr,
            in_flight: None,
            replay: Mutex::new(ReplayGuard::new()),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

/// A plaintext handed to the codec and not yet returned decoded.
struct InFlight {
    from: SocketAddr,
    deadline: Instant,
}

struct SealedSocket {
    transport: SealedTransport,
    /// The real socket, on the network.
    outer: tokio::net::UdpSocket,
    /// chitchat's own UDP socket on loopback, used as the codec.
    codec: chitchat::transport::UdpSocket,
    /// Loopback socket connected to `codec`.
    relay: tokio::net::UdpSocket,
    relay_addr: SocketAddr,
    in_flight: Option<InFlight>,
    /// A `Mutex` only because `Socket` must be `Sync`; one task uses it.
    replay: Mutex<ReplayGuard>,
    buf: Box<[u8]>,
}

impl SealedSocket {
    /// Opens, checks and relays one datagram from the network; `true` if it is now in flight.
    fn accept(&mut self, n: usize, from: SocketAddr) -> bool {
        let t = &self.transport;
        let c = &t.counters;
        let opened = match t.open(&self.buf[..n]) {
            Ok(o) => o,
            Err(e) => {
                Counters::bump(c.for_open_error(&e));
                debug!(%from, len = n, error = %e, "gossip datagram dropped");
                return false;
            }
        };
        if opened.sender == t.node_id {
            // Our own datagram came back (we are in our own seed list): nothing to learn.
            return false;
        }
        let fresh = self
            .replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_and_update(opened.sender, opened.epoch, opened.counter);
        if let Err(e) = fresh {
            Counters::bump(&c.dropped_replay);
            debug!(%from, sender = opened.sender, epoch = opened.epoch, counter = opened.counter, error = %e, "gossip replay dropped");
            return false;
        }
        let p = &opened.plaintext;
        if p.len() < 4 || p[..2] != CHITCHAT_MAGIC || p[2] > 1 || p[3] > 3 {
            Counters::bump(&c.dropped_malformed);
            warn!(%from, sender = opened.sender, "authenticated gossip datagram is not a chitchat message");
            return false;
        }
        // No await between accepting the datagram and queueing it for the codec, so a
        // cancelled `recv` loses nothing.
        match self.relay.try_send(p) {
            Ok(_) => {
                self.in_flight = Some(InFlight {
                    from,
                    deadline: Instant::now() + RELAY_WAIT,
                });
                true
            }
            Err(e) => {
                Counters::bump(&c.dropped_malformed);
                warn!(%from, error = %e, "gossip relay to chitchat's codec failed");
                false
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outer.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Encode through chitchat's socket into the relay.
        self.codec
            .send(self.relay_addr, envelope)
            .await
            .context("gossip codec")?;
        let n = tokio::time::timeout(Duration::from_secs(1), self.relay.recv(&mut self.buf))
            .await
            .context("gossip codec did not answer")?
            .context("gossip relay")?;
        let t = &self.transport;
        let packet = match t.seal(&self.buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                Counters::bump(&t.counters.send_failed);
                warn!(%to, error = %e, "cannot seal gossip");
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        match self.outer.send_to(&packet, to).await {
            Ok(sent) => {
                Counters::bump(&t.counters.sent);
                Ok(SendOutcome {
                    num_bytes_sent: sent,
                })
            }
            // A peer that is gone is the failure detector's business, not a broken socket;
            // a datagram too large is chitchat's delta exceeding the sealed MTU.
            Err(e) => {
                Counters::bump(&t.counters.send_failed);
                debug!(%to, len = packet.len(), max = MAX_DATAGRAM, overhead = OVERHEAD, error = %e, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    /// Cancellation-safe (chitchat drops this future at every gossip tick): every await either
    /// loses nothing or leaves the datagram queued where the next call picks it up.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(InFlight { from, deadline }) = self.in_flight {
                // The plaintext is already queued at the codec, so a decodable one returns at
                // once (the codec is polled before the deadline is looked at).
                match tokio::time::timeout_at(deadline, self.codec.recv()).await {
                    Ok(Ok(mut out)) if out.from_addr == self.relay_addr => {
                        self.in_flight = None;
                        out.from_addr = from;
                        Counters::bump(&self.transport.counters.received);
                        return Ok(out);
                    }
                    Ok(Ok(out)) => {
                        // Someone on this host wrote to the codec port directly.
                        Counters::bump(&self.transport.counters.dropped_forged);
                        warn!(local_sender = %out.from_addr, "unauthenticated datagram on the gossip codec socket dropped");
                        continue;
                    }
                    Ok(Err(e)) => return Err(e.context("gossip codec socket broken")),
                    Err(_) => {
                        self.in_flight = None;
                        Counters::bump(&self.transport.counters.dropped_malformed);
                        warn!(%from, "authenticated gossip datagram did not decode");
                        continue;
                    }
                }
            }
            let (n, from) = match self.outer.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; not fatal.
                    debug!(error = %e, "gossip receive error");
                    continue;
                }
            };
            self.accept(n, from);
        }
    }
}
