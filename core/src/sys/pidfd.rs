//! pidfds: a handle on a process, and its fds taken into ours.

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

fn pid(pid: i32) -> io::Result<Pid> {
    Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// A pidfd of process `pid` (close-on-exec).
pub(crate) fn open(p: i32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(pid(p)?, PidfdFlags::empty())?)
}

/// A duplicate of fd `fd` of the process of `pidfd`, in ours: the same open
/// file description (close-on-exec).
pub(crate) fn getfd(pidfd: impl AsFd, fd: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(
        pidfd,
        fd,
        PidfdGetfdFlags::empty(),
    )?)
}

/// A duplicate of fd `fd` of process `p`, in ours (see [`getfd`]).
pub(crate) fn take_fd(p: i32, fd: RawFd) -> io::Result<OwnedFd> {
    getfd(open(p)?, fd)
}

/// A pidfd of a process that has exited and been reaped (what a pidfd of
/// a dead process is, its fdinfo showing "Pid: -1"): of a child forked
/// for the purpose, which exits at once.
pub(crate) fn of_dead_process(flags: PidfdFlags) -> io::Result<OwnedFd> {
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: leaving the forked child at once.
        unsafe { libc::_exit(0) };
    }
    let fd = rustix::process::pidfd_open(pid(child)?, flags);
    // Reaped whatever happened, so that no zombie is left.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
    Ok(fd?)
}
