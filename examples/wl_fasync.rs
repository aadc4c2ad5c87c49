//! Workload: signal-driven I/O. Two pipes with O_ASYNC:
//! - pipe A: owner the process (F_SETOWN), signal SIGRTMIN+1 (F_SETSIG),
//!   so the handler learns the fd (si_fd);
//! - pipe B: owner a thread that waits for it (F_SETOWN_EX, F_OWNER_TID),
//!   plain SIGIO.
//!
//! A writer thread writes a byte into each pipe every 20 ms; the handlers
//! count the signals and check si_fd and the thread that got them, and the
//! main thread drains pipe A. Reports "pid counter STATUS signals_a
//! signals_b" every 100 ms; STATUS names a wrong si_fd or thread, or pipe
//! A bytes that came without a signal.
//!
//! Usage: wl_fasync REPORT

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::{Status, report};

static SIGNALS_A: AtomicU64 = AtomicU64::new(0);
static SIGNALS_B: AtomicU64 = AtomicU64::new(0);
static FD_A: AtomicI32 = AtomicI32::new(-1);
static OWNER_B: AtomicI32 = AtomicI32::new(0);
static BAD: AtomicI32 = AtomicI32::new(0);
static STATUS: Status = Status::new();

const F_SETSIG: i32 = 10;
const F_SETOWN_EX: i32 = 15;
const F_OWNER_TID: i32 = 0;

extern "C" fn on_rt(_sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; si_fd sits after si_band
    // in the SIGPOLL layout (an int after a long at offset 16).
    let fd = unsafe { *((info as *const u8).add(24) as *const i32) };
    if fd != FD_A.load(Ordering::Relaxed) {
        BAD.store(1, Ordering::Relaxed);
    }
    SIGNALS_A.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn on_io(_sig: i32) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if tid != OWNER_B.load(Ordering::Relaxed) {
        BAD.store(2, Ordering::Relaxed);
    }
    SIGNALS_B.fetch_add(1, Ordering::Relaxed);
}

fn pipe() -> [i32; 2] {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
    p
}

fn async_owner(fd: i32, kind: i32, owner: i32, sig: i32) {
    // SAFETY: fcntl on our own fd with a local struct f_owner_ex.
    unsafe {
        let ex = [kind, owner];
        assert_eq!(libc::fcntl(fd, F_SETOWN_EX, ex.as_ptr()), 0, "F_SETOWN_EX");
        assert_eq!(libc::fcntl(fd, F_SETSIG, sig), 0, "F_SETSIG");
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC), 0);
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_fasync REPORT");
    let rt = libc::SIGRTMIN() + 1;
    // SAFETY: installing handlers that only touch atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_rt as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(rt, &sa, std::ptr::null_mut());
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_io as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGIO, &sa, std::ptr::null_mut());
    }
    let a = pipe();
    let b = pipe();
    FD_A.store(a[0], Ordering::Relaxed);
    async_owner(a[0], 1, std::process::id() as i32, rt);
    // SIGIO only to the thread that owns pipe B: the others block it.
    // SAFETY: sigmask manipulation of the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: unblocking SIGIO in this thread, which owns pipe B.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGIO);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            OWNER_B.store(libc::gettid(), Ordering::Relaxed);
        }
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        loop {
            std::thread::sleep(Duration::from_millis(5));
            // SAFETY: reading into a local buffer.
            while unsafe { libc::read(b[0], buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        }
    });
    rx.recv().unwrap();
    async_owner(b[0], F_OWNER_TID, OWNER_B.load(Ordering::Relaxed), 0);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: one byte into each of our pipes.
            unsafe {
                libc::write(a[1], b"x".as_ptr().cast(), 1);
                libc::write(b[1], b"y".as_ptr().cast(), 1);
            }
        }
    });
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut bytes_a = 0u64;
    let mut buf = [0u8; 64];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        counter += 1;
        loop {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(a[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            bytes_a += n as u64;
        }
        let (sa, sb) = (
            SIGNALS_A.load(Ordering::Relaxed),
            SIGNALS_B.load(Ordering::Relaxed),
        );
        match BAD.load(Ordering::Relaxed) {
            1 => STATUS.fail("si_fd-wrong".into()),
            2 => STATUS.fail("sigio-to-another-thread".into()),
            // Signals may merge, but each burst of bytes brings one.
            _ if bytes_a > 20 && sa == 0 => STATUS.fail("no-signal-for-pipe-a".into()),
            _ => {}
        }
        let shown = STATUS.shown();
        report(&path, &format!("{pid} {counter} {shown} {sa} {sb}\n"));
    }
}
