//! epoll: every registration (fd, events, data), added again in the
//! restored process once all of its fds are in place (registrations are
//! keyed by fd number there).

use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::stub::Stub;
use crstream_proto::{EpollFile, EpollTarget, FileKind, OpenFile};

pub(super) struct Epoll;

impl FdKind for Epoll {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[eventpoll]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let mut targets =
            parse_targets(&info).ok_or_else(|| d.bad_fdinfo("bad tfd line".into()))?;
        // Registrations are keyed by (file, fd number): if the process
        // closed or replaced fd t.fd since, the number names another file
        // (or none) now, and re-adding it would watch the wrong thing. Find
        // the registered file among the process's fds.
        let open_fds =
            crate::proc::fds(d.pid).map_err(|err| DumpError::Proc { pid: d.pid, err })?;
        let mut seen: Vec<u32> = Vec::new();
        for t in targets.iter_mut() {
            let toff = seen.iter().filter(|&&n| n == t.fd).count() as u32;
            seen.push(t.fd);
            let is_at = |fd: u32| {
                crate::sys::kcmp::epoll_target_at(d.pid, d.fd as u32, t.fd, toff, fd)
                    .unwrap_or(false)
            };
            if is_at(t.fd) {
                continue;
            }
            match open_fds
                .iter()
                .map(|&fd| fd as u32)
                .find(|&fd| fd != t.fd && is_at(fd))
            {
                Some(fd) => t.file_fd = Some(fd),
                None => t.file_elsewhere = true,
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
        let ferr =
            |what: &str, e: std::io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let fd = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
            .map_err(|e| ferr("epoll_create1", e.into()))?;
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
        Ok(Reopen::Created(fd))
    }

    /// Runs in the one process that restores the instance: before file
    /// locks are set again (closing an fd drops the process's POSIX locks
    /// on its file).
    fn after_table(&mut self, stub: &Stub, f: &OpenFile) -> Result<(), RestoreError> {
        let targets: Vec<&EpollTarget> = f.epoll.iter().flat_map(|e| e.targets.iter()).collect();
        // Disarmed ones first, alone in the set while they fire once.
        let (disarmed, armed): (Vec<&EpollTarget>, Vec<&EpollTarget>) =
            targets.into_iter().partition(|t| is_disarmed(t.events));
        add_targets(stub, f, &disarmed, FIRING)?;
        if !disarmed.is_empty() {
            disarm(stub, f, &disarmed)?;
        }
        add_targets(stub, f, &armed, 0)
    }
}

/// An EPOLLONESHOT registration that fired: the kernel keeps only its
/// flags, and EPOLL_CTL_ADD would arm it for EPOLLERR and EPOLLHUP at least
/// (another thread would then get an event for a file the one that took
/// it still handles).
fn is_disarmed(events: u32) -> bool {
    const FLAGS: u32 =
        (libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLWAKEUP | libc::EPOLLEXCLUSIVE) as u32;
    events & libc::EPOLLONESHOT as u32 != 0 && events & !FLAGS == 0
}

/// What a disarmed registration is added with, so that it fires at once
/// whatever its file is ready for.
const FIRING: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLPRI | libc::EPOLLRDHUP) as u32;

/// Lets the disarmed registrations just added (the only ones in the set)
/// fire once, from inside the process, which disarms them. One whose file
/// is ready for nothing stays armed, said in a warning.
fn disarm(stub: &Stub, f: &OpenFile, disarmed: &[&EpollTarget]) -> Result<(), RestoreError> {
    const EVENT_LEN: u64 = 12;
    let max = disarmed.len().min(64) as u64;
    let buf = stub.put(
        crate::stub::SCRATCH_DATA,
        &vec![0u8; (max * EVENT_LEN) as usize],
    )?;
    loop {
        let n = stub
            .call(
                "epoll_wait",
                libc::SYS_epoll_wait,
                &[f.fd as u64, buf, max, 0],
            )
            .map_err(|e| {
                super::file_error(
                    stub.pid,
                    f,
                    format!("disarming its one-shot registrations: {e}"),
                )
            })?;
        if n == 0 {
            break;
        }
    }
    let info = crate::proc::read_string(format!("/proc/{}/fdinfo/{}", stub.pid, f.fd))
        .map_err(|e| super::file_error(stub.pid, f, e.to_string()))?;
    let now = parse_targets(&info).unwrap_or_default();
    for t in disarmed {
        if now.iter().any(|n| n.fd == t.fd && !is_disarmed(n.events)) {
            tracing::warn!(
                pid = stub.pid,
                epoll = f.fd,
                fd = t.fd,
                "a one-shot epoll registration that had fired comes back armed for errors and \
                 hang-ups: its file is ready for nothing now"
            );
        }
    }
    Ok(())
}

