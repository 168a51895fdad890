//! The underlay UDP socket: batched with sendmmsg/recvmmsg, UDP GSO on send (one syscall
//! and one trip down the stack for a run of same-sized datagrams to one peer), UDP GRO on
//! receive (the kernel hands back runs of datagrams from one sender in one buffer), and big
//! buffers so a burst is not lost while a worker is busy sealing. Each feature falls back
//! cleanly when the kernel refuses it, logged once.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::DeviceError;

/// Largest datagram (or GSO/GRO run) handled in one buffer.
pub const MAX_BUF: usize = 65_536;
/// The kernel's cap on segments in one UDP GSO send (UDP_MAX_SEGMENTS is 64 before 6.?).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Socket buffer size asked for (forced past rmem_max as root).
const SOCK_BUF: libc::c_int = 16 << 20;

/// One message of a send batch: `len` bytes at `start` of the arena; `seg` > 0 means the
/// bytes are a run of datagrams of `seg` bytes each (the last may be shorter), sent with
/// UDP GSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutMsg {
    pub dst: SocketAddrV4,
    pub start: usize,
    pub len: usize,
    pub seg: u16,
}

#[derive(Debug)]
pub struct UdpSock {
    fd: OwnedFd,
    gso: bool,
    gro: bool,
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option by pointer and size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

impl UdpSock {
    /// Binds `listen` with SO_REUSEPORT (one socket per worker shares the port).
    pub fn bind(listen: SocketAddrV4) -> Result<Self, DeviceError> {
        let ctx = |what: &str| format!("UDP {listen}: {what}");
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(DeviceError::io(ctx("socket"), io::Error::last_os_error()));
        }
        // SAFETY: just created, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .map_err(|e| DeviceError::io(ctx("SO_REUSEPORT"), e))?;
        for (force, plain, what) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        ] {
            if setsockopt_int(raw, libc::SOL_SOCKET, force, SOCK_BUF).is_err() {
                // Not root (or no CAP_NET_ADMIN): the kernel caps it at [wr]mem_max.
                if let Err(e) = setsockopt_int(raw, libc::SOL_SOCKET, plain, SOCK_BUF) {
                    tracing::warn!(%listen, error = %e, "could not enlarge the {what} buffer");
                }
            }
        }
        let sa = sockaddr(listen);
        // SAFETY: a sockaddr_in of its own size.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r < 0 {
            return Err(DeviceError::io(
                ctx("bind (is another agent or program on this port? see --encryption-port)"),
                io::Error::last_os_error(),
            ));
        }
        let gro = setsockopt_int(raw, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let mut v: libc::c_int = 0;
        let mut l = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int; success means the kernel knows UDP_SEGMENT.
        let gso = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&mut v as *mut libc::c_int).cast(),
                &mut l,
            )
        } == 0;
        Ok(Self { fd, gso, gro })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn gso(&self) -> bool {
        self.gso
    }

    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Waits up to `ms` for room in the send buffer.
    fn wait_writable(&self, ms: i32) {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    }

    /// Sends every message; returns how many datagrams could not be sent (counted as I/O
    /// drops by the caller). A GSO send the kernel refuses turns GSO off for good and the
    /// message is sent again as single datagrams.
    pub fn send(&mut self, arena: &[u8], msgs: &[OutMsg]) -> usize {
        let mut failed = 0;
        let mut i = 0;
        let mut pending: Vec<OutMsg> = msgs.to_vec();
        if !self.gso {
            pending = split_all(&pending);
        }
        let mut eagain_rounds = 0;
        while i < pending.len() {
            let batch = &pending[i..pending.len().min(i + 64)];
            match self.sendmmsg(arena, batch) {
                Ok(n) => {
                    i += n;
                    eagain_rounds = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    eagain_rounds += 1;
                    if eagain_rounds > 50 {
                        // A second of no room: the peer path is stuck; give the batch up.
                        failed += pending[i..].iter().map(datagrams).sum::<usize>();
                        break;
                    }
                    self.wait_writable(20);
                }
                Err(e)
                    if pending[i].seg > 0
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    tracing::warn!(error = %e, "the kernel refused UDP GSO on the tunnel socket; sending datagrams one by one");
                    self.gso = false;
                    let rest = split_all(&pending[i..]);
                    pending.truncate(i);
                    pending.extend(rest);
                }
                Err(e) => {
                    tracing::debug!(dst = %pending[i].dst, error = %e, "tunnel send failed");
                    failed += datagrams(&pending[i]);
                    i += 1;
                }
            }
        }
        failed
    }

    fn sendmmsg(&self, arena: &[u8], batch: &[OutMsg]) -> io::Result<usize> {
        let n = batch.len();
        let mut addrs: Vec<libc::sockaddr_in> = batch.iter().map(|m| sockaddr(m.dst)).collect();
        let mut iovs: Vec<libc::iovec> = batch
            .iter()
            .map(|m| libc::iovec {
                iov_base: arena[m.start..].as_ptr() as *mut _,
                iov_len: m.len,
            })
            .collect();
        // 32 bytes per message: CMSG_SPACE(sizeof(u16)) is 24 on 64-bit, kept 8-aligned.
        let mut cmsgs: Vec<[u64; 4]> = vec![[0u64; 4]; n];
        // SAFETY: zeroed mmsghdrs are valid; every pointer set below lives until the call returns.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for (k, m) in batch.iter().enumerate() {
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = (&mut addrs[k] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
            if m.seg > 0 && m.len > m.seg as usize {
                // SAFETY: the buffer holds CMSG_SPACE(2) bytes, 8-aligned.
                unsafe {
                    h.msg_control = cmsgs[k].as_mut_ptr().cast();
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.seg);
                }
            }
        }
        // SAFETY: n initialised mmsghdrs.
        let r = unsafe { libc::sendmmsg(self.raw(), hdrs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

fn datagrams(m: &OutMsg) -> usize {
    if m.seg == 0 {
        1
    } else {
        m.len.div_ceil(m.seg as usize)
    }
}

/// The same bytes as single-datagram messages.
fn split_all(msgs: &[OutMsg]) -> Vec<OutMsg> {
    let mut out = Vec::with_capacity(msgs.len());
    for m in msgs {
        if m.seg == 0 || m.len <= m.seg as usize {
            out.push(OutMsg { seg: 0, ..*m });
            continue;
        }
        let mut off = 0;
        while off < m.len {
            let len = (m.seg as usize).min(m.len - off);
            out.push(OutMsg {
                dst: m.dst,
                start: m.start + off,
                len,
                seg: 0,
            });
            off += len;
        }
    }
    out
}

/// Receive buffers for recvmmsg, reused across calls.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_in>,
    cmsgs: Vec<[u64; 8]>,
    lens: Vec<usize>,
    gso: Vec<usize>,
    from: Vec<SocketAddrV4>,
    n: usize,
}

impl RecvBatch {
    pub fn new(count: usize) -> Self {
        Self {
            bufs: (0..count).map(|_| vec![0u8; MAX_BUF]).collect(),
            // SAFETY: all-zero sockaddr_in is valid.
            addrs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![[0u64; 8]; count],
            lens: vec![0; count],
            gso: vec![0; count],
            from: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); count],
            n: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Message `i`: its bytes, the GRO segment size (0 = one datagram), the sender.
    pub fn message(&mut self, i: usize) -> (&mut [u8], usize, SocketAddrV4) {
        let len = self.lens[i];
        (&mut self.bufs[i][..len], self.gso[i], self.from[i])
    }
}

impl UdpSock {
    /// Receives up to the batch's size of messages without blocking; Ok(0) when none.
    pub fn recv(&self, b: &mut RecvBatch) -> io::Result<usize> {
        let count = b.bufs.len();
        let mut iovs: Vec<libc::iovec> = b
            .bufs
            .iter_mut()
            .map(|v| libc::iovec {
                iov_base: v.as_mut_ptr().cast(),
                iov_len: v.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdrs are valid; pointers set below outlive the call.
        let mut hdrs: Vec<libc::mmsghdr> = (0..count).map(|_| unsafe { zeroed() }).collect();
        for k in 0..count {
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = (&mut b.addrs[k] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
            h.msg_control = b.cmsgs[k].as_mut_ptr().cast();
            h.msg_controllen = size_of::<[u64; 8]>();
        }
        // SAFETY: count initialised headers; MSG_DONTWAIT on a non-blocking socket.
        let r = unsafe {
            libc::recvmmsg(
                self.raw(),
                hdrs.as_mut_ptr(),
                count as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                b.n = 0;
                return Ok(0);
            }
            return Err(e);
        }
        let r = r as usize;
        for k in 0..r {
            let h = &hdrs[k].msg_hdr;
            // A truncated message cannot authenticate; give it length 0 so it is dropped
            // as malformed.
            b.lens[k] = if h.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                hdrs[k].msg_len as usize
            };
            b.from[k] = from_sockaddr(&b.addrs[k]);
            b.gso[k] = 0;
            // SAFETY: walking the control buffer the kernel filled, within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        b.gso[k] = v.max(0) as usize;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        b.n = r;
        Ok(r)
    }
}

/// Splits a GRO buffer into its datagrams (`seg` = 0: the whole buffer is one).
pub fn gro_datagrams(buf: &mut [u8], seg: usize) -> impl Iterator<Item = &mut [u8]> {
    let size = if seg == 0 { buf.len().max(1) } else { seg };
    buf.chunks_mut(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_all_keeps_bytes_and_order() {
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let m = [
            OutMsg {
                dst,
                start: 0,
                len: 250,
                seg: 100,
            },
            OutMsg {
                dst,
                start: 250,
                len: 40,
                seg: 0,
            },
            OutMsg {
                dst,
                start: 290,
                len: 100,
                seg: 100,
            },
        ];
        let s = split_all(&m);
        let spans: Vec<(usize, usize)> = s.iter().map(|m| (m.start, m.len)).collect();
        assert_eq!(
            spans,
            vec![(0, 100), (100, 100), (200, 50), (250, 40), (290, 100)]
        );
        assert!(s.iter().all(|m| m.seg == 0));
        assert_eq!(m.iter().map(datagrams).sum::<usize>(), 5);
    }

    #[test]
    fn gro_split() {
        let mut b: Vec<u8> = (0..25u8).collect();
        let parts: Vec<Vec<u8>> = gro_datagrams(&mut b, 10).map(|p| p.to_vec()).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], vec![20, 21, 22, 23, 24]);
        assert_eq!(gro_datagrams(&mut b, 0).count(), 1);
        let mut empty: Vec<u8> = Vec::new();
        assert_eq!(gro_datagrams(&mut empty, 0).count(), 0);
    }

    /// Real sockets on loopback: a GSO run goes out as separate datagrams and comes back
    /// (GRO-coalesced or not) with the same bytes.
    #[test]
    fn gso_send_gro_receive_on_loopback() {
        let rx = UdpSock::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind rx");
        // SAFETY: getsockname into a sockaddr_in.
        let port = unsafe {
            let mut sa: libc::sockaddr_in = zeroed();
            let mut l = size_of::<libc::sockaddr_in>() as u32;
            libc::getsockname(rx.raw(), (&mut sa as *mut libc::sockaddr_in).cast(), &mut l);
            u16::from_be(sa.sin_port)
        };
        let mut tx = UdpSock::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind tx");
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let arena: Vec<u8> = (0..(3 * 1000 + 500)).map(|i| (i % 251) as u8).collect();
        let msgs = [OutMsg {
            dst,
            start: 0,
            len: arena.len(),
            seg: 1000,
        }];
        assert_eq!(tx.send(&arena, &msgs), 0);
        let mut got = Vec::new();
        let mut b = RecvBatch::new(4);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            let n = rx.recv(&mut b).expect("recv");
            for i in 0..n {
                let (buf, seg, _) = b.message(i);
                for d in gro_datagrams(buf, seg) {
                    got.push(d.to_vec());
                }
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[3].len(), 500);
        assert_eq!(got.concat(), arena);
    }
}
