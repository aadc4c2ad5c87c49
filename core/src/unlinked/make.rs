//! Making the unlinked objects again at restore: memfds, deleted files,
//! and removed directories, symlinks and FIFOs, each at its old path (and
//! removed again at once) where possible; and giving them their saved
//! owner, mode and times, but only once they are unlinked: what restore
//! made at a path others may write to, never an object swapped in there.
//! A transient file is made again only if it is gone, and stays at its
//! path (given its owner by fd).

use crstream_proto::{UnlinkedFile, UnlinkedKind};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The saved owner and access/modification times (images before records
/// version 3 have none: the file keeps root's and now).
pub(super) fn set_owner_and_times(file: &File, u: &UnlinkedFile) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    if u.atime_ns == 0 && u.mtime_ns == 0 {
        return Ok(());
    }
    use rustix::fs::AtFlags;
    // Made at a path others may write to: what is given an owner and mode
    // must be what restore made, unlinked since (never an object swapped
    // in at that path, still reachable by a name).
    if u.kind() != UnlinkedKind::Transient && rustix::fs::fstat(file)?.st_nlink != 0 {
        return Err(std::io::Error::other(
            "it has a name again (was the path swapped?): no owner given",
        ));
    }
    let uid = rustix::fs::Uid::from_raw(u.uid);
    let gid = rustix::fs::Gid::from_raw(u.gid);
    // By fd with an empty path: works on the O_PATH fds of symlinks and
    // FIFOs too.
    rustix::fs::chownat(
        file,
        "",
        Some(uid),
        Some(gid),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?;
    // A change of owner clears set-user-ID and set-group-ID bits. A
    // symlink's mode is always 0777; the others through the magic link,
    // which (unlike fchmod) takes O_PATH fds.
    // A transient file stays at its path: never set-user-ID there.
    let mode = match u.kind() {
        UnlinkedKind::Transient => u.mode & 0o777,
        _ => u.mode,
    };
    if u.kind() != UnlinkedKind::Symlink {
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", file.as_raw_fd()),
            std::fs::Permissions::from_mode(mode),
        )?;
    }
    let ts = |ns: i64| Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        file,
        "",
        &Timestamps {
            last_access: ts(u.atime_ns),
            last_modification: ts(u.mtime_ns),
        },
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Whether `file` no longer has the owner, mode or times of `u`.
pub(super) fn owner_or_times_differ(file: &File, u: &UnlinkedFile) -> bool {
    if u.atime_ns == 0 && u.mtime_ns == 0 {
        return false;
    }
    let Ok(st) = rustix::fs::fstat(file) else {
        return true;
    };
    let ns = |s: i64, n: u64| s * 1_000_000_000 + n as i64;
    st.st_uid != u.uid
        || st.st_gid != u.gid
        || (u.kind() != UnlinkedKind::Symlink && st.st_mode & 0o7777 != u.mode)
        || ns(st.st_atime, st.st_atime_nsec) != u.atime_ns
        || ns(st.st_mtime, st.st_mtime_nsec) != u.mtime_ns
}

/// The seals of a memfd created without MFD_ALLOW_SEALING.
pub(super) const SEALING_OFF: u32 = libc::F_SEAL_SEAL as u32;

pub(super) fn create_memfd(u: &UnlinkedFile) -> std::io::Result<File> {
    let name = CString::new(u.path.as_slice()).map_err(std::io::Error::other)?;
    let mut flags = rustix::fs::MemfdFlags::CLOEXEC;
    if u.seals != SEALING_OFF {
        flags |= rustix::fs::MemfdFlags::ALLOW_SEALING;
    }
    sized(
        File::from(rustix::fs::memfd_create(name.as_c_str(), flags)?),
        u,
    )
}

/// Created at its old path and unlinked at once, so that /proc shows the
/// same "PATH (deleted)" as before; where that path is taken or its
/// directory gone, an O_TMPFILE in the same directory (or /tmp) instead.
pub(super) fn create_deleted(u: &UnlinkedFile) -> std::io::Result<File> {
    let path = crate::paths::path(&u.path);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => {
            std::fs::remove_file(path)?;
            f
        }
        Err(_) => tmpfile_near(path, |dir| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o600)
                .open(dir)
        })?,
    };
    sized(file, u)
}

