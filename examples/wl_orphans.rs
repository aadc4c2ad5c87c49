//! Workload for the helper-process tests: processes whose session leader
//! or process-group leader has exited, kept in the tree by a subreaper.
//!
//! - root R: PR_SET_CHILD_SUBREAPER, reaps A and C once they exit;
//!   - A: setsid, forks B, exits: B stays in session A and group A, whose
//!     leader is gone (a daemon after the classic double fork);
//!   - C: setpgid(0, 0), forks D, exits: D stays in group C (R's session),
//!     whose leader is gone.
//!
//! B and D each count every 50 ms and write their own report, REPORT.b and
//! REPORT.d: "PID N STATUS", STATUS OK while their session and group are
//! the saved ones (else BAD-what). R reports "RPID N A C B D".
//!
//! Usage: wl_orphans REPORT

use std::time::Duration;

mod wl_common;
use wl_common::report;

/// Counts forever in `path`, checking (sid, pgid) each time.
fn count(path: &str, sid: i32, pgid: i32) -> ! {
    let me = std::process::id();
    let mut n = 0u64;
    loop {
        n += 1;
        // SAFETY: plain queries.
        let (s, g) = unsafe { (libc::getsid(0), libc::getpgrp()) };
        let status = if (s, g) == (sid, pgid) {
            "OK".to_string()
        } else {
            format!("BAD-session-{s}-group-{g}-want-{sid}-{pgid}")
        };
        report(path, &format!("{me} {n} {status}\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_orphans REPORT");
    // SAFETY: plain syscalls; children run only `count` or exit.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1), 0);
        let my_sid = libc::getsid(0);
        let a = libc::fork();
        if a == 0 {
            libc::setsid();
            let me = libc::getpid();
            if libc::fork() == 0 {
                count(&format!("{path}.b"), me, me);
            }
            libc::_exit(0);
        }
        let c = libc::fork();
        if c == 0 {
            libc::setpgid(0, 0);
            let me = libc::getpid();
            if libc::fork() == 0 {
                count(&format!("{path}.d"), my_sid, me);
            }
            libc::_exit(0);
        }
        for leader in [a, c] {
            libc::waitpid(leader, std::ptr::null_mut(), 0);
        }
        // B and D are ours now (subreaper): find them.
        let me = std::process::id();
        let mut n = 0u64;
        loop {
            n += 1;
            // A child dumped on its own is killed by its dump: reap it.
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            let kids = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                .unwrap_or_default();
            report(&path, &format!("{me} {n} {a} {c} {}\n", kids.trim()));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
