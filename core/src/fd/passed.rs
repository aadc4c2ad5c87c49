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
use crate::kind::{DumpProcess, DumpTree, ProcessDump, RestoreObjects};
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
}

/// What a dump was asked, as the fd kinds read it (kept for the files in
/// flight, saved once the whole tree is read).
#[derive(Clone, Default)]
pub(super) struct DumpFlags {
    pub shell_job: bool,
    pub tcp: super::tcp::TcpMode,
    pub ext_unix: bool,
    pub external_pipes: Vec<u64>,
    pub external_ttys: Vec<(u64, u64)>,
    pub skip_in_flight: bool,
    pub job_tty: u64,
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
    /// After the fds of process `p`: crstream's copies of the files the
    /// messages queued on its sockets carry, kept until the whole tree is
    /// read (see [`Files::attach_in_flight`]).
    pub(super) fn read_in_flight(&mut self, p: &DumpProcess<'_>) {
        let passing: Vec<Passing> = self
            .kinds
            .iter_mut()
            .flat_map(|k| k.take_passed())
            .collect();
        for pass in passing {
            for fd in pass.fds {
                self.in_flight.push(InFlight {
                    pid: p.pid,
                    socket_fd: pass.socket_fd,
                    message: pass.message,
                    fd,
                });
            }
        }
    }

