//! One worker: a std thread that owns one TUN queue and one UDP socket and moves packets
//! both ways in batches.
//!
//! Send: read up to `TUN_BATCH` packets from the queue -> split super-packets (gso.rs) ->
//! for each segment find the peer by inner destination and seal -> append to a send arena,
//! grouping consecutive same-size datagrams to one peer into one UDP GSO message -> one
//! sendmmsg for the batch.
//! Receive: recvmmsg (GRO runs split by their segment size) -> open -> check that the inner
//! source belongs to the sealing node -> write to the TUN.
//! Both directions alternate inside one poll loop that also watches the stop eventfd.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use membrane_crypto::tunnel::{DropReason, Tunnel};

use super::counters::{Drop, Tally, Totals};
use super::gso::{self, VnetHdr, VNET_HDR_LEN};
use super::routes::{PeerRoutes, RoutesSnapshot};
use super::tun::TunQueue;
use super::udp::{self, OutMsg, RecvBatch, UdpSock, MAX_GSO_SEGMENTS};

/// TUN reads per send batch (each up to a 64 KiB super-packet).
const TUN_BATCH: usize = 16;
/// recvmmsg messages per call, and calls per turn.
const UDP_BATCH: usize = 16;
const UDP_TURNS: usize = 4;
/// Flush the send arena before it passes this many messages or bytes.
const FLUSH_MSGS: usize = 64;
const FLUSH_BYTES: usize = 1 << 20;
/// Cap on one UDP GSO message's payload (the kernel's limit is 64 KiB minus headers).
const GSO_MAX_BYTES: usize = 65_000;

impl From<DropReason> for Drop {
    fn from(r: DropReason) -> Self {
        match r {
            DropReason::Malformed => Drop::Malformed,
            DropReason::Auth => Drop::Auth,
            DropReason::Replay => Drop::Replay,
            DropReason::StaleEpoch => Drop::StaleEpoch,
            DropReason::UnknownSender => Drop::UnknownSender,
            DropReason::NoKey => Drop::NoKey,
            DropReason::KeyExhausted => Drop::KeyExhausted,
        }
    }
}

pub(crate) struct Worker {
    id: usize,
    tun: TunQueue,
    sock: UdpSock,
    tunnel: Arc<Tunnel>,
    routes: Arc<PeerRoutes>,
    totals: Arc<Totals>,
    stop: Arc<OwnedFd>,
    mtu: u32,
}

/// The send arena: sealed datagrams back to back, and the messages that cover them.
#[derive(Default)]
struct SendBatch {
    arena: Vec<u8>,
    msgs: Vec<OutMsg>,
}

impl SendBatch {
    /// Appends one sealed datagram, extending the last message as a GSO run when it goes
    /// to the same peer and is no longer than the run's segment size (a shorter one ends
    /// the run: GSO allows only the last segment to be short).
    fn push(&mut self, dst: std::net::SocketAddrV4, data: &[u8], gso: bool) {
        let len = data.len();
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        if gso {
            if let Some(last) = self.msgs.last_mut() {
                let seg = last.seg as usize;
                if last.dst == dst
                    && seg > 0
                    && len <= seg
                    && last.len % seg == 0
                    && last.len / seg < MAX_GSO_SEGMENTS
                    && last.len + len <= GSO_MAX_BYTES
                {
                    last.len += len;
                    return;
                }
            }
        }
        let seg = if gso && len <= u16::MAX as usize {
            len as u16
        } else {
            0
        };
        self.msgs.push(OutMsg {
            dst,
            start,
            len,
            seg,
        });
    }

    fn full(&self) -> bool {
        self.msgs.len() >= FLUSH_MSGS || self.arena.len() >= FLUSH_BYTES
    }

