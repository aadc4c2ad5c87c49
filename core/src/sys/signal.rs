//! Signal masks and signalfds of crstream's own threads.

use std::io;
use std::os::fd::OwnedFd;

/// A sigset_t holding the signals of `mask` (bit n-1: signal n).
fn sigset(mask: u64) -> libc::sigset_t {
    let mut set: libc::sigset_t = super::zeroed();
    // SAFETY: `set` is a valid sigset_t; invalid numbers are rejected by
    // libc and left out.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in 1..=64 {
            if mask & (1u64 << (sig - 1)) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
    }
    set
}

/// The mask bit of signal `sig`.
pub(crate) fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// Blocks (`block`) or unblocks the signals of `mask` in the calling thread.
pub(crate) fn thread_mask(mask: u64, block: bool) {
    let set = sigset(mask);
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: changes the calling thread's signal mask from a local set.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

/// A signalfd for the signals of `mask`, with `flags` (SFD_*).
pub(crate) fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    let set = sigset(mask);
    // SAFETY: `set` is a valid sigset_t; -1 asks for a new fd.
    super::cvt_fd(unsafe { libc::signalfd(-1, &set, flags) })
}

/// The signal number of the next signalfd_siginfo read from `fd`, if any.
pub(crate) fn read_signalfd(fd: &OwnedFd) -> Option<u32> {
    let mut info = [0u8; 128];
    let n = rustix::io::read(fd, &mut info).ok()?;
    (n >= 4).then(|| u32::from_le_bytes(info[..4].try_into().expect("4 bytes")))
}
