//! epoll: every registration (fd, events, data), added again in the
//! restored process once all of its fds are in place (registrations are
//! keyed by fd number there).

use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::paths::show;
use crate::stub::Stub;
use crstream_proto::{EpollFile, EpollTarget, FileKind, OpenFile};

pub(super) struct Epoll;

impl FdKind for Epoll {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[eventpoll]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let targets = parse_targets(&info).ok_or_else(|| d.bad_fdinfo("bad tfd line".into()))?;
        for t in &targets {
            // Registrations are keyed by (file, fd number): if the process
            // closed or replaced fd t.fd since, the number now names another
            // file (or none) and re-adding it would watch the wrong thing.
            if !crate::sys::kcmp::epoll_target_is(d.pid, d.fd as u32, t.fd).unwrap_or(false) {
                return Err(d.refuse(format!(
                    "watches a file registered as fd {} that is no longer open at that number",
                    t.fd
                )));
            }
        }
        f.kind = FileKind::Epoll as i32;
        f.path = d.link.to_vec();
        f.epoll = Some(EpollFile { targets });
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Epoll)
    }

    /// An empty epoll instance: the registrations come in `after_table`.
    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |what: &str, e: std::io::Error| RestoreError::File {
            pid,
            fd: f.fd,
            path: show(&f.path).into_owned(),
            reason: format!("{what}: {e}"),
        };
        let fd = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
            .map_err(|e| ferr("epoll_create1", e.into()))?;
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
        Ok(Reopen::Created(fd))
    }

    fn after_table(&mut self, stub: &Stub, f: &OpenFile) -> Result<(), RestoreError> {
        for t in f.epoll.iter().flat_map(|e| e.targets.iter()) {
            let mut ev = Vec::with_capacity(12);
            ev.extend_from_slice(&t.events.to_le_bytes());
            ev.extend_from_slice(&t.data.to_le_bytes());
            let at = stub.put(crate::stub::SCRATCH_DATA, &ev)?;
            stub.call(
                "epoll_ctl",
                libc::SYS_epoll_ctl,
                &[f.fd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, at],
            )
            .map_err(|e| RestoreError::File {
                pid: stub.pid,
                fd: f.fd,
                path: show(&f.path).into_owned(),
                reason: format!("re-adding fd {} to the epoll set: {e}", t.fd),
            })?;
        }
        Ok(())
    }
}

/// Parses the "tfd: N events: HEX data: HEX ..." lines of an epoll fdinfo.
fn parse_targets(info: &str) -> Option<Vec<EpollTarget>> {
    let mut out = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let mut it = line.split_whitespace();
        let mut t = EpollTarget::default();
        while let Some(k) = it.next() {
            match k {
                "tfd:" => t.fd = it.next()?.parse().ok()?,
                "events:" => t.events = u32::from_str_radix(it.next()?, 16).ok()?,
                "data:" => t.data = u64::from_str_radix(it.next()?, 16).ok()?,
                _ => {}
            }
        }
        out.push(t);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use rustix::event::epoll::{self, EventData, EventFlags};
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn epoll_targets_are_saved_and_a_closed_fd_is_refused() {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let e = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        epoll::add(
            &ep,
            &e,
            EventData::new_u64(0x1234),
            EventFlags::IN | EventFlags::ET,
        )
        .unwrap();
        epoll::add(
            &ep,
            &r,
            EventData::new_u64(0xdead_beef_0000_0001),
            EventFlags::IN | EventFlags::RDHUP,
        )
        .unwrap();
        let f = dump_own(ep.as_raw_fd()).unwrap();
        let mut t = f.epoll.clone().unwrap().targets;
        t.sort_by_key(|t| t.fd);
        // The kernel always adds EPOLLERR|EPOLLHUP to a registration.
        for t in &mut t {
            t.events &= !((libc::EPOLLERR | libc::EPOLLHUP) as u32);
        }
        let mut want = vec![
            EpollTarget {
                fd: e.as_raw_fd() as u32,
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                data: 0x1234,
            },
            EpollTarget {
                fd: r.as_raw_fd() as u32,
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                data: 0xdead_beef_0000_0001,
            },
        ];
        want.sort_by_key(|t| t.fd);
        assert_eq!(t, want);
        let n = created(&mut Epoll, &f);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", n.as_raw_fd())).unwrap();
        assert_eq!(link.to_str().unwrap(), "anon_inode:[eventpoll]");
        // A registration whose fd number was closed is refused.
        let e2 = e.as_fd().try_clone_to_owned().unwrap();
        let num = e.as_raw_fd();
        drop(e);
        let err = dump_own(ep.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains(&format!("fd {num}")), "{err}");
        drop(e2);
    }
}
