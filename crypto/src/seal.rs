//! Sealing small packets (gossip today, the datapath tunnel later) with ChaCha20-Poly1305
//! under a shared keyring.
//!
//! # Packet format
//!
//! ```text
//! offset  0       1          5           13          21           29
//!         [ver u8][key id u32][sender u64][epoch u64][counter u64][ciphertext][tag 16]
//! ```
//!
//! All integers are big-endian. The 29-byte header is authenticated as associated data, so
//! changing any header byte makes the packet fail to open; it is not encrypted, because the
//! receiver needs the key id to pick a key and (sender, epoch, counter) for the replay window
//! ([`crate::replay`]) before it trusts anything.
//!
//! # Nonces
//!
//! Every node of a cluster seals with the *same* key, so a nonce must be unique across
//! senders and across a sender's restarts, not only within one process. The only input that
//! is unique is the triple (sender, epoch, counter): `epoch` is the sender's start time in
//! milliseconds, so a restarted node whose counter starts again at 0 never repeats a nonce.
//! The triple is 24 bytes, and plain ChaCha20-Poly1305's nonce is 12: squeezing
//! (sender, counter) or (epoch, counter) into it would repeat nonces across nodes that start
//! in the same millisecond, or across restarts. So the cipher is XChaCha20-Poly1305 (same
//! crate, same ChaCha20 and Poly1305): it derives a subkey from the key and the first 16 nonce
//! bytes with HChaCha20 and runs ChaCha20-Poly1305 under that subkey with the last 8. With the
//! nonce `sender || epoch || counter`, every (sender, boot) pair gets its own subkey and the
//! counter never repeats under it. Nonce reuse is therefore impossible by construction, with
//! no random numbers.
//!
//! # Keyring
//!
//! A [`Keyring`] holds up to a few keys by id: the primary one seals, any of them opens. Keys
//! rotate without a flag day, as Consul's keyring does: install the new key on every node
//! (all open old and new), make it primary everywhere, then remove the old one.
//!
//! This module is pure: no IO, no clock, no randomness.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::pairwise::{pair_key, PairError};

/// Wire format version.
pub const SEAL_VERSION: u8 = 1;
/// Header length (authenticated, not encrypted).
pub const HEADER_LEN: usize = 1 + 4 + 8 + 8 + 8;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Why a packet could not be opened or sealed. Each is counted separately by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Shorter than a header and a tag.
    #[error("packet of {0} bytes is shorter than a sealed header and tag")]
    Truncated(usize),
    /// Not a version this code speaks.
    #[error("unknown packet version {0}")]
    UnknownVersion(u8),
    /// Sealed with a key id not in the keyring.
    #[error("packet sealed with key {0}, which this node does not hold")]
    UnknownKey(u32),
    /// The tag did not verify: forged, corrupted, or sealed with another key under the same id.
    #[error("packet failed authentication (forged, corrupted, or sealed with another key)")]
    Forged,
    /// The keyring has no primary key (only an empty, default keyring).
    #[error("no primary key to seal with; install a key first")]
    NoPrimaryKey,
    /// A keyring operation named a key that is not installed.
    #[error("key {0} is not in the keyring")]
    NoSuchKey(u32),
    /// The primary key cannot be removed: make another key primary first.
    #[error("key {0} is the primary key; make another key primary before removing it")]
    RemovePrimary(u32),
    /// The sender's counter is exhausted (after 2^64 - 2 packets): restart with a new epoch.
    #[error("packet counter exhausted; restart with a new epoch")]
    CounterExhausted,
}

/// What an authenticated packet said about itself, and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Key that opened it.
    pub key_id: u32,
    /// Sender node id.
    pub sender: u64,
    /// Sender start time (ms).
    pub epoch: u64,
    /// Sender packet counter.
    pub counter: u64,
    /// The decrypted content.
    pub plaintext: Vec<u8>,
}

/// The header fields of a packet, parsed but not yet authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key the packet claims to be sealed with.
    pub key_id: u32,
    /// Claimed sender.
    pub sender: u64,
    /// Claimed sender epoch.
    pub epoch: u64,
    /// Claimed counter.
    pub counter: u64,
}

