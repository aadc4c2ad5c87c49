//! fanotify(7): creating a group and marking objects.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// fanotify_init(2).
pub(crate) fn init(flags: u32, event_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; the fd returned is new and ours.
    let fd = super::cvt(unsafe { libc::fanotify_init(flags, event_flags) })?;
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fanotify_mark(2) on `path` (relative to the working directory).
pub(crate) fn mark(group: BorrowedFd<'_>, flags: u32, mask: u64, path: &CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated path that outlives the call.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    super::cvt(r).map(drop)
}
