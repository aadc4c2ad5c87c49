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

/// name_to_handle_at of `path`, following a last symlink (a /proc magic
/// link leads to the file it opens): (handle type, handle bytes).
pub(crate) fn name_to_handle(path: &str) -> io::Result<(i32, Vec<u8>)> {
    const MAX_HANDLE_SZ: usize = 128;
    let path = std::ffi::CString::new(path).map_err(|_| io::ErrorKind::InvalidInput)?;
    // struct file_handle: handle_bytes (in: room), handle_type, the bytes.
    let mut fh = vec![0u8; 8 + MAX_HANDLE_SZ];
    fh[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `fh` has room for MAX_HANDLE_SZ handle bytes after its
    // header, and every pointer outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            fh.as_mut_ptr(),
            &mut mount_id,
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    super::cvt_long(r)?;
    let len = u32::from_ne_bytes(fh[..4].try_into().unwrap()) as usize;
    let handle_type = i32::from_ne_bytes(fh[4..8].try_into().unwrap());
    Ok((handle_type, fh[8..8 + len.min(MAX_HANDLE_SZ)].to_vec()))
}

// fcntl commands libc lacks (include/uapi/asm-generic/fcntl.h).
pub(crate) const F_SETSIG: i32 = 10;
pub(crate) const F_GETSIG: i32 = 11;
pub(crate) const F_SETOWN_EX: i32 = 15;
pub(crate) const F_GETOWN_EX: i32 = 16;

/// The owner signals for the file of `fd` go to (F_GETOWN_EX):
/// (F_OWNER_TID/PID/PGRP, id), and the signal sent (F_GETSIG, 0: SIGIO).
pub(crate) fn owner(fd: impl AsFd) -> io::Result<(i32, i32, i32)> {
    let fd = fd.as_fd().as_raw_fd();
    // struct f_owner_ex { int type; pid_t pid; }
    let mut ex = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex into a local.
    super::cvt(unsafe { libc::fcntl(fd, F_GETOWN_EX, ex.as_mut_ptr()) })?;
    // SAFETY: F_GETSIG takes no argument.
    let sig = super::cvt(unsafe { libc::fcntl(fd, F_GETSIG) })?;
    Ok((ex[0], ex[1], sig))
}
