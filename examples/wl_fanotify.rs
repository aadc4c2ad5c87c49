//! Workload: a fanotify group (notification class) with marks: on a file
//! (FAN_MODIFY), on a directory for its children (FAN_MODIFY with
//! FAN_EVENT_ON_CHILD), on a file whose modifications are ignored (an
//! ignore mask), and on a file deleted since but held open. Every 100 ms it writes to each
//! of them and checks that exactly the expected events arrive, naming the
//! right inodes. Reports "pid counter STATUS".
//!
//! Usage: wl_fanotify REPORT

use std::ffi::CString;
use std::os::fd::RawFd;
use std::time::Duration;

mod wl_common;
use wl_common::report;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn open(path: &str) -> RawFd {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c(path).as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert!(fd >= 0, "open {path}");
    fd
}

fn ino(fd: RawFd) -> u64 {
    // SAFETY: fstat into a local.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        st.st_ino
    }
}

fn mark(group: RawFd, flags: u32, mask: u64, path: &str) {
    // SAFETY: fanotify_mark with a NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            group,
            libc::FAN_MARK_ADD | flags,
            mask,
            libc::AT_FDCWD,
            c(path).as_ptr(),
        )
    };
    assert_eq!(
        r,
        0,
        "fanotify_mark {path}: {}",
        std::io::Error::last_os_error()
    );
}

/// (mask, inode) of each event queued now; their fds are closed.
fn events(group: RawFd) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: read into a local buffer; event fds are ours to close.
        let n = unsafe { libc::read(group, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + std::mem::size_of::<libc::fanotify_event_metadata>() <= n as usize {
            // SAFETY: the kernel wrote a whole event here.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
            if m.fd >= 0 {
                out.push((m.mask, ino(m.fd)));
                // SAFETY: the event's fd is ours.
                unsafe { libc::close(m.fd) };
            }
            at += m.event_len as usize;
        }
    }
    out.sort_unstable();
    out
}

fn touch(fd: RawFd) {
    // SAFETY: pwrite of a local byte.
    unsafe { libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0) };
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_fanotify REPORT");
    let base = std::path::Path::new(&path).parent().unwrap().join("fan");
    let base = base.to_str().unwrap().to_string();
    std::fs::create_dir_all(format!("{base}/dir")).unwrap();
    // SAFETY: fanotify_init with integer arguments.
    let group = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            libc::O_RDONLY as u32,
        )
    };
    assert!(
        group >= 0,
        "fanotify_init: {}",
        std::io::Error::last_os_error()
    );
    let (file, child, ignored, deleted) = (
        open(&format!("{base}/file")),
        open(&format!("{base}/dir/child")),
        open(&format!("{base}/ignored")),
        open(&format!("{base}/deleted")),
    );
    mark(group, 0, libc::FAN_MODIFY, &format!("{base}/file"));
    mark(
        group,
        0,
        libc::FAN_MODIFY | libc::FAN_EVENT_ON_CHILD,
        &format!("{base}/dir"),
    );
    mark(
        group,
        0,
        libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE,
        &format!("{base}/ignored"),
    );
    // Without SURV_MODIFY, the first modification would clear the ignore mask.
    mark(
        group,
        libc::FAN_MARK_IGNORED_MASK | libc::FAN_MARK_IGNORED_SURV_MODIFY,
        libc::FAN_MODIFY,
        &format!("{base}/ignored"),
    );
    mark(group, 0, libc::FAN_MODIFY, &format!("{base}/deleted"));
    std::fs::remove_file(format!("{base}/deleted")).unwrap();
    events(group);
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        // The deleted file is another inode after a restore: asked anew.
        let mut want = vec![
            (libc::FAN_MODIFY, ino(file)),
            (libc::FAN_MODIFY, ino(child)),
            (libc::FAN_MODIFY, ino(deleted)),
        ];
        want.sort_unstable();
        let stray = events(group);
        for fd in [file, child, ignored, deleted] {
            touch(fd);
        }
        let got = events(group);
        let status = if !stray.is_empty() {
            format!("stray-events-{stray:?}")
        } else if got != want {
            format!("events-{got:?}-want-{want:?}")
        } else {
            "OK".into()
        };
        report(
            &path,
            &format!("{pid} {counter} {}\n", status.replace(' ', "")),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
