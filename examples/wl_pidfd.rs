//! Workload: pidfds of every kind: of its child (in the tree), of a process
//! outside the tree (OUTSIDE_PID), of a child that has exited and been
//! reaped ("Pid: -1"), a second fd on the child's pidfd taken with
//! pidfd_getfd, and a pidfd of one of its own threads (PIDFD_THREAD) with
//! a dup of it. Every 100 ms it checks, through /proc/self/fdinfo, that
//! each pidfd names the same process, and that pidfd_send_signal(0)
//! reaches the living ones and poll reports the dead one. Reports
//! "pid counter STATUS child" every 100 ms.
//!
//! Usage: wl_pidfd REPORT OUTSIDE_PID

use std::time::Duration;

mod wl_common;
use wl_common::report;

fn pidfd_open(pid: i32) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(
        fd >= 0,
        "pidfd_open {pid}: {}",
        std::io::Error::last_os_error()
    );
    fd
}

fn fdinfo_pid(fd: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

fn signal_reaches(fd: i32) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            0,
            std::ptr::null::<u8>(),
            0,
        ) == 0
    }
}

/// Whether fdinfo shows PIDFD_THREAD (O_EXCL) in the flags of `fd`.
fn is_thread_pidfd(fd: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            let v = t
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))?
                .trim()
                .to_string();
            i32::from_str_radix(&v, 8).ok()
        })
        .is_some_and(|f| f & libc::O_EXCL != 0)
}

fn exited(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one local pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let path = args[1].clone();
    let outside: i32 = args[2].parse().expect("OUTSIDE_PID");
    // SAFETY: the children only sleep or exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // SAFETY: as above.
    let dead = unsafe { libc::fork() };
    if dead == 0 {
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(0) };
    }
    let child_fd = pidfd_open(child);
    let dead_fd = pidfd_open(dead);
    // SAFETY: reaping our own exited child.
    unsafe { libc::waitpid(dead, std::ptr::null_mut(), 0) };
    let outside_fd = pidfd_open(outside);
    let self_fd = pidfd_open(std::process::id() as i32);
    // SAFETY: pidfd_getfd of one of our own fds.
    let copy_fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self_fd, child_fd, 0) } as i32;
    assert!(copy_fd >= 0, "pidfd_getfd");
    // A thread that only sleeps, and a pidfd of it alone.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid has no arguments.
        tx.send(unsafe { libc::gettid() }).unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let tid = rx.recv().unwrap();
    // SAFETY: plain syscall.
    let thread_fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            tid,
            libc::O_EXCL, /* PIDFD_THREAD */
        )
    } as i32;
    assert!(
        thread_fd >= 0,
        "pidfd_open(PIDFD_THREAD): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: dup of our own fd.
    let thread_dup = unsafe { libc::dup(thread_fd) };
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut status: Option<String> = None;
    loop {
        counter += 1;
        if status.is_none() {
            let names = [
                ("child", child_fd, child),
                ("copy", copy_fd, child),
                ("outside", outside_fd, outside),
                ("dead", dead_fd, -1),
                ("self", self_fd, pid as i32),
                ("thread", thread_fd, tid),
                ("thread-dup", thread_dup, tid),
            ];
            for (what, fd, want) in names {
                let got = fdinfo_pid(fd);
                if got != Some(want) {
                    status = Some(format!("{what}-names-{got:?}"));
                }
            }
            if !signal_reaches(child_fd) || !signal_reaches(outside_fd) {
                status = Some("signal-lost".into());
            }
            if !exited(dead_fd) || exited(child_fd) || exited(thread_fd) {
                status = Some("poll-wrong".into());
            }
            if !is_thread_pidfd(thread_fd) || !is_thread_pidfd(thread_dup) {
                status = Some("thread-pidfd-lost-PIDFD_THREAD".into());
            }
        }
        let shown = status.clone().unwrap_or_else(|| "OK".into());
        report(&path, &format!("{pid} {counter} {shown} {child}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
