//! The node-to-node encryption tunnel as pure code: the wire header, key derivation, the
//! replay window, the cipher, and [`Tunnel`], which seals and opens packets the way
//! boringtun's `Tunn` does, without any socket, device or clock. The device (TUN, UDP,
//! batching) lives in the agent and calls [`Tunnel::seal`] and [`Tunnel::open`].
//!
//! # Packets
//!
//! `header (28 bytes, authenticated) || ChaCha20-Poly1305 ciphertext || tag (16 bytes)`, see
//! [`header`]. The header is not encrypted: the receiver needs the sender, epoch, boot and
//! counter to pick a key and check the replay window before it can open anything.
//!
//! # Keys
//!
//! Each node has an X25519 secret per key epoch ([`EpochSecret`]); the registry publishes the
//! public halves. The key a sender seals with towards a receiver is HKDF-SHA256 over their
//! shared secret, bound to the cluster id, the epoch, the sender's and receiver's ids, the
//! direction and the sender's boot instance ([`derive`]). Each direction of each pair has its
//! own key, and so does each start of the sender's agent.
//!
//! # Why a (key, nonce) pair never repeats
//!
//! ChaCha20-Poly1305 with a repeated nonce under one key leaks the XOR of two plaintexts and
//! lets an observer forge tags, so the argument has to be airtight:
//!
//! 1. The nonce is the packet's 64-bit counter. Within one [`Tunnel`] value, the counter of
//!    a (peer, epoch) is a single atomic incremented by every seal (`fetch_add`), so two
//!    threads never draw the same value, and it is kept for the life of the `Tunnel` even if
//!    the session is erased and its key derived again (the same secret installed again, a
//!    peer removed and set again): the counter continues instead of starting at 0.
//! 2. A new `Tunnel` (an agent start) starts its counters at 0, but its keys are new: the
//!    derivation includes the sender's boot instance, which the agent persists and
//!    increments at every start before creating the `Tunnel`. A restarted sender with the
//!    same epoch secret derives different keys (tests/tunnel_restart.rs checks it).
//! 3. Keys of different epochs, peers, directions or clusters differ by the derivation's
//!    inputs; HKDF makes collisions between them as unlikely as a SHA-256 collision.
//! 4. A key stops sealing at [`REJECT_AFTER_MESSAGES`] (2^60), far below the 2^64 counters,
//!    so the counter never wraps; a rotation brings a new key long before.
//!
//! The one thing the tunnel cannot check is that `boot` really is new: that is the
//! keystore's job, and the reason the boot counter is written to disk before it is used.
//!
//! # Receiving
//!
//! [`Tunnel::open`] parses the header (anything but type 1 and zero flags and reserved bytes
//! is `malformed`), finds the sender (`unknown-sender`) and the epoch, which needs both the
//! peer's key and this node's secret for it (`stale-epoch` otherwise, which covers retired,
//! not yet known and made-up epochs). A receive session is derived lazily per (sender,
//! epoch, boot); a packet of a boot older than the newest one that authenticated is a
//! `replay`; a newer boot's session replaces the older one only once a packet of it
//! authenticated, so a forger cannot knock a live session out. The replay window
//! ([`replay`], RFC 6479, 8,128 counters) is checked before decryption, to refuse replays
//! cheaply, and updated after it, so forged packets never move it; `auth` counts packets whose
//! tag does not verify.
//!
//! Sessions of an epoch that is erased (retired, key replaced, peer removed) leave behind
//! the boot and counter they reached, so a session derived again from the same keys accepts
//! neither an older boot nor a counter it may already have accepted.
//!
//! Limit: receive windows live in memory. After the *receiver* restarts, a packet captured
//! before the restart in the still-active epoch and boot of its sender would be accepted once
//! more. Rotating the epoch (which a node's return triggers through the registry) closes it.
//!
//! # Threads
//!
//! Every method takes `&self`: share one `Arc<Tunnel>` between the device's workers. Peers
//! and secrets sit behind `RwLock`s taken for reading on the packet path; a session's key is
//! read-only and shared; counters are atomics; each receive session's replay window has its
//! own `Mutex`, held only for the check and the update, not during decryption. Packets of one
//! flow should stay on one worker anyway so that they are not reordered, which also keeps a
//! session's window mostly uncontended.

pub mod cipher;
pub mod derive;
pub mod header;
pub mod replay;
mod session;

pub use cipher::{AeadError, Cipher, CipherKind, RingCipher, RustCryptoCipher};
pub use derive::{derive_key, EpochSecret, KeyContext};
pub use header::{Header, HEADER_LEN, NONCE_LEN, OVERHEAD, TAG_LEN};
pub use replay::{ReplayWindow, WINDOW_SIZE};
pub use session::{Opened, PeerCounters, Tunnel, REJECT_AFTER_MESSAGES};

/// Why a packet was not sealed or not opened. The caller counts drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum DropReason {
    /// Too short, or a type, flags or reserved value this code does not speak.
    #[error("malformed tunnel packet (too short, or unknown type, flags or reserved bits)")]
    Malformed,
    /// The tag did not verify: forged, corrupted, or sealed under another key.
    #[error("tunnel packet failed authentication (forged, corrupted, or another key)")]
    Auth,
    /// Seen before, too old for the window, or from an older boot of the sender.
    #[error("tunnel packet replayed, too old, or from an older boot of its sender")]
    Replay,
    /// An epoch this node does not (or no longer) accept from that sender.
    #[error("tunnel packet sealed under an epoch this node does not accept")]
    StaleEpoch,
    /// The sender is not a peer of this node.
    #[error("tunnel packet from a node that is not a peer")]
    UnknownSender,
    /// No key to seal with: no send epoch for the peer, or a secret or key missing.
    #[error("no tunnel key to this peer yet")]
    NoKey,
    /// The send key reached REJECT_AFTER_MESSAGES; a rotation gives a new one.
    #[error("the tunnel key to this peer sealed its maximum number of messages")]
    KeyExhausted,
}

impl DropReason {
    /// Every reason, in the order status output lists them.
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::Auth,
        DropReason::Replay,
        DropReason::StaleEpoch,
        DropReason::UnknownSender,
        DropReason::NoKey,
        DropReason::KeyExhausted,
    ];

    /// The name in metrics and status: "malformed", "auth", "replay", "stale-epoch",
    /// "unknown-sender", "no-key", "key-exhausted".
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Auth => "auth",
            DropReason::Replay => "replay",
            DropReason::StaleEpoch => "stale-epoch",
            DropReason::UnknownSender => "unknown-sender",
            DropReason::NoKey => "no-key",
            DropReason::KeyExhausted => "key-exhausted",
        }
    }
}

#[cfg(test)]
mod tests;
