//! Workload: a process and its child holding file locks of every kind on
//! files in DIR, as databases and daemons hold them:
//! - parent: flock LOCK_EX on DIR/flock; POSIX write lock on bytes 10..20
//!   and read lock on 100..EOF of DIR/posix; an OFD write lock on bytes
//!   0..4096 of DIR/ofd; a read lease on DIR/lease;
//! - child: POSIX write lock on bytes 30..40 of DIR/posix (its own), and
//!   flock LOCK_SH on DIR/shared, which the parent holds LOCK_SH too
//!   through another open file.
//!
//! Every 100 ms the parent checks that each of its locks is still its own
//! (F_GETLK through a descriptor of a forked checker would conflict; the
//! test checks from outside), counts, and reports "pid counter STATUS"
//! with the child's pid on the next line. STATUS names a lease it lost
//! (F_GETLEASE) or a lock whose fd went away.
//!
//! Usage: wl_locks REPORT DIR

use std::ffi::CString;
use std::time::Duration;

mod wl_common;
use wl_common::report;

fn open(dir: &str, name: &str, flags: i32) -> i32 {
    let path = CString::new(format!("{dir}/{name}")).unwrap();
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CREAT, 0o644) };
    assert!(fd >= 0, "open {name}: {}", std::io::Error::last_os_error());
    fd
}

fn posix(fd: i32, cmd: i32, kind: i32, start: i64, len: i64) {
    // SAFETY: fcntl with a local struct flock.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = kind as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = start;
        fl.l_len = len;
        assert_eq!(
            libc::fcntl(fd, cmd, &fl),
            0,
            "fcntl lock {start}+{len}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn flock(fd: i32, op: i32) {
    // SAFETY: flock on our own fd.
    assert_eq!(unsafe { libc::flock(fd, op | libc::LOCK_NB) }, 0, "flock");
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let (path, dir) = (args[1].clone(), args[2].clone());

    let shared = open(&dir, "shared", libc::O_RDONLY);
    flock(shared, libc::LOCK_SH);
    let posix_fd = open(&dir, "posix", libc::O_RDWR);
    // SAFETY: a fresh child that only takes its locks and sleeps.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        posix(posix_fd, libc::F_SETLK, libc::F_WRLCK, 30, 10);
        let own = open(&dir, "shared", libc::O_RDONLY);
        flock(own, libc::LOCK_SH);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let flock_fd = open(&dir, "flock", libc::O_RDWR);
    flock(flock_fd, libc::LOCK_EX);
    posix(posix_fd, libc::F_SETLK, libc::F_WRLCK, 10, 10);
    posix(posix_fd, libc::F_SETLK, libc::F_RDLCK, 100, 0);
    let ofd = open(&dir, "ofd", libc::O_RDWR);
    posix(ofd, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 4096);
    let lease = open(&dir, "lease", libc::O_RDONLY);
    // SAFETY: fcntl on our own fd.
    unsafe {
        assert_eq!(
            libc::fcntl(lease, libc::F_SETLEASE, libc::F_RDLCK),
            0,
            "F_SETLEASE: {}",
            std::io::Error::last_os_error()
        );
    }

    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        // SAFETY: fcntl queries on our own fds.
        let status = unsafe {
            if libc::fcntl(lease, libc::F_GETLEASE) != libc::F_RDLCK {
                "lease-lost".to_string()
            } else if libc::fcntl(flock_fd, libc::F_GETFD) < 0 {
                "flock-fd-gone".to_string()
            } else {
                "OK".to_string()
            }
        };
        report(&path, &format!("{pid} {counter} {status}\n{child}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
