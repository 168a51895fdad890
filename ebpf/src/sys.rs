//! The two bpf(2) commands aya 0.14 does not expose: opening a pinned object by path
//! and BPF_LINK_DETACH. Needed so that detaching takes effect when the call returns;
//! unlinking a pin alone releases the link only after an RCU grace period.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// bpf_attr is a union; a zeroed buffer larger than the fields we set is accepted (the
/// kernel requires the unused tail to be zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr points to a valid, initialised buffer of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the BPF object pinned at `path`.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr([0; 128]);
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.0[..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches a link from its hook now, whoever else still holds it.
pub(crate) fn link_detach(link: &OwnedFd) -> io::Result<()> {
    let mut attr = Attr([0; 128]);
    // struct { __u32 link_fd; } link_detach
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}