/// Adds the registrations `targets` of the epoll instance `f`, with the
/// events `extra` besides their own.
fn add_targets(
    stub: &Stub,
    f: &OpenFile,
    targets: &[&EpollTarget],
    extra: u32,
) -> Result<(), RestoreError> {
    for t in targets.iter().copied() {
        let err = |e: crate::error::TaskError| {
            super::file_error(
                stub.pid,
                f,
                format!("re-adding fd {} to the epoll set: {e}", t.fd),
            )
        };
        if t.file_elsewhere {
            return Err(RestoreError::Image(format!(
                "pid {} fd {}: an epoll registration whose file this process does not hold",
                stub.pid, f.fd
            )));
        }
        let mut ev = Vec::with_capacity(12);
        ev.extend_from_slice(&(t.events | extra).to_le_bytes());
        ev.extend_from_slice(&t.data.to_le_bytes());
        let at = stub.put(crate::stub::SCRATCH_DATA, &ev)?;
        let add = |ep: u64| {
            stub.call(
                "epoll_ctl",
                libc::SYS_epoll_ctl,
                &[ep, libc::EPOLL_CTL_ADD as u64, t.fd as u64, at],
            )
        };
        match t.file_fd {
            None => add(f.fd as u64).map_err(err)?,
            Some(file_fd) => with_file_at(stub, file_fd, t.fd, f.fd, add).map_err(err)?,
        };
    }
    Ok(())
}

/// Runs `add` with the file of fd `file_fd` at fd number `tfd`, then gives
/// `tfd` back what it held (with its close-on-exec flag), or closes it.
/// `add` gets the number the epoll fd `epfd` has meanwhile: another one if
/// the registration's number is the epoll fd's own (registered before the
/// epoll got it).
fn with_file_at(
    stub: &Stub,
    file_fd: u32,
    tfd: u32,
    epfd: u32,
    add: impl FnOnce(u64) -> Result<i64, crate::error::TaskError>,
) -> Result<i64, crate::error::TaskError> {
    let fcntl = |fd: u32, cmd: i32, arg: u64| {
        stub.call("fcntl", libc::SYS_fcntl, &[fd as u64, cmd as u64, arg])
    };
    // What tfd holds now, kept at a free number meanwhile.
    let held = match fcntl(tfd, libc::F_GETFD, 0) {
        Ok(fd_flags) => Some((fcntl(tfd, libc::F_DUPFD_CLOEXEC, 0)? as u64, fd_flags)),
        Err(crate::error::TaskError::Syscall {
            errno: libc::EBADF, ..
        }) => None,
        Err(e) => return Err(e),
    };
    stub.call("dup2", libc::SYS_dup2, &[file_fd as u64, tfd as u64])?;
    let added = add(match held {
        Some((keep, _)) if tfd == epfd => keep,
        _ => epfd as u64,
    });
    match held {
        Some((keep, fd_flags)) => {
            let cloexec = if fd_flags & libc::FD_CLOEXEC as i64 != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            stub.call("dup3", libc::SYS_dup3, &[keep, tfd as u64, cloexec as u64])?;
            stub.call("close", libc::SYS_close, &[keep])?;
        }
        None => {
            stub.call("close", libc::SYS_close, &[tfd as u64])?;
        }
    }
    added
}

/// Whether a registration of the epoll file `f` cannot be restored from
/// its own process's fds (see `EpollTarget.file_elsewhere`).
pub(super) fn needs_another_holder(f: &OpenFile) -> bool {
    f.epoll
        .iter()
        .flat_map(|e| e.targets.iter())
        .any(|t| t.file_elsewhere)
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
    fn epoll_targets_are_saved_and_a_closed_fd_is_found_where_its_file_is() {
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
                ..Default::default()
            },
            EpollTarget {
                fd: r.as_raw_fd() as u32,
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                data: 0xdead_beef_0000_0001,
                ..Default::default()
            },
        ];
        want.sort_by_key(|t| t.fd);
        assert_eq!(t, want);
        let n = created(&mut Epoll, &f);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", n.as_raw_fd())).unwrap();
        assert_eq!(link.to_str().unwrap(), "anon_inode:[eventpoll]");
        // A registration whose fd number was closed: found at the fd that
        // still holds its file.
        let e2 = e.as_fd().try_clone_to_owned().unwrap();
        let num = e.as_raw_fd() as u32;
        drop(e);
        let f = dump_own(ep.as_raw_fd()).unwrap();
        let t = f.epoll.clone().unwrap().targets;
        let moved = t.iter().find(|t| t.fd == num).unwrap();
        assert_eq!(moved.file_fd, Some(e2.as_raw_fd() as u32));
        assert!(!moved.file_elsewhere);
        assert!(
            t.iter()
                .filter(|t| t.fd != num)
                .all(|t| t.file_fd.is_none())
        );
        assert!(!needs_another_holder(&f));
        // Its file in no fd of the process (here kept alive by a message
        // in flight): marked, for the tree to refuse.
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        let fds = [e2.as_fd()];
        assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &a,
            &[std::io::IoSlice::new(b"x")],
            &mut cmsg,
            SendFlags::empty(),
        )
        .unwrap();
        drop(e2);
        let f = dump_own(ep.as_raw_fd()).unwrap();
        assert!(
            f.epoll
                .as_ref()
                .unwrap()
                .targets
                .iter()
                .any(|t| t.fd == num && t.file_elsewhere)
        );
        assert!(needs_another_holder(&f));
    }
}
