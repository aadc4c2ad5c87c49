//! Files opened by path: regular files (also deleted-but-open ones, whose
//! contents are saved once for the tree as unlinked files), directories
//! and a few harmless character devices. Any other file with a path is
//! refused by name.

use super::handles::Handle;
use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreObjects, RestoreProcess};
use crate::paths::{path, show, undeleted};
use crstream_proto::{FileHandle, FileKind, OpenFile, UnlinkedKind};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// (major, minor) of the character devices reopened by path: /dev/null,
/// /dev/zero, /dev/random, /dev/urandom.
const SAFE_CHAR_DEVICES: &[(u32, u32)] = &[(1, 3), (1, 5), (1, 8), (1, 9)];

pub(super) struct Regular;

/// POSIX message queues' filesystem (statfs f_type).
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// Refuses a file its path does not lead to: restore reopens by that path
/// (as crstream sees it, which is how /proc shows it, a chrooted process's
/// too). A POSIX message queue (its path is in a filesystem only mq_open
/// reaches), or a file a mount has covered since.
fn leads_to_it(pid: i32, fd: i32, link: &[u8], md: &std::fs::Metadata) -> Result<(), DumpError> {
    let seen = std::fs::metadata(path(link));
    if seen.is_ok_and(|s| s.dev() == md.dev() && s.ino() == md.ino()) {
        return Ok(());
    }
    refuse_message_queue(pid, fd, link)?;
    Err(DumpError::UnsupportedFile {
        pid,
        fd,
        what: format!(
            "{}: its path leads to another file or to none (a mount covers it?)",
            show(link)
        ),
    })
}

/// Refuses a POSIX message queue, which looks like a regular file (also a
/// deleted one, once mq_unlink'ed).
fn refuse_message_queue(pid: i32, fd: i32, link: &[u8]) -> Result<(), DumpError> {
    match rustix::fs::statfs(format!("/proc/{pid}/fd/{fd}").as_str()) {
        Ok(s) if s.f_type == MQUEUE_MAGIC => Err(DumpError::UnsupportedFile {
            pid,
            fd,
            what: format!(
                "{}: a POSIX message queue (mq_open) is not supported",
                show(link)
            ),
        }),
        _ => Ok(()),
    }
}

