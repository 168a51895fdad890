//! The 28-byte wire header, authenticated as associated data, and the nonce it implies.
//!
//! ```text
//! offset 0        1         2             4          8                16           20          28
//!        [type u8][flags u8][reserved u16][epoch u32][sender id u64][sender boot u32][counter u64]
//! ```
//!
//! Big endian. `type` is 1 (data); `flags` and `reserved` are 0 and a receiver drops a packet
//! where they are not, so that a later version can give them a meaning without an old
//! receiver misreading it. The nonce is `0u32 || counter` (big endian): the key already binds
//! the epoch, both node ids, the direction and the sender's boot ([`super::derive`]), so the
//! counter alone has to be unique under one key.

use super::DropReason;

/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// Poly1305 tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its payload: header and tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// ChaCha20-Poly1305 (RFC 8439) nonce length.
pub const NONCE_LEN: usize = 12;
/// The only packet type so far: an encrypted inner IP packet.
pub const TYPE_DATA: u8 = 1;

/// The parsed header of a tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key epoch the packet was sealed under.
    pub epoch: u32,
    /// Node id of the sender.
    pub sender: u64,
    /// The sender's boot instance (incremented at every agent start).
    pub boot: u32,
    /// Per-key message counter; also the nonce.
    pub counter: u64,
}

impl Header {
    /// The 28 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = TYPE_DATA;
        // b[1] flags = 0, b[2..4] reserved = 0.
        b[4..8].copy_from_slice(&self.epoch.to_be_bytes());
        b[8..16].copy_from_slice(&self.sender.to_be_bytes());
        b[16..20].copy_from_slice(&self.boot.to_be_bytes());
        b[20..28].copy_from_slice(&self.counter.to_be_bytes());
        b
    }

    /// Parses the header of a whole packet. [`DropReason::Malformed`] when the packet is
    /// shorter than a header and a tag, or its type, flags or reserved bytes are not
    /// (1, 0, 0). An empty payload is allowed (a keepalive could use it).
    pub fn parse(packet: &[u8]) -> Result<Header, DropReason> {
        if packet.len() < OVERHEAD {
            return Err(DropReason::Malformed);
        }
        if packet[0] != TYPE_DATA || packet[1] != 0 || packet[2] != 0 || packet[3] != 0 {
            return Err(DropReason::Malformed);
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&packet[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Ok(Header {
            epoch: u32_at(4),
            sender: u64_at(8),
            boot: u32_at(16),
            counter: u64_at(20),
        })
    }
}

/// The nonce for `counter`: four zero bytes, then the counter big endian.
pub fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Header = Header {
        epoch: 0x0102_0304,
        sender: 0x1112_1314_1516_1718,
        boot: 0x2122_2324,
        counter: 0x3132_3334_3536_3738,
    };

    #[test]
    fn layout_is_the_contract() {
        let b = H.encode();
        assert_eq!(
            b,
            [
                1, 0, 0, 0, 1, 2, 3, 4, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x21, 0x22,
                0x23, 0x24, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38
            ]
        );
        assert_eq!(OVERHEAD, 44);
        assert_eq!(
            nonce(H.counter),
            [0, 0, 0, 0, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38]
        );
    }

    #[test]
    fn parse_round_trips_and_refuses_bad_headers() {
        let mut p = H.encode().to_vec();
        p.extend_from_slice(&[0u8; TAG_LEN]);
        assert_eq!(Header::parse(&p), Ok(H));
        assert_eq!(
            Header::parse(&p[..OVERHEAD - 1]),
            Err(DropReason::Malformed)
        );
        assert_eq!(Header::parse(&[]), Err(DropReason::Malformed));
        for (i, v) in [(0, 2u8), (0, 0), (1, 1), (2, 1), (3, 0x80)] {
            let mut q = p.clone();
            q[i] = v;
            assert_eq!(
                Header::parse(&q),
                Err(DropReason::Malformed),
                "byte {i} = {v}"
            );
        }
    }
}
