//! Bounded bincode: the one encoding of log entries, votes, snapshots and Raft RPC payloads.
//!
//! The options are those of `bincode::serialize` (fixed-size integers, trailing bytes
//! allowed), so the bytes are the same as every store and peer wrote before, plus a limit
//! on the input's size (and on what is encoded). A forged length prefix ("10^18 items")
//! cannot exhaust memory: reading stops at the input's end and serde sizes buffers
//! cautiously. Depth is bounded by the types themselves (commands are flat, see
//! [`crate::registry::Command`]).

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest message accepted either way. tonic's default (4 MiB) is below openraft's default
/// snapshot chunk (3 MiB) plus framing headroom and a large append batch.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest log entry decoded (a command is refused above half of this before it is
/// proposed, see [`crate::registry::MAX_COMMAND_BYTES`]).
pub const MAX_LOG_ENTRY_BYTES: u64 = MAX_MESSAGE_BYTES as u64;
/// Largest Raft RPC payload decoded: what gRPC accepts.
pub const MAX_RPC_PAYLOAD_BYTES: u64 = MAX_MESSAGE_BYTES as u64;
/// Largest snapshot decoded. The registry at its limits (65,280 identities of 64 labels,
/// 100,000 policies) is far larger than any real one; this bounds memory on a forged one.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Small metadata values (vote, committed and purged log ids).
pub const MAX_META_BYTES: u64 = 64 * 1024;

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
}

/// Encodes `value`, failing if it is larger than `limit` bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T, limit: u64) -> Result<Vec<u8>, bincode::Error> {
    options(limit).serialize(value)
}

/// Decodes `bytes`, which must be at most `limit` long.
///
/// bincode 1 does not apply its limit when it reads from a slice (the slice bounds what it
/// can read, and serde sizes buffers cautiously from claimed lengths), so the limit is
/// checked here, on the input, before decoding starts.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, bincode::Error> {
    if bytes.len() as u64 > limit {
        return Err(Box::new(bincode::ErrorKind::SizeLimit));
    }
    options(limit).deserialize(bytes)
}

/// The encoded size of `value`, without a limit (for checks against one).
pub fn encoded_size<T: Serialize + ?Sized>(value: &T) -> Result<u64, bincode::Error> {
    options(u64::MAX).serialized_size(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BatchItem, Command, LabelSet};

    #[test]
    fn t10_bytes_are_those_of_bincode_serialize() {
        let cmd = Command::Batch(vec![
            BatchItem::RemoveNode { id: 7 },
            BatchItem::AllocateIdentity {
                labels: LabelSet::parse(&["app=web"]).unwrap(),
            },
        ]);
        let old = bincode::serialize(&cmd).unwrap();
        assert_eq!(encode(&cmd, MAX_LOG_ENTRY_BYTES).unwrap(), old);
        assert_eq!(decode::<Command>(&old, MAX_LOG_ENTRY_BYTES).unwrap(), cmd);
        assert_eq!(encoded_size(&cmd).unwrap(), old.len() as u64);
        let v: (u64, Option<String>) = (3, Some("x".into()));
        assert_eq!(encode(&v, 100).unwrap(), bincode::serialize(&v).unwrap());
    }

    #[test]
    fn t11_a_forged_length_fails_without_allocating() {
        // A string claiming u64::MAX / 2 bytes, then nothing: refused before any buffer is
        // sized from the claim (an allocation that size would abort the test).
        let bytes = (u64::MAX / 2).to_le_bytes();
        assert!(decode::<String>(&bytes, MAX_RPC_PAYLOAD_BYTES).is_err());
        // A sequence claiming as many elements ends at the data's end (serde preallocates
        // cautiously), and a long real one stops at the limit.
        assert!(decode::<Vec<u64>>(&bytes, MAX_RPC_PAYLOAD_BYTES).is_err());
        let long = bincode::serialize(&vec![7u64; 1000]).unwrap();
        let err = decode::<Vec<u64>>(&long, 800).unwrap_err();
        assert!(matches!(*err, bincode::ErrorKind::SizeLimit), "{err:?}");
        assert!(
            encode(&vec![0u8; 200], 100).is_err(),
            "the limit binds encode too"
        );
    }
}