impl FdKind for Regular {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let (pid, fd) = (d.pid, d.fd);
        if !d.link.starts_with(b"/") {
            return Ok(false);
        }
        let Some(md) = d.md else {
            return Ok(false); // the caller reports why stat failed
        };
        let ft = md.file_type();
        f.path = d.link.to_vec();
        f.mode = md.mode();
        if ft.is_file() {
            f.kind = FileKind::Regular as i32;
            f.size = md.size();
            f.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        } else if ft.is_dir() {
            f.kind = FileKind::Directory as i32;
        } else if ft.is_symlink() {
            // A symlink itself is only open with O_PATH|O_NOFOLLOW.
            f.kind = FileKind::Symlink as i32;
        } else if ft.is_char_device()
            && SAFE_CHAR_DEVICES.contains(&(libc::major(md.rdev()), libc::minor(md.rdev())))
        {
            f.kind = FileKind::CharDevice as i32;
            f.rdev = md.rdev();
        } else {
            let link = show(d.link);
            let what = if ft.is_char_device() {
                format!(
                    "{link} (character device {}:{})",
                    libc::major(md.rdev()),
                    libc::minor(md.rdev())
                )
            } else if ft.is_socket() {
                format!("{link} (socket)")
            } else {
                format!("{link} (mode {:o})", md.mode())
            };
            return Err(DumpError::UnsupportedFile { pid, fd, what });
        }
        // memfd_secret: its contents are out of reach outside the process.
        if d.link == b"/secretmem (deleted)" {
            return Err(DumpError::UnsupportedFile {
                pid,
                fd,
                what: "memfd_secret memory, whose pages nothing outside the process can read"
                    .into(),
            });
        }
        // (Files under /proc are reopened as restore finds them.)
        if !crate::paths::is_deleted(d.link)
            && (ft.is_file() || ft.is_dir())
            && !d.link.starts_with(b"/proc/")
        {
            leads_to_it(pid, fd, d.link, md)?;
        }
        // Deleted: no links left (a removed directory not even "." in it).
        // Saved once for the tree, made again at restore.
        if md.nlink() == 0 && crate::paths::is_deleted(d.link) {
            refuse_message_queue(pid, fd, d.link)?;
            f.deleted = true;
            f.path = undeleted(d.link).to_vec();
            let source = format!("/proc/{pid}/fd/{fd}");
            f.unlinked_file = d
                .objects
                .unlinked
                .note(pid, &source, d.link)
                .map_err(|reason| DumpError::UnsupportedFile {
                    pid,
                    fd,
                    what: format!("{}: {reason}", show(d.link)),
                })?;
            if made_by_tmpfile(f.open_flags) {
                d.objects
                    .unlinked
                    .made_by_tmpfile(f.unlinked_file, f.open_flags);
            }
        } else if crate::paths::is_deleted(d.link) {
            // Removed under the name it was opened by, linked under another
            // (a hard link, or an O_TMPFILE file linked since): no path
            // leads to it, its handle does.
            let unsupported = |why: String| DumpError::UnsupportedFile {
                pid,
                fd,
                what: format!(
                    "{}: removed under that name but linked under another: {why}",
                    show(d.link)
                ),
            };
            if !ft.is_file() {
                return Err(unsupported(
                    "only a regular file is reopened by its handle".into(),
                ));
            }
            let (handle_type, handle) =
                crate::sys::fds::name_to_handle(&format!("/proc/{pid}/fd/{fd}"))
                    .map_err(|e| unsupported(format!("no file handle for it: {e}")))?;
            f.path = undeleted(d.link).to_vec();
            f.dev = md.dev();
            f.inode = md.ino();
            f.handle = Some(FileHandle {
                handle_type,
                handle,
            });
        }
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(
            f.kind(),
            FileKind::Regular | FileKind::Directory | FileKind::CharDevice | FileKind::Symlink
        )
    }

    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        // Files under /proc of a process of the tree exist only once it
        // does: checked when reopened.
        if let Some(h) = &f.handle {
            super::handles::open_linked_elsewhere(
                &Handle::of_inode(f.dev, f.inode, h),
                libc::O_PATH | libc::O_CLOEXEC,
            )
            .map_err(|e| super::file_error(pid, f, format!("by its file handle: {e}")))?;
        } else if f.kind() == FileKind::Regular && !f.deleted && !f.path.starts_with(b"/proc/") {
            check_regular(pid, f, true)?;
        }
        if f.kind() == FileKind::Symlink && !f.deleted {
            let md = std::fs::symlink_metadata(path(&f.path));
            if !md.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(super::file_error(
                    pid,
                    f,
                    match md {
                        Ok(m) => format!("it was a symlink and is now a {}", kind_name(&m)),
                        Err(e) => format!("cannot stat: {e}"),
                    },
                ));
            }
        }
        Ok(())
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        if let Some(h) = &f.handle {
            let flags = reopen_flags(f) | libc::O_CLOEXEC;
            let fd =
                super::handles::open_linked_elsewhere(&Handle::of_inode(f.dev, f.inode, h), flags)
                    .map_err(|e| super::file_error(pid, f, format!("by its file handle: {e}")))?;
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(f.offset))
                .map_err(|e| super::file_error(pid, f, format!("setting its offset: {e}")))?;
            return Ok(Reopen::Created(fd));
        }
        if f.deleted && f.kind() == FileKind::Regular {
            let taken = objects
                .unlinked
                .take_own_description(f.unlinked_file, f.open_flags);
            if let Some(fd) = taken.map_err(|e| {
                super::file_error(pid, f, format!("taking the file's own description: {e}"))
            })? {
                super::set_status_flags(&fd, f.open_flags)
                    .and_then(|()| {
                        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(f.offset))
                            .map(drop)
                            .map_err(Into::into)
                    })
                    .map_err(|e| {
                        super::file_error(pid, f, format!("setting its flags and offset: {e}"))
                    })?;
                return Ok(Reopen::Created(fd));
            }
        }
        if of_other_thread(f) {
            // Not there before the thread is: a stand-in of the same kind
            // until `ThreadProcFiles`.
            let (stand_in, kind) = match f.kind() {
                FileKind::Directory => (&b"/"[..], libc::O_DIRECTORY),
                _ => (&b"/dev/null"[..], 0),
            };
            return Ok(Reopen::Path {
                path: stand_in.to_vec(),
                flags: libc::O_RDONLY | kind,
                offset: 0,
            });
        }
        let mut reopen = f.path.clone();
        let mut offset = 0;
        if f.deleted {
            let want: &[UnlinkedKind] = match f.kind() {
                FileKind::Directory => &[UnlinkedKind::Directory],
                FileKind::Symlink => &[UnlinkedKind::Symlink],
                _ => &crate::unlinked::FILE_KINDS,
            };
            reopen = objects
                .unlinked
                .proc_path(f.unlinked_file, want)?
                .into_bytes();
        } else if f.kind() == FileKind::Regular {
            check_regular(pid, f, false)?;
        }
        match f.kind() {
            FileKind::Regular => offset = f.offset,
            FileKind::Directory => offset = directory_offset(pid, f, &reopen),
            _ => {}
        }
        let mut flags = reopen_flags(f);
        // O_NOFOLLOW matters for a symlink opened by its path. Through a
        // /proc magic link (removed files) it would open the magic link
        // itself; without it, the jump ends on the object, a symlink too.
        // By its own path, a file opened with O_NOFOLLOW keeps it (only an
        // open sets it): that path was no symlink then.
        if f.kind() == FileKind::Symlink {
            flags |= libc::O_PATH;
            if !f.deleted {
                flags |= libc::O_NOFOLLOW;
            }
        } else if !f.deleted {
            flags |= f.open_flags as i32 & libc::O_NOFOLLOW;
        }
        Ok(Reopen::Path {
            path: reopen,
            flags,
            offset,
        })
    }
}

