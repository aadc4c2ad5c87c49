//! Open files: regular files (also deleted-but-open ones, whose contents
//! travel as a blob), directories and a few harmless character devices.
//! Pipes, sockets and the anon-inode kinds are left to `fdkinds`; anything
//! else (ttys, other devices, unknown anon inodes) is refused by name.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::fdkinds::{DumpCtx, Registry};
use crate::stub::Stub;
use crstream_proto::{FileKind, FileTable, OpenFile};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::unlinked::DELETED;
const KCMP_FILE: i32 = 0;

/// (major, minor) of the character devices we reopen by path.
const SAFE_CHAR_DEVICES: &[(u32, u32)] = &[(1, 3), (1, 5), (1, 8), (1, 9)];

/// A terminal a job of an interactive shell may hold: a pseudo-terminal
/// slave (majors 136-143), a virtual console or serial line (major 4), or
/// /dev/tty and /dev/console (5:0, 5:1). Pseudo-terminal masters (5:2) are
/// not among them: those belong to the terminal emulator, not the job.
fn is_terminal(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (136..=143).contains(&major) || major == 4 || (major == 5 && minor <= 1)
}

pub fn dump(
    ctx: &mut DumpCtx,
    unlinked: &mut crate::unlinked::Collector,
    pid: i32,
) -> Result<FileTable, DumpError> {
    let proc_err = |err| DumpError::Proc { pid, err };
    let mut files: Vec<OpenFile> = Vec::new();
    for fd in crate::proc::fds(pid).map_err(proc_err)? {
        let link = crate::proc::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(proc_err)?;
        // Pipes, FIFOs, sockets, eventfd, timerfd, signalfd, epoll, inotify.
        let info = crate::proc::fdinfo(pid, fd).map_err(proc_err)?;
        let mut f = OpenFile {
            fd: fd as u32,
            open_flags: info.flags & !(libc::O_CLOEXEC as u32),
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            ..Default::default()
        };
        if crate::fdkinds::dump(ctx, pid, fd, &link, &mut f)? {
            // dev/inode let the tree-wide kcmp pass find shared descriptions.
            if let Ok(md) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
                f.dev = md.dev();
                f.inode = md.ino();
            }
            mark_dup(pid, &files, &mut f);
            files.push(f);
            continue;
        }
        if !link.starts_with('/') {
            return Err(DumpError::UnsupportedFile {
                pid,
                fd,
                what: link,
            });
        }
        let md =
            std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(|err| DumpError::File {
                pid,
                fd,
                path: link.clone(),
                err,
            })?;
        let ft = md.file_type();
        let mut f = OpenFile {
            fd: fd as u32,
            path: link.clone(),
            open_flags: info.flags & !(libc::O_CLOEXEC as u32),
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            offset: info.pos,
            mode: md.mode(),
            dev: md.dev(),
            inode: md.ino(),
            ..Default::default()
        };
        if ft.is_file() {
            f.kind = FileKind::Regular as i32;
            f.size = md.size();
            f.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            if md.nlink() == 0 {
                f.deleted = true;
                f.path = link.strip_suffix(DELETED).unwrap_or(&link).to_string();
                let source = format!("/proc/{pid}/fd/{fd}");
                f.unlinked_file = unlinked.note(pid, &source, &link).map_err(|reason| {
                    DumpError::UnsupportedFile {
                        pid,
                        fd,
                        what: format!("{link}: {reason}"),
                    }
                })?;
            }
        } else if ft.is_dir() {
            f.kind = FileKind::Directory as i32;
        } else if ft.is_char_device() && is_terminal(md.rdev()) {
            let job_terminal = md.rdev() == ctx.job_tty || md.rdev() == libc::makedev(5, 0);
            if ctx.shell_job && !job_terminal {
                return Err(DumpError::UnsupportedFile {
                    pid,
                    fd,
                    what: format!(
                        "{link} (a terminal other than the job's controlling terminal: only \
                         that one is handed over by --shell-job)"
                    ),
                });
            }
            if !ctx.shell_job {
                return Err(DumpError::UnsupportedFile {
                    pid,
                    fd,
                    what: format!(
                        "{link} (a terminal: if the tree is a job started from a shell, \
                         dump and restore it with --shell-job)"
                    ),
                });
            }
            f.kind = FileKind::Tty as i32;
            f.rdev = md.rdev();
        } else if ft.is_char_device()
            && SAFE_CHAR_DEVICES.contains(&(libc::major(md.rdev()), libc::minor(md.rdev())))
        {
            f.kind = FileKind::CharDevice as i32;
            f.rdev = md.rdev();
        } else {
            let what = if ft.is_char_device() {
                format!(
                    "{link} (character device {}:{})",
                    libc::major(md.rdev()),
                    libc::minor(md.rdev())
                )
            } else if ft.is_fifo() {
                format!("{link} (fifo)")
            } else if ft.is_socket() {
                format!("{link} (socket)")
            } else {
                format!("{link} (mode {:o})", md.mode())
            };
            return Err(DumpError::UnsupportedFile { pid, fd, what });
        }
        mark_dup(pid, &files, &mut f);
        files.push(f);
    }
    Ok(FileTable {
        pid: pid as u32,
        files,
    })
}