    fn datagrams(&self) -> usize {
        self.msgs
            .iter()
            .map(|m| {
                if m.seg == 0 {
                    1
                } else {
                    m.len.div_ceil(m.seg as usize)
                }
            })
            .sum()
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.msgs.clear();
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        tun: TunQueue,
        sock: UdpSock,
        tunnel: Arc<Tunnel>,
        routes: Arc<PeerRoutes>,
        totals: Arc<Totals>,
        stop: Arc<OwnedFd>,
        mtu: u32,
    ) -> Self {
        Self {
            id,
            tun,
            sock,
            tunnel,
            routes,
            totals,
            stop,
            mtu,
        }
    }

    pub fn run(mut self) {
        let mut rbuf = vec![0u8; VNET_HDR_LEN + 65_536];
        let mut scratch = Vec::with_capacity(self.mtu as usize + 64);
        let mut sealed = Vec::with_capacity(self.mtu as usize + 128);
        let mut batch = SendBatch::default();
        let mut rx = RecvBatch::new(UDP_BATCH);
        let mut tally = Tally::default();
        let mut logged_errors = false;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.tun.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sock.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three pollfds. The timeout only bounds how stale merged counters get.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, 500) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "tunnel worker poll failed; stopping it");
                break;
            }
            if fds[2].revents != 0 {
                break;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let snap = self.routes.snapshot();
                for _ in 0..TUN_BATCH {
                    match self.tun.read(&mut rbuf) {
                        Ok(Some(n)) => self.outbound(
                            &mut rbuf[..n],
                            &snap,
                            &mut scratch,
                            &mut sealed,
                            &mut batch,
                            &mut tally,
                        ),
                        Ok(None) => break,
                        Err(e) => {
                            if !logged_errors {
                                tracing::warn!(worker = self.id, error = %e, "TUN read failed");
                                logged_errors = true;
                            }
                            break;
                        }
                    }
                    if batch.full() {
                        self.flush(&mut batch, &mut tally);
                    }
                }
                self.flush(&mut batch, &mut tally);
            } else if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                tracing::error!(
                    worker = self.id,
                    "the TUN queue was closed under the worker; stopping it"
                );
                break;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let snap = self.routes.snapshot();
                for _ in 0..UDP_TURNS {
                    match self.sock.recv(&mut rx) {
                        Ok(0) => break,
                        Ok(n) => {
                            for i in 0..n {
                                let (buf, seg, _from) = rx.message(i);
                                for d in udp::gro_datagrams(buf, seg) {
                                    inbound(&self.tunnel, &self.tun, d, &snap, &mut tally);
                                }
                            }
                        }
                        Err(e) => {
                            // ICMP errors for earlier sends surface here; nothing was received.
                            tracing::debug!(worker = self.id, error = %e, "UDP receive error");
                            break;
                        }
                    }
                }
            }
            self.totals.merge(&mut tally);
        }
        self.totals.merge(&mut tally);
    }

    fn outbound(
        &self,
        buf: &mut [u8],
        snap: &RoutesSnapshot,
        scratch: &mut Vec<u8>,
        sealed: &mut Vec<u8>,
        batch: &mut SendBatch,
        tally: &mut Tally,
    ) {
        let Ok(hdr) = VnetHdr::decode(buf) else {
            tally.drop(Drop::TunMalformed);
            return;
        };
        let gso_on = self.sock.gso();
        let tunnel = &self.tunnel;
        let res = gso::segment(&hdr, &mut buf[VNET_HDR_LEN..], scratch, |seg| {
            if seg.len() < 20 {
                tally.drop(Drop::TunMalformed);
                return;
            }
            let dst = Ipv4Addr::new(seg[16], seg[17], seg[18], seg[19]);
            let Some(route) = snap.by_destination(dst) else {
                // No node owns the destination: the datapath should not have sent it here.
                tally.drop(Drop::NoKey);
                return;
            };
            match tunnel.seal(route.peer, seg, sealed) {
                Ok(()) => {}
                Err(r) => {
                    tally.drop(r.into());
                    return;
                }
            }
            if sealed.len() > 65_507 {
                tally.drop(Drop::TooBig);
                return;
            }
            batch.push(route.underlay, sealed, gso_on);
            tally.sent(route.peer, seg.len());
        });
        if res.is_err() {
            tally.drop(Drop::TunMalformed);
        }
    }

    fn flush(&mut self, batch: &mut SendBatch, tally: &mut Tally) {
        if batch.msgs.is_empty() {
            return;
        }
        let total = batch.datagrams();
        let failed = self.sock.send(&batch.arena, &batch.msgs);
        for _ in 0..failed {
            tally.drop(Drop::Io);
        }
        tally.datagrams_sent(total - failed);
        batch.clear();
    }
}

