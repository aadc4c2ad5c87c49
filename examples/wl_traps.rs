//! Workload: the main thread asks to be killed early on a memory error in
//! its pages (PR_MCE_KILL early); a second thread asks for late kills and
//! for RDTSC and CPUID to fault in it (PR_SET_TSC, ARCH_SET_CPUID, where
//! the CPU can), as sandboxes and deterministic replayers do; a third,
//! started first, keeps the defaults. Each thread checks its own settings
//! every 50 ms (the second with raw syscalls only: it must not
//! read the TSC, as the vDSO's clocks do). Reports "pid counter STATUS",
//! the counter being the second thread's checks.
//!
//! Usage: wl_traps REPORT

use std::sync::atomic::{AtomicU64, Ordering};

mod wl_common;
use wl_common::{Status, report};

const PR_MCE_KILL_SET: u64 = 1;
const PR_MCE_KILL_LATE: i64 = 0;
const PR_MCE_KILL_EARLY: i64 = 1;
const PR_MCE_KILL_DEFAULT: i64 = 2;
const PR_TSC_ENABLE: i32 = 1;
const PR_TSC_SIGSEGV: i32 = 2;
const ARCH_GET_CPUID: u64 = 0x1011;
const ARCH_SET_CPUID: u64 = 0x1012;

static STATUS: Status = Status::new();
static CHECKS: AtomicU64 = AtomicU64::new(0);

fn prctl(option: i32, arg: u64, arg2: u64) -> i64 {
    // SAFETY: prctl with integer arguments (or a pointer the caller owns).
    unsafe { libc::syscall(libc::SYS_prctl, option, arg, arg2, 0, 0) }
}

fn mce_kill() -> i64 {
    prctl(libc::PR_MCE_KILL_GET, 0, 0)
}

/// A 50 ms nanosleep, through the syscall (no clock read).
fn pause() {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    // SAFETY: nanosleep with a valid timespec and no remainder.
    unsafe { libc::syscall(libc::SYS_nanosleep, &ts, 0usize) };
}

/// The calling thread's machine-check kill policy, TSC mode and whether
/// CPUID runs (1) or faults (0), read with raw syscalls only.
fn settings() -> (i64, i32, i64) {
    let mut tsc: i32 = 0;
    prctl(libc::PR_GET_TSC, &mut tsc as *mut i32 as u64, 0);
    // SAFETY: arch_prctl with integer arguments.
    let cpuid = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_CPUID, 0) };
    (mce_kill(), tsc, cpuid)
}

fn trapped_thread() {
    assert_eq!(
        prctl(libc::PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_LATE as u64),
        0
    );
    assert_eq!(
        prctl(libc::PR_SET_TSC, PR_TSC_SIGSEGV as u64, 0),
        0,
        "PR_SET_TSC"
    );
    // SAFETY: arch_prctl with integer arguments.
    let cpuid_faults = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0) } == 0;
    // ENODEV: this CPU (or its hypervisor) cannot make CPUID fault.
    assert!(
        cpuid_faults || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENODEV),
        "ARCH_SET_CPUID: {}",
        std::io::Error::last_os_error()
    );
    loop {
        let (mce, tsc, cpuid) = settings();
        if mce != PR_MCE_KILL_LATE {
            STATUS.fail(format!("thread-mce-kill-{mce}"));
        }
        if tsc != PR_TSC_SIGSEGV {
            STATUS.fail(format!("tsc-mode-{tsc}"));
        }
        if cpuid != (!cpuid_faults) as i64 {
            STATUS.fail(format!("cpuid-{cpuid}"));
        }
        CHECKS.fetch_add(1, Ordering::Relaxed);
        pause();
    }
}

/// A thread started before the others asked for anything (the main
/// thread's policy is set after it starts): every setting the default.
fn plain_thread() {
    loop {
        let (mce, tsc, cpuid) = settings();
        if mce != PR_MCE_KILL_DEFAULT {
            STATUS.fail(format!("plain-mce-kill-{mce}"));
        }
        if tsc != PR_TSC_ENABLE || cpuid != 1 {
            STATUS.fail(format!("plain-tsc-{tsc}-cpuid-{cpuid}"));
        }
        pause();
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_traps REPORT");
    std::thread::spawn(plain_thread);
    assert_eq!(
        prctl(libc::PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY as u64),
        0
    );
    std::thread::spawn(trapped_thread);
    let pid = std::process::id();
    loop {
        if mce_kill() != PR_MCE_KILL_EARLY {
            STATUS.fail(format!("main-mce-kill-{}", mce_kill()));
        }
        let checks = CHECKS.load(Ordering::Relaxed);
        report(&path, &format!("{pid} {checks} {}\n", STATUS.shown()));
        pause();
    }
}
