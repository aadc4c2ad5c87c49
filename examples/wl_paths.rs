//! Workload: files that have no usable path any more, or a path only a
//! careful restore gets right. Every 100 ms it checks, and reports "pid
//! counter STATUS":
//! - its working directory is a removed directory (mode 0705), which an
//!   open fd also holds (the same inode);
//! - another removed directory held open (mode 0751), empty;
//! - a symlink opened with O_PATH|O_NOFOLLOW, and a removed one;
//! - a FIFO whose path was removed ("ghost"), open twice, with bytes queued;
//! - /proc/PID/stat, open and partly read (offset 5);
//! - a file of a directory that was removed after the file was unlinked,
//!   and a file of a directory that was renamed;
//! - a private mapping of 3 pages of a file shrunk to 1 page since (its
//!   first page written, a private copy): the mapping keeps its length;
//! - inotify watches on a deleted file and a removed directory, both held
//!   open: writing the file and chmod'ing the directory through their fds
//!   report events on those watches (the watches are on the same inodes).
//!
//! With `chroot`, it instead chroots into the directory of its report
//! (writing it as "/NAME" from then on) and checks a file there, by path
//! and through an fd opened after the chroot.
//!
//! Usage: wl_paths REPORT [chroot]

use std::ffi::CString;
use std::os::fd::RawFd;
use std::time::Duration;

mod wl_common;
use wl_common::report;

const FIFO_DATA: &[u8] = b"ghost-fifo-data";
const REMOVED_DIR_DATA: &[u8] = b"removed-dir-data";
const RENAMED_DIR_DATA: &[u8] = b"renamed-dir-data";
const MARKER: &[u8] = b"chroot-marker";

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.into()) }
}

/// Returns the fd; panics (before the test starts watching) on failure.
fn open(path: &str, flags: i32, mode: u32) -> RawFd {
    // SAFETY: plain open with a NUL-terminated path.
    let fd = unsafe { libc::open(c(path).as_ptr(), flags | libc::O_CLOEXEC, mode) };
    assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
    fd
}

fn fstat_empty(fd: RawFd) -> Result<libc::stat, String> {
    // SAFETY: fstatat on an fd with an empty path into a local stat.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let r = libc::fstatat(
            fd,
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        );
        if r != 0 {
            return Err(format!("fstat-{fd}-{}", std::io::Error::last_os_error()));
        }
        Ok(st)
    }
}

fn readlink_fd(fd: RawFd) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 256];
    // SAFETY: readlinkat into a local buffer.
    let n = unsafe { libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(format!("readlink-{fd}-{}", std::io::Error::last_os_error()));
    }
    Ok(buf[..n as usize].to_vec())
}

fn pread_all(fd: RawFd, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: pread into a local buffer.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, 0) };
    buf.truncate(n.max(0) as usize);
    buf
}