/// Opens one datagram and delivers its inner packet, or counts why not.
fn inbound(
    tunnel: &Tunnel,
    tun: &TunQueue,
    d: &mut [u8],
    snap: &RoutesSnapshot,
    tally: &mut Tally,
) {
    tally.datagrams_received(1);
    let opened = match tunnel.open(d) {
        Ok(o) => o,
        Err(r) => {
            tally.drop(r.into());
            return;
        }
    };
    let Some(inner) = d.get(opened.payload.clone()) else {
        tally.drop(Drop::Malformed);
        return;
    };
    if inner.len() < 20 || inner[0] >> 4 != 4 {
        tally.drop(Drop::Malformed);
        return;
    }
    let total = u16::from_be_bytes([inner[2], inner[3]]) as usize;
    if total < 20 || total > inner.len() {
        tally.drop(Drop::Malformed);
        return;
    }
    let inner = &inner[..total];
    let src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
    if !snap.source_allowed(opened.sender, src) {
        tracing::debug!(sender = opened.sender, %src, "authenticated packet with an inner source its sender does not own");
        tally.drop(Drop::InnerSource);
        return;
    }
    // A zeroed header: no offload claims, the stack verifies the inner checksums itself.
    const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
    if tun.write(&PLAIN, inner).is_err() {
        tally.drop(Drop::Io);
        return;
    }
    tally.received(opened.sender, total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    #[test]
    fn gso_runs_group_same_size_to_one_peer() {
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 8473);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8473);
        let mut s = SendBatch::default();
        s.push(a, &[1; 100], true);
        s.push(a, &[2; 100], true);
        s.push(a, &[3; 60], true); // short tail ends the run
        s.push(a, &[4; 100], true);
        s.push(b, &[5; 100], true);
        s.push(b, &[6; 120], true); // longer than the run's size: new message
        let spans: Vec<(SocketAddrV4, usize, usize, u16)> = s
            .msgs
            .iter()
            .map(|m| (m.dst, m.start, m.len, m.seg))
            .collect();
        assert_eq!(
            spans,
            vec![
                (a, 0, 260, 100),
                (a, 260, 100, 100),
                (b, 360, 100, 100),
                (b, 460, 120, 120)
            ]
        );
        assert_eq!(s.datagrams(), 6);
        assert_eq!(s.arena.len(), 580);
        let mut n = SendBatch::default();
        n.push(a, &[1; 100], false);
        n.push(a, &[1; 100], false);
        assert!(n.msgs.iter().all(|m| m.seg == 0));
        assert_eq!(n.datagrams(), 2);
    }

    #[test]
    fn gso_runs_respect_the_segment_cap() {
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 8473);
        let mut s = SendBatch::default();
        for _ in 0..(MAX_GSO_SEGMENTS + 1) {
            s.push(a, &[0; 500], true);
        }
        assert_eq!(s.msgs.len(), 2);
        assert_eq!(s.msgs[0].len, 500 * MAX_GSO_SEGMENTS);
        let mut big = SendBatch::default();
        for _ in 0..50 {
            big.push(a, &[0; 1500], true);
        }
        assert!(big.msgs.iter().all(|m| m.len <= GSO_MAX_BYTES));
        assert_eq!(big.datagrams(), 50);
    }
}
