//! Epoch secrets and the per-direction keys derived from them.
//!
//! ```text
//! shared = X25519(my epoch secret, peer's epoch public)            (same on both sides)
//! key    = HKDF-SHA256(salt = "membrane tunnel v1",
//!                      ikm  = shared,
//!                      info = "membrane tunnel key" || cluster id u8 || epoch u32
//!                             || sender id u64 || receiver id u64 || direction u8
//!                             || sender boot u32)                 (big endian)
//! ```
//!
//! `direction` is 0 when the sender's id is the lower of the two and 1 otherwise: with the
//! ids in (sender, receiver) order it says the same thing again, explicitly, so that the two
//! directions of a pair can never share a key even if someone reorders the ids. The sender's
//! boot instance makes every agent start derive new send keys, so a counter that starts
//! again at 0 never meets a key it was used with before.

use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

const SALT: &[u8] = b"membrane tunnel v1";
const INFO_LABEL: &[u8] = b"membrane tunnel key";

/// One node's X25519 secret for one tunnel key epoch. Wiped from memory on drop
/// (x25519-dalek's `StaticSecret` zeroizes itself).
pub struct EpochSecret(StaticSecret);

impl EpochSecret {
    /// A fresh random secret (OS randomness).
    pub fn generate() -> Self {
        EpochSecret(StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    /// The secret from its 32 bytes (as [`EpochSecret::to_bytes`] wrote them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let bytes = Zeroizing::new(bytes);
        EpochSecret(StaticSecret::from(*bytes))
    }

    /// The 32 secret bytes, wiped when the returned value is dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key to publish in the registry.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }

    /// The X25519 shared secret with `peer_public`, or None when the peer's key is a
    /// low-order point (the result would be known to everyone).
    pub(crate) fn shared(&self, peer_public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let s = self.0.diffie_hellman(&PublicKey::from(*peer_public));
        if !s.was_contributory() {
            return None;
        }
        Some(Zeroizing::new(s.to_bytes()))
    }
}

impl std::fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochSecret(public {})", hex::encode(self.public()))
    }
}

/// Everything a key is bound to besides the shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyContext {
    /// The cluster id (1-255).
    pub cluster_id: u8,
    /// The key epoch.
    pub epoch: u32,
    /// The node that seals with the key.
    pub sender: u64,
    /// The node that opens with it.
    pub receiver: u64,
    /// The sender's boot instance.
    pub sender_boot: u32,
}

impl KeyContext {
    /// The HKDF info string for this context.
    pub fn info(&self) -> [u8; INFO_LABEL.len() + 1 + 4 + 8 + 8 + 1 + 4] {
        let mut info = [0u8; INFO_LABEL.len() + 26];
        let mut at = 0;
        let mut put = |b: &[u8]| {
            info[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        put(INFO_LABEL);
        put(&[self.cluster_id]);
        put(&self.epoch.to_be_bytes());
        put(&self.sender.to_be_bytes());
        put(&self.receiver.to_be_bytes());
        put(&[u8::from(self.sender > self.receiver)]);
        put(&self.sender_boot.to_be_bytes());
        info
    }
}

/// The key for `ctx` from the pair's X25519 shared secret.
pub fn derive_key(shared: &[u8; 32], ctx: &KeyContext) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(SALT), shared)
        .expand(&ctx.info(), out.as_mut())
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        .expect("32-byte HKDF output");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> KeyContext {
        KeyContext {
            cluster_id: 3,
            epoch: 7,
            sender: 1,
            receiver: 2,
            sender_boot: 5,
        }
    }

    #[test]
    fn both_sides_derive_the_same_key() {
        let (a, b) = (EpochSecret::generate(), EpochSecret::generate());
        let sa = a.shared(&b.public()).unwrap();
        let sb = b.shared(&a.public()).unwrap();
        assert_eq!(*sa, *sb);
        assert_eq!(*derive_key(&sa, &ctx()), *derive_key(&sb, &ctx()));
    }

    #[test]
    fn every_input_changes_the_key() {
        let shared = [9u8; 32];
        let base = *derive_key(&shared, &ctx());
        let variants = [
            KeyContext {
                cluster_id: 4,
                ..ctx()
            },
            KeyContext { epoch: 8, ..ctx() },
            KeyContext {
                sender: 2,
                receiver: 1,
                ..ctx()
            },
            KeyContext { sender: 3, ..ctx() },
            KeyContext {
                receiver: 3,
                ..ctx()
            },
            KeyContext {
                sender_boot: 6,
                ..ctx()
            },
        ];
        let mut keys = vec![base];
        for v in variants {
            keys.push(*derive_key(&shared, &v));
        }
        keys.push(*derive_key(&[8u8; 32], &ctx()));
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn secret_bytes_round_trip_and_low_order_peers_are_refused() {
        let a = EpochSecret::generate();
        let b = EpochSecret::from_bytes(*a.to_bytes());
        assert_eq!(a.public(), b.public());
        // The identity point (all zeros) is of low order.
        assert!(a.shared(&[0u8; 32]).is_none());
        assert!(!format!("{a:?}").contains(&hex::encode(*a.to_bytes())));
    }
}
