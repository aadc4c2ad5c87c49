//! Workload for the shell-job tests: a stand-in for an interactive shell
//! and the job it runs in the foreground of its terminal.
//!
//! Start it with a terminal as stdin/stdout/stderr. It makes itself a
//! session leader with that terminal (the "shell"), forks the job in a
//! process group of its own and hands it the terminal's foreground, then
//! reaps it when it ends and waits forever. The job, every 50 ms: counts, prints "tick N" on the
//! terminal, answers each "ping K" line it reads there with "pong K", and
//! reports "JOBPID N STATUS", where STATUS is OK while its stdin and stdout
//! are a terminal, that terminal is its session's and the job is in its
//! foreground (else BAD-what). Reading in the background would stop it.
//!
//! Usage: wl_tty REPORT

use std::io::{BufRead, Write};
use std::time::Duration;

mod wl_common;
use wl_common::report;

fn status() -> String {
    // SAFETY: plain queries on our own fds.
    unsafe {
        if libc::isatty(0) != 1 || libc::isatty(1) != 1 {
            return "BAD-not-a-terminal".into();
        }
        if libc::tcgetsid(0) != libc::getsid(0) {
            return format!("BAD-terminal-of-session-{}", libc::tcgetsid(0));
        }
        if libc::tcgetpgrp(0) != libc::getpgrp() {
            return format!("BAD-background-foreground-is-{}", libc::tcgetpgrp(0));
        }
    }
    "OK".into()
}

fn job(path: &str) -> ! {
    // Lines typed on the terminal, read by a thread so the counter runs on.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let me = std::process::id();
    let mut out = std::io::stdout();
    let mut n = 0u64;
    loop {
        n += 1;
        let _ = writeln!(out, "tick {n}");
        while let Ok(line) = rx.try_recv() {
            if let Some(k) = line.trim().strip_prefix("ping ") {
                let _ = writeln!(out, "pong {k}");
            }
        }
        let _ = out.flush();
        report(path, &format!("{me} {n} {}\n", status()));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_tty REPORT");
    // SAFETY: plain syscalls; the child runs only `job`.
    unsafe {
        assert!(libc::setsid() > 0, "setsid");
        assert_eq!(libc::ioctl(0, libc::TIOCSCTTY, 0), 0, "TIOCSCTTY");
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // Into the foreground before anything reads the terminal (a
            // background read would stop the job): as a shell does for its
            // job, with SIGTTOU ignored since we are not there yet.
            libc::setpgid(0, 0);
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            assert_eq!(libc::tcsetpgrp(0, libc::getpid()), 0, "tcsetpgrp");
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            job(&path);
        }
        // Reaps the job when it ends (dumped, killed), as a shell does.
        loop {
            if libc::wait(std::ptr::null_mut()) < 0 {
                libc::pause();
            }
        }
    }
}
