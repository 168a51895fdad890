//! [`Tunnel`] (the sessions): one node's send and receive sessions with every peer. See the module doc of
//! [`super`] for the nonce argument and the thread model.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use zeroize::Zeroizing;

use super::cipher::{Cipher, CipherKind};
use super::derive::{derive_key, EpochSecret, KeyContext};
use super::header::{nonce, Header, HEADER_LEN, OVERHEAD, TAG_LEN};
use super::replay::ReplayWindow;
use super::DropReason;

/// A key never seals more messages than this (WireGuard's REJECT_AFTER_MESSAGES is
/// 2^64 - 2^13 - 1; 2^60 leaves the counter's top bits unused and is unreachable in practice).
pub const REJECT_AFTER_MESSAGES: u64 = 1 << 60;

/// What [`Tunnel::open`] found in an authenticated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The node that sealed it (authenticated: only it and this node hold the key).
    pub sender: u64,
    /// The key epoch it was sealed under.
    pub epoch: u32,
    /// Where the decrypted payload lies in the packet buffer.
    pub payload: Range<usize>,
}

/// Packets and payload bytes sealed to and opened from one peer since it was first set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Packets sealed to the peer.
    pub sealed_packets: u64,
    /// Payload bytes sealed to the peer.
    pub sealed_bytes: u64,
    /// Packets from the peer that authenticated and passed the replay window.
    pub opened_packets: u64,
    /// Their payload bytes.
    pub opened_bytes: u64,
}

#[derive(Default)]
struct Counters {
    sealed_packets: AtomicU64,
    sealed_bytes: AtomicU64,
    opened_packets: AtomicU64,
    opened_bytes: AtomicU64,
}

struct SendSession {
    epoch: u32,
    cipher: Box<dyn Cipher>,
    /// Shared with [`Tunnel::send_counters`], so a re-derived session continues it.
    next: Arc<AtomicU64>,
}

struct RecvSession {
    boot: u32,
    cipher: Box<dyn Cipher>,
    window: Mutex<ReplayWindow>,
}

