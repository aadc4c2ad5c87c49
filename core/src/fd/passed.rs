//! Files in flight: carried by messages queued on unix sockets
//! (SCM_RIGHTS) and not received yet.
//!
//! Dump: peeking a queue (`socket.rs`) gives crstream copies of the files
//! its messages carry. Each one an fd of the tree also holds (the same open
//! file description, by kcmp) is saved as that fd; one no fd of the tree
//! holds (its sender closed it after sending) is saved itself, by the fd
//! kinds, as if crstream held it: regular files (also deleted ones and
//! memfds), pipes, unix sockets and eventfds. Any other kind held by none
//! is refused by name.
//!
//! Restore: unix sockets send their queues again once every fd table is in
//! place (any fd of the tree may be needed), the files each message
//! carried with it: taken from the process that holds them, or made again
//! by their kind in crstream.

use super::{DumpFd, Files, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, ProcessDump, RestoreObjects};
use crate::paths::show;
use crate::sys::kcmp;
use crstream_proto::{FileTable, OpenFile, PassedFds, PassedFile};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The files a message queued on a socket carries, as peeked: crstream's
/// copies.
pub(super) struct Passing {
    /// The socket's fd in the process being dumped.
    pub socket_fd: i32,
    /// The message's index in the socket's saved queue.
    pub message: u32,
    pub fds: Vec<OwnedFd>,
}

/// A file in flight found in a process, until the whole tree is read.
pub(super) struct InFlight {
    pid: i32,
    socket_fd: i32,
    message: u32,
    fd: OwnedFd,
    /// It saved by its kind, for when no fd of the tree holds it (else the
    /// error: of a kind that cannot be saved in flight, or a refusal).
    saved: Result<OpenFile, DumpError>,
}

/// Whether a file no fd of the tree holds may be saved by its kind from
/// crstream's copy: the kinds that need no process around them.
fn savable_alone(link: &[u8], fd: &OwnedFd) -> bool {
    let terminal = [
        &b"/dev/pts/"[..],
        b"/dev/ptmx",
        b"/dev/tty",
        b"/dev/console",
    ]
    .iter()
    .any(|p| link.starts_with(p));
    let unix = || {
        crate::sys::socket::getsockopt_int(fd, libc::SOL_SOCKET, crate::sys::socket::SO_DOMAIN)
            .is_ok_and(|d| d == libc::AF_UNIX)
    };
    (link.starts_with(b"/") && !terminal)
        || link.starts_with(b"pipe:")
        || link == b"anon_inode:[eventfd]"
        || (link.starts_with(b"socket:") && unix())
}

impl Files {
    /// After the fds of process `p`: the files the messages queued on its
    /// sockets carry, each saved alone for now (see [`InFlight`]).
    pub(super) fn read_in_flight(&mut self, p: &mut DumpProcess<'_>, job_tty: u64) {
        let passing: Vec<Passing> = self
            .kinds
            .iter_mut()
            .flat_map(|k| k.take_passed())
            .collect();
        let me = std::process::id() as i32;
        for pass in passing {
            for fd in pass.fds {
                let mut saved = self.save_alone(p, me, &fd, job_tty);
                // A unix socket in flight with files in flight in its own
                // queue: not followed further.
                let nested: Vec<Passing> = self
                    .kinds
                    .iter_mut()
                    .flat_map(|k| k.take_passed())
                    .collect();
                if !nested.is_empty() && saved.is_ok() {
                    saved = Err(DumpError::UnsupportedFile {
                        pid: p.pid,
                        fd: -1,
                        what: "a unix socket whose own queue carries files".into(),
                    });
                }
                let saved = saved.map_err(|e| DumpError::UnsupportedFile {
                    pid: p.pid,
                    fd: pass.socket_fd,
                    what: format!("a file a queued message carries (SCM_RIGHTS): {e}"),
                });
                self.in_flight.push(InFlight {
                    pid: p.pid,
                    socket_fd: pass.socket_fd,
                    message: pass.message,
                    fd,
                    saved,
                });
            }
        }
    }

    /// A file in flight saved by its kind from crstream's copy `fd`.
    fn save_alone(
        &mut self,
        p: &mut DumpProcess<'_>,
        me: i32,
        fd: &OwnedFd,
        job_tty: u64,
    ) -> Result<OpenFile, DumpError> {
        let raw = fd.as_raw_fd();
        let proc_err = |err| DumpError::Proc { pid: me, err };
        let link = crate::proc::read_link(format!("/proc/self/fd/{raw}")).map_err(proc_err)?;
        if !savable_alone(&link, fd) {
            return Err(DumpError::UnsupportedFile {
                pid: p.pid,
                fd: -1,
                what: format!(
                    "{}, which no process of the tree holds: not supported",
                    show(&link)
                ),
            });
        }
        let info = crate::proc::fdinfo(me, raw).map_err(proc_err)?;
        let md = std::fs::metadata(format!("/proc/self/fd/{raw}")).ok();
        let mut f = OpenFile {
            fd: raw as u32,
            open_flags: info.flags & !(libc::O_CLOEXEC as u32),
            offset: info.pos,
            ..Default::default()
        };
        let mut d = DumpFd {
            pid: me,
            fd: raw,
            link: &link,
            md: md.as_ref(),
            stat: p.stat,
            shell_job: p.shell_job,
            tcp: p.tcp,
            ext_unix: p.ext_unix,
            external_pipes: p.external_pipes,
            skip_in_flight: p.skip_in_flight,
            job_tty,
            objects: p.objects,
        };
        let mut taken = false;
        for k in self.kinds.iter_mut() {
            if k.dump(&mut d, &mut f)? {
                taken = true;
                break;
            }
        }
        if !taken {
            return Err(DumpError::UnsupportedFile {
                pid: p.pid,
                fd: -1,
                what: show(&link).into_owned(),
            });
        }
        if let Some(md) = &md {
            f.dev = md.dev();
            f.inode = md.ino();
        }
        Ok(f)
    }