/// Marks `f` as a dup of an earlier fd with the same open file description
/// (same offset and flags).
fn mark_dup(pid: i32, files: &[OpenFile], f: &mut OpenFile) {
    for prev in files {
        if prev.inode == f.inode && prev.dev == f.dev && prev.dup_of_fd.is_none() {
            // SAFETY: kcmp with integer arguments.
            let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, prev.fd, f.fd) };
            if r == 0 {
                f.dup_of_fd = Some(prev.fd);
                return;
            }
        }
    }
}

/// Checks that the saved regular file `f` (not deleted) can be reopened
/// without corrupting the process: it must exist and must not have shrunk
/// below the saved offset. Other changes (size, replaced file, mtime) are
/// logged when `warn`.
fn check_regular(pid: i32, f: &OpenFile, warn: bool) -> Result<(), RestoreError> {
    let ferr = |reason: String| RestoreError::File {
        pid,
        fd: f.fd,
        path: f.path.clone(),
        reason,
    };
    let md = std::fs::metadata(&f.path).map_err(|e| ferr(format!("cannot stat: {e}")))?;
    if !md.is_file() {
        return Err(ferr(format!(
            "it was a regular file and is now a {}",
            kind_name(&md)
        )));
    }
    if md.size() < f.offset && f.size >= f.offset {
        return Err(ferr(format!(
            "the file shrank from {} to {} bytes since the dump, below the saved offset {}",
            f.size,
            md.size(),
            f.offset
        )));
    }
    if !warn {
        return Ok(());
    }
    if md.ino() != f.inode || md.dev() != f.dev {
        tracing::warn!(pid, fd = f.fd, path = %f.path, "the path names another file than at the dump (other inode)");
    }
    if md.size() != f.size {
        tracing::warn!(pid, fd = f.fd, path = %f.path, "file size changed since the dump ({} -> {})", f.size, md.size());
    } else if f.mtime_ns != 0 && md.mtime() * 1_000_000_000 + md.mtime_nsec() != f.mtime_ns {
        tracing::warn!(pid, fd = f.fd, path = %f.path, "file modified since the dump (same size)");
    }
    Ok(())
}

fn kind_name(md: &std::fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Before anything is created: refuses regular files that changed in a way
/// that would corrupt the restored process (see `check_regular`), and
/// inotify watches on paths that no longer exist.
pub fn check(pid: i32, table: &FileTable) -> Result<(), RestoreError> {
    for f in table
        .files
        .iter()
        .filter(|f| f.kind() == FileKind::Regular && !f.deleted && f.dup_of_fd.is_none())
    {
        check_regular(pid, f, true)?;
    }
    for f in table
        .files
        .iter()
        .filter(|f| f.kind() == FileKind::Inotify && f.dup_of_fd.is_none())
    {
        crate::fdkinds::check_inotify(pid, f)?;
    }
    Ok(())
}

/// Duplicates fd `fd` of process `owner` into the stub (pidfd_getfd, run
/// by the stub itself); the copy is close-on-exec.
pub fn take_fd(stub: &Stub, owner: i32, fd: u64) -> Result<i64, TaskError> {
    let pidfd = stub.call("pidfd_open", libc::SYS_pidfd_open, &[owner as u64, 0])?;
    let got = stub.call("pidfd_getfd", libc::SYS_pidfd_getfd, &[pidfd as u64, fd, 0]);
    stub.call("close", libc::SYS_close, &[pidfd as u64])?;
    got
}

/// Moves fd `tmp_fd` of the stub to the saved number with the saved
/// close-on-exec flag.
pub fn place_fd(stub: &Stub, tmp_fd: i64, f: &OpenFile) -> Result<(), TaskError> {
    let cloexec = if f.cloexec { libc::O_CLOEXEC } else { 0 };
    if tmp_fd != f.fd as i64 {
        stub.call(
            "dup3",
            libc::SYS_dup3,
            &[tmp_fd as u64, f.fd as u64, cloexec as u64],
        )?;
        stub.call("close", libc::SYS_close, &[tmp_fd as u64])?;
    } else {
        let flag = if f.cloexec { libc::FD_CLOEXEC } else { 0 };
        stub.call(
            "fcntl",
            libc::SYS_fcntl,
            &[f.fd as u64, libc::F_SETFD as u64, flag as u64],
        )?;
    }
    Ok(())
}

/// What restore reopens files from besides their paths.
pub struct Reopen<'a> {
    pub unlinked: &'a crate::unlinked::Recreator,
    /// The restorer's terminal, for a shell job's terminal fds.
    pub terminal: Option<&'a str>,
}

