//! chitchat's transport, sealed: every datagram is a [`membrane_crypto::seal`] packet under
//! the key this node shares with the one peer it goes to ([`membrane_crypto::pairwise`]).
//!
//! Sending: chitchat's envelope is encoded, sealed with the primary key of the pair keyring
//! for the destination (address -> node id -> public key, from [`Peers`]) under this node's
//! (id, epoch, counter) and sent. Receiving: the key id is checked, the sender looked up
//! among the members, the datagram opened with that pair's keyring (so only the sender or
//! this node could have sealed it), its epoch checked against the clock and its (sender,
//! epoch, counter) against the replay window, and only then decoded for chitchat. Anything
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
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use membrane_crypto::replay::{HighWater, Replay, ReplayGuard};
use membrane_crypto::seal::{Header, Keyring, Opened, SealError, Sealer, OVERHEAD};

use crate::peers::{NodeSecret, Peers};
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
    /// Dropped: the sealed sender is not a current member (a removed node, or a stranger
    /// holding the cluster key), or its registered public key is unusable.
    pub dropped_unknown_sender: AtomicU64,
    /// Dropped: authentic, but its epoch is further in the future than clock skew explains.
    pub dropped_future_epoch: AtomicU64,
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
    pub dropped_unknown_sender: u64,
    pub dropped_future_epoch: u64,
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
            + self.dropped_unknown_sender
            + self.dropped_future_epoch
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
            dropped_unknown_sender: g(&self.dropped_unknown_sender),
            dropped_future_epoch: g(&self.dropped_future_epoch),
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

/// Pair keyrings by peer id, each with the public key it was derived for.
type PairCache = HashMap<u64, ([u8; 32], Arc<Keyring>)>;

/// Why a received datagram was dropped before chitchat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("sender {0} is not a current member")]
    UnknownSender(u64),
    #[error("no member gossips at {0}")]
    UnknownDestination(SocketAddr),
    #[error("member {0}'s registered public key is unusable: {1}")]
    BadPeerKey(u64, membrane_crypto::pairwise::PairError),
}

/// The sealing transport handed to chitchat. Cheap to clone; clones share the keyring, the
/// members, the sealing counter, the replay windows and the packet counters, so the
/// [`crate::Gossip`] handle can swap keys, save the windows and read counters while chitchat
/// owns the socket.
#[derive(Clone)]
pub struct SealedTransport {
    node_id: u64,
    sealer: Arc<Sealer>,
    keyring: Arc<RwLock<Keyring>>,
    secret: Arc<NodeSecret>,
    peers: Peers,
    /// Pair keyrings derived so far, by peer id, with the public key they were derived for;
    /// emptied whenever the cluster keyring changes. One X25519 and one HKDF per peer and key
    /// change, not per datagram.
    pairs: Arc<Mutex<PairCache>>,
    replay: Arc<Mutex<ReplayGuard>>,
    counters: Arc<Counters>,
}

impl SealedTransport {
    /// A transport for node `node_id` holding `secret`, gossiping with `peers`; `epoch` is
    /// this process's start time in ms, which keeps nonces unique across restarts; `replay`
    /// starts the windows (resumed from saved marks, or empty).
    pub fn new(
        node_id: u64,
        epoch: u64,
        keyring: Keyring,
        secret: NodeSecret,
        peers: Peers,
        replay: ReplayGuard,
    ) -> Self {
        SealedTransport {
            node_id,
            sealer: Arc::new(Sealer::new(node_id, epoch)),
            keyring: Arc::new(RwLock::new(keyring)),
            secret: Arc::new(secret),
            peers,
            pairs: Arc::default(),
            replay: Arc::new(Mutex::new(replay)),
            counters: Arc::default(),
        }
    }