fn flags(fd: RawFd) -> i32 {
    // SAFETY: F_GETFL on our fd.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

struct Fds {
    cwd_fd: RawFd,
    dir: RawFd,
    link: RawFd,
    gone_link: RawFd,
    fifo: RawFd,
    fifo_reader: RawFd,
    proc_stat: RawFd,
    in_removed_dir: RawFd,
    in_renamed_dir: RawFd,
    inotify: RawFd,
    watched_file: RawFd,
    watched_file_wd: i32,
    dir_wd: i32,
    shrunk_map: usize,
}

fn set_up(base: &str) -> Fds {
    let w = format!("{base}/paths");
    std::fs::create_dir_all(&w).unwrap();
    let mkdir = |p: &str, mode| {
        std::fs::create_dir(p).unwrap();
        // SAFETY: chmod with a NUL-terminated path (no umask involved).
        unsafe { libc::chmod(c(p).as_ptr(), mode) };
    };
    // The working directory, removed.
    let cwd = format!("{w}/gone-cwd");
    mkdir(&cwd, 0o705);
    std::env::set_current_dir(&cwd).unwrap();
    let cwd_fd = open(".", libc::O_RDONLY | libc::O_DIRECTORY, 0);
    std::fs::remove_dir(&cwd).unwrap();
    // Another removed directory.
    let d = format!("{w}/gone-dir");
    mkdir(&d, 0o751);
    let dir = open(&d, libc::O_RDONLY | libc::O_DIRECTORY, 0);
    std::fs::remove_dir(&d).unwrap();
    // Symlinks, kept and removed.
    std::os::unix::fs::symlink("kept-target", format!("{w}/link")).unwrap();
    let link = open(&format!("{w}/link"), libc::O_PATH | libc::O_NOFOLLOW, 0);
    std::os::unix::fs::symlink("gone-target", format!("{w}/gone-link")).unwrap();
    let gone_link = open(
        &format!("{w}/gone-link"),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    );
    std::fs::remove_file(format!("{w}/gone-link")).unwrap();
    // A ghost FIFO with bytes in it.
    let f = format!("{w}/fifo");
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c(&f).as_ptr(), 0o640) }, 0);
    let fifo = open(&f, libc::O_RDWR, 0);
    let fifo_reader = open(&f, libc::O_RDONLY | libc::O_NONBLOCK, 0);
    // SAFETY: write from a constant.
    let n = unsafe { libc::write(fifo, FIFO_DATA.as_ptr().cast(), FIFO_DATA.len()) };
    assert_eq!(n, FIFO_DATA.len() as isize);
    std::fs::remove_file(&f).unwrap();
    // /proc/PID/stat, partly read.
    let proc_stat = open("/proc/self/stat", libc::O_RDONLY, 0);
    let mut five = [0u8; 5];
    // SAFETY: read into a local buffer.
    assert_eq!(
        unsafe { libc::read(proc_stat, five.as_mut_ptr().cast(), 5) },
        5
    );
    // A file of a directory removed since, and one of a renamed directory.
    std::fs::create_dir(format!("{w}/sub")).unwrap();
    std::fs::write(format!("{w}/sub/file"), REMOVED_DIR_DATA).unwrap();
    let in_removed_dir = open(&format!("{w}/sub/file"), libc::O_RDONLY, 0);
    std::fs::remove_file(format!("{w}/sub/file")).unwrap();
    std::fs::remove_dir(format!("{w}/sub")).unwrap();
    std::fs::create_dir(format!("{w}/ren-a")).unwrap();
    std::fs::write(format!("{w}/ren-a/file"), RENAMED_DIR_DATA).unwrap();
    let in_renamed_dir = open(&format!("{w}/ren-a/file"), libc::O_RDONLY, 0);
    std::fs::rename(format!("{w}/ren-a"), format!("{w}/ren-b")).unwrap();
    // inotify watches on a deleted file and on the removed directory.
    std::fs::write(format!("{w}/watched"), b"w").unwrap();
    let watched_file = open(&format!("{w}/watched"), libc::O_RDWR, 0);
    // SAFETY: inotify calls with NUL-terminated paths.
    let (inotify, watched_file_wd, dir_wd) = unsafe {
        let i = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
        let wf = libc::inotify_add_watch(i, c(&format!("{w}/watched")).as_ptr(), libc::IN_MODIFY);
        let wd = libc::inotify_add_watch(
            i,
            c(&format!("/proc/self/fd/{dir}")).as_ptr(),
            libc::IN_ATTRIB,
        );
        assert!(i >= 0 && wf > 0 && wd > 0, "inotify");
        (i, wf, wd)
    };
    std::fs::remove_file(format!("{w}/watched")).unwrap();
    inotify_events(inotify);
    // A private mapping longer than its file.
    std::fs::write(format!("{w}/shrunk"), vec![b's'; 3 * 4096]).unwrap();
    let sf = open(&format!("{w}/shrunk"), libc::O_RDWR, 0);
    // SAFETY: a fresh private mapping of our file, written within its
    // first page; the file is shrunk after.
    let shrunk_map = unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            3 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            sf,
            0,
        );
        assert_ne!(m, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"private".as_ptr(), m.cast(), 7);
        assert_eq!(libc::ftruncate(sf, 4096), 0);
        libc::close(sf);
        m as usize
    };
    Fds {
        cwd_fd,
        dir,
        link,
        gone_link,
        fifo,
        fifo_reader,
        proc_stat,
        in_removed_dir,
        in_renamed_dir,
        inotify,
        watched_file,
        watched_file_wd,
        dir_wd,
        shrunk_map,
    }
}

