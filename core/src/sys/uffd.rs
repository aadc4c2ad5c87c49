//! userfaultfd (include/uapi/linux/userfaultfd.h): registering memory of
//! a process, reading its faults and events, and filling its pages.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
pub(crate) const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub(crate) const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub(crate) const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub(crate) const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const MSG_LEN: usize = 32;
/// userfaultfd(2) flag: only faults from user mode.
pub(crate) const USER_MODE_ONLY: i32 = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// Marker for the request structures above.
///
/// # Safety
/// Implement only for the `#[repr(C)]` structure request `REQ` expects.
unsafe trait Request {
    const REQ: libc::c_ulong;
}
// SAFETY: each is the structure its ioctl reads and writes.
unsafe impl Request for UffdioApi {
    const REQ: libc::c_ulong = UFFDIO_API;
}
// SAFETY: as above.
unsafe impl Request for UffdioRegister {
    const REQ: libc::c_ulong = UFFDIO_REGISTER;
}
// SAFETY: as above.
unsafe impl Request for UffdioRange {
    const REQ: libc::c_ulong = UFFDIO_WAKE;
}
// SAFETY: as above.
unsafe impl Request for UffdioCopy {
    const REQ: libc::c_ulong = UFFDIO_COPY;
}
// SAFETY: as above.
unsafe impl Request for UffdioZeropage {
    const REQ: libc::c_ulong = UFFDIO_ZEROPAGE;
}

/// An event read from a userfaultfd.
#[derive(Debug)]
pub(crate) enum Event {
    PageFault {
        addr: u64,
    },
    /// The process forked; the child's userfaultfd (which we close).
    Fork {
        child: OwnedFd,
    },
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// madvise(DONTNEED/REMOVE) or munmap of [start, end).
    Released {
        start: u64,
        end: u64,
    },
    Other(u8),
}

/// A userfaultfd, ours or taken from another process.
pub(crate) struct Userfaultfd(OwnedFd);

impl std::os::fd::AsFd for Userfaultfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Userfaultfd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self(fd)
    }

    fn ioctl<T: Request>(&self, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is the #[repr(C)] structure T::REQ expects (Request).
        super::cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), T::REQ, arg as *mut T) }).map(drop)
    }

    /// The API handshake asking for `features`; returns those supported.
    pub(crate) fn api(&self, features: u64) -> io::Result<u64> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        self.ioctl(&mut api)?;
        Ok(api.features)
    }

    /// Registers [start, start + len) for faults on missing pages.
    pub(crate) fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        self.ioctl(&mut UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        })
    }

    /// Copies `data` to `dst` in the registered process and wakes the
    /// threads waiting there. Returns the bytes copied and, if it stopped
    /// early, why.
    pub(crate) fn copy(&self, dst: u64, data: &[u8]) -> (u64, io::Result<()>) {
        self.copy_mode(dst, data, 0)
    }

    /// Like [`copy`](Self::copy), without waking anyone: for memory no
    /// thread can be waiting on yet.
    pub(crate) fn copy_quiet(&self, dst: u64, data: &[u8]) -> (u64, io::Result<()>) {
        self.copy_mode(dst, data, UFFDIO_COPY_MODE_DONTWAKE)
    }

    fn copy_mode(&self, dst: u64, data: &[u8], mode: u64) -> (u64, io::Result<()>) {
        let mut c = UffdioCopy {
            dst,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode,
            copy: 0,
        };
        match self.ioctl(&mut c) {
            Ok(()) => (data.len() as u64, Ok(())),
            Err(e) => (c.copy.max(0) as u64, Err(e)),
        }
    }

    /// Maps the zero page at `page`.
    pub(crate) fn zeropage(&self, page: u64, len: u64) -> io::Result<()> {
        self.ioctl(&mut UffdioZeropage {
            range: UffdioRange { start: page, len },
            mode: 0,
            zeropage: 0,
        })
    }

    /// Wakes threads waiting on [start, start + len).
    pub(crate) fn wake(&self, start: u64, len: u64) {
        let _ = self.ioctl(&mut UffdioRange { start, len });
    }

    /// The events queued now (none: empty), without blocking (the fd is
    /// non-blocking).
    pub(crate) fn read_events(&self) -> io::Result<Vec<Event>> {
        let mut msg = [0u8; MSG_LEN * 16];
        let got = loop {
            match rustix::io::read(&self.0, &mut msg) {
                Ok(n) => break n,
                Err(rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        Ok(msg[..got].chunks_exact(MSG_LEN).map(parse_event).collect())
    }
}

/// struct uffd_msg: event (u8), 7 bytes, then the event's 24 bytes.
fn parse_event(m: &[u8]) -> Event {
    let word = |i: usize| u64::from_le_bytes(m[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
    match m[0] {
        // pagefault: flags, address, ptid.
        EVENT_PAGEFAULT => Event::PageFault { addr: word(1) },
        EVENT_FORK => {
            let fd = word(0) as u32 as RawFd;
            // SAFETY: the kernel installed this fd in our table for us.
            Event::Fork {
                child: unsafe { OwnedFd::from_raw_fd(fd) },
            }
        }
        EVENT_REMAP => Event::Remap {
            from: word(0),
            to: word(1),
            len: word(2),
        },
        EVENT_REMOVE | EVENT_UNMAP => Event::Released {
            start: word(0),
            end: word(1),
        },
        other => Event::Other(other),
    }
}

/// A userfaultfd of our own (to check that the kernel has them).
pub(crate) fn own(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd with integer flags.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    super::cvt_fd(super::cvt_long(r)? as libc::c_int)
}
