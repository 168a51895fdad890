//! Keys that only two nodes can compute: the cluster key mixed with the X25519 static-static
//! shared secret of the pair.
//!
//! ```text
//! pair key = HKDF-SHA256(salt = cluster key,
//!                        ikm  = X25519(my secret, peer public),
//!                        info = "membrane gossip pair v1" || min(id a, id b) || max(id a, id b))
//! ```
//!
//! Both nodes of a pair derive the same key (X25519 is symmetric and the ids are sorted), so
//! one key serves both directions; nonces stay unique because the sender id is part of every
//! nonce ([`crate::seal`]). A third node, even one holding the cluster key, lacks one of the
//! two secrets, so it cannot seal a packet that opens as coming from either node of the
//! pair. An outsider holding a node's X25519 secret but not the cluster key cannot either:
//! removing a node and rotating the cluster key cuts it off twice.
//!
//! Pure: no IO, no clock, no randomness.

use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Domain separation: these keys serve gossip and nothing else.
const INFO_LABEL: &[u8] = b"membrane gossip pair v1";

/// Why a pair key cannot be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// The peer's public key is a low-order point: the shared secret would be all zeros,
    /// known to anyone. A registry record with such a key is refused for gossip.
    #[error(
        "the peer's X25519 public key is a low-order point; re-register the node with a real key"
    )]
    NonContributory,
}

/// The key nodes `local_id` (holding `local`) and `peer_id` (publishing `peer_public`) share
/// under `cluster_key`.
pub fn pair_key(
    cluster_key: &[u8; 32],
    local: &StaticSecret,
    local_id: u64,
    peer_public: &[u8; 32],
    peer_id: u64,
) -> Result<Zeroizing<[u8; 32]>, PairError> {
    let shared = local.diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(PairError::NonContributory);
    }
    let (lo, hi) = (local_id.min(peer_id), local_id.max(peer_id));
    let mut info = [0u8; INFO_LABEL.len() + 16];
    info[..INFO_LABEL.len()].copy_from_slice(INFO_LABEL);
    info[INFO_LABEL.len()..INFO_LABEL.len() + 8].copy_from_slice(&lo.to_be_bytes());
    info[INFO_LABEL.len() + 8..].copy_from_slice(&hi.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(cluster_key), shared.as_bytes())
        .expand(&info, out.as_mut())
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        .expect("32-byte HKDF output");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> StaticSecret {
        StaticSecret::from([b; 32])
    }

    fn public(s: &StaticSecret) -> [u8; 32] {
        PublicKey::from(s).to_bytes()
    }

    #[test]
    fn t10_both_ends_derive_the_same_key() {
        let (a, b) = (secret(1), secret(2));
        let k = [7u8; 32];
        let ab = pair_key(&k, &a, 1, &public(&b), 2).unwrap();
        let ba = pair_key(&k, &b, 2, &public(&a), 1).unwrap();
        assert_eq!(*ab, *ba);
        assert_ne!(*ab, k, "the pair key is not the cluster key");
    }

    #[test]
    fn t11_a_third_node_with_the_cluster_key_derives_another_key() {
        let (a, b, c) = (secret(1), secret(2), secret(3));
        let k = [7u8; 32];
        let ab = pair_key(&k, &a, 1, &public(&b), 2).unwrap();
        // c claims to be node 1 talking to node 2: it knows 1's public key, not its secret.
        let c_as_1 = pair_key(&k, &c, 1, &public(&b), 2).unwrap();
        assert_ne!(*ab, *c_as_1);
        let cb = pair_key(&k, &c, 3, &public(&b), 2).unwrap();
        assert_ne!(*ab, *cb);
    }

    #[test]
    fn t12_every_input_changes_the_key() {
        let (a, b) = (secret(1), secret(2));
        let base = *pair_key(&[7; 32], &a, 1, &public(&b), 2).unwrap();
        assert_ne!(base, *pair_key(&[8; 32], &a, 1, &public(&b), 2).unwrap());
        assert_ne!(base, *pair_key(&[7; 32], &a, 1, &public(&b), 3).unwrap());
        assert_ne!(base, *pair_key(&[7; 32], &a, 5, &public(&b), 2).unwrap());
        assert_ne!(
            base,
            *pair_key(&[7; 32], &a, 1, &public(&secret(9)), 2).unwrap()
        );
    }

    #[test]
    fn t13_a_low_order_public_key_is_refused() {
        // The identity point (all zeros) makes every shared secret zero.
        assert_eq!(
            pair_key(&[7; 32], &secret(1), 1, &[0u8; 32], 2).unwrap_err(),
            PairError::NonContributory
        );
    }
}