/// Opens every saved fd at its number in the stub.
pub fn restore(
    stub: &Stub,
    table: &FileTable,
    from: &Reopen<'_>,
    reg: &mut Registry,
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let mut files: Vec<&OpenFile> = table.files.iter().collect();
    files.sort_by_key(|f| f.fd);
    for f in files.iter().filter(|f| f.dup_of_fd.is_none()) {
        let ferr = |reason: String| RestoreError::File {
            pid,
            fd: f.fd,
            path: f.path.clone(),
            reason,
        };
        let owner = (f.shared_id >> 32) as i32;
        if f.shared_id != 0 && owner != pid {
            // Restored already by an earlier process of the tree: share it.
            let owner_fd = f.shared_id as u32 as u64;
            let tmp_fd = take_fd(stub, owner, owner_fd)
                .map_err(|e| ferr(format!("taking fd {owner_fd} of pid {owner}: {e}")))?;
            place_fd(stub, tmp_fd, f).map_err(|e| ferr(e.to_string()))?;
            continue;
        }
        if !matches!(
            f.kind(),
            FileKind::Regular | FileKind::Directory | FileKind::CharDevice | FileKind::Tty
        ) {
            // Created in crstream (shared with the other fds of the tree
            // that name the same pipe or socket pair), then taken over.
            let own = crate::fdkinds::open(reg, pid, f)?;
            let tmp_fd = take_fd(stub, std::process::id() as i32, own.as_raw_fd() as u64)
                .map_err(|e| ferr(format!("taking it from crstream: {e}")))?;
            drop(own);
            place_fd(stub, tmp_fd, f).map_err(|e| ferr(format!("placing the fd: {e}")))?;
            continue;
        }
        let mut path = f.path.clone();
        let mut flags = f.open_flags as i32;
        if f.kind() == FileKind::Tty {
            path = from
                .terminal
                .ok_or_else(|| {
                    ferr(
                        "a shell job's terminal: restore it with --shell-job from a terminal"
                            .into(),
                    )
                })?
                .to_string();
            // The job's controlling terminal comes with the restorer's
            // session; opening it must not make it anyone's.
            flags |= libc::O_NOCTTY;
        }
        if f.kind() == FileKind::Regular {
            if f.deleted {
                path = from.unlinked.proc_path(f.unlinked_file)?;
            } else {
                check_regular(pid, f, false)?;
            }
        }
        // O_NOFOLLOW only mattered for the path it was opened by; the
        // /proc link an unlinked file is reopened through is a symlink.
        flags &=
            !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW);
        let tmp_fd = stub
            .open(&path, flags | libc::O_CLOEXEC, 0)
            .map_err(|e| ferr(format!("open: {e}")))?;
        place_fd(stub, tmp_fd, f).map_err(|e| ferr(format!("placing the fd: {e}")))?;
        if f.kind() == FileKind::Regular && f.offset != 0 {
            stub.call(
                "lseek",
                libc::SYS_lseek,
                &[f.fd as u64, f.offset, libc::SEEK_SET as u64],
            )
            .map_err(|e| ferr(format!("lseek to {}: {e}", f.offset)))?;
        }
    }
    for f in files.iter() {
        if let Some(of) = f.dup_of_fd {
            let cloexec = if f.cloexec { libc::O_CLOEXEC } else { 0 };
            stub.call(
                "dup3",
                libc::SYS_dup3,
                &[of as u64, f.fd as u64, cloexec as u64],
            )
            .map_err(|e| RestoreError::File {
                pid,
                fd: f.fd,
                path: f.path.clone(),
                reason: format!("dup3 of fd {of}: {e}"),
            })?;
        }
    }
    // epoll registrations name fds of this process: add them once all exist.
    for f in files.iter().filter(|f| {
        f.kind() == FileKind::Epoll
            && f.dup_of_fd.is_none()
            && (f.shared_id == 0 || (f.shared_id >> 32) as i32 == pid)
    }) {
        for t in crate::fdkinds::epoll_targets(f) {
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
                pid,
                fd: f.fd,
                path: f.path.clone(),
                reason: format!("re-adding fd {} to the epoll set: {e}", t.fd),
            })?;
        }
    }
    Ok(())
}