impl Header {
    /// Parses the header of `packet`, checking only its length and version. Nothing in it is
    /// trustworthy until [`Keyring::open`] succeeds.
    pub fn parse(packet: &[u8]) -> Result<Header, SealError> {
        if packet.len() < OVERHEAD {
            return Err(SealError::Truncated(packet.len()));
        }
        if packet[0] != SEAL_VERSION {
            return Err(SealError::UnknownVersion(packet[0]));
        }
        let mut u32b = [0u8; 4];
        u32b.copy_from_slice(&packet[1..5]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&packet[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Header {
            key_id: u32::from_be_bytes(u32b),
            sender: u64_at(5),
            epoch: u64_at(13),
            counter: u64_at(21),
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(SEAL_VERSION);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
    }

    fn nonce(&self) -> XNonce {
        let mut n = [0u8; 24];
        n[..8].copy_from_slice(&self.sender.to_be_bytes());
        n[8..16].copy_from_slice(&self.epoch.to_be_bytes());
        n[16..].copy_from_slice(&self.counter.to_be_bytes());
        n.into()
    }
}

/// Keys by id; the primary one seals, all of them open.
///
/// Cloning is cheap enough for a rotation (a few keys); the key bytes live only inside the
/// ciphers and are never printed by `Debug`.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<u32, XChaCha20Poly1305>,
    /// The key bytes, kept only to derive pair keyrings ([`Keyring::pairwise`]).
    raw: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    primary: Option<u32>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids())
            .field("primary", &self.primary)
            .finish()
    }
}

impl Keyring {
    /// A keyring from `(id, key)` pairs and the id of the primary key; `None` if the primary
    /// is not among them.
    pub fn new(keys: impl IntoIterator<Item = (u32, [u8; 32])>, primary: u32) -> Option<Keyring> {
        let raw: BTreeMap<u32, Zeroizing<[u8; 32]>> = keys
            .into_iter()
            .map(|(id, k)| (id, Zeroizing::new(k)))
            .collect();
        let keys = raw
            .iter()
            .map(|(id, k)| (*id, XChaCha20Poly1305::new(k.as_ref().into())))
            .collect();
        raw.contains_key(&primary).then_some(Keyring {
            keys,
            raw,
            primary: Some(primary),
        })
    }

    /// A keyring of one key, primary.
    pub fn single(id: u32, key: [u8; 32]) -> Keyring {
        Keyring {
            keys: BTreeMap::from([(id, XChaCha20Poly1305::new(&key.into()))]),
            raw: BTreeMap::from([(id, Zeroizing::new(key))]),
            primary: Some(id),
        }
    }

    /// Ids of the keys held, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The id of the key that seals.
    pub fn primary(&self) -> Option<u32> {
        self.primary
    }