/// The receive side of one (peer, epoch): the X25519 result (computed once) and the session
/// of the newest authenticated boot.
struct RecvEpoch {
    keys: KeyPair,
    shared: Zeroizing<[u8; 32]>,
    /// Left behind by an erased session of the same keys: boots below are replays, and the
    /// same boot starts after the counter it had reached.
    floor: Option<Floor>,
    current: RwLock<Option<Arc<RecvSession>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct KeyPair {
    local: [u8; 32],
    peer: [u8; 32],
}

#[derive(Clone, Copy)]
struct Floor {
    keys: KeyPair,
    boot: u32,
    last: u64,
}

struct Peer {
    accept: BTreeMap<u32, [u8; 32]>,
    send_epoch: Option<u32>,
    send: RwLock<Option<Arc<SendSession>>>,
    recv: RwLock<BTreeMap<u32, Arc<RecvEpoch>>>,
    counters: Arc<Counters>,
}

/// One node's tunnel state: its epoch secrets, and per peer the keys it accepts, the epoch it
/// sends with, and the sessions derived from them. No IO, no clock; every method takes
/// `&self` and may be called from any number of threads.
pub struct Tunnel {
    cluster_id: u8,
    me: u64,
    boot: u32,
    cipher: CipherKind,
    secrets: RwLock<BTreeMap<u32, Arc<EpochSecret>>>,
    peers: RwLock<BTreeMap<u64, Arc<Peer>>>,
    /// Next counter per (peer, epoch), kept for the life of this value even when sessions
    /// are erased: a send key derived again (same secret installed again, a peer removed and
    /// set again) continues its counter instead of starting at 0.
    send_counters: Mutex<BTreeMap<(u64, u32), Arc<AtomicU64>>>,
    /// What erased receive sessions had reached, per (peer, epoch), for the same reason.
    recv_floors: Mutex<BTreeMap<(u64, u32), Floor>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind that is still consistent
    // (every update is a single insert or replace), so poisoning is ignored.
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tunnel {
    /// The tunnel of node `me` in cluster `cluster_id`, for this agent start `boot`. `boot`
    /// must differ at every start of the agent for as long as an epoch secret lives (the
    /// keystore persists and increments it): it is what keeps a restarted node, whose
    /// counters start at 0 again, from deriving a send key it already used.
    pub fn new(cluster_id: u8, me: u64, boot: u32, cipher: CipherKind) -> Tunnel {
        Tunnel {
            cluster_id,
            me,
            boot,
            cipher,
            secrets: RwLock::new(BTreeMap::new()),
            peers: RwLock::new(BTreeMap::new()),
            send_counters: Mutex::new(BTreeMap::new()),
            recv_floors: Mutex::new(BTreeMap::new()),
        }
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// This agent start's boot instance.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// The cipher implementation in use.
    pub fn cipher_kind(&self) -> CipherKind {
        self.cipher
    }

    /// Installs this node's secret for `epoch`. Replacing it with a different secret erases
    /// the sessions derived from the old one; installing the same secret again changes
    /// nothing.
    pub fn set_local_secret(&self, epoch: u32, secret: EpochSecret) {
        let public = secret.public();
        let old = write(&self.secrets).insert(epoch, Arc::new(secret));
        if old.is_some_and(|o| o.public() != public) {
            self.erase_epoch_sessions(epoch);
        }
    }

    /// Forgets this node's secret for `epoch` and every session of that epoch: packets of it
    /// are then refused as stale, and sealing with it fails with `NoKey`.
    pub fn remove_local_secret(&self, epoch: u32) {
        if write(&self.secrets).remove(&epoch).is_some() {
            self.erase_epoch_sessions(epoch);
        }
    }

    /// The epochs this node holds a secret for.
    pub fn local_epochs(&self) -> Vec<u32> {
        read(&self.secrets).keys().copied().collect()
    }

    /// Sets what this node knows of `peer`: its public key per accepted epoch, and the epoch
    /// to seal with (None: do not send to it). Replaces the previous setting; sessions of
    /// epochs no longer listed, or listed with another key, are erased, and the others (with
    /// their replay windows and counters) are kept.
    pub fn set_peer(&self, peer: u64, accept: BTreeMap<u32, [u8; 32]>, send_epoch: Option<u32>) {
        let mut peers = write(&self.peers);
        let old = peers.get(&peer).cloned();
        let mut recv = BTreeMap::new();
        let mut send = None;
        let mut counters = Arc::new(Counters::default());
        if let Some(old) = &old {
            counters = old.counters.clone();
            for (epoch, re) in read(&old.recv).iter() {
                if accept.get(epoch) == Some(&re.keys.peer) {
                    recv.insert(*epoch, re.clone());
                } else {
                    self.remember_floor(peer, *epoch, re);
                }
            }
            if let Some(s) = read(&old.send).as_ref() {
                if Some(s.epoch) == send_epoch && old.accept.get(&s.epoch) == accept.get(&s.epoch) {
                    send = Some(s.clone());
                }
            }
        }
        peers.insert(
            peer,
            Arc::new(Peer {
                accept,
                send_epoch,
                send: RwLock::new(send),
                recv: RwLock::new(recv),
                counters,
            }),
        );
    }

    /// Forgets `peer`: its packets are refused as from an unknown sender, sealing to it fails.
    pub fn remove_peer(&self, peer: u64) {
        if let Some(old) = write(&self.peers).remove(&peer) {
            for (epoch, re) in read(&old.recv).iter() {
                self.remember_floor(peer, *epoch, re);
            }
        }
    }

    /// The peers currently set.
    pub fn peers(&self) -> impl Iterator<Item = u64> {
        read(&self.peers)
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The epoch this node seals to `peer` with, if any.
    pub fn send_epoch(&self, peer: u64) -> Option<u32> {
        read(&self.peers).get(&peer).and_then(|p| p.send_epoch)
    }

    /// The epochs accepted from `peer`.
    pub fn accepted_epochs(&self, peer: u64) -> Vec<u32> {
        read(&self.peers)
            .get(&peer)
            .map(|p| p.accept.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Packet and byte counters of `peer` (zero for a peer not set).
    pub fn stats(&self, peer: u64) -> PeerCounters {
        let Some(p) = read(&self.peers).get(&peer).cloned() else {
            return PeerCounters::default();
        };
        let c = &p.counters;
        PeerCounters {
            sealed_packets: c.sealed_packets.load(Ordering::Relaxed),
            sealed_bytes: c.sealed_bytes.load(Ordering::Relaxed),
            opened_packets: c.opened_packets.load(Ordering::Relaxed),
            opened_bytes: c.opened_bytes.load(Ordering::Relaxed),
        }
    }

    /// Seals `payload` for `peer` into `out` (cleared first): header, ciphertext, tag.
    /// `NoKey` when the peer is not set, has no send epoch, or this node lacks that epoch's
    /// secret or the peer's key for it; `KeyExhausted` once the key sealed
    /// [`REJECT_AFTER_MESSAGES`] packets (a rotation gives a new one).
    pub fn seal(&self, peer: u64, payload: &[u8], out: &mut Vec<u8>) -> Result<(), DropReason> {
        out.clear();
        let p = read(&self.peers)
            .get(&peer)
            .cloned()
            .ok_or(DropReason::NoKey)?;
        let session = self.send_session(peer, &p)?;
        // Relaxed is enough: uniqueness needs only the atomicity of the increment.
        let counter = session.next.fetch_add(1, Ordering::Relaxed);
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(DropReason::KeyExhausted);
        }
        let header = Header {
            epoch: session.epoch,
            sender: self.me,
            boot: self.boot,
            counter,
        }
        .encode();
        out.reserve(OVERHEAD + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        let tag = session
            .cipher
            .seal_in_place(&nonce(counter), &header, &mut out[HEADER_LEN..])
            .map_err(|_| {
                // Only an input longer than 2^38 bytes fails; nothing sent.
                DropReason::Malformed
            });
        let tag = match tag {
            Ok(t) => t,
            Err(e) => {
                out.clear();
                return Err(e);
            }
        };
        out.extend_from_slice(&tag);
        p.counters.sealed_packets.fetch_add(1, Ordering::Relaxed);
        p.counters
            .sealed_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn send_session(&self, peer: u64, p: &Peer) -> Result<Arc<SendSession>, DropReason> {
        let epoch = p.send_epoch.ok_or(DropReason::NoKey)?;
        if let Some(s) = read(&p.send).as_ref() {
            if s.epoch == epoch {
                return Ok(s.clone());
            }
        }
        let secret = read(&self.secrets)
            .get(&epoch)
            .cloned()
            .ok_or(DropReason::NoKey)?;
        let peer_public = p.accept.get(&epoch).ok_or(DropReason::NoKey)?;
        let shared = secret.shared(peer_public).ok_or(DropReason::NoKey)?;
        let mut slot = write(&p.send);
        if let Some(s) = slot.as_ref() {
            if s.epoch == epoch {
                return Ok(s.clone());
            }
        }
        let key = derive_key(
            &shared,
            &KeyContext {
                cluster_id: self.cluster_id,
                epoch,
                sender: self.me,
                receiver: peer,
                sender_boot: self.boot,
            },
        );
        let next = lock(&self.send_counters)
            .entry((peer, epoch))
            .or_default()
            .clone();
        let s = Arc::new(SendSession {
            epoch,
            cipher: self.cipher.new_cipher(&key),
            next,
        });
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Opens a sealed packet in place. On success the payload (`Opened::payload`) is
    /// decrypted in `packet`; on any error the buffer must be discarded, and nothing about
    /// the tunnel changed except that an authenticated packet of a newer boot replaced the
    /// older boot's session.
    pub fn open(&self, packet: &mut [u8]) -> Result<Opened, DropReason> {
        let h = Header::parse(packet)?;
        let p = read(&self.peers)
            .get(&h.sender)
            .cloned()
            .ok_or(DropReason::UnknownSender)?;
        let re = self.recv_epoch(h.sender, h.epoch, &p)?;
        let len = packet.len();
        let (aad, rest) = packet.split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(len - OVERHEAD);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| DropReason::Malformed)?;

        let current = read(&re.current).clone();
        match current {
            Some(s) if s.boot == h.boot => {
                if !lock(&s.window).check(h.counter) {
                    return Err(DropReason::Replay);
                }
                s.cipher
                    .open_in_place(&nonce(h.counter), aad, body, tag)
                    .map_err(|_| DropReason::Auth)?;
                if !lock(&s.window).update(h.counter) {
                    return Err(DropReason::Replay);
                }
            }
            Some(s) if h.boot < s.boot => return Err(DropReason::Replay),
            _ => {
                // No session yet, or the sender restarted: derive the key of that boot, and
                // install it only if this packet proves the sender holds it.
                let mut window = ReplayWindow::new();
                if let Some(f) = re.floor {
                    if h.boot < f.boot {
                        return Err(DropReason::Replay);
                    }
                    if h.boot == f.boot {
                        window = ReplayWindow::after(f.last);
                    }
                }
                if !window.check(h.counter) {
                    return Err(DropReason::Replay);
                }
                let key = derive_key(
                    &re.shared,
                    &KeyContext {
                        cluster_id: self.cluster_id,
                        epoch: h.epoch,
                        sender: h.sender,
                        receiver: self.me,
                        sender_boot: h.boot,
                    },
                );
                let cipher = self.cipher.new_cipher(&key);
                cipher
                    .open_in_place(&nonce(h.counter), aad, body, tag)
                    .map_err(|_| DropReason::Auth)?;
                let mut slot = write(&re.current);
                match slot.as_ref() {
                    // Another thread installed this boot meanwhile: use its window.
                    Some(s) if s.boot == h.boot => {
                        if !lock(&s.window).update(h.counter) {
                            return Err(DropReason::Replay);
                        }
                    }
                    Some(s) if s.boot > h.boot => return Err(DropReason::Replay),
                    _ => {
                        window.update(h.counter);
                        *slot = Some(Arc::new(RecvSession {
                            boot: h.boot,
                            cipher,
                            window: Mutex::new(window),
                        }));
                    }
                }
            }
        }
        let payload = HEADER_LEN..len - TAG_LEN;
        p.counters.opened_packets.fetch_add(1, Ordering::Relaxed);
        p.counters
            .opened_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(Opened {
            sender: h.sender,
            epoch: h.epoch,
            payload,
        })
    }

    fn recv_epoch(&self, sender: u64, epoch: u32, p: &Peer) -> Result<Arc<RecvEpoch>, DropReason> {
        if let Some(re) = read(&p.recv).get(&epoch) {
            return Ok(re.clone());
        }
        let peer_public = *p.accept.get(&epoch).ok_or(DropReason::StaleEpoch)?;
        let secret = read(&self.secrets)
            .get(&epoch)
            .cloned()
            .ok_or(DropReason::StaleEpoch)?;
        // A low-order key in the registry: nothing can authenticate under it.
        let shared = secret.shared(&peer_public).ok_or(DropReason::NoKey)?;
        let keys = KeyPair {
            local: secret.public(),
            peer: peer_public,
        };
        let mut recv = write(&p.recv);
        if let Some(re) = recv.get(&epoch) {
            return Ok(re.clone());
        }
        let floor = lock(&self.recv_floors)
            .get(&(sender, epoch))
            .copied()
            .filter(|f| f.keys == keys);
        let re = Arc::new(RecvEpoch {
            keys,
            shared,
            floor,
            current: RwLock::new(None),
        });
        recv.insert(epoch, re.clone());
        Ok(re)
    }

    fn erase_epoch_sessions(&self, epoch: u32) {
        for (id, p) in read(&self.peers).iter() {
            let mut send = write(&p.send);
            if send.as_ref().is_some_and(|s| s.epoch == epoch) {
                *send = None;
            }
            if let Some(re) = write(&p.recv).remove(&epoch) {
                self.remember_floor(*id, epoch, &re);
            }
        }
    }

    fn remember_floor(&self, peer: u64, epoch: u32, re: &RecvEpoch) {
        let reached = read(&re.current)
            .as_ref()
            .map(|s| (s.boot, lock(&s.window).last()));
        let Some((boot, last)) = reached.or(re.floor.map(|f| (f.boot, f.last))) else {
            return;
        };
        lock(&self.recv_floors).insert(
            (peer, epoch),
            Floor {
                keys: re.keys,
                boot,
                last,
            },
        );
    }
}

#[cfg(test)]
impl Tunnel {
    /// Moves the send counter of (peer, epoch) so that tests can reach the message limit.
    pub(super) fn set_next_counter(&self, peer: u64, epoch: u32, next: u64) {
        lock(&self.send_counters)
            .entry((peer, epoch))
            .or_default()
            .store(next, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("cluster_id", &self.cluster_id)
            .field("me", &self.me)
            .field("boot", &self.boot)
            .field("cipher", &self.cipher)
            .field("local_epochs", &self.local_epochs())
            .field("peers", &self.peers().collect::<Vec<_>>())
            .finish()
    }
}
