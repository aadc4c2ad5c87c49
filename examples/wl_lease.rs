//! Workload: two leases being broken. It takes a write lease on
//! REPORT.wlease and a read lease on REPORT.rlease, then a child of it
//! opens the first for reading and the second for writing (O_NONBLOCK:
//! the opens fail with EWOULDBLOCK and the breaks start). The write lease
//! is then breaking to a read lease, the read lease to none, and the
//! holder got SIGIO; it does not give them up. Each round it checks
//! F_GETLEASE on both and reports "pid counter STATUS sigios".
//!
//! Usage: wl_lease REPORT

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

static SIGIOS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigio(_: libc::c_int) {
    SIGIOS.fetch_add(1, Ordering::Relaxed);
}

fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap();
    // SAFETY: open with a valid C string.
    unsafe { libc::open(c.as_ptr(), flags, 0o644) }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_lease REPORT");
    let (wpath, rpath) = (format!("{path}.wlease"), format!("{path}.rlease"));
    std::fs::write(&wpath, b"w").unwrap();
    std::fs::write(&rpath, b"r").unwrap();
    // SAFETY: a handler that only counts.
    unsafe { libc::signal(libc::SIGIO, on_sigio as *const () as libc::sighandler_t) };
    let (w, r) = (open(&wpath, libc::O_RDONLY), open(&rpath, libc::O_RDONLY));
    assert!(w >= 0 && r >= 0, "open");
    // SAFETY: fcntl on our own fds.
    unsafe {
        assert_eq!(
            libc::fcntl(w, libc::F_SETLEASE, libc::F_WRLCK),
            0,
            "write lease"
        );
        assert_eq!(
            libc::fcntl(r, libc::F_SETLEASE, libc::F_RDLCK),
            0,
            "read lease"
        );
    }
    // SAFETY: the child only opens and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let blocked = |fd: i32| {
            fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
        };
        let ok = blocked(open(&wpath, libc::O_RDONLY | libc::O_NONBLOCK))
            && blocked(open(&rpath, libc::O_WRONLY | libc::O_NONBLOCK));
        // SAFETY: leaving the child without running the parent's exit code.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "the opens did not start the breaks"
    );
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        // SAFETY: fcntl queries on our own fds.
        let (wl, rl) = unsafe {
            (
                libc::fcntl(w, libc::F_GETLEASE),
                libc::fcntl(r, libc::F_GETLEASE),
            )
        };
        let status = if wl != libc::F_RDLCK {
            format!("write-lease-is-{wl}")
        } else if rl != libc::F_UNLCK {
            format!("read-lease-is-{rl}")
        } else {
            "OK".into()
        };
        let sigios = SIGIOS.load(Ordering::Relaxed);
        report(&path, &format!("{pid} {counter} {status} {sigios}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
