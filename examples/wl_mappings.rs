//! Workload: mappings of every kind plus an interval timer, checked every
//! 100 ms. Args: REPORT DIR. Writes "counter alarms ok pid" to REPORT, where
//! ok is 1 while every check holds (the first failure goes to stderr).
//!
//! - a MAP_SHARED file mapping of DIR/shared.dat, written through the
//!   mapping: the file must keep showing what the mapping holds;
//! - a MAP_PRIVATE file mapping of DIR/private.dat whose first page was
//!   written (copy-on-write) and whose second page was not;
//! - 1 MiB of MAP_SHARED|MAP_ANONYMOUS memory with a pattern;
//! - a PROT_NONE guard area that must stay PROT_NONE;
//! - ITIMER_REAL every 20 ms counting SIGALRMs: the count must keep rising.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;

static ALARMS: AtomicU64 = AtomicU64::new(0);
const PAGE: usize = 4096;

extern "C" fn on_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn map(len: usize, prot: i32, flags: i32, fd: i32) -> *mut u8 {
    // SAFETY: a fresh mapping; failure is checked.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

fn main() {
    // Drop fds inherited from whoever started us (a test harness's pipes):
    // the engine refuses pipes.
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let (report, dir) = (&args[1], std::path::Path::new(&args[2]));
    let rw = libc::PROT_READ | libc::PROT_WRITE;

    let shared_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("shared.dat"))
        .unwrap();
    shared_file.set_len((4 * PAGE) as u64).unwrap();
    let shared = map(
        4 * PAGE,
        rw,
        libc::MAP_SHARED,
        std::os::fd::AsRawFd::as_raw_fd(&shared_file),
    );
    let shared_pattern = pattern(0x11, 4 * PAGE);
    // SAFETY: the mapping is 4 pages long.
    unsafe { std::ptr::copy_nonoverlapping(shared_pattern.as_ptr(), shared, 4 * PAGE) };

    let private_contents = pattern(0x22, 2 * PAGE);
    std::fs::write(dir.join("private.dat"), &private_contents).unwrap();
    let private_file = std::fs::File::open(dir.join("private.dat")).unwrap();
    let private = map(
        2 * PAGE,
        rw,
        libc::MAP_PRIVATE,
        std::os::fd::AsRawFd::as_raw_fd(&private_file),
    );
    drop(private_file);
    let written = pattern(0x33, PAGE);
    // SAFETY: the first page of a 2-page private mapping.
    unsafe { std::ptr::copy_nonoverlapping(written.as_ptr(), private, PAGE) };

    let anon_len = 1 << 20;
    let anon = map(anon_len, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    let anon_pattern = pattern(0x44, anon_len);
    // SAFETY: the mapping is anon_len long.
    unsafe { std::ptr::copy_nonoverlapping(anon_pattern.as_ptr(), anon, anon_len) };

    let guard = map(
        3 * PAGE,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
    ) as usize;

    // SAFETY: installing a handler that only touches an atomic; then a timer.
    unsafe {
        libc::signal(
            libc::SIGALRM,
            on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        let every = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        let t = libc::itimerval {
            it_interval: every,
            it_value: every,
        };
        libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut());
    }

    let pid = std::process::id();
    let mut counter = 0u64;
    let mut ok = true;
    loop {
        // SAFETY: reading the mappings created above, within their lengths.
        let view = |p: *mut u8, len: usize| unsafe { std::slice::from_raw_parts(p, len) };
        let mut file_now = vec![0u8; 4 * PAGE];
        shared_file.read_exact_at(&mut file_now, 0).unwrap();
        let checks = [
            (
                "shared file mapping",
                view(shared, 4 * PAGE) == &shared_pattern[..],
            ),
            ("shared file contents", file_now == shared_pattern),
            ("written private page", view(private, PAGE) == &written[..]),
            (
                "unwritten private page",
                view(private.wrapping_add(PAGE), PAGE) == &private_contents[PAGE..],
            ),
            (
                "shared anonymous memory",
                view(anon, anon_len) == &anon_pattern[..],
            ),
            ("PROT_NONE guard", guard_is_prot_none(guard)),
        ];
        for (what, good) in checks {
            if ok && !good {
                eprintln!("check failed at counter {counter}: {what}");
                ok = false;
            }
        }
        counter += 1;
        let line = format!(
            "{counter} {} {} {pid}\n",
            ALARMS.load(Ordering::Relaxed),
            ok as u8
        );
        wl_common::report(report, &line);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the area at `addr` is mapped "---p" in /proc/self/maps.
fn guard_is_prot_none(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().any(|l| {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap_or("");
        let perms = f.next().unwrap_or("");
        let start = range
            .split('-')
            .next()
            .and_then(|s| usize::from_str_radix(s, 16).ok());
        start.is_some_and(|s| s <= addr)
            && range
                .split('-')
                .nth(1)
                .and_then(|e| usize::from_str_radix(e, 16).ok())
                .is_some_and(|e| addr < e)
            && perms == "---p"
    })
}