/// What [`open_or_make_transient`] made at a path, for a failed restore
/// to remove again.
pub(super) struct Made {
    pub file: std::path::PathBuf,
    /// Its directory, when that was gone too.
    pub dir: Option<std::path::PathBuf>,
}

/// A transient file: the file at its path if there is one (kept, as any
/// mapped file, if it still belongs to the saved owner; the image's
/// contents are not written), else a new one made there, to be filled with
/// the saved contents (and its directory, with its saved mode and owner, if
/// that is gone too; not further up). No symlink on the way is followed: a
/// saved path is the kernel's own, with none in it, and in a directory any
/// user may write to (/tmp, /dev/shm) one would let them choose which file
/// restore maps, makes or gives an owner.
pub(super) fn open_or_make_transient(u: &UnlinkedFile) -> std::io::Result<(File, Option<Made>)> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let path = crate::paths::path(&u.path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("not the path of a file"));
    };
    if !path.is_absolute() {
        return Err(std::io::Error::other("not an absolute path"));
    }
    let open_dir = |dir: &Path| {
        rustix::fs::openat2(
            rustix::fs::CWD,
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS,
        )
    };
    let mut made_dir = None;
    let dirfd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            let (Some(up), Some(dir_name)) = (dir.parent(), dir.file_name()) else {
                return Err(std::io::Error::other("its directory is gone"));
            };
            let upfd = open_dir(up).map_err(|e| {
                std::io::Error::other(format!("{} is gone too ({e})", up.display()))
            })?;
            match rustix::fs::mkdirat(&upfd, dir_name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {
                    let fd = rustix::fs::openat(
                        &upfd,
                        dir_name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    rustix::fs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(u.dir_uid)),
                        Some(rustix::fs::Gid::from_raw(u.dir_gid)),
                    )?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(u.dir_mode & 0o7777))?;
                    made_dir = Some(dir.to_path_buf());
                }
                // Made meanwhile by someone else: used as it is.
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            open_dir(dir)?
        }
        Err(rustix::io::Errno::LOOP) => {
            return Err(std::io::Error::other(format!(
                "a symlink is on the way to {} (not followed)",
                dir.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    // Only ever in a temporary file system, whatever the image says.
    let on_tmpfs = rustix::fs::fstatfs(&dirfd).is_ok_and(|s| s.f_type == super::TMPFS_MAGIC);
    if !on_tmpfs && !path.starts_with("/tmp/") {
        return Err(std::io::Error::other(
            "not in a temporary file system (a tmpfs, /tmp): not made by restore",
        ));
    }
    match rustix::fs::openat(
        &dirfd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let st = rustix::fs::fstat(&fd)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            {
                return Err(std::io::Error::other("not a regular file any more"));
            }
            if st.st_uid != u.uid {
                return Err(std::io::Error::other(format!(
                    "it belongs to uid {} now, not {} as at the dump: remove it, and restore \
                     makes it again from the image",
                    st.st_uid, u.uid
                )));
            }
            let file = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
            return Ok((file, None));
        }
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(
        &dirfd,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let file = File::from(fd);
    let made = Made {
        file: path.to_path_buf(),
        dir: made_dir,
    };
    file.set_len(u.size)?;
    file.set_permissions(std::fs::Permissions::from_mode(u.mode & 0o777))?;
    Ok((file, Some(made)))
}

/// A file with no name made by `make` (O_TMPFILE in the directory it is
/// given) in the directory of `path`, or in /tmp where that fails.
fn tmpfile_near(
    path: &Path,
    make: impl Fn(&Path) -> std::io::Result<File>,
) -> std::io::Result<File> {
    let dir = path.parent().filter(|d| d.is_dir());
    dir.map_or_else(|| make(Path::new("/tmp")), &make)
        .or_else(|_| make(Path::new("/tmp")))
}

/// `file` given the saved size and mode of `u`.
fn sized(file: File, u: &UnlinkedFile) -> std::io::Result<File> {
    file.set_len(u.size)?;
    file.set_permissions(std::fs::Permissions::from_mode(u.mode))?;
    Ok(file)
}

/// Made with O_TMPFILE as before, in its old directory (or /tmp), with
/// the access mode and synchronous-write flags of the description that
/// made it (the others are set when that description is handed over):
/// without O_EXCL, so that linkat(AT_EMPTY_PATH) can give it a name, as a
/// program that made it so expects. (Whether the original used O_EXCL is
/// not shown anywhere; a program that did never links it.)
pub(super) fn create_tmpfile(u: &UnlinkedFile) -> std::io::Result<File> {
    let kept = libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC;
    let flags = libc::O_TMPFILE | (u.tmpfile_flags as i32 & kept);
    let access = u.tmpfile_flags as i32 & libc::O_ACCMODE;
    if access != libc::O_WRONLY && access != libc::O_RDWR {
        return Err(std::io::Error::other(format!(
            "made with O_TMPFILE by an fd with flags {:o}, which O_TMPFILE refuses",
            u.tmpfile_flags
        )));
    }
    let file = tmpfile_near(crate::paths::path(&u.path), |dir| {
        std::fs::OpenOptions::new()
            .read(access == libc::O_RDWR)
            .write(true)
            .custom_flags(flags & !libc::O_ACCMODE)
            .mode(0o600)
            .open(dir)
    })?;
    sized(file, u)
}

/// A removed directory, symlink or FIFO: made at its old path (or, where
/// that is taken or its directory gone, under a fresh name in that
/// directory or /tmp), opened, and removed again at once, so that /proc
/// shows "PATH (deleted)" as before. Directories are held open for
/// reading, the others with O_PATH.
pub(super) fn create_removed_node(u: &UnlinkedFile) -> std::io::Result<File> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let old = crate::paths::path(&u.path);
    let make = |at: &Path| -> std::io::Result<File> {
        let (flags, remove) = match u.kind() {
            UnlinkedKind::Directory => {
                rustix::fs::mkdirat(CWD, at, Mode::from_raw_mode(0o700))?;
                (OFlags::RDONLY | OFlags::DIRECTORY, AtFlags::REMOVEDIR)
            }
            UnlinkedKind::Symlink => {
                rustix::fs::symlinkat(crate::paths::path(&u.target), CWD, at)?;
                (OFlags::PATH | OFlags::NOFOLLOW, AtFlags::empty())
            }
            _ => {
                rustix::fs::mknodat(
                    CWD,
                    at,
                    rustix::fs::FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )?;
                (OFlags::PATH, AtFlags::empty())
            }
        };
        // O_NOFOLLOW: a symlink swapped in at `at` is never followed.
        let opened = rustix::fs::openat(
            CWD,
            at,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let removed = rustix::fs::unlinkat(CWD, at, remove);
        let file = File::from(opened?);
        removed?;
        let st = rustix::fs::fstat(&file)?;
        let want = match u.kind() {
            UnlinkedKind::Directory => libc::S_IFDIR,
            UnlinkedKind::Symlink => libc::S_IFLNK,
            _ => libc::S_IFIFO,
        };
        if st.st_mode & libc::S_IFMT != want || st.st_nlink != 0 {
            return Err(std::io::Error::other(format!(
                "{} changed under restore",
                at.display()
            )));
        }
        Ok(file)
    };
    if let Ok(f) = make(old) {
        return Ok(f);
    }
    let dir = old
        .parent()
        .filter(|d| d.is_dir())
        .unwrap_or(Path::new("/tmp"));
    let base = old
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = None;
    for n in 0..100 {
        let at = dir.join(format!(".{base}.crstream-{}-{n}", std::process::id()));
        match make(&at) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried"))
}
