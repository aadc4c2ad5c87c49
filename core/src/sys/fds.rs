//! File descriptors: the calls on them that rustix does not offer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// _IOW('T', 0, __u64): sets the expiration count of a timerfd
/// (CONFIG_CHECKPOINT_RESTORE kernels).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// Sets the count of expirations not yet read of a timerfd.
pub(crate) fn set_timerfd_ticks(fd: impl AsFd, ticks: u64) -> io::Result<()> {
    // SAFETY: the ioctl reads one u64 from a local.
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), TFD_IOC_SET_TICKS, &ticks) }).map(drop)
}

/// open_by_handle_at: opens the file of a file handle (type and bytes as
/// /proc fdinfo shows them) through a mount of its filesystem, with
/// `flags` (needs CAP_DAC_READ_SEARCH).
pub(crate) fn open_by_handle(
    mount: impl AsFd,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    // struct file_handle: handle_bytes, handle_type, then the bytes.
    let mut fh = Vec::with_capacity(8 + handle.len());
    fh.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&handle_type.to_ne_bytes());
    fh.extend_from_slice(handle);
    // SAFETY: `fh` is a struct file_handle of handle_bytes bytes, alive
    // across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_fd().as_raw_fd(),
            fh.as_ptr(),
            flags,
        )
    };
    super::cvt_fd(super::cvt_long(r)? as libc::c_int)
}