    /// Once the whole tree is read (before the kinds' tree-wide checks):
    /// each file in flight goes into its socket's record, as the fd of the
    /// tree that holds it, or else saved alone by its kind. crstream's
    /// copies stay open until the dump ends (the contents of a deleted file
    /// are read through them).
    pub(super) fn attach_in_flight(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        let me = std::process::id() as i32;
        let mut alone: Vec<(u64, u64)> = Vec::new(); // unix sockets saved alone: (inode, peer)
        for f in std::mem::take(&mut self.in_flight) {
            let refuse = |what: String| DumpError::UnsupportedFile {
                pid: f.pid,
                fd: f.socket_fd,
                what: format!("a file a queued message carries (SCM_RIGHTS): {what}"),
            };
            let passed = match held_by(t.processes, me, &f.fd) {
                Some((pid, fd)) => PassedFile {
                    held_by_pid: pid,
                    held_by_fd: fd,
                    file: None,
                },
                None => {
                    let file = self
                        .save_alone(t, f.pid, me, &f.fd)
                        .map_err(|e| refuse(e.to_string()))?;
                    if let Some(s) = file.socket.as_ref().filter(|s| s.family == libc::AF_UNIX) {
                        alone.push((s.inode, s.peer_inode));
                    }
                    PassedFile {
                        file: Some(file),
                        ..Default::default()
                    }
                }
            };
            let socket = t
                .processes
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
        // A unix socket in flight must have its peer in the tree (or in
        // flight too): one connected outside would come back connected to
        // nobody.
        let in_tree = |inode: u64| {
            alone.iter().any(|&(i, _)| i == inode)
                || t.processes.iter().any(|p| {
                    p.records.get::<FileTable>().is_some_and(|ft| {
                        ft.files
                            .iter()
                            .any(|f| f.socket.as_ref().is_some_and(|s| s.inode == inode))
                    })
                })
        };
        if let Some(&(inode, peer)) = alone.iter().find(|&&(_, peer)| peer != 0 && !in_tree(peer)) {
            let holder = t
                .processes
                .iter()
                .find_map(|p| {
                    let ft = p.records.get::<FileTable>()?;
                    ft.files.iter().find_map(|f| {
                        let s = f.socket.as_ref()?;
                        s.passed
                            .iter()
                            .flat_map(|m| &m.files)
                            .any(|pf| {
                                pf.file
                                    .as_ref()
                                    .and_then(|x| x.socket.as_ref())
                                    .is_some_and(|x| x.inode == inode)
                            })
                            .then_some((p.pid, f.fd as i32))
                    })
                })
                .unwrap_or((0, -1));
            return Err(DumpError::UnsupportedFile {
                pid: holder.0,
                fd: holder.1,
                what: format!(
                    "a file a queued message carries (SCM_RIGHTS): socket:[{inode}], a unix \
                     socket connected to socket:[{peer}], which is outside the tree"
                ),
            });
        }
        Ok(())
    }

    /// A file in flight saved by its kind from crstream's copy `fd`, as
    /// process `pid` would have it.
    fn save_alone(
        &mut self,
        t: &mut DumpTree<'_>,
        pid: i32,
        me: i32,
        fd: &OwnedFd,
    ) -> Result<OpenFile, DumpError> {
        let raw = fd.as_raw_fd();
        let proc_err = |err| DumpError::Proc { pid: me, err };
        let link = crate::proc::read_link(format!("/proc/self/fd/{raw}")).map_err(proc_err)?;
        if !savable_alone(&link, fd) {
            return Err(DumpError::UnsupportedFile {
                pid,
                fd: -1,
                what: format!(
                    "{}, which no process of the tree holds: not supported",
                    show(&link)
                ),
            });
        }
        let stat = crate::proc::stat(pid).map_err(|err| DumpError::Proc { pid, err })?;
        let info = crate::proc::fdinfo(me, raw).map_err(proc_err)?;
        let md = std::fs::metadata(format!("/proc/self/fd/{raw}")).ok();
        let mut f = super::open_file(raw, &info);
        let flags = self.flags.clone().unwrap_or_default();
        let mut d = DumpFd {
            pid: me,
            fd: raw,
            link: &link,
            md: md.as_ref(),
            stat: &stat,
            shell_job: flags.shell_job,
            tcp: flags.tcp,
            ext_unix: flags.ext_unix,
            external_pipes: &flags.external_pipes,
            external_ttys: &flags.external_ttys,
            skip_in_flight: flags.skip_in_flight,
            job_tty: flags.job_tty,
            objects: t.objects,
            inject: None,
        };
        if !super::dump_by_kind(&mut self.kinds, &mut d, &mut f)? {
            return Err(DumpError::UnsupportedFile {
                pid,
                fd: -1,
                what: show(&link).into_owned(),
            });
        }
        // A unix socket in flight whose own queue carries files: not
        // followed further.
        if self.kinds.iter_mut().any(|k| !k.take_passed().is_empty()) {
            return Err(DumpError::UnsupportedFile {
                pid,
                fd: -1,
                what: format!("{}, whose own queue carries files", show(&link)),
            });
        }
        if let Some(md) = &md {
            f.dev = md.dev();
            f.inode = md.ino();
        }
        Ok(f)
    }

    /// Restore, once every fd table is in place: the unix sockets' queues,
    /// each message with the files it carried; then their shutdowns, and
    /// the ends that were closed at dump time go.
    pub(super) fn fill_queues(&mut self, objects: &RestoreObjects<'_>) -> Result<(), RestoreError> {
        let mut shutdowns = Vec::new();
        let mut closing = Vec::new();
        let mut connects = Vec::new();
        // Making a file in flight (a unix socket) may add queues to fill.
        let mut rounds = 0;
        loop {
            let pending: Vec<_> = self
                .kinds
                .iter_mut()
                .filter_map(|k| k.take_fills())
                .collect();
            if pending.iter().all(|p| p.fills.is_empty()) {
                for p in pending {
                    shutdowns.extend(p.shutdowns);
                    closing.extend(p.closing);
                    connects.extend(p.connects);
                }
                break;
            }
            rounds += 1;
            if rounds > 64 {
                return Err(RestoreError::Image(
                    "unix sockets in flight nested more than 64 deep".into(),
                ));
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
                connects.extend(p.connects);
            }
        }
        // A socket connected outside the tree, once the datagrams queued
        // before its connect are in (a connected socket takes none else).
        for (sock, to, what) in connects {
            crate::sys::socket::connect(&sock, &to).map_err(|e| RestoreError::Io {
                pid: 0,
                what,
                err: e,
            })?;
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
            // Only a process of the tree: any other PID in a damaged image
            // would hand another process's file to this one.
            if !objects.pids.created(pf.held_by_pid) {
                return Err(RestoreError::Image(format!(
                    "a queued message of pid {pid} carries fd {} of pid {}, which is not \
                     in the tree",
                    pf.held_by_fd, pf.held_by_pid
                )));
            }
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
