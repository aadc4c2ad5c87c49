//! Terminal ioctls on raw bytes and ints, the way the image keeps a
//! terminal's state (termios2, winsize, flags).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// ioctl(fd, request, &int) that reads an int.
pub(crate) fn get_int(fd: impl AsFd, request: u64) -> io::Result<i32> {
    let mut v: i32 = 0;
    // SAFETY: the request writes one int.
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request as _, &mut v) })?;
    Ok(v)
}

/// Puts `c` in the terminal's input as if typed (TIOCSTI): the line
/// discipline takes it before the call returns. Needs CAP_SYS_ADMIN
/// (unless `dev.tty.legacy_tiocsti` allows it for one's own terminal).
pub(crate) fn insert_input(fd: impl AsFd, c: u8) -> io::Result<()> {
    // SAFETY: the request reads one byte.
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSTI as _, &c) }).map(drop)
}

/// ioctl(fd, request, &int) that takes an int by pointer.
pub(crate) fn set_int(fd: impl AsFd, request: u64, v: i32) -> io::Result<()> {
    // SAFETY: the request reads one int.
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request as _, &v) }).map(drop)
}

/// ioctl(fd, request) with no argument (TIOCEXCL).
pub(crate) fn call(fd: impl AsFd, request: u64) -> io::Result<()> {
    // SAFETY: the request takes no argument.
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request as _, 0) }).map(drop)
}

/// ioctl(fd, request, buf) that fills `len` bytes.
pub(crate) fn get_bytes(fd: impl AsFd, request: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // SAFETY: the request writes at most `len` bytes (the caller's size of
    // the kernel structure).
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request as _, buf.as_mut_ptr()) })?;
    Ok(buf)
}

/// ioctl(fd, request, buf) that reads the structure in `buf`.
pub(crate) fn set_bytes(fd: impl AsFd, request: u64, buf: &[u8]) -> io::Result<()> {
    // SAFETY: the request reads the structure, which `buf` holds whole (the
    // caller checks its length).
    super::cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request as _, buf.as_ptr()) }).map(drop)
}

/// TIOCGPTPEER: a new fd of the slave of master `fd`.
pub(crate) fn peer(fd: impl AsFd, flags: i32) -> io::Result<OwnedFd> {
    const TIOCGPTPEER: u64 = 0x5441;
    // SAFETY: the request takes open flags by value and returns a new fd.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), TIOCGPTPEER as _, flags) };
    let r = super::cvt(r)?;
    // SAFETY: a fresh fd the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}