/// Whether an open file description with these flags made its file with
/// O_TMPFILE (which fdinfo keeps; O_DIRECTORY is part of O_TMPFILE).
pub(crate) fn made_by_tmpfile(open_flags: u32) -> bool {
    open_flags as i32 & libc::O_TMPFILE & !libc::O_DIRECTORY != 0
}

/// The saved open flags a file is opened by path again with. A file made
/// with O_TMPFILE keeps that flag (with O_DIRECTORY in it): opened again,
/// it is a file, not a directory to make a file in.
fn reopen_flags(f: &OpenFile) -> i32 {
    let made_only = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_TMPFILE;
    let flags = f.open_flags as i32 & !(made_only | libc::O_CLOEXEC | libc::O_NOFOLLOW);
    match f.kind() {
        FileKind::Directory => flags | (f.open_flags as i32 & libc::O_DIRECTORY),
        _ => flags,
    }
}

/// Whether `f` is a file or directory under /proc/PID/task/TID/ of a
/// thread that is not its process's leader (TID ≠ PID): a thread of the
/// tree is created after the fd tables, so it is opened then.
fn of_other_thread(f: &OpenFile) -> bool {
    if f.deleted || !matches!(f.kind(), FileKind::Regular | FileKind::Directory) {
        return false;
    }
    let Some(rest) = f.path.strip_prefix(b"/proc/") else {
        return false;
    };
    let number = |s: &[u8]| -> Option<(u64, usize)> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let v = std::str::from_utf8(&s[..n]).ok()?.parse().ok()?;
        Some((v, n))
    };
    let Some((pid, n)) = number(rest) else {
        return false;
    };
    let Some(rest) = rest[n..].strip_prefix(b"/task/") else {
        return false;
    };
    let Some((tid, n)) = number(rest) else {
        return false;
    };
    tid != pid && matches!(rest.get(n), None | Some(b'/'))
}

/// Files under /proc/PID/task/TID/ of threads other than the leader (see
/// [`of_other_thread`]), in place of the stand-ins the files phase made,
/// once the threads exist: opened by path from inside the process, or a
/// dup, or a description shared with an earlier process of the tree.
pub(crate) struct ThreadProcFiles;

impl Kind for ThreadProcFiles {
    fn name(&self) -> &'static str {
        "/proc files of threads"
    }

    fn phase(&self) -> Phase {
        Phase::Threads
    }

    fn dump(&mut self, _p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        Ok(()) // saved with the fd table
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        super::install_late(p, of_other_thread, |stub, f| {
            let offset = match f.kind() {
                FileKind::Regular | FileKind::Directory => f.offset,
                _ => 0,
            };
            super::open_in(stub, f, &f.path, reopen_flags(f), offset)
        })
    }
}