    /// Replaces the keyring (a rotation step); takes effect for the next datagram either way.
    pub fn set_keyring(&self, keyring: Keyring) {
        let mut k = self.keyring.write().unwrap_or_else(|p| p.into_inner());
        *k = keyring;
        // Under the keyring lock, so no datagram pairs the new ring with old pair keys.
        self.pairs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The members this transport seals for and opens from.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The live packet counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Every sender's replay high-water mark, to persist (see [`ReplayGuard::marks`]).
    pub fn replay_marks(&self) -> Vec<(u64, HighWater)> {
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .marks()
    }

    /// The keyring shared with `peer`; this node pairs with itself through its own public key.
    fn pair_ring(&self, peer: u64) -> Result<Arc<Keyring>, Refused> {
        let public = if peer == self.node_id {
            self.secret.public()
        } else {
            self.peers
                .with(|t| t.public_of(peer))
                .ok_or(Refused::UnknownSender(peer))?
        };
        let ring = self.keyring.read().unwrap_or_else(|p| p.into_inner());
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, r)) = pairs.get(&peer) {
            if *k == public {
                return Ok(r.clone());
            }
        }
        let derived = Arc::new(
            ring.pairwise(&self.secret.0, self.node_id, &public, peer)
                .map_err(|e| Refused::BadPeerKey(peer, e))?,
        );
        pairs.insert(peer, (public, derived.clone()));
        Ok(derived)
    }

    /// Seals `plaintext` for the member gossiping at `to`.
    fn seal(&self, to: SocketAddr, plaintext: &[u8]) -> Result<Vec<u8>, Refused> {
        let peer = self
            .peers
            .with(|t| t.id_at(&to))
            .ok_or(Refused::UnknownDestination(to))?;
        let ring = self.pair_ring(peer)?;
        Ok(self.sealer.seal(&ring, plaintext)?)
    }

    /// Opens a datagram from a member. The key id is checked before the sender, so after a
    /// rotation a removed node's datagrams count as sealed with an unknown key.
    fn open(&self, packet: &[u8]) -> Result<Opened, Refused> {
        let h = Header::parse(packet)?;
        if !self
            .keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(h.key_id)
        {
            return Err(SealError::UnknownKey(h.key_id).into());
        }
        Ok(self.pair_ring(h.sender)?.open(packet)?)
    }

    /// Checks an opened datagram against the clock and the sender's replay window.
    fn fresh(&self, o: &Opened) -> Result<(), Replay> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_and_update_at(o.sender, o.epoch, o.counter, now_ms)
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
    buf: Box<[u8]>,
}

impl SealedSocket {
    /// Opens, checks and relays one datagram from the network; `true` if it is now in flight.
    fn accept(&mut self, n: usize, from: SocketAddr) -> bool {
        let t = &self.transport;
        let c = &t.counters;
        let opened = match t.open(&self.buf[..n]) {
            Ok(o) => o,
            Err(Refused::Seal(e)) => {
                Counters::bump(c.for_open_error(&e));
                debug!(%from, len = n, error = %e, "gossip datagram dropped");
                return false;
            }
            Err(e) => {
                Counters::bump(&c.dropped_unknown_sender);
                debug!(%from, len = n, error = %e, "gossip datagram from a non-member dropped");
                return false;
            }
        };
        if opened.sender == t.node_id {
            // Our own datagram came back (we are in our own seed list): nothing to learn.
            return false;
        }
        if let Err(e) = t.fresh(&opened) {
            let counter = match e {
                Replay::FutureEpoch { .. } => &c.dropped_future_epoch,
                _ => &c.dropped_replay,
            };
            Counters::bump(counter);
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
        let packet = match t.seal(to, &self.buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                Counters::bump(&t.counters.send_failed);
                // A seed that is not (or no longer) a member is expected; anything else is not.
                if matches!(e, Refused::UnknownDestination(_)) {
                    debug!(%to, error = %e, "gossip not sent");
                } else {
                    warn!(%to, error = %e, "cannot seal gossip");
                }
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
