//! Workload: epoll registrations that outlived their fd number. An eventfd
//! registered as fd N (data 0xA1) was moved to fd 50 and N closed; a pipe
//! then got number N and was registered too (data 0xB2): the kernel holds
//! two registrations numbered N, for two files. A second epoll instance
//! holds a registration (data 0xC3) numbered as the epoll fd itself is now:
//! its eventfd moved to fd 60 and the epoll took the freed number. Every
//! 100 ms it checks that waking each file reports its own data, that
//! nothing else is reported, and that fd N kept its flags (not
//! close-on-exec). Reports "pid counter STATUS".
//!
//! Usage: wl_epoll_moved REPORT

use std::time::Duration;

mod wl_common;
use wl_common::report;

const MOVED: i32 = 50;
const MOVED_2: i32 = 60;

/// The data of the events epoll reports now (not waiting).
fn ready(ep: i32) -> Vec<u64> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: epoll_wait into a local array.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 0) };
    let mut v: Vec<u64> = evs[..n.max(0) as usize].iter().map(|e| e.u64).collect();
    v.sort_unstable();
    v
}

fn verify(ep: i32, n: i32, pipe_w: i32, ep2: i32) -> Result<(), String> {
    let quiet = [ready(ep), ready(ep2)].concat();
    if !quiet.is_empty() {
        return Err(format!("spurious-{quiet:x?}"));
    }
    // SAFETY: reads and writes of local buffers on our own fds.
    unsafe {
        let one = 1u64.to_ne_bytes();
        libc::write(MOVED, one.as_ptr().cast(), 8);
        let got = ready(ep);
        if got != [0xA1] {
            return Err(format!("eventfd-woke-{got:x?}"));
        }
        let mut buf = [0u8; 8];
        libc::read(MOVED, buf.as_mut_ptr().cast(), 8);
        libc::write(pipe_w, b"x".as_ptr().cast(), 1);
        let got = ready(ep);
        if got != [0xB2] {
            return Err(format!("pipe-woke-{got:x?}"));
        }
        libc::read(n, buf.as_mut_ptr().cast(), 1);
        if libc::fcntl(n, libc::F_GETFD) != 0 {
            return Err("fd-n-became-close-on-exec".into());
        }
        if libc::fcntl(MOVED, libc::F_GETFD) != libc::FD_CLOEXEC {
            return Err("moved-fd-flags".into());
        }
        libc::write(MOVED_2, one.as_ptr().cast(), 8);
        let got = ready(ep2);
        if got != [0xC3] {
            return Err(format!("second-eventfd-woke-{got:x?}"));
        }
        libc::read(MOVED_2, buf.as_mut_ptr().cast(), 8);
    }
    Ok(())
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args()
        .nth(1)
        .expect("usage: wl_epoll_moved REPORT");
    // SAFETY: plain syscalls on our own fds, with local buffers.
    let (ep, n, pipe_w) = unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let efd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0xA1,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev), 0);
        assert_eq!(libc::fcntl(efd, libc::F_DUPFD_CLOEXEC, MOVED), MOVED);
        libc::close(efd);
        let mut p = [0; 2];
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK), 0);
        assert_eq!(p[0], efd, "the pipe takes the freed number");
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0xB2,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, p[0], &mut ev), 0);
        (ep, p[0], p[1])
    };
    // SAFETY: as above.
    let ep2 = unsafe {
        let efd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        let ep2 = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0xC3,
        };
        assert_eq!(libc::epoll_ctl(ep2, libc::EPOLL_CTL_ADD, efd, &mut ev), 0);
        assert_eq!(libc::fcntl(efd, libc::F_DUPFD_CLOEXEC, MOVED_2), MOVED_2);
        libc::close(efd);
        // The epoll takes the registered number.
        assert_eq!(libc::dup3(ep2, efd, libc::O_CLOEXEC), efd);
        libc::close(ep2);
        efd
    };
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        let status = verify(ep, n, pipe_w, ep2)
            .err()
            .unwrap_or_else(|| "OK".into());
        report(&path, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
