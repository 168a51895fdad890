//! The TUN device: one queue per worker (IFF_MULTI_QUEUE, so the kernel keeps each flow on
//! one queue and sealing never reorders a flow), a virtio-net header on every packet
//! (IFF_VNET_HDR) and checksum/TSO offload, so the stack hands us 64 KiB TCP super-packets
//! instead of one read per segment. The device is not persistent: it disappears when the
//! last queue is closed, which is how `TunnelDevice::stop` removes it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::gso::VNET_HDR_LEN;
use super::DeviceError;

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// Checks an interface name the way the kernel will (1 to 15 bytes, no '/', no space).
pub fn validate_name(name: &str) -> Result<(), DeviceError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0 || !b.is_ascii());
    if bad {
        return Err(DeviceError::Config(format!(
            "TUN name {name:?} is not a valid interface name: use 1 to 15 ASCII characters \
             without '/', ':' or spaces"
        )));
    }
    Ok(())
}

fn name_bytes(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    out
}

/// What the kernel agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// TSO4 super-packets and partial checksums are on.
    pub tso4: bool,
}

/// One queue of the TUN: a non-blocking fd that reads and writes vnet-header packets.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
}

/// Creates the TUN named `name` with `queues` queues, sets offloads, MTU and brings it up.
/// Returns the queues, the offloads in force and the ifindex.
pub fn create(
    name: &str,
    queues: usize,
    mtu: u32,
) -> Result<(Vec<TunQueue>, Offloads, u32), DeviceError> {
    validate_name(name)?;
    let ctx = |what: &str| format!("TUN {name}: {what}");
    let mut out = Vec::with_capacity(queues);
    for _ in 0..queues.max(1) {
        let path = CString::new("/dev/net/tun").map_err(|e| DeviceError::Config(e.to_string()))?;
        // SAFETY: a valid C string, flags only.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(DeviceError::io(
                ctx("opening /dev/net/tun (is the tun module loaded, are we root?)"),
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReqFlags {
            name: name_bytes(name),
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE)
                as libc::c_short,
            _pad: [0; 22],
        };
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReqFlags lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(DeviceError::io(
                ctx("TUNSETIFF (a non-TUN interface or a single-queue TUN of that name may exist: remove it or pick another --encryption-device)"),
                e,
            ));
        }
        out.push(TunQueue { fd });
    }
    let first = out[0].fd.as_raw_fd();
    let hdr_sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
    if unsafe { libc::ioctl(first, libc::TUNSETVNETHDRSZ, &hdr_sz) } < 0 {
        return Err(DeviceError::io(
            ctx("TUNSETVNETHDRSZ"),
            io::Error::last_os_error(),
        ));
    }
    let want = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    // SAFETY: TUNSETOFFLOAD takes the flags by value.
    let offloads = if unsafe { libc::ioctl(first, libc::TUNSETOFFLOAD, want as libc::c_ulong) } == 0
    {
        Offloads { tso4: true }
    } else {
        let e = io::Error::last_os_error();
        tracing::warn!(tun = name, error = %e, "the kernel refused TUN checksum/TSO offload; reading one segment at a time");
        // SAFETY: as above; 0 turns every offload off, which the kernel always accepts.
        unsafe { libc::ioctl(first, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        Offloads { tso4: false }
    };
    let ctl = control_socket().map_err(|e| DeviceError::io(ctx("control socket"), e))?;
    let mut mreq = IfReqInt {
        name: name_bytes(name),
        value: mtu as libc::c_int,
        _pad: [0; 20],
    };
    // SAFETY: SIOCSIFMTU reads ifr_mtu (an int after the name).
    if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &mut mreq) } < 0 {
        return Err(DeviceError::io(
            ctx(&format!("setting MTU {mtu}")),
            io::Error::last_os_error(),
        ));
    }
    let mut freq = IfReqFlags {
        name: name_bytes(name),
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write ifr_flags.
    unsafe {
        if libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut freq) < 0 {
            return Err(DeviceError::io(
                ctx("reading flags"),
                io::Error::last_os_error(),
            ));
        }
        freq.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut freq) < 0 {
            return Err(DeviceError::io(
                ctx("bringing it up"),
                io::Error::last_os_error(),
            ));
        }
    }
    let cname = CString::new(name).map_err(|e| DeviceError::Config(e.to_string()))?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(DeviceError::io(
            ctx("looking up its ifindex"),
            io::Error::last_os_error(),
        ));
    }
    Ok((out, offloads, ifindex))
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl TunQueue {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one packet (vnet header included) into `buf`; `Ok(None)` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }

    /// Writes one packet behind the given vnet header (gathered, no copy).
    pub fn write(&self, hdr: &[u8; VNET_HDR_LEN], pkt: &[u8]) -> io::Result<()> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut _,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: pkt.as_ptr() as *mut _,
                iov_len: pkt.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("membrane_tun").is_ok());
        assert!(validate_name("a").is_ok());
        for bad in ["", "sixteen_chars_xx", "a/b", "a b", "a:b", ".", "..", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
