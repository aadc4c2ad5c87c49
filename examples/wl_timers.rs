//! Workload: POSIX timers and an inotify fd. Args: REPORT DIR [MODE].
//!
//! Timers (raw syscalls; IDs made non-consecutive by deleting fillers):
//! - A: CLOCK_MONOTONIC, every 20 ms, SIGUSR1 with sigev_value 0xA11CE;
//! - B: CLOCK_REALTIME, every 50 ms, SIGUSR2 to one helper thread
//!   (SIGEV_THREAD_ID), sigev_value 0xB0B;
//! - C: CLOCK_BOOTTIME, SIGEV_NONE, left disarmed;
//! - D: CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, armed 1000 s of CPU away.
//!
//! The handlers check the siginfo (SI_TIMER, the sigev_value, the thread).
//! Every 100 ms the workload checks each timer with timer_gettime on the ID
//! it got at creation (intervals, C disarmed, D armed).
//!
//! inotify: watches DIR/watched (IN_CREATE) and DIR/file.txt (IN_MODIFY),
//! with wds made non-consecutive by a removed watch; it reads the events
//! and reports the wd of the last IN_CREATE and of the last IN_MODIFY.
//!
//! Report, one line: "pid counter usr1 usr2 usr2_on_thread bad idA idB idC
//! idD wd_dir wd_file last_create_wd last_modify_wd checks_ok".
//!
//! MODE "thread-cpu-clock" also creates a timer on CLOCK_THREAD_CPUTIME_ID
//! (the creating thread's clock, which /proc does not name: dump refuses it).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

static USR1: AtomicU64 = AtomicU64::new(0);
static USR2: AtomicU64 = AtomicU64::new(0);
static USR2_ON_THREAD: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);
static THREAD_TID: AtomicI32 = AtomicI32::new(0);

const SI_TIMER: i32 = -2;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

/// (si_code, sigev_value) of a timer siginfo: the _timer member holds
/// si_tid and si_overrun (ints) at 16 and 20, si_sigval at 24.
fn timer_info(info: *const libc::siginfo_t) -> (i32, u64) {
    let b = info.cast::<u8>();
    // SAFETY: the kernel passes a full siginfo_t (128 bytes).
    unsafe {
        (
            (b.add(8) as *const i32).read_unaligned(),
            (b.add(24) as *const u64).read_unaligned(),
        )
    }
}

