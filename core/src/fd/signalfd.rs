//! signalfd: the set of signals it reads.

use super::{DumpFd, FdKind, Reopen, fdinfo_field};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crstream_proto::{FileKind, OpenFile, SignalFdFile};

pub(super) struct SignalFd;

impl FdKind for SignalFd {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[signalfd]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let mask = fdinfo_field(&info, "sigmask")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| d.bad_fdinfo("no sigmask field".into()))?;
        f.kind = FileKind::Signalfd as i32;
        f.path = d.link.to_vec();
        f.signalfd = Some(SignalFdFile { mask });
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Signalfd)
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |reason: String| super::file_error(pid, f, reason);
        let s = super::part(pid, f, f.signalfd.as_ref(), "signalfd")?;
        let fd = crate::sys::signal::signalfd(s.mask, libc::SFD_CLOEXEC)
            .map_err(|e| ferr(format!("signalfd: {e}")))?;
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr(format!("F_SETFL: {e}")))?;
        Ok(Reopen::Created(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use crate::sys::signal::bit;
    use std::os::fd::AsRawFd;

    #[test]
    fn signalfd_round_trip() {
        let want = bit(libc::SIGUSR1) | bit(libc::SIGRTMIN() + 2);
        let s = crate::sys::signal::signalfd(want, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK).unwrap();
        let f = dump_own(s.as_raw_fd()).unwrap();
        assert_eq!(f.signalfd.as_ref().unwrap().mask, want);
        let n = created(&mut SignalFd, &f);
        let again = dump_own(n.as_raw_fd()).unwrap();
        assert_eq!(again.signalfd.unwrap().mask, want);
        assert_eq!(again.open_flags, f.open_flags);
    }
}
