//! Workload for the shared-state tests: producer | filter | consumer over
//! two pipes that are always full, plus an eventfd, a timerfd and a unix
//! datagram socketpair, all watched by one epoll loop.
//!
//! - producer (child): writes the numbers 0, 1, 2, ... (u64, little endian)
//!   into pipe 1 as fast as it can, and every 10 ms sends a numbered
//!   datagram on the socketpair;
//! - filter (child): reads pipe 1, writes 3n+1 for every n into pipe 2, and
//!   adds 1 to the shared eventfd per 1000 numbers;
//! - consumer (root): an epoll loop over pipe 2, the eventfd, a 20 ms
//!   periodic timerfd and the socket. It reads pipe 2 slowly (so both
//!   pipes stay full) and checks that the numbers come in order with no gap
//!   and no repetition, and the datagrams too.
//!
//! Every 100 ms it reports "PID CONSUMED STATUS DATAGRAMS TICKS EVENTS"
//! (STATUS: OK or BAD-what).
//!
//! Usage: wl_pipeline REPORT

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

mod wl_common;
use wl_common::report;

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a local array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), 0) }, 0, "pipe2");
    (fds[0], fds[1])
}

fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: writing from a valid buffer.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        assert!(n > 0, "write: {}", std::io::Error::last_os_error());
        buf = &buf[n as usize..];
    }
}

/// Reads exactly `buf.len()` bytes.
fn read_exact(fd: RawFd, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        assert!(n > 0, "read: {}", std::io::Error::last_os_error());
        got += n as usize;
    }
}

fn fork(f: impl FnOnce()) {
    // SAFETY: the child runs `f` and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        f();
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_pipeline REPORT");
    let (p1r, p1w) = pipe();
    let (p2r, p2w) = pipe();
    let mut sv = [0; 2];
    // SAFETY: socketpair into a local array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sv.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair");
    // SAFETY: plain syscall.
    let efd = unsafe { libc::eventfd(0, 0) };
    assert!(efd >= 0, "eventfd");

    // SAFETY: closing fds this process owns, in each child.
    let close = |fds: &[RawFd]| {
        fds.iter().for_each(|&fd| unsafe {
            libc::close(fd);
        })
    };
    fork(|| {
        close(&[p1r, p2r, p2w, sv[0], efd]);
        let mut n = 0u64;
        let mut msg = 0u64;
        let mut last = Instant::now();
        loop {
            let batch: Vec<u8> = (n..n + 64).flat_map(|v| v.to_le_bytes()).collect();
            write_all(p1w, &batch);
            n += 64;
            if last.elapsed() >= Duration::from_millis(10) {
                // SAFETY: sending from a local buffer.
                unsafe { libc::send(sv[1], msg.to_le_bytes().as_ptr().cast(), 8, 0) };
                msg += 1;
                last = Instant::now();
            }
        }
    });
    fork(|| {
        close(&[p1w, p2r, sv[0], sv[1]]);
        let mut buf = [0u8; 8 * 64];
        let mut passed = 0u64;
        loop {
            read_exact(p1r, &mut buf);
            let out: Vec<u8> = buf
                .chunks_exact(8)
                .flat_map(|c| (u64::from_le_bytes(c.try_into().unwrap()) * 3 + 1).to_le_bytes())
                .collect();
            write_all(p2w, &out);
            passed += 64;
            if passed % 1024 == 0 {
                let one = 1u64;
                // SAFETY: writing the eventfd counter from a local.
                unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
            }
        }
    });
    close(&[p1r, p1w, p2w, sv[1]]);
    consume(&path, p2r, efd, sv[0]);
}

fn consume(path: &str, pipe: RawFd, efd: RawFd, sock: RawFd) {
    // SAFETY: plain syscalls; the itimerspec is a local.
    let tfd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) };
    assert!(tfd >= 0, "timerfd_create");
    let period = libc::timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let spec = libc::itimerspec {
        it_interval: period,
        it_value: period,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut()) },
        0
    );
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0, "epoll_create1");
    for fd in [pipe, efd, tfd, sock] {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: registering our own fds.
        assert_eq!(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            0
        );
    }
    let pid = std::process::id();
    let (mut next, mut next_msg, mut ticks, mut events) = (0u64, 0u64, 0u64, 0u64);
    let mut status = "OK".to_string();
    let mut last_report = Instant::now();
    let mut buf = [0u8; 8 * 16];
    loop {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: waiting into a local array.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 100) };
        for ev in &evs[..n.max(0) as usize] {
            let fd = ev.u64 as RawFd;
            if fd == pipe {
                // Slowly: 16 numbers per wakeup, so the pipes stay full.
                read_exact(pipe, &mut buf);
                for c in buf.chunks_exact(8) {
                    let v = u64::from_le_bytes(c.try_into().unwrap());
                    if v != next * 3 + 1 && status == "OK" {
                        status = format!("BAD-pipe-got-{v}-want-{}", next * 3 + 1);
                    }
                    next += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            } else if fd == sock {
                let mut m = [0u8; 8];
                read_exact(sock, &mut m);
                let v = u64::from_le_bytes(m);
                if v != next_msg && status == "OK" {
                    status = format!("BAD-datagram-got-{v}-want-{next_msg}");
                }
                next_msg += 1;
            } else {
                let mut c = [0u8; 8];
                read_exact(fd, &mut c);
                let c = u64::from_le_bytes(c);
                if fd == tfd {
                    ticks += c;
                } else {
                    events += c;
                }
            }
        }
        if last_report.elapsed() >= Duration::from_millis(100) {
            report(
                path,
                &format!("{pid} {next} {status} {next_msg} {ticks} {events}\n"),
            );
            last_report = Instant::now();
        }
    }
}