    /// Once the whole tree is read: each file in flight goes into its
    /// socket's record, as the fd of the tree that holds it or saved alone.
    /// crstream's copies stay open until the dump ends (the contents of a
    /// deleted file are read through them).
    pub(super) fn attach_in_flight(&mut self, procs: &mut [ProcessDump]) -> Result<(), DumpError> {
        let me = std::process::id() as i32;
        for f in std::mem::take(&mut self.in_flight) {
            let held = held_by(procs, me, &f.fd);
            let passed = match held {
                Some((pid, fd)) => PassedFile {
                    held_by_pid: pid,
                    held_by_fd: fd,
                    file: None,
                },
                None => PassedFile {
                    file: Some(f.saved?),
                    ..Default::default()
                },
            };
            let socket = procs
                .iter_mut()
                .find(|p| p.pid == f.pid)
                .and_then(|p| p.records.get_mut::<FileTable>())
                .and_then(|t| t.files.iter_mut().find(|x| x.fd as i32 == f.socket_fd))
                .and_then(|x| x.socket.as_mut())
                .expect("the socket whose queue was peeked is saved");
            match socket.passed.iter_mut().find(|m| m.message == f.message) {
                Some(m) => m.files.push(passed),
                None => socket.passed.push(PassedFds {
                    message: f.message,
                    files: vec![passed],
                }),
            }
            self.held_open.push(f.fd);
        }
        Ok(())
    }

    /// Restore, once every fd table is in place: the unix sockets' queues,
    /// each message with the files it carried; then their shutdowns, and
    /// the ends that were closed at dump time go.
    pub(super) fn fill_queues(&mut self, objects: &RestoreObjects<'_>) -> Result<(), RestoreError> {
        let mut shutdowns = Vec::new();
        let mut closing = Vec::new();
        // Making a file in flight (a unix socket) may add queues to fill.
        for _ in 0..64 {
            let pending: Vec<_> = self
                .kinds
                .iter_mut()
                .filter_map(|k| k.take_fills())
                .collect();
            if pending.iter().all(|p| p.fills.is_empty()) {
                for p in pending {
                    shutdowns.extend(p.shutdowns);
                    closing.extend(p.closing);
                }
                break;
            }
            for p in pending {
                for fill in &p.fills {
                    let mut files = Vec::new();
                    for m in &fill.socket.passed {
                        let mut fds = Vec::new();
                        for pf in &m.files {
                            fds.push(self.open_in_flight(fill.pid, pf, objects)?);
                        }
                        files.push((m.message, fds));
                    }
                    fill.send(&files)?;
                }
                shutdowns.extend(p.shutdowns);
                closing.extend(p.closing);
            }
        }
        for (sock, bits, what) in shutdowns {
            super::socket::shutdown_bits(&sock, bits).map_err(|e| RestoreError::Io {
                pid: 0,
                what,
                err: e,
            })?;
        }
        drop(closing);
        Ok(())
    }

    /// crstream's copy of a file in flight, for process `pid`'s queue.
    fn open_in_flight(
        &mut self,
        pid: i32,
        pf: &PassedFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<OwnedFd, RestoreError> {
        let err = |what: String, e: io::Error| RestoreError::Io {
            pid,
            what: format!("a file in flight in a queued message: {what}"),
            err: e,
        };
        let Some(f) = pf.file.as_ref() else {
            let host = objects.pids.host(pf.held_by_pid);
            return crate::sys::pidfd::take_fd(host, pf.held_by_fd as i32).map_err(|e| {
                err(
                    format!("taking fd {} of pid {}", pf.held_by_fd, pf.held_by_pid),
                    e,
                )
            });
        };
        match self.restorer(pid, f)?.open(pid, f, objects)? {
            Reopen::Created(own) => Ok(own),
            Reopen::Path {
                path,
                flags,
                offset,
            } => {
                use rustix::fs::{Mode, OFlags};
                let name = show(&path).into_owned();
                let own: OwnedFd = rustix::fs::open(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path),
                    OFlags::from_bits_retain((flags | libc::O_CLOEXEC) as u32),
                    Mode::empty(),
                )
                .map_err(|e| err(format!("opening {name}"), e.into()))?;
                if offset != 0 {
                    rustix::fs::seek(&own, rustix::fs::SeekFrom::Start(offset))
                        .map_err(|e| err(format!("lseek in {name}"), e.into()))?;
                }
                Ok(own)
            }
        }
    }
}

/// The fd of the tree (pid, fd) that holds the open file description of
/// crstream's `fd`, if one does.
fn held_by(procs: &[ProcessDump], me: i32, fd: &OwnedFd) -> Option<(i32, u32)> {
    let md = rustix::fs::fstat(fd).ok()?;
    procs.iter().find_map(|p| {
        let t = p.records.get::<FileTable>()?;
        t.files
            .iter()
            .filter(|f| f.dup_of_fd.is_none() && f.dev == md.st_dev && f.inode == md.st_ino)
            .find(|f| kcmp::same_file(me, fd.as_raw_fd() as u32, p.pid, f.fd).unwrap_or(false))
            .map(|f| (p.pid, f.fd))
    })
}
