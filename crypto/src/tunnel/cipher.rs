//! ChaCha20-Poly1305 (RFC 8439) behind one small trait, with two implementations that
//! produce the same bytes: `ring` 0.17 and RustCrypto's `chacha20poly1305` 0.10. The tunnel
//! picks one with [`CipherKind`]; the wire format does not depend on it, so nodes with
//! different choices interoperate. `membrane bench cipher` measures both (docs/benchmarks.md);
//! the faster one, ring, is the default.

use super::header::{NONCE_LEN, TAG_LEN};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};

/// The tag did not verify (or the input is longer than the cipher allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD operation failed: the tag does not verify or the input is too long")]
pub struct AeadError;

/// An AEAD key ready to seal and open in place. Implementations are `Send + Sync`: one key
/// serves every worker thread, and the caller guarantees a nonce is never used twice.
pub trait Cipher: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag over `aad` and the ciphertext.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError>;

    /// Verifies `tag` over `aad` and the ciphertext `in_out`, then decrypts it in place.
    /// On failure `in_out` holds no plaintext (ring and RustCrypto both leave it unusable)
    /// and must be discarded.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError>;
}

/// Which implementation of ChaCha20-Poly1305 the tunnel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CipherKind {
    /// `ring` 0.17 (assembly from BoringSSL): about 3x faster here, the default.
    #[default]
    Ring,
    /// RustCrypto `chacha20poly1305` 0.10 (portable Rust with SIMD backends).
    RustCrypto,
}

impl CipherKind {
    /// Both kinds, in the order the benchmark prints them.
    pub const ALL: [CipherKind; 2] = [CipherKind::Ring, CipherKind::RustCrypto];

    /// A cipher of this kind under `key`.
    pub fn new_cipher(self, key: &[u8; 32]) -> Box<dyn Cipher> {
        match self {
            CipherKind::Ring => Box::new(RingCipher::new(key)),
            CipherKind::RustCrypto => Box::new(RustCryptoCipher::new(key)),
        }
    }

    /// The name used in flags and output: "ring" or "rustcrypto".
    pub fn as_str(self) -> &'static str {
        match self {
            CipherKind::Ring => "ring",
            CipherKind::RustCrypto => "rustcrypto",
        }
    }
}

impl std::fmt::Display for CipherKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CipherKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ring" => Ok(CipherKind::Ring),
            "rustcrypto" | "chacha20poly1305" => Ok(CipherKind::RustCrypto),
            other => Err(format!(
                "unknown cipher implementation {other:?}: use \"ring\" or \"rustcrypto\""
            )),
        }
    }
}

/// ChaCha20-Poly1305 from `ring`. ring keeps its key schedule in its own type and does not
/// wipe it on drop; the 32 key bytes it was made from are wiped by the caller.
pub struct RingCipher(ring::aead::LessSafeKey);

impl RingCipher {
    /// A key from 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
            // CHACHA20_POLY1305 takes exactly 32 bytes, which the type guarantees.
            .expect("a 32-byte ChaCha20-Poly1305 key");
        RingCipher(ring::aead::LessSafeKey::new(unbound))
    }
}

impl Cipher for RingCipher {
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| AeadError)?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok(t)
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadError)
    }
}

/// ChaCha20-Poly1305 from RustCrypto; its key is wiped on drop (the crate's `zeroize`).
pub struct RustCryptoCipher(chacha20poly1305::ChaCha20Poly1305);

impl RustCryptoCipher {
    /// A key from 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        RustCryptoCipher(chacha20poly1305::ChaCha20Poly1305::new(key.into()))
    }
}

impl Cipher for RustCryptoCipher {
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .0
            .encrypt_in_place_detached(nonce.into(), aad, in_out)
            .map_err(|_| AeadError)?;
        Ok(tag.into())
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .decrypt_in_place_detached(nonce.into(), aad, in_out, tag.into())
            .map_err(|_| AeadError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 section 2.8.2's test vector.
    #[test]
    fn both_match_rfc8439() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let want_tag = [
            0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
            0x06, 0x91,
        ];
        let want_start = [0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb];
        for kind in CipherKind::ALL {
            let c = kind.new_cipher(&key);
            let mut buf = plain.to_vec();
            let tag = c.seal_in_place(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(tag, want_tag, "{kind}");
            assert_eq!(&buf[..8], &want_start, "{kind}");
            c.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
            assert_eq!(&buf[..], &plain[..], "{kind}");
        }
    }

    #[test]
    fn each_opens_the_others_and_refuses_tampering() {
        let key = [7u8; 32];
        let nonce = [1u8; NONCE_LEN];
        let (a, b) = (
            CipherKind::Ring.new_cipher(&key),
            CipherKind::RustCrypto.new_cipher(&key),
        );
        for (s, o) in [(&a, &b), (&b, &a)] {
            let mut buf = vec![0x5au8; 1420];
            let tag = s.seal_in_place(&nonce, b"hdr", &mut buf).unwrap();
            let sealed = buf.clone();
            o.open_in_place(&nonce, b"hdr", &mut buf, &tag).unwrap();
            assert_eq!(buf, vec![0x5au8; 1420]);
            let mut bad = sealed.clone();
            assert_eq!(
                o.open_in_place(&nonce, b"hdR", &mut bad, &tag),
                Err(AeadError)
            );
            let mut bad = sealed.clone();
            bad[700] ^= 1;
            assert_eq!(
                o.open_in_place(&nonce, b"hdr", &mut bad, &tag),
                Err(AeadError)
            );
            let mut bad_tag = tag;
            bad_tag[15] ^= 0x80;
            let mut bad = sealed.clone();
            assert_eq!(
                o.open_in_place(&nonce, b"hdr", &mut bad, &bad_tag),
                Err(AeadError)
            );
        }
    }

    #[test]
    fn kind_names_round_trip() {
        for k in CipherKind::ALL {
            assert_eq!(k.as_str().parse::<CipherKind>(), Ok(k));
        }
        assert!("aes".parse::<CipherKind>().unwrap_err().contains("ring"));
        assert_eq!(CipherKind::default(), CipherKind::Ring);
    }
}
