//! The TUN's virtio-net header, and splitting the kernel's TCP super-packets into segments.
//!
//! Pure: bytes in, bytes out. With `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4)`
//! the kernel hands the agent up to 64 KiB TCP super-packets (one header, `gso_size`-sized
//! payload chunks) and packets whose checksum is left partial (`NEEDS_CSUM`). The peer's
//! stack expects ordinary segments with correct checksums, so before sealing we cut each
//! super-packet into the segments the kernel would have sent on a wire, the way
//! `tcp_gso_segment` does: sequence numbers advance by the payload, the IPv4 id by one per
//! segment, FIN/PSH only on the last segment, CWR only on the first, every checksum complete.

use thiserror::Error;

/// `struct virtio_net_hdr` without `num_buffers` (TUNSETVNETHDRSZ = 10), host byte order
/// (a legacy TUN without TUNSETVNETLE is native-endian).
pub const VNET_HDR_LEN: usize = 10;
/// The checksum from `csum_start` on is partial: the L4 checksum field holds only the
/// pseudo-header sum.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The virtio-net header the TUN prefixes to every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Result<Self, GsoError> {
        if b.len() < VNET_HDR_LEN {
            return Err(GsoError::Short("virtio-net header"));
        }
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn encode(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Why a packet read from the TUN could not be turned into segments (counted as
/// `malformed`; the kernel never produces these, so it means a bug or a foreign writer).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GsoError {
    #[error("packet too short for its {0}")]
    Short(&'static str),
    #[error("not an IPv4 packet (version {0})")]
    NotIpv4(u8),
    #[error("unsupported GSO type {0:#x} (only TCPv4 is offered to the kernel)")]
    UnsupportedGso(u8),
    #[error("GSO packet is not TCP (protocol {0})")]
    NotTcp(u8),
    #[error("checksum offsets outside the packet (start {start}, offset {offset}, len {len})")]
    BadCsumOffsets { start: u16, offset: u16, len: usize },
    #[error("GSO size 0")]
    ZeroGsoSize,
}

/// Ones' complement sum of `data` (big-endian 16-bit words) added to `initial`, not folded.
pub fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut acc = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a sum to 16 bits and complements it: the value stored in a checksum field.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 pseudo-header sum for an L4 segment of `l4_len` bytes.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut s = sum16(&src, 0);
    s = sum16(&dst, s);
    s + proto as u32 + l4_len as u32
}

/// Recomputes the IPv4 header checksum in place (`ip` = the header, IHL*4 bytes).
pub fn set_ipv4_checksum(ip: &mut [u8]) {
    ip[10] = 0;
    ip[11] = 0;
    let c = fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Completes a partial checksum (`NEEDS_CSUM`): the field at `csum_start + csum_offset`
/// holds the pseudo-header sum; the checksum over everything from `csum_start` replaces it.
pub fn complete_checksum(
    pkt: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), GsoError> {
    let start = csum_start as usize;
    let field = start + csum_offset as usize;
    if field + 2 > pkt.len() {
        return Err(GsoError::BadCsumOffsets {
            start: csum_start,
            offset: csum_offset,
            len: pkt.len(),
        });
    }
    let c = fold(sum16(&pkt[start..], 0));
    // A UDP checksum that computes to 0 is sent as 0xffff (0 means "none").
    let c = if c == 0 && csum_offset == 6 {
        0xffff
    } else {
        c
    };
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Turns one TUN read (`hdr` and the packet after it) into wire-ready IPv4 packets, each
/// passed to `emit` in order. A non-GSO packet is passed through (its partial checksum
/// completed); a TCPv4 super-packet is cut into `gso_size` segments. `scratch` is reused
/// between calls to build segments without allocating.
pub fn segment(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), GsoError> {
    if pkt.is_empty() {
        return Err(GsoError::Short("IP header"));
    }
    let version = pkt[0] >> 4;
    if version != 4 {
        return Err(GsoError::NotIpv4(version));
    }
    let gso = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    if gso == VIRTIO_NET_HDR_GSO_NONE {
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            complete_checksum(pkt, hdr.csum_start, hdr.csum_offset)?;
        }
        emit(pkt);
        return Ok(());
    }
    if gso != VIRTIO_NET_HDR_GSO_TCPV4 {
        return Err(GsoError::UnsupportedGso(hdr.gso_type));
    }
    if hdr.gso_size == 0 {
        return Err(GsoError::ZeroGsoSize);
    }
    if pkt.len() < 20 {
        return Err(GsoError::Short("IP header"));
    }
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    if ihl < 20 || pkt.len() < ihl + 20 {
        return Err(GsoError::Short("TCP header"));
    }
    if pkt[9] != IPPROTO_TCP {
        return Err(GsoError::NotTcp(pkt[9]));
    }
    // The TCP header length from the segment itself: hdr_len is only a hint.
    let thl = ((pkt[ihl + 12] >> 4) as usize) * 4;
    let hlen = ihl + thl;
    if thl < 20 || pkt.len() < hlen {
        return Err(GsoError::Short("TCP header"));
    }
    let payload_len = pkt.len() - hlen;
    let mss = hdr.gso_size as usize;
    if payload_len <= mss {
        // One segment only: finish the checksums and send it as is.
        let total = pkt.len();
        finish_tcp(pkt, ihl, total);
        emit(pkt);
        return Ok(());
    }
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq0 = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let flags0 = pkt[ihl + 13];
    let n = payload_len.div_ceil(mss);
    for i in 0..n {
        let off = hlen + i * mss;
        let len = mss.min(pkt.len() - off);
        scratch.clear();
        scratch.extend_from_slice(&pkt[..hlen]);
        scratch.extend_from_slice(&pkt[off..off + len]);
        let seg = scratch.as_mut_slice();
        let total = hlen + len;
        seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags0;
        if i + 1 != n {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            f &= !TCP_CWR;
        }
        seg[ihl + 13] = f;
        finish_tcp(seg, ihl, total);
        emit(seg);
    }
    Ok(())
}

/// Sets total length, IPv4 checksum and the full TCP checksum of one segment.
fn finish_tcp(seg: &mut [u8], ihl: usize, total: usize) {
    seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    set_ipv4_checksum(&mut seg[..ihl]);
    let src = [seg[12], seg[13], seg[14], seg[15]];
    let dst = [seg[16], seg[17], seg[18], seg[19]];
    let l4_len = (total - ihl) as u16;
    seg[ihl + 16] = 0;
    seg[ihl + 17] = 0;
    let c = fold(sum16(
        &seg[ihl..total],
        pseudo_header_sum(src, dst, IPPROTO_TCP, l4_len),
    ));
    seg[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
}

/// Whether the checksums of an IPv4 packet are right (IP header, and TCP or UDP when the
/// packet is one): used by the tests and kept beside the code it checks.
pub fn checksums_valid(pkt: &[u8]) -> bool {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return false;
    }
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    if total != pkt.len() || ihl < 20 || total < ihl {
        return false;
    }
    if fold(sum16(&pkt[..ihl], 0)) != 0 {
        return false;
    }
    let proto = pkt[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return true;
    }
    let src = [pkt[12], pkt[13], pkt[14], pkt[15]];
    let dst = [pkt[16], pkt[17], pkt[18], pkt[19]];
    let l4 = &pkt[ihl..];
    if proto == IPPROTO_UDP && l4.len() >= 8 && l4[6] == 0 && l4[7] == 0 {
        return true;
    }
    fold(sum16(
        l4,
        pseudo_header_sum(src, dst, proto, l4.len() as u16),
    )) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 packet as the kernel hands it with TSO: one header, `payload` bytes, the
    /// TCP checksum field holding only the pseudo-header sum (partial, NEEDS_CSUM).
    fn super_packet(payload: &[u8], flags: u8, seq: u32, id: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 1, 0, 5]);
        p[16..20].copy_from_slice(&[10, 2, 0, 7]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = 8 << 4; // 32-byte header (timestamps)
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        // The kernel's partial checksum: the pseudo header with the full L4 length,
        // folded, not complemented.
        let ps = pseudo_header_sum([10, 1, 0, 5], [10, 2, 0, 7], IPPROTO_TCP, total - 20);
        let partial = !fold(ps);
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        p
    }

    fn tso_hdr(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 52,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    fn split(hdr: &VnetHdr, mut pkt: Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        segment(hdr, &mut pkt, &mut scratch, |s| out.push(s.to_vec())).expect("segment");
        out
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = tso_hdr(1388);
        let mut b = [0u8; VNET_HDR_LEN];
        h.encode(&mut b);
        assert_eq!(VnetHdr::decode(&b), Ok(h));
        assert_eq!(
            VnetHdr::decode(&b[..9]),
            Err(GsoError::Short("virtio-net header"))
        );
    }

    #[test]
    fn super_packet_splits_like_the_kernel() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let flags = TCP_PSH | TCP_FIN | TCP_CWR | 0x10; // ACK too
        let segs = split(
            &tso_hdr(1388),
            super_packet(&payload, flags, 0xffff_f000, 0xfffe),
        );
        assert_eq!(segs.len(), 8); // 7 * 1388 = 9716, then 284
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_valid(s), "segment {i} checksums");
            let len = if i < 7 { 1388 } else { 10_000 - 7 * 1388 };
            assert_eq!(s.len(), 52 + len);
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            // The IP id advances by one per segment, wrapping.
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfffeu16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0xffff_f000u32.wrapping_add(i as u32 * 1388));
            let f = s[33];
            assert_eq!(f & 0x10, 0x10, "ACK on every segment");
            assert_eq!(
                f & (TCP_FIN | TCP_PSH) != 0,
                i == 7,
                "FIN/PSH only on the last"
            );
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR only on the first");
            // Options copied unchanged.
            assert_eq!(&s[40..52], &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn exact_multiple_has_no_empty_tail() {
        let payload = vec![0xabu8; 3 * 1000];
        let segs = split(&tso_hdr(1000), super_packet(&payload, 0x18, 1, 1));
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|s| s.len() == 1052 && checksums_valid(s)));
    }

    #[test]
    fn small_gso_packet_is_one_finished_segment() {
        let payload = vec![5u8; 300];
        let segs = split(&tso_hdr(1388), super_packet(&payload, 0x18, 9, 9));
        assert_eq!(segs.len(), 1);
        assert!(checksums_valid(&segs[0]));
        assert_eq!(segs[0][33], 0x18);
    }

    #[test]
    fn partial_checksum_completed_without_gso() {
        let payload = vec![0x42u8; 333]; // odd length: the last byte is padded
        let pkt = super_packet(&payload, 0x18, 5, 5);
        assert!(!checksums_valid(&pkt), "partial checksum is not yet valid");
        let hdr = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_NONE,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        let segs = split(&hdr, pkt);
        assert_eq!(segs.len(), 1);
        assert!(checksums_valid(&segs[0]));
    }

    #[test]
    fn plain_packet_passes_unchanged() {
        let mut pkt = super_packet(&[1, 2, 3], 0x18, 5, 5);
        let mut s = Vec::new();
        segment(&VnetHdr::default(), &mut pkt.clone(), &mut s, |_| {}).expect("ok");
        let mut out = Vec::new();
        segment(&VnetHdr::default(), &mut pkt, &mut s, |p| out = p.to_vec()).expect("ok");
        assert_eq!(out, pkt);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut scratch = Vec::new();
        let mut v6 = vec![0x60u8; 40];
        assert_eq!(
            segment(&VnetHdr::default(), &mut v6, &mut scratch, |_| {}),
            Err(GsoError::NotIpv4(6))
        );
        let mut empty: Vec<u8> = Vec::new();
        assert!(segment(&VnetHdr::default(), &mut empty, &mut scratch, |_| {}).is_err());
        let mut pkt = super_packet(&[0u8; 3000], 0x18, 1, 1);
        let mut udp = tso_hdr(1000);
        udp.gso_type = 3;
        assert_eq!(
            segment(&udp, &mut pkt, &mut scratch, |_| {}),
            Err(GsoError::UnsupportedGso(3))
        );
        let mut zero = tso_hdr(0);
        zero.gso_size = 0;
        assert_eq!(
            segment(&zero, &mut pkt, &mut scratch, |_| {}),
            Err(GsoError::ZeroGsoSize)
        );
        let bad = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 60_000,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(matches!(
            segment(&bad, &mut pkt, &mut scratch, |_| {}),
            Err(GsoError::BadCsumOffsets { .. })
        ));
        let mut truncated = pkt[..30].to_vec();
        assert!(segment(&tso_hdr(1000), &mut truncated, &mut scratch, |_| {}).is_err());
        // Nothing emitted for any bad packet.
        let mut emitted = 0;
        let _ = segment(&tso_hdr(1000), &mut truncated, &mut scratch, |_| {
            emitted += 1
        });
        assert_eq!(emitted, 0);
    }

    #[test]
    fn checksum_helpers_match_rfc1071_example() {
        // RFC 1071's example words sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&data, 0)), !0xddf2);
    }
}