/// (wd, mask) of every event queued on inotify fd `i` now.
fn inotify_events(i: RawFd) -> Vec<(i32, u32)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(i, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        let mut at = 0usize;
        while at + 16 <= n as usize {
            let wd = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            out.push((wd, mask));
            at += 16 + len;
        }
    }
}

fn verify(f: &Fds, w: &str) -> Result<(), String> {
    let pid = std::process::id();
    // Working directory: removed, the same inode as cwd_fd.
    let here = fstat_empty(libc::AT_FDCWD)?;
    let held = fstat_empty(f.cwd_fd)?;
    check(
        here.st_mode & libc::S_IFMT == libc::S_IFDIR,
        "cwd-not-a-dir",
    )?;
    check(here.st_nlink == 0, "cwd-not-removed")?;
    check(here.st_mode & 0o7777 == 0o705, "cwd-mode")?;
    check(
        (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino),
        "cwd-and-its-fd-differ",
    )?;
    check(
        std::env::current_dir().is_err(),
        "getcwd-of-a-removed-dir-works",
    )?;
    // The other removed directory.
    let d = fstat_empty(f.dir)?;
    check(
        d.st_mode & libc::S_IFMT == libc::S_IFDIR && d.st_nlink == 0,
        "dir-not-a-removed-dir",
    )?;
    check(d.st_mode & 0o7777 == 0o751, "dir-mode")?;
    check(
        (d.st_dev, d.st_ino) != (held.st_dev, held.st_ino),
        "two-removed-dirs-are-one",
    )?;
    // Symlinks.
    for (fd, target, removed) in [
        (f.link, "kept-target", false),
        (f.gone_link, "gone-target", true),
    ] {
        let st = fstat_empty(fd)?;
        check(st.st_mode & libc::S_IFMT == libc::S_IFLNK, "not-a-symlink")?;
        check((st.st_nlink == 0) == removed, "symlink-link-count")?;
        check(readlink_fd(fd)? == target.as_bytes(), "symlink-target")?;
        check(flags(fd) & libc::O_PATH != 0, "symlink-fd-not-o-path")?;
    }
    check(
        std::fs::read_link(format!("/proc/self/fd/{}", f.link))
            .is_ok_and(|p| p == std::path::Path::new(&format!("{w}/link"))),
        "symlink-fd-path",
    )?;
    // The ghost FIFO: one object, removed, with its bytes.
    let a = fstat_empty(f.fifo)?;
    let b = fstat_empty(f.fifo_reader)?;
    check(a.st_mode & libc::S_IFMT == libc::S_IFIFO, "fifo-not-a-fifo")?;
    check(a.st_nlink == 0, "fifo-not-removed")?;
    check(a.st_mode & 0o7777 == 0o640, "fifo-mode")?;
    check(a.st_ino == b.st_ino, "fifo-fds-differ")?;
    check(
        flags(f.fifo) & libc::O_ACCMODE == libc::O_RDWR,
        "fifo-flags",
    )?;
    check(
        flags(f.fifo_reader) & (libc::O_ACCMODE | libc::O_NONBLOCK)
            == libc::O_RDONLY | libc::O_NONBLOCK,
        "fifo-reader-flags",
    )?;
    check(peek_pipe(f.fifo)? == FIFO_DATA, "fifo-bytes")?;
    // /proc/PID/stat: ours, at offset 5.
    // SAFETY: lseek on our fd.
    let off = unsafe { libc::lseek(f.proc_stat, 0, libc::SEEK_CUR) };
    check(off == 5, &format!("proc-stat-offset-{off}"))?;
    let text = pread_all(f.proc_stat, 512);
    check(
        text.starts_with(format!("{pid} (wl_paths)").as_bytes()),
        "proc-stat-of-another-process",
    )?;
    // Files of the removed and the renamed directory.
    check(
        pread_all(f.in_removed_dir, 64) == REMOVED_DIR_DATA,
        "removed-dir-file-data",
    )?;
    check(
        fstat_empty(f.in_removed_dir)?.st_nlink == 0,
        "removed-dir-file-link-count",
    )?;
    check(
        pread_all(f.in_renamed_dir, 64) == RENAMED_DIR_DATA,
        "renamed-dir-file-data",
    )?;
    check(
        std::fs::read_link(format!("/proc/self/fd/{}", f.in_renamed_dir))
            .is_ok_and(|p| p == std::path::Path::new(&format!("{w}/ren-b/file"))),
        "renamed-dir-file-path",
    )?;
    // The mapping longer than its file: the private copy, the file's
    // bytes after it, and its whole length (pages past the end of the
    // file would raise SIGBUS: not touched).
    // SAFETY: reads within the first page of our mapping.
    let first = unsafe { std::slice::from_raw_parts(f.shrunk_map as *const u8, 8) };
    check(first == b"privates", "shrunk-file-mapping-data")?;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    check(
        maps.lines().any(|l| {
            l.starts_with(&format!(
                "{:x}-{:x} ",
                f.shrunk_map,
                f.shrunk_map + 3 * 4096
            )) && l.ends_with("/shrunk")
        }),
        "shrunk-file-mapping-length",
    )?;
    // The watches on the deleted file and the removed directory.
    let stray = inotify_events(f.inotify);
    check(stray.is_empty(), &format!("stray-inotify-events-{stray:?}"))?;
    // SAFETY: pwrite of a local byte and fchmod on our own fds.
    unsafe {
        libc::pwrite(f.watched_file, b"w".as_ptr().cast(), 1, 0);
        libc::fchmod(f.dir, 0o751);
    }
    let got = inotify_events(f.inotify);
    let want = vec![
        (f.watched_file_wd, libc::IN_MODIFY),
        (f.dir_wd, libc::IN_ATTRIB | libc::IN_ISDIR),
    ];
    check(got == want, &format!("inotify-events-{got:?}"))?;
    Ok(())
}

