//! Terminals: the controlling terminal of a job started from an
//! interactive shell (`--shell-job`). Its fds are saved by name only;
//! restore opens the restorer's own terminal for them. A terminal another
//! program holds (`--external tty[RDEV:DEV]`, as in CRIU: the pty of a
//! terminal emulator, tmux or sshd) comes back as the terminal the restorer
//! hands in (`--inherit-fd fd[N]:tty[RDEV:DEV]`), which becomes again the
//! controlling terminal of a session of the tree it controlled, with its
//! foreground process group; /dev/tty opens /dev/tty again. A console,
//! virtual console or serial line (not the job's) is reopened by its path
//! where the same device exists, unless it controls a session of the tree
//! (restore cannot give it back). Any other terminal is refused by name, and
//! so is a tree that leads its own terminal's session (it would need that
//! terminal itself), and a session leader of the tree whose controlling
//! terminal would not come back. Pseudo-terminals whose master the tree
//! holds are `pty.rs`'s.

use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpTree, RestoreObjects};
use crate::paths::show;
use crate::stub::{SCRATCH_DATA, Stub};
use crstream_proto::{ExternalTerminal, FileKind, FileTable, OpenFile};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

/// A terminal a job of an interactive shell may hold: a pseudo-terminal
/// slave (majors 136-143), a virtual console or serial line (major 4), or
/// /dev/tty and /dev/console (5:0, 5:1). Pseudo-terminal masters (5:2) are
/// not among them: those belong to the terminal emulator, not the job.
fn is_terminal(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (136..=143).contains(&major) || major == 4 || (major == 5 && minor <= 1)
}

pub(super) const TIOCSCTTY: u64 = 0x540E;
const TIOCSPGRP: u64 = 0x5410;

/// How `--external` and `--inherit-fd` name a terminal outside the tree:
/// its device number and its file system's device, in hex (CRIU's form).
pub(super) fn external_key(rdev: u64, dev: u64) -> String {
    format!("tty[{rdev:x}:{dev:x}]")
}

/// The hint of a refusal: how a terminal another program holds is dumped.
fn external_hint(rdev: u64, dev: u64) -> String {
    let key = external_key(rdev, dev);
    format!(
        "if another program holds it (a terminal emulator, tmux, sshd), dump with --external \
         {key} and restore with --inherit-fd fd[N]:{key}, N a terminal of yours"
    )
}

/// The terminal at `path`, opened to read or set its settings only.
fn open_settings(path: &[u8]) -> io::Result<std::fs::File> {
    let path =
        std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path));
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

