//! Workload: pidfds of every kind: of its child (in the tree), of a process
//! outside the tree (OUTSIDE_PID), of a child that has exited and been
//! reaped ("Pid: -1"), and a second fd on the child's pidfd taken with
//! pidfd_getfd. Every 100 ms it checks, through /proc/self/fdinfo, that
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
            if !exited(dead_fd) || exited(child_fd) {
                status = Some("poll-wrong".into());
            }
        }
        let shown = status.clone().unwrap_or_else(|| "OK".into());
        report(&path, &format!("{pid} {counter} {shown} {child}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
