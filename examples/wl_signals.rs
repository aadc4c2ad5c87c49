//! Workload: SIGUSR1 handler (SA_RESTART|SA_SIGINFO|SA_ONSTACK, checks it
//! runs on the alternate stack), SIGUSR2 handler (SA_SIGINFO) with SIGUSR2
//! blocked and one SIGUSR2 pending (sent to itself). When REPORT.unblock
//! exists it unblocks SIGUSR2. Reports, every 100 ms:
//! "pid counter usr1 usr2 usr2_sender bad".
//!
//! Usage: wl_signals REPORT

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

static USR1: AtomicU64 = AtomicU64::new(0);
static USR2: AtomicU64 = AtomicU64::new(0);
static USR2_FROM: AtomicI32 = AtomicI32::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);
static mut ALTSTACK: [u8; 65536] = [0; 65536];

extern "C" fn on_usr1(_sig: i32, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let local = 0u8;
    let at = &local as *const u8 as usize;
    let base = &raw const ALTSTACK as usize;
    if at < base || at >= base + 65536 {
        BAD.fetch_add(1, Ordering::SeqCst);
    }
    USR1.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_usr2(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    USR2_FROM.store(unsafe { (*info).si_pid() }, Ordering::SeqCst);
    USR2.fetch_add(1, Ordering::SeqCst);
}

fn install(sig: i32, f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void), flags: i32) {
    // SAFETY: installing a handler with a zeroed, then filled, sigaction.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as usize;
        sa.sa_flags = flags | libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_signals REPORT");
    // SAFETY: the altstack is a static used only as this thread's altstack.
    unsafe {
        let ss = libc::stack_t {
            ss_sp: (&raw mut ALTSTACK).cast(),
            ss_flags: 0,
            ss_size: 65536,
        };
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
    }
    install(libc::SIGUSR1, on_usr1, libc::SA_RESTART | libc::SA_ONSTACK);
    install(libc::SIGUSR2, on_usr2, 0);
    // SAFETY: signal mask manipulation of this (the only) thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), libc::SIGUSR2);
    }
    let unblock = format!("{path}.unblock");
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut unblocked = false;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        counter += 1;
        if !unblocked && std::path::Path::new(&unblock).exists() {
            unblocked = true;
            // SAFETY: as above.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
        }
        let s = format!(
            "{pid} {counter} {} {} {} {}\n",
            USR1.load(Ordering::SeqCst),
            USR2.load(Ordering::SeqCst),
            USR2_FROM.load(Ordering::SeqCst),
            BAD.load(Ordering::SeqCst)
        );
        report(&path, &s);
    }
}