/// The settings (struct termios) of the terminal at `path`, as bytes.
fn job_termios(path: &[u8]) -> io::Result<Vec<u8>> {
    let tty = open_settings(path)?;
    // SAFETY: a zeroed termios is valid; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr on an open fd into a local.
    if unsafe { libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(&tty), &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(crate::sys::bytes_of(&t).to_vec())
}

/// Gives the terminal at `path`, the one the job takes at restore, the
/// settings (`saved`) it had at the dump.
pub(crate) fn give_job_termios(path: &[u8], saved: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed termios is valid; it is then overwritten whole.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    let out = crate::sys::bytes_of_mut(&mut t);
    if saved.len() != out.len() {
        return Err(io::Error::other(format!(
            "terminal settings of {} bytes, not {}",
            saved.len(),
            out.len()
        )));
    }
    out.copy_from_slice(saved);
    let tty = open_settings(path)?;
    // SAFETY: tcsetattr on an open fd from a local.
    if unsafe { libc::tcsetattr(std::os::fd::AsRawFd::as_raw_fd(&tty), libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) struct Terminals;

impl FdKind for Terminals {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let Some(md) = d.md.filter(|md| md.file_type().is_char_device()) else {
            return Ok(false);
        };
        if !d.link.starts_with(b"/") || !is_terminal(md.rdev()) {
            return Ok(false);
        }
        // The terminal controlling the process's session, and whether it
        // leads that session.
        let ctty = d.stat.field(7);
        let leader = d.stat.field(6) as i32 == d.pid;
        let dev_tty = md.rdev() == libc::makedev(5, 0);
        let external = if dev_tty {
            d.external_ttys
                .iter()
                .any(|&(rdev, _)| rdev == ctty)
                .then_some(ctty)
        } else {
            d.external_ttys
                .iter()
                .any(|&(rdev, dev)| (rdev, dev) == (md.rdev(), md.dev()))
                .then_some(md.rdev())
        };
        if let Some(rdev) = external {
            let controls_session = !dev_tty && leader && ctty == rdev;
            f.kind = FileKind::Tty as i32;
            f.path = d.link.to_vec();
            f.mode = md.mode();
            f.rdev = rdev;
            f.external_tty = Some(ExternalTerminal {
                controls_session,
                foreground: if controls_session {
                    d.stat.field(8) as i32
                } else {
                    0
                },
                dev_tty,
            });
            return Ok(true);
        }
        let job_terminal = md.rdev() == d.job_tty || md.rdev() == libc::makedev(5, 0);
        let console = libc::major(md.rdev()) == 4 || md.rdev() == libc::makedev(5, 1);
        if console && !(d.shell_job && job_terminal) {
            if d.stat.field(7) == md.rdev() {
                return Err(d.refuse(
                    "the controlling terminal of its session: only a shell job's (--shell-job) \
                     or a pseudo-terminal of the tree comes back as one",
                ));
            }
            f.kind = FileKind::Console as i32;
            f.path = d.link.to_vec();
            f.mode = md.mode();
            f.rdev = md.rdev();
            return Ok(true);
        }
        if d.shell_job && !job_terminal {
            return Err(d.refuse(
                "a terminal other than the job's controlling terminal: only that one is handed \
                 over by --shell-job",
            ));
        }
        if !d.shell_job {
            return Err(d.refuse(format!(
                "a terminal: if the tree is a job started from a shell, dump and restore it \
                 with --shell-job; {}",
                external_hint(md.rdev(), md.dev())
            )));
        }
        f.kind = FileKind::Tty as i32;
        f.path = d.link.to_vec();
        f.mode = md.mode();
        f.rdev = md.rdev();
        // /dev/tty opened here would be crstream's own terminal: the job's
        // settings come from its fds on the terminal itself.
        if md.rdev() != libc::makedev(5, 0) {
            f.job_termios = job_termios(d.link).map_err(|e| d.error("reading its settings", e))?;
        }
        Ok(true)
    }

    /// A shell job's terminal is replaced by the restorer's, which works
    /// for a job of a shell (the session and its leader stay behind). A
    /// tree that leads its own session with a terminal would need that
    /// terminal itself.
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        let root = &t.entries[0];
        if root.sid != root.pid {
            return refuse_lost_controlling_terminals(t);
        }
        for p in t.processes.iter() {
            let files = p.records.get::<FileTable>().map_or(&[][..], |t| &t.files);
            if let Some(f) = files
                .iter()
                .find(|f| f.kind() == FileKind::Tty && f.external_tty.is_none())
            {
                return Err(DumpError::UnsupportedFile {
                    pid: p.pid,
                    fd: f.fd as i32,
                    what: format!(
                        "{} (a terminal, and the dumped tree leads its own session {}: \
                         --shell-job hands a job the restorer's terminal, it cannot give a \
                         session back its own)",
                        show(&f.path),
                        root.sid
                    ),
                });
            }
        }
        refuse_lost_controlling_terminals(t)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Tty | FileKind::Console)
    }

    /// A console is reopened by path: the same device must be there. A
    /// terminal outside the tree needs one handed in (files handed in are
    /// not checked).
    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        if let Some(t) = f.external_tty.as_ref().filter(|t| !t.dev_tty) {
            let key = external_key(f.rdev, f.dev);
            return Err(super::file_error(
                pid,
                f,
                format!(
                    "a terminal outside the tree (dump --external {key}{}): hand one in with \
                     --inherit-fd fd[N]:{key}",
                    if t.controls_session {
                        ", its session's controlling terminal"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if f.kind() != FileKind::Console {
            return Ok(());
        }
        let md = std::fs::metadata(crate::paths::path(&f.path))
            .map_err(|e| super::file_error(pid, f, format!("not here: {e}")))?;
        if !md.file_type().is_char_device() || md.rdev() != f.rdev {
            return Err(super::file_error(
                pid,
                f,
                format!(
                    "it was character device {}:{}, the path now names another file",
                    libc::major(f.rdev),
                    libc::minor(f.rdev)
                ),
            ));
        }
        Ok(())
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let flags = (f.open_flags as i32 | libc::O_NOCTTY)
            & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW);
        if let Some(t) = &f.external_tty {
            self.check(pid, f)?;
            // /dev/tty: its session's leader has its terminal back by now
            // (restored first, or at a lower fd: see `handed_in`).
            debug_assert!(t.dev_tty);
            return Ok(Reopen::Path {
                path: b"/dev/tty".to_vec(),
                flags,
                offset: 0,
            });
        }
        if f.kind() == FileKind::Console {
            self.check(pid, f)?;
            return Ok(Reopen::Path {
                path: f.path.clone(),
                flags,
                offset: 0,
            });
        }
        let path = objects.terminal.ok_or_else(|| {
            super::file_error(
                pid,
                f,
                "a shell job's terminal: restore it with --shell-job from a terminal",
            )
        })?;
        // The job's controlling terminal comes with the restorer's session;
        // opening it (O_NOCTTY) must not make it anyone's.
        Ok(Reopen::Path {
            path: path.to_vec(),
            flags,
            offset: 0,
        })
    }

    /// A terminal handed in for one outside the tree becomes its session's
    /// controlling terminal again at once: /dev/tty, opened at a later fd,
    /// is it.
    fn handed_in(&mut self, stub: &Stub, f: &OpenFile) -> Result<(), RestoreError> {
        give_back_session_terminal(stub, f)
    }
}

/// A session leader of the tree whose controlling terminal nothing would
/// give back (no fd of it that restores it as such: a pseudo-terminal of
/// the tree, or a terminal handed in) would come back without one. The one
/// check for every kind of terminal.
fn refuse_lost_controlling_terminals(t: &DumpTree<'_>) -> Result<(), DumpError> {
    for e in t.entries.iter().filter(|e| e.sid == e.pid) {
        let Ok(stat) = crate::proc::stat(e.pid as i32) else {
            continue;
        };
        let ctty = stat.field(7);
        if ctty == 0 {
            continue;
        }
        let gives_back = t
            .processes
            .iter()
            .filter(|p| p.pid == e.pid as i32)
            .filter_map(|p| p.records.get::<FileTable>())
            .flat_map(|t| &t.files)
            .any(|f| {
                f.pty.as_ref().is_some_and(|p| p.controls_session)
                    || f.external_tty.as_ref().is_some_and(|t| t.controls_session)
            });
        if gives_back {
            continue;
        }
        let index = super::pty::slave_index(ctty);
        let files = t
            .processes
            .iter()
            .filter_map(|p| p.records.get::<FileTable>())
            .flat_map(|t| &t.files);
        let reason = match index {
            // A pseudo-terminal of the tree: `pty.rs` brings it back, but
            // only through the leader's own fd of it.
            Some(i)
                if files
                    .filter_map(|f| f.pty.as_ref())
                    .any(|p| p.master && p.index == i) =>
            {
                format!("/dev/pts/{i} controls its session but it holds no fd of it")
            }
            _ => format!(
                "device {}:{} controls its session, and no fd of it it holds would make it so \
                 again{}",
                libc::major(ctty),
                libc::minor(ctty),
                index
                    .and_then(|i| std::fs::metadata(format!("/dev/pts/{i}")).ok())
                    .map_or(String::new(), |md| format!(
                        "; {}",
                        external_hint(ctty, md.dev())
                    ))
            ),
        };
        return Err(DumpError::Unsupported {
            pid: e.pid as i32,
            what: "controlling terminal",
            reason,
        });
    }
    Ok(())
}

/// Makes the terminal at `f`, handed in for one outside the tree, its
/// session's controlling terminal again (the session leader's stub), with
/// its foreground process group.
fn give_back_session_terminal(stub: &Stub, f: &OpenFile) -> Result<(), RestoreError> {
    let Some(t) = f.external_tty.as_ref().filter(|t| t.controls_session) else {
        return Ok(());
    };
    let err = |what: String| super::file_error(stub.pid, f, what);
    stub.call(
        "ioctl(TIOCSCTTY)",
        libc::SYS_ioctl,
        &[f.fd as u64, TIOCSCTTY, 0],
    )
    .map_err(|e| {
        err(format!(
            "making the terminal handed in its session's controlling terminal: {e} (it must \
             be a terminal no session controls, not the restorer's own)"
        ))
    })?;
    if t.foreground > 0 {
        set_foreground(stub, f, t.foreground)?;
    }
    Ok(())
}

/// Makes process group `pgid` the foreground of the terminal at `f`, from
/// the stub of its session's leader.
pub(super) fn set_foreground(stub: &Stub, f: &OpenFile, pgid: i32) -> Result<(), RestoreError> {
    let at = stub.put(SCRATCH_DATA, &pgid.to_ne_bytes())?;
    stub.call(
        "ioctl(TIOCSPGRP)",
        libc::SYS_ioctl,
        &[f.fd as u64, TIOCSPGRP, at],
    )
    .map_err(|e| {
        super::file_error(
            stub.pid,
            f,
            format!("making process group {pgid} the foreground: {e}"),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dump_job_fd, dump_own, open_on_terminal};
    use super::*;
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::os::fd::{AsRawFd, OwnedFd};

    /// A console opened by a process it does not control is reopened by its
    /// path, where the same device is.
    #[test]
    fn a_console_is_reopened_by_path() {
        let Ok(c) = rustix::fs::open(
            "/dev/console",
            OFlags::WRONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            eprintln!("no /dev/console here: skipped");
            return;
        };
        let f = dump_own(c.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Console);
        assert_eq!(f.rdev, libc::makedev(5, 1));
        match open_on_terminal(&mut Terminals, &f, None).unwrap() {
            Reopen::Path { path, flags, .. } => {
                assert_eq!(path, b"/dev/console");
                assert_ne!(flags & libc::O_NOCTTY, 0);
            }
            Reopen::Created(_) => panic!("a console is reopened by path"),
        }
    }

    /// A pseudo-terminal: (master, slave, slave's path).
    fn pty() -> (OwnedFd, OwnedFd, String) {
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let path = name.to_string_lossy().into_owned();
        let slave = rustix::fs::open(
            path.as_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (master, slave, path)
    }

    #[test]
    fn a_terminal_needs_shell_job_and_comes_back_as_the_restorers() {
        let (_master, slave, path) = pty();
        let e = dump_own(slave.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains(&path) && e.contains("--shell-job"), "{e}");

        let rdev = rustix::fs::fstat(&slave).unwrap().st_rdev;
        let f = dump_job_fd(&mut Terminals, slave.as_raw_fd(), rdev).unwrap();
        assert_eq!(
            (f.kind(), f.rdev, &f.path[..]),
            (FileKind::Tty, rdev, path.as_bytes())
        );
        // Another terminal than the job's is refused even with --shell-job.
        let e = dump_job_fd(&mut Terminals, slave.as_raw_fd(), rdev + 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other than the job's controlling terminal"),
            "{e}"
        );

        // Restore opens the restorer's terminal, never as a controlling one.
        match open_on_terminal(&mut Terminals, &f, Some(b"/dev/pts/77")).unwrap() {
            Reopen::Path { path, flags, .. } => {
                assert_eq!(path, b"/dev/pts/77");
                assert_ne!(flags & libc::O_NOCTTY, 0);
                assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
            }
            Reopen::Created(_) => panic!("a terminal is reopened by path"),
        }
        let e = open_on_terminal(&mut Terminals, &f, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--shell-job"), "{e}");
    }
}
