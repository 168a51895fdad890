//! Sealing small packets (gossip today) with XChaCha20-Poly1305 under a shared keyring.
//!
//! Packet layout; the 29-byte header is authenticated as associated data:
//!
//! ```text
//! [version u8 = 1][key id u32][sender u64][epoch u64][counter u64][ciphertext][tag 16]
//! ```
//!
//! Every node of a cluster seals with the same key, so the nonce must be unique across
//! senders, not only within one: it is `sender || epoch || counter` (24 bytes, XChaCha's
//! extended nonce). `epoch` is the sender's start time in milliseconds, so a restarted
//! node whose counter starts again at 0 still never repeats a nonce. The same three fields
//! feed the replay window ([`crate::replay`]).
//!
//! A [`Keyring`] holds several keys by id: the primary one seals, any of them opens. This is
//! how keys rotate without a flag day (install everywhere, switch, remove).

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Wire format version.
pub const SEAL_VERSION: u8 = 1;
/// Header length (authenticated, not encrypted).
pub const HEADER_LEN: usize = 1 + 4 + 8 + 8 + 8;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;

/// Why a packet could not be opened. Each is counted separately by the caller.
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
    /// The tag did not verify.
    #[error("packet failed authentication (forged, corrupted, or sealed with another key)")]
    Forged,
    /// The keyring has no primary key.
    #[error("no primary key to seal with")]
    NoPrimaryKey,
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

/// Keys by id; the primary one seals.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<u32, XChaCha20Poly1305>,
    primary: Option<u32>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.keys.keys().collect::<Vec<_>>()).field("primary", &self.primary).finish()
    }
}

impl Keyring {
    /// A keyring from `(id, key)` pairs and the id of the primary key (which must be among them).
    pub fn new(keys: impl IntoIterator<Item = (u32, [u8; 32])>, primary: u32) -> Option<Keyring> {
        let keys: BTreeMap<u32, XChaCha20Poly1305> =
            keys.into_iter().map(|(id, k)| (id, XChaCha20Poly1305::new(&k.into()))).collect();
        keys.contains_key(&primary).then_some(Keyring { keys, primary: Some(primary) })
    }

    /// Ids of the keys held, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The id of the key that seals.
    pub fn primary(&self) -> Option<u32> {
        self.primary
    }

    /// Seals `plaintext` with the primary key.
    pub fn seal(&self, sender: u64, epoch: u64, counter: u64, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let id = self.primary.ok_or(SealError::NoPrimaryKey)?;
        let cipher = self.keys.get(&id).ok_or(SealError::NoPrimaryKey)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&sender.to_be_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        let sealed = cipher
            .encrypt(&nonce(sender, epoch, counter), Payload { msg: plaintext, aad: &out[..HEADER_LEN] })
            .map_err(|_| SealError::Forged)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Authenticates and decrypts a packet. Checks nothing about replays: see [`crate::replay`].
    pub fn open(&self, packet: &[u8]) -> Result<Opened, SealError> {
        if packet.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Truncated(packet.len()));
        }
        if packet[0] != SEAL_VERSION {
            return Err(SealError::UnknownVersion(packet[0]));
        }
        let u32_at = |i: usize| u32::from_be_bytes(packet[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(packet[i..i + 8].try_into().expect("8 bytes"));
        let (key_id, sender, epoch, counter) = (u32_at(1), u64_at(5), u64_at(13), u64_at(21));
        let cipher = self.keys.get(&key_id).ok_or(SealError::UnknownKey(key_id))?;
        let plaintext = cipher
            .decrypt(&nonce(sender, epoch, counter), Payload { msg: &packet[HEADER_LEN..], aad: &packet[..HEADER_LEN] })
            .map_err(|_| SealError::Forged)?;
        Ok(Opened { key_id, sender, epoch, counter, plaintext })
    }
}

fn nonce(sender: u64, epoch: u64, counter: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..8].copy_from_slice(&sender.to_be_bytes());
    n[8..16].copy_from_slice(&epoch.to_be_bytes());
    n[16..].copy_from_slice(&counter.to_be_bytes());
    n.into()
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
        assert_eq!(p.len(), HEADER_LEN + 5 + TAG_LEN);
        let o = r.open(&p).unwrap();
        assert_eq!((o.key_id, o.sender, o.epoch, o.counter, o.plaintext.as_slice()), (1, 7, 1000, 3, &b"hello"[..]));
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let r = ring(&[1], 1);
        let p = r.seal(7, 1000, 3, b"some gossip").unwrap();
        for i in 0..p.len() {
            let mut t = p.clone();
            t[i] ^= 0x01;
            let err = r.open(&t).unwrap_err();
            match i {
                0 => assert_eq!(err, SealError::UnknownVersion(SEAL_VERSION ^ 1)),
                1..=4 => assert!(matches!(err, SealError::UnknownKey(_)), "byte {i}: {err}"),
                _ => assert_eq!(err, SealError::Forged, "byte {i}"),
            }
        }
    }

    #[test]
    fn truncated_and_foreign_packets_are_refused() {
        let r = ring(&[1], 1);
        let p = r.seal(1, 1, 1, b"x").unwrap();
        for len in [0, 1, HEADER_LEN, HEADER_LEN + TAG_LEN - 1] {
            assert_eq!(r.open(&p[..len]).unwrap_err(), SealError::Truncated(len));
        }
        let other = Keyring::new([(1, [9u8; 32])], 1).map(|k| k.seal(1, 1, 1, b"x").unwrap()).unwrap();
        assert_eq!(r.open(&other).unwrap_err(), SealError::Forged);
    }

    #[test]
    fn rotation_accepts_old_and_new_during_the_overlap() {
        let old = ring(&[1], 1);
        let both_old_primary = ring(&[1, 2], 1);
        let both_new_primary = ring(&[1, 2], 2);
        let new_only = ring(&[2], 2);
        let from_old = old.seal(1, 1, 1, b"a").unwrap();
        let from_new = both_new_primary.seal(2, 1, 1, b"b").unwrap();
        assert!(both_old_primary.open(&from_new).is_ok());
        assert!(both_new_primary.open(&from_old).is_ok());
        assert!(new_only.open(&from_new).is_ok());
        assert_eq!(new_only.open(&from_old).unwrap_err(), SealError::UnknownKey(1));
        assert!(Keyring::new([(1, [0; 32])], 2).is_none(), "the primary must be held");
    }
}