/// Where a directory's reader goes on from: the saved offset, a cookie of
/// the directory's file system that lseek takes back, if `path` opens the
/// very directory (or one of /proc, whose offsets count entries); else the
/// beginning (another directory's cookie would skip entries).
fn directory_offset(pid: i32, f: &OpenFile, path: &[u8]) -> u64 {
    if f.offset == 0 || f.path.starts_with(b"/proc/") {
        return f.offset;
    }
    match std::fs::metadata(crate::paths::path(path)) {
        Ok(md) if (md.dev(), md.ino()) == (f.dev, f.inode) => f.offset,
        _ => {
            tracing::warn!(pid, fd = f.fd, path = %show(&f.path), "a directory read part-way is another one than at the dump (other inode): its reader starts it again");
            0
        }
    }
}

/// Checks that the saved regular file `f` (not deleted) can be reopened
/// without corrupting the process: it must exist and must not have shrunk
/// below the saved offset. Other changes (size, replaced file, mtime) are
/// logged when `warn`.
fn check_regular(pid: i32, f: &OpenFile, warn: bool) -> Result<(), RestoreError> {
    let ferr = |reason: String| super::file_error(pid, f, reason);
    let md = std::fs::metadata(path(&f.path)).map_err(|e| ferr(format!("cannot stat: {e}")))?;
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
        tracing::warn!(pid, fd = f.fd, path = %show(&f.path), "the path names another file than at the dump (other inode)");
    }
    if md.size() != f.size {
        tracing::warn!(pid, fd = f.fd, path = %show(&f.path), "file size changed since the dump ({} -> {})", f.size, md.size());
    } else if f.mtime_ns != 0 && md.mtime() * 1_000_000_000 + md.mtime_nsec() != f.mtime_ns {
        tracing::warn!(pid, fd = f.fd, path = %show(&f.path), "file modified since the dump (same size)");
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

#[cfg(test)]
mod tests {
    use super::super::testing::{dump_own, restore_own};
    use super::*;
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;

    #[test]
    fn regular_file_keeps_path_flags_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.seek(SeekFrom::Start(4)).unwrap();
        let f = dump_own(file.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Regular);
        assert_eq!((f.offset, f.size), (4, 10));
        assert_ne!(f.open_flags as i32 & libc::O_APPEND, 0);
        match restore_own(&f).unwrap() {
            Reopen::Path {
                path: p,
                flags,
                offset,
            } => {
                assert_eq!(p, path.to_str().unwrap().as_bytes());
                assert_eq!(
                    flags & (libc::O_ACCMODE | libc::O_APPEND),
                    libc::O_WRONLY | libc::O_APPEND
                );
                assert_eq!(offset, 4);
            }
            Reopen::Created(_) => panic!("a regular file is reopened by path"),
        }
        // Shrunk below the saved offset: refused before anything is created.
        std::fs::write(&path, b"01").unwrap();
        let e = Regular.check(1, &f).unwrap_err().to_string();
        assert!(e.contains("shrank"), "{e}");
    }

    #[test]
    fn other_devices_are_refused_by_name() {
        let full = std::fs::File::open("/dev/full").unwrap();
        let e = dump_own(full.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("/dev/full") && e.contains("1:7"), "{e}");
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            dump_own(null.as_raw_fd()).unwrap().kind(),
            FileKind::CharDevice
        );
    }

    #[test]
    fn files_of_threads_other_than_the_leader() {
        let of = |path: &str, kind: FileKind| {
            let mut f = OpenFile {
                path: path.as_bytes().to_vec(),
                ..Default::default()
            };
            f.set_kind(kind);
            of_other_thread(&f)
        };
        assert!(of("/proc/10/task/12/status", FileKind::Regular));
        assert!(of("/proc/10/task/12", FileKind::Directory));
        assert!(!of("/proc/10/task/10/status", FileKind::Regular));
        assert!(!of("/proc/10/status", FileKind::Regular));
        assert!(!of("/proc/10/task/123x", FileKind::Directory));
        assert!(!of("/proc/10/task/12/status", FileKind::CharDevice));
        assert!(!of("/tmp/proc/10/task/12/status", FileKind::Regular));
    }
}
