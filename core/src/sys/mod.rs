//! The thin layer between the engine and the kernel: the syscalls, ioctls
//! and kernel structures that neither the standard library nor rustix
//! offers, as typed, safe functions. What talking to the kernel needs of
//! `unsafe` lives here; the kinds of state call these (and rustix) instead.
//!
//! Constants the libc crate lacks for x86_64 gnu are defined here, once,
//! next to the call that uses them (values from the kernel's uapi headers).

pub(crate) mod bpf;
pub(crate) mod cpu;
pub(crate) mod fanotify;
pub(crate) mod fds;
pub(crate) mod ids;
pub(crate) mod kcmp;
pub(crate) mod mem;
pub(crate) mod pidfd;
pub(crate) mod process;
pub(crate) mod ptrace;
pub(crate) mod sched;
pub(crate) mod shm;
pub(crate) mod signal;
pub(crate) mod socket;
pub(crate) mod tty;
pub(crate) mod uffd;

use std::io;

/// A libc return value: negative means "see errno".
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A `libc::syscall` return value: negative means "see errno".
pub(crate) fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A fresh fd returned by a libc call, owned from now on.
fn cvt_fd(r: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a non-negative result is a new fd that nothing else owns.
    cvt(r).map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The time of clock `clockid` now, in nanoseconds.
pub(crate) fn clock_now_ns(clockid: libc::clockid_t) -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    cvt(unsafe { libc::clock_gettime(clockid, &mut ts) })?;
    Ok((ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64))
}

/// A plain-data kernel structure, all zeroes (its valid "empty" value).
pub(crate) fn zeroed<T: PlainData>() -> T {
    // SAFETY: PlainData types are integers and arrays of integers, for
    // which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Kernel structures made only of integers (any bit pattern is valid).
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose fields are all integers or
/// arrays of integers.
pub(crate) unsafe trait PlainData: Copy {}

// SAFETY: integers only.
unsafe impl PlainData for libc::user_regs_struct {}
// SAFETY: integers only.
unsafe impl PlainData for libc::sockaddr_storage {}
// SAFETY: integers only.
unsafe impl PlainData for libc::tcp_info {}
// SAFETY: integers only.
unsafe impl PlainData for libc::shmid_ds {}
// SAFETY: integers only.
unsafe impl PlainData for libc::sigset_t {}
// SAFETY: integers (flags, c_cc bytes, speeds) only.
unsafe impl PlainData for libc::termios {}

/// The bytes of a plain-data structure.
pub(crate) fn bytes_of<T: PlainData>(v: &T) -> &[u8] {
    // SAFETY: `v` is size_of::<T>() initialised bytes with no padding
    // that matters to a reader of integers.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The bytes of a plain-data structure, to be filled by the kernel.
pub(crate) fn bytes_of_mut<T: PlainData>(v: &mut T) -> &mut [u8] {
    // SAFETY: as above; any bytes written leave a valid T (PlainData).
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast::<u8>(), std::mem::size_of::<T>()) }
}
