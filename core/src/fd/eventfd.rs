//! eventfd: its counter and whether it counts as a semaphore.

use super::{DumpFd, FdKind, Reopen, fdinfo_field};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crstream_proto::{EventFdFile, FileKind, OpenFile};
use rustix::event::EventfdFlags;

pub(super) struct EventFd;

impl FdKind for EventFd {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[eventfd]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let count = fdinfo_field(&info, "eventfd-count")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| d.bad_fdinfo("no eventfd-count field".into()))?;
        // EFD_SEMAPHORE lives in the eventfd context, not in the file
        // flags, so only the fdinfo of newer kernels shows it.
        let semaphore = match fdinfo_field(&info, "eventfd-semaphore") {
            Some(v) => v != "0",
            None => {
                tracing::debug!(
                    pid = d.pid,
                    fd = d.fd,
                    "no eventfd-semaphore in fdinfo: assuming not a semaphore"
                );
                false
            }
        };
        f.kind = FileKind::Eventfd as i32;
        f.path = d.link.to_vec();
        f.eventfd = Some(EventFdFile { count, semaphore });
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Eventfd)
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr =
            |what: &str, e: std::io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let e = super::part(pid, f, f.eventfd.as_ref(), "eventfd")?;
        let mut flags = EventfdFlags::CLOEXEC;
        if e.semaphore {
            flags |= EventfdFlags::SEMAPHORE;
        }
        let fd = rustix::event::eventfd(0, flags).map_err(|e| ferr("eventfd", e.into()))?;
        // eventfd() takes a 32-bit initial value: write the 64-bit count.
        if e.count != 0 {
            super::pipe::write_all(&fd, &e.count.to_ne_bytes())
                .map_err(|err| ferr("setting the eventfd count", err))?;
        }
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
        Ok(Reopen::Created(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn eventfd_round_trip() {
        let e = rustix::event::eventfd(
            5,
            EventfdFlags::SEMAPHORE | EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )
        .unwrap();
        let f = dump_own(e.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Eventfd);
        let ef = f.eventfd.unwrap();
        assert_eq!(ef.count, 5);
        assert!(ef.semaphore);
        let n = created(&mut EventFd, &f);
        let flags = rustix::fs::fcntl_getfl(&n).unwrap().bits() as i32;
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        let mut v = [0u8; 8];
        assert_eq!(rustix::io::read(&n, &mut v).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(v), 1); // semaphore: one at a time
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", n.as_raw_fd())).unwrap();
        assert_eq!(
            u64::from_str_radix(fdinfo_field(&info, "eventfd-count").unwrap(), 16).unwrap(),
            4
        );
    }
}