/// The bytes queued in the pipe of `fd`, left in place (tee into a
/// scratch pipe).
fn peek_pipe(fd: RawFd) -> Result<Vec<u8>, String> {
    let mut p = [0; 2];
    // SAFETY: pipe2 into a local array; tee between our fds; read into a
    // local buffer; close our scratch fds.
    unsafe {
        if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
            return Err("pipe2".into());
        }
        let n = libc::tee(fd, p[1], 1 << 16, libc::SPLICE_F_NONBLOCK);
        let mut buf = vec![0u8; n.max(0) as usize];
        let r = libc::read(p[0], buf.as_mut_ptr().cast(), buf.len());
        libc::close(p[0]);
        libc::close(p[1]);
        buf.truncate(r.max(0) as usize);
        Ok(buf)
    }
}

fn chrooted(path: &str) -> ! {
    let dir = std::path::Path::new(path).parent().unwrap().to_path_buf();
    let name = std::path::Path::new(path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("marker"), MARKER).unwrap();
    std::env::set_current_dir(&dir).unwrap();
    // SAFETY: chroot with a NUL-terminated path.
    assert_eq!(unsafe { libc::chroot(c".".as_ptr()) }, 0, "chroot");
    let marker = open("/marker", libc::O_RDONLY, 0);
    let inside = format!("/{name}");
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        let status = (|| {
            check(
                std::fs::read("/marker").ok().as_deref() == Some(MARKER),
                "marker-by-path",
            )?;
            check(pread_all(marker, 64) == MARKER, "marker-by-fd")?;
            check(
                std::fs::read_link(format!("/proc/self/fd/{marker}")).is_err(),
                "proc-visible-inside-the-chroot",
            )?;
            check(
                std::env::current_dir().ok().as_deref() == Some(std::path::Path::new("/")),
                "cwd-not-the-root",
            )
        })();
        let status = status.err().unwrap_or_else(|| "OK".into());
        report(&inside, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args()
        .nth(1)
        .expect("usage: wl_paths REPORT [chroot]");
    if std::env::args().nth(2).as_deref() == Some("chroot") {
        chrooted(&path);
    }
    let base = std::path::Path::new(&path)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let fds = set_up(&base);
    let w = format!("{base}/paths");
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        let status = verify(&fds, &w).err().unwrap_or_else(|| "OK".into());
        report(
            &path,
            &format!("{pid} {counter} {}\n", status.replace(' ', "-")),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