    /// Whether key `id` is installed.
    pub fn contains(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    /// Rotation step 1: installs (or replaces) key `id`; it opens packets at once. Becomes
    /// primary only if the keyring had none.
    pub fn install(&mut self, id: u32, key: [u8; 32]) {
        self.keys.insert(id, XChaCha20Poly1305::new(&key.into()));
        self.raw.insert(id, Zeroizing::new(key));
        self.primary.get_or_insert(id);
    }

    /// Rotation step 2: seals with key `id` from now on.
    pub fn use_key(&mut self, id: u32) -> Result<(), SealError> {
        if !self.keys.contains_key(&id) {
            return Err(SealError::NoSuchKey(id));
        }
        self.primary = Some(id);
        Ok(())
    }

    /// Rotation step 3: forgets key `id`; packets sealed with it no longer open.
    pub fn remove(&mut self, id: u32) -> Result<(), SealError> {
        if self.primary == Some(id) {
            return Err(SealError::RemovePrimary(id));
        }
        self.raw.remove(&id);
        self.keys
            .remove(&id)
            .map(|_| ())
            .ok_or(SealError::NoSuchKey(id))
    }

    /// The keyring this node (`local_id`, holding `local`) shares with one peer: every key
    /// replaced by its pair key ([`crate::pairwise`]), same ids, same primary. Sealing with it
    /// binds a packet to the pair; opening with it proves the sender is the peer (or us).
    pub fn pairwise(
        &self,
        local: &StaticSecret,
        local_id: u64,
        peer_public: &[u8; 32],
        peer_id: u64,
    ) -> Result<Keyring, PairError> {
        let mut raw = BTreeMap::new();
        for (id, k) in &self.raw {
            raw.insert(*id, pair_key(k, local, local_id, peer_public, peer_id)?);
        }
        let keys = raw
            .iter()
            .map(|(id, k)| (*id, XChaCha20Poly1305::new(k.as_ref().into())))
            .collect();
        Ok(Keyring {
            keys,
            raw,
            primary: self.primary,
        })
    }

    /// Seals `plaintext` with the primary key under an explicit (sender, epoch, counter).
    ///
    /// The caller guarantees that it never passes the same triple twice with one key (see
    /// the module doc); [`Sealer`] does that bookkeeping.
    pub fn seal(
        &self,
        sender: u64,
        epoch: u64,
        counter: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let key_id = self.primary.ok_or(SealError::NoPrimaryKey)?;
        let cipher = self.keys.get(&key_id).ok_or(SealError::NoPrimaryKey)?;
        let header = Header {
            key_id,
            sender,
            epoch,
            counter,
        };
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        header.write(&mut out);
        let sealed = cipher
            .encrypt(
                &header.nonce(),
                Payload {
                    msg: plaintext,
                    aad: &out[..HEADER_LEN],
                },
            )
            // Only fails for plaintexts beyond ChaCha20's 256 GiB limit.
            .map_err(|_| SealError::Forged)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Authenticates and decrypts a packet. Checks nothing about replays: see [`crate::replay`].
    pub fn open(&self, packet: &[u8]) -> Result<Opened, SealError> {
        let h = Header::parse(packet)?;
        let cipher = self
            .keys
            .get(&h.key_id)
            .ok_or(SealError::UnknownKey(h.key_id))?;
        let plaintext = cipher
            .decrypt(
                &h.nonce(),
                Payload {
                    msg: &packet[HEADER_LEN..],
                    aad: &packet[..HEADER_LEN],
                },
            )
            .map_err(|_| SealError::Forged)?;
        Ok(Opened {
            key_id: h.key_id,
            sender: h.sender,
            epoch: h.epoch,
            counter: h.counter,
            plaintext,
        })
    }
}

/// One sender's sealing state: its id, its epoch and the next counter, so that callers
/// cannot reuse a nonce. Shared by reference (`&self`): the counter is atomic.
#[derive(Debug)]
pub struct Sealer {
    sender: u64,
    epoch: u64,
    next: AtomicU64,
}

impl Sealer {
    /// A sealer for `sender` started at `epoch` (its start time in ms, which must grow across
    /// restarts); counters start at 1.
    pub fn new(sender: u64, epoch: u64) -> Sealer {
        Sealer {
            sender,
            epoch,
            next: AtomicU64::new(1),
        }
    }

    /// The sender id this sealer stamps.
    pub fn sender(&self) -> u64 {
        self.sender
    }

    /// The epoch this sealer stamps.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seals `plaintext` with `keyring`'s primary key and the next counter.
    pub fn seal(&self, keyring: &Keyring, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let counter = self.next.fetch_add(1, Ordering::Relaxed);
        if counter == u64::MAX {
            self.next.store(u64::MAX, Ordering::Relaxed);
            return Err(SealError::CounterExhausted);
        }
        keyring.seal(self.sender, self.epoch, counter, plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[u32], primary: u32) -> Keyring {
        Keyring::new(ids.iter().map(|id| (*id, [*id as u8; 32])), primary).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let r = ring(&[1], 1);
        let p = r.seal(7, 1000, 3, b"hello").unwrap();
        assert_eq!(p.len(), OVERHEAD + 5);
        let o = r.open(&p).unwrap();
        assert_eq!(
            (
                o.key_id,
                o.sender,
                o.epoch,
                o.counter,
                o.plaintext.as_slice()
            ),
            (1, 7, 1000, 3, &b"hello"[..])
        );
        assert_eq!(
            Header::parse(&p).unwrap(),
            Header {
                key_id: 1,
                sender: 7,
                epoch: 1000,
                counter: 3
            }
        );
        // The plaintext does not appear in the packet.
        assert!(!p.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let r = ring(&[1], 1);
        let p = r.seal(1, 1, 1, b"").unwrap();
        assert_eq!(p.len(), OVERHEAD);
        assert_eq!(r.open(&p).unwrap().plaintext, b"");
    }

    /// Flips bits in each byte of each header field in turn: the version and key id are
    /// refused for what they say, every other change (sender, epoch, counter, body, tag)
    /// fails to authenticate, so no one can move a packet to another sender, epoch or counter.
    #[test]
    fn every_tampered_header_field_and_body_byte_is_refused() {
        let r = ring(&[1], 1);
        let p = r.seal(7, 1000, 3, b"some gossip").unwrap();
        let fields: [(&str, std::ops::Range<usize>); 7] = [
            ("version", 0..1),
            ("key id", 1..5),
            ("sender", 5..13),
            ("epoch", 13..21),
            ("counter", 21..29),
            ("ciphertext", 29..p.len() - TAG_LEN),
            ("tag", p.len() - TAG_LEN..p.len()),
        ];
        for (name, range) in fields {
            for i in range {
                for bit in [0x01u8, 0x80] {
                    let mut t = p.clone();
                    t[i] ^= bit;
                    let err = r.open(&t).unwrap_err();
                    match name {
                        "version" => assert_eq!(err, SealError::UnknownVersion(SEAL_VERSION ^ bit)),
                        "key id" => assert!(
                            matches!(err, SealError::UnknownKey(_)),
                            "{name} byte {i}: {err}"
                        ),
                        _ => assert_eq!(err, SealError::Forged, "{name} byte {i}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_key_id_that_exists_but_did_not_seal_fails_authentication() {
        let r = ring(&[1, 2], 1);
        let mut p = r.seal(7, 1000, 3, b"x").unwrap();
        p[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(r.open(&p).unwrap_err(), SealError::Forged);
    }

    #[test]
    fn truncated_and_foreign_packets_are_refused() {
        let r = ring(&[1], 1);
        let p = r.seal(1, 1, 1, b"x").unwrap();
        for len in [0, 1, HEADER_LEN, OVERHEAD - 1] {
            assert_eq!(r.open(&p[..len]).unwrap_err(), SealError::Truncated(len));
        }
        // Cutting the body short still fails, as a forgery.
        assert_eq!(r.open(&p[..p.len() - 1]).unwrap_err(), SealError::Forged);
        // Same key id, other key bytes.
        let other = Keyring::single(1, [9u8; 32]).seal(1, 1, 1, b"x").unwrap();
        assert_eq!(r.open(&other).unwrap_err(), SealError::Forged);
    }

    #[test]
    fn distinct_senders_epochs_and_counters_never_share_a_keystream() {
        // Same plaintext, same key: every (sender, epoch, counter) gives another ciphertext.
        let r = ring(&[1], 1);
        let mut seen = std::collections::HashSet::new();
        for (s, e, c) in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 2)] {
            let p = r.seal(s, e, c, &[0u8; 32]).unwrap();
            assert!(
                seen.insert(p[HEADER_LEN..].to_vec()),
                "keystream reused for {s} {e} {c}"
            );
        }
    }

    #[test]
    fn sealer_counts_and_never_repeats() {
        let r = ring(&[1], 1);
        let s = Sealer::new(9, 500);
        let a = r.open(&s.seal(&r, b"a").unwrap()).unwrap();
        let b = r.open(&s.seal(&r, b"b").unwrap()).unwrap();
        assert_eq!((a.sender, a.epoch, a.counter), (9, 500, 1));
        assert_eq!((b.sender, b.epoch, b.counter), (9, 500, 2));
        let exhausted = Sealer {
            sender: 9,
            epoch: 500,
            next: AtomicU64::new(u64::MAX),
        };
        assert_eq!(
            exhausted.seal(&r, b"c").unwrap_err(),
            SealError::CounterExhausted
        );
        assert_eq!(
            exhausted.seal(&r, b"c").unwrap_err(),
            SealError::CounterExhausted
        );
        assert_eq!(
            Sealer::new(1, 1)
                .seal(&Keyring::default(), b"x")
                .unwrap_err(),
            SealError::NoPrimaryKey
        );
    }

    #[test]
    fn rotation_accepts_old_and_new_during_the_overlap() {
        let mut a = Keyring::single(1, [1; 32]);
        let mut b = a.clone();
        let from_old = a.seal(1, 1, 1, b"a").unwrap();
        // 1. install everywhere: both still seal with 1, both open 2.
        a.install(2, [2; 32]);
        b.install(2, [2; 32]);
        assert_eq!(a.primary(), Some(1));
        // 2. switch one node: the other, not yet switched, opens its packets.
        a.use_key(2).unwrap();
        let from_new = a.seal(1, 1, 2, b"b").unwrap();
        assert_eq!(b.open(&from_new).unwrap().key_id, 2);
        assert_eq!(a.open(&from_old).unwrap().key_id, 1);
        b.use_key(2).unwrap();
        // 3. remove the old key: its packets no longer open.
        assert_eq!(a.remove(2).unwrap_err(), SealError::RemovePrimary(2));
        a.remove(1).unwrap();
        assert_eq!(a.ids(), vec![2]);
        assert_eq!(a.open(&from_old).unwrap_err(), SealError::UnknownKey(1));
        assert!(a.open(&from_new).is_ok());
        assert_eq!(a.remove(1).unwrap_err(), SealError::NoSuchKey(1));
        assert_eq!(a.use_key(7).unwrap_err(), SealError::NoSuchKey(7));
        assert!(
            Keyring::new([(1, [0; 32])], 2).is_none(),
            "the primary must be held"
        );
        let mut empty = Keyring::default();
        empty.install(5, [5; 32]);
        assert_eq!(empty.primary(), Some(5));
        assert!(
            !format!("{a:?}").contains("[2, 2"),
            "Debug must not print key bytes"
        );
    }

    #[test]
    fn t30_pair_keyrings_bind_packets_to_the_pair() {
        use x25519_dalek::PublicKey;
        let cluster = ring(&[1, 2], 2);
        let sk = |b: u8| StaticSecret::from([b; 32]);
        let pk = |s: &StaticSecret| PublicKey::from(s).to_bytes();
        let (a, b, c) = (sk(1), sk(2), sk(3));
        let ab = cluster.pairwise(&a, 1, &pk(&b), 2).unwrap();
        let ba = cluster.pairwise(&b, 2, &pk(&a), 1).unwrap();
        assert_eq!((ab.ids(), ab.primary()), (vec![1, 2], Some(2)));
        let p = ab.seal(1, 10, 1, b"from a").unwrap();
        assert_eq!(ba.open(&p).unwrap().plaintext, b"from a");
        // The shared cluster keyring no longer opens it, nor does another pair's keyring.
        assert_eq!(cluster.open(&p).unwrap_err(), SealError::Forged);
        let cb = cluster.pairwise(&c, 3, &pk(&b), 2).unwrap();
        assert_eq!(cb.open(&p).unwrap_err(), SealError::Forged);
        // c, holding the cluster keys, seals as sender 1 for b: b's keyring for 1 refuses it.
        let forged = cluster
            .pairwise(&c, 1, &pk(&b), 2)
            .unwrap()
            .seal(1, 10, 2, b"x")
            .unwrap();
        assert_eq!(ba.open(&forged).unwrap_err(), SealError::Forged);
        // Rotation steps carry over: remove the old key, the pair keyring loses it too.
        let mut rotated = cluster.clone();
        rotated.remove(1).unwrap();
        let ab2 = rotated.pairwise(&a, 1, &pk(&b), 2).unwrap();
        assert_eq!(ab2.ids(), vec![2]);
        let mut old = cluster.clone();
        old.use_key(1).unwrap();
        let sealed_old = old
            .pairwise(&a, 1, &pk(&b), 2)
            .unwrap()
            .seal(1, 10, 3, b"y")
            .unwrap();
        assert_eq!(
            rotated
                .pairwise(&b, 2, &pk(&a), 1)
                .unwrap()
                .open(&sealed_old)
                .unwrap_err(),
            SealError::UnknownKey(1)
        );
    }
}
