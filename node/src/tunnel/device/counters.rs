//! What the device counts: drops by reason, and per peer the packets and bytes that went
//! each way. Workers count into a local [`Tally`] per batch and merge it under one lock, so
//! the hot loop takes no lock per packet.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Why the device dropped a packet. The first seven are the tunnel's own reasons
/// (`membrane_crypto::tunnel::DropReason`, same names); the rest are the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Drop {
    Malformed,
    Auth,
    Replay,
    StaleEpoch,
    UnknownSender,
    NoKey,
    KeyExhausted,
    /// Authenticated, but the inner source is neither the sealing node's pod CIDR nor its
    /// node IP: that node tried to speak for addresses it does not own.
    InnerSource,
    /// A packet from the TUN the device cannot send: not IPv4, or a bad offload header.
    TunMalformed,
    /// Sealed packets too large for one UDP datagram (TUN MTU above what the path takes).
    TooBig,
    /// The kernel refused a send or a TUN write (buffers full, no route on the underlay).
    Io,
}

impl Drop {
    pub const ALL: [Drop; 11] = [
        Drop::Malformed,
        Drop::Auth,
        Drop::Replay,
        Drop::StaleEpoch,
        Drop::UnknownSender,
        Drop::NoKey,
        Drop::KeyExhausted,
        Drop::InnerSource,
        Drop::TunMalformed,
        Drop::TooBig,
        Drop::Io,
    ];

    /// The name shown by `membrane encrypt status` and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::Auth => "auth",
            Drop::Replay => "replay",
            Drop::StaleEpoch => "stale-epoch",
            Drop::UnknownSender => "unknown-sender",
            Drop::NoKey => "no-key",
            Drop::KeyExhausted => "key-exhausted",
            Drop::InnerSource => "inner-source",
            Drop::TunMalformed => "tun-malformed",
            Drop::TooBig => "too-big",
            Drop::Io => "io-error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Traffic with one peer. Bytes are inner (plaintext IP packet) bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
}

/// A snapshot of the device's counters (monotonic since start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Every reason, zeros included, so a status table has a stable shape.
    pub drops: BTreeMap<&'static str, u64>,
    pub peers: BTreeMap<u64, PeerTraffic>,
    /// UDP datagrams sent / received on the underlay (after GSO splitting on receive).
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
}

impl DeviceCounters {
    pub fn drop_count(&self, d: Drop) -> u64 {
        self.drops.get(d.as_str()).copied().unwrap_or(0)
    }

    pub fn peer(&self, peer: u64) -> PeerTraffic {
        self.peers.get(&peer).copied().unwrap_or_default()
    }
}

/// One worker's counts since its last merge.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    drops: [u64; Drop::ALL.len()],
    peers: BTreeMap<u64, PeerTraffic>,
    datagrams_sent: u64,
    datagrams_received: u64,
    dirty: bool,
}

impl Tally {
    pub fn drop(&mut self, d: Drop) {
        self.drops[d.index()] += 1;
        self.dirty = true;
    }

    pub fn sent(&mut self, peer: u64, bytes: usize) {
        let p = self.peers.entry(peer).or_default();
        p.sent_packets += 1;
        p.sent_bytes += bytes as u64;
        self.dirty = true;
    }

    pub fn received(&mut self, peer: u64, bytes: usize) {
        let p = self.peers.entry(peer).or_default();
        p.received_packets += 1;
        p.received_bytes += bytes as u64;
        self.dirty = true;
    }

    pub fn datagrams_sent(&mut self, n: usize) {
        self.datagrams_sent += n as u64;
        self.dirty = true;
    }

    pub fn datagrams_received(&mut self, n: usize) {
        self.datagrams_received += n as u64;
        self.dirty = true;
    }
}

/// The device-wide totals.
#[derive(Debug, Default)]
pub(crate) struct Totals(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    drops: [u64; Drop::ALL.len()],
    peers: BTreeMap<u64, PeerTraffic>,
    datagrams_sent: u64,
    datagrams_received: u64,
}

impl Totals {
    /// Adds a worker's tally and clears it.
    pub fn merge(&self, t: &mut Tally) {
        if !t.dirty {
            return;
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (a, b) in g.drops.iter_mut().zip(t.drops.iter_mut()) {
            *a += std::mem::take(b);
        }
        for (peer, p) in std::mem::take(&mut t.peers) {
            let q = g.peers.entry(peer).or_default();
            q.sent_packets += p.sent_packets;
            q.sent_bytes += p.sent_bytes;
            q.received_packets += p.received_packets;
            q.received_bytes += p.received_bytes;
        }
        g.datagrams_sent += std::mem::take(&mut t.datagrams_sent);
        g.datagrams_received += std::mem::take(&mut t.datagrams_received);
        t.dirty = false;
    }

    pub fn snapshot(&self) -> DeviceCounters {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        DeviceCounters {
            drops: Drop::ALL
                .iter()
                .map(|d| (d.as_str(), g.drops[d.index()]))
                .collect(),
            peers: g.peers.clone(),
            datagrams_sent: g.datagrams_sent,
            datagrams_received: g.datagrams_received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_and_reset() {
        let totals = Totals::default();
        let mut t = Tally::default();
        t.drop(Drop::NoKey);
        t.drop(Drop::NoKey);
        t.drop(Drop::InnerSource);
        t.sent(7, 100);
        t.received(7, 50);
        t.datagrams_sent(1);
        totals.merge(&mut t);
        totals.merge(&mut t); // nothing twice
        t.sent(7, 10);
        totals.merge(&mut t);
        let c = totals.snapshot();
        assert_eq!(c.drop_count(Drop::NoKey), 2);
        assert_eq!(c.drop_count(Drop::InnerSource), 1);
        assert_eq!(c.drop_count(Drop::Auth), 0);
        assert_eq!(c.drops.len(), Drop::ALL.len());
        assert_eq!(
            c.peer(7),
            PeerTraffic {
                sent_packets: 2,
                sent_bytes: 110,
                received_packets: 1,
                received_bytes: 50
            }
        );
        assert_eq!(c.datagrams_sent, 1);
    }

    #[test]
    fn names_are_distinct() {
        let names: std::collections::BTreeSet<_> = Drop::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(names.len(), Drop::ALL.len());
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
    }
}
