//! kcmp(2): whether two processes share a kernel object.

use std::io;

/// What kcmp compares (include/uapi/linux/kcmp.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Shared {
    /// Memory (CLONE_VM).
    Vm = 1,
    /// The fd table (CLONE_FILES).
    Files = 2,
    /// cwd, root and umask (CLONE_FS).
    Fs = 3,
}

const KCMP_FILE: i32 = 0;
const KCMP_EPOLL_TFD: i32 = 7;

fn kcmp(pid1: i32, pid2: i32, ty: i32, idx1: u64, idx2: u64) -> io::Result<bool> {
    // SAFETY: kcmp with integer arguments (for KCMP_EPOLL_TFD `idx2` points
    // to a live structure, see `epoll_target_is`).
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, ty, idx1, idx2) };
    // 0: equal; 1, 2: ordered; 3: not equal.
    super::cvt_long(r).map(|r| r == 0)
}

/// Whether `pid1` and `pid2` share `what`.
pub(crate) fn shares(pid1: i32, pid2: i32, what: Shared) -> io::Result<bool> {
    kcmp(pid1, pid2, what as i32, 0, 0)
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are one open file
/// description.
pub(crate) fn same_file(pid1: i32, fd1: u32, pid2: i32, fd2: u32) -> io::Result<bool> {
    kcmp(pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64)
}

/// Whether the file an epoll instance (fd `epfd` of `pid`) watches as fd
/// number `tfd` (the `toff`-th registration with that number) is the file
/// of fd `fd` of `pid` (an epoll registration outlives the fd it was made
/// with: fd `tfd` may be closed or name another file now).
pub(crate) fn epoll_target_at(
    pid: i32,
    epfd: u32,
    tfd: u32,
    toff: u32,
    fd: u32,
) -> io::Result<bool> {
    // struct kcmp_epoll_slot: efd, tfd, toff.
    let slot: [u32; 3] = [epfd, tfd, toff];
    kcmp(pid, pid, KCMP_EPOLL_TFD, fd as u64, slot.as_ptr() as u64)
}