extern "C" fn on_usr1(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if timer_info(info) != (SI_TIMER, 0xA11CE) {
        BAD.fetch_add(1, Ordering::SeqCst);
    }
    USR1.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_usr2(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if timer_info(info) != (SI_TIMER, 0xB0B) {
        BAD.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: gettid has no preconditions.
    if unsafe { libc::gettid() } == THREAD_TID.load(Ordering::SeqCst) {
        USR2_ON_THREAD.fetch_add(1, Ordering::SeqCst);
    }
    USR2.fetch_add(1, Ordering::SeqCst);
}

fn install(sig: i32, f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void)) {
    // SAFETY: installing a handler with a zeroed, then filled, sigaction.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// timer_create with a raw struct sigevent; returns the kernel timer ID.
fn create(clock: i32, notify: i32, signo: i32, value: u64, tid: i32) -> i32 {
    let mut ev = [0u8; 64];
    ev[0..8].copy_from_slice(&value.to_ne_bytes());
    ev[8..12].copy_from_slice(&signo.to_ne_bytes());
    ev[12..16].copy_from_slice(&notify.to_ne_bytes());
    ev[16..20].copy_from_slice(&tid.to_ne_bytes());
    let mut id: i32 = -1;
    // SAFETY: ev is a sigevent-sized buffer, id an int.
    let r = unsafe { libc::syscall(libc::SYS_timer_create, clock, ev.as_ptr(), &mut id) };
    assert_eq!(r, 0, "timer_create: {}", std::io::Error::last_os_error());
    id
}

fn delete(id: i32) {
    // SAFETY: integer argument.
    assert_eq!(unsafe { libc::syscall(libc::SYS_timer_delete, id) }, 0);
}

fn ts(ns: u64) -> [i64; 2] {
    [(ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64]
}

fn settime(id: i32, interval_ns: u64, value_ns: u64) {
    let [a, b] = ts(interval_ns);
    let [c, d] = ts(value_ns);
    let spec = [a, b, c, d];
    // SAFETY: spec is a struct itimerspec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            spec.as_ptr(),
            std::ptr::null_mut::<u8>(),
        )
    };
    assert_eq!(r, 0, "timer_settime: {}", std::io::Error::last_os_error());
}

/// (interval_ns, value_ns), or None if the ID is not a timer.
fn gettime(id: i32) -> Option<(u64, u64)> {
    let mut spec = [0i64; 4];
    // SAFETY: spec is a struct itimerspec.
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, spec.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    let n = |s: i64, ns: i64| s as u64 * 1_000_000_000 + ns as u64;
    Some((n(spec[0], spec[1]), n(spec[2], spec[3])))
}

fn add_watch(fd: i32, path: &str, mask: u32) -> i32 {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: c is a valid C string.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    assert!(
        wd > 0,
        "inotify_add_watch {path}: {}",
        std::io::Error::last_os_error()
    );
    wd
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: wl_timers REPORT DIR [MODE]");
    let dir = args.next().expect("usage: wl_timers REPORT DIR [MODE]");
    let mode = args.next().unwrap_or_default();
    let pid = std::process::id();

    install(libc::SIGUSR1, on_usr1);
    install(libc::SIGUSR2, on_usr2);
    std::thread::spawn(|| {
        // SAFETY: gettid has no preconditions.
        THREAD_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    while THREAD_TID.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let thread = THREAD_TID.load(Ordering::SeqCst);

    // IDs 0..2 are taken and freed, so A is 3; a freed filler leaves a gap
    // before B.
    for id in [0, 1, 2].map(|_| create(libc::CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0)) {
        delete(id);
    }
    let a = create(
        libc::CLOCK_MONOTONIC,
        SIGEV_SIGNAL,
        libc::SIGUSR1,
        0xA11CE,
        0,
    );
    delete(create(libc::CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0));
    let b = create(
        libc::CLOCK_REALTIME,
        SIGEV_THREAD_ID,
        libc::SIGUSR2,
        0xB0B,
        thread,
    );
    let c = create(libc::CLOCK_BOOTTIME, SIGEV_NONE, 0, 0, 0);
    let d = create(libc::CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 0, 0, 0);
    if mode == "thread-cpu-clock" {
        create(libc::CLOCK_THREAD_CPUTIME_ID, SIGEV_NONE, 0, 0, 0);
    }
    settime(a, 20_000_000, 20_000_000);
    settime(b, 50_000_000, 50_000_000);
    settime(d, 0, 1_000_000_000_000);

    // SAFETY: plain syscall.
    let ino = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(ino >= 0);
    let watched = format!("{dir}/watched");
    let file = format!("{dir}/file.txt");
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::write(&file, b"x").unwrap();
    let gap = add_watch(ino, &dir, libc::IN_ATTRIB);
    // SAFETY: removing the watch just added.
    unsafe { libc::inotify_rm_watch(ino, gap) };
    let wd_dir = add_watch(ino, &watched, libc::IN_CREATE | libc::IN_ONLYDIR);
    let wd_file = add_watch(ino, &file, libc::IN_MODIFY);

    let (mut last_create, mut last_modify) = (0i32, 0i32);
    let mut counter = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        counter += 1;
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::read(ino, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let word = |i: usize| {
                    u32::from_ne_bytes(buf[off + i * 4..off + i * 4 + 4].try_into().unwrap())
                };
                let (wd, mask, len) = (word(0) as i32, word(1), word(3) as usize);
                if mask & libc::IN_CREATE != 0 {
                    last_create = wd;
                }
                if mask & libc::IN_MODIFY != 0 {
                    last_modify = wd;
                }
                off += 16 + len;
            }
        }
        let ok = matches!(gettime(a), Some((20_000_000, v)) if v > 0 && v <= 20_000_000)
            && matches!(gettime(b), Some((50_000_000, v)) if v > 0 && v <= 50_000_000)
            && gettime(c) == Some((0, 0))
            && matches!(gettime(d), Some((0, v)) if v > 900_000_000_000);
        let s = format!(
            "{pid} {counter} {} {} {} {} {a} {b} {c} {d} {wd_dir} {wd_file} {last_create} \
             {last_modify} {}\n",
            USR1.load(Ordering::SeqCst),
            USR2.load(Ordering::SeqCst),
            USR2_ON_THREAD.load(Ordering::SeqCst),
            BAD.load(Ordering::SeqCst),
            ok as u8,
        );
        report(&path, &s);
    }
}
