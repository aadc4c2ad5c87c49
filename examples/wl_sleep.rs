//! Workload: threads blocked in the kernel when the dump freezes them:
//! short sleeps (nanosleep), a long 3 s sleep, a condvar wait with timeout
//! (futex with timeout) and a condvar wait without timeout (futex); and
//! raw poll without timeout, nanosleep and clock_nanosleep of 10 s, futex
//! wait with a timeout,
//! epoll_wait with and without a timeout, epoll_pwait and io_getevents
//! (waits the kernel never restarts), which must never see EINTR. Each
//! checks that no wait ends early. Reports, every 100 ms:
//! "pid errors short_sleeps long_sleeps timed_waits".
//!
//! Usage: wl_sleep REPORT

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod wl_common;
use wl_common::report;

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_sleep REPORT");
    let errors = Arc::new(AtomicU64::new(0));
    let short = Arc::new(AtomicU64::new(0));
    let long = Arc::new(AtomicU64::new(0));
    let timed = Arc::new(AtomicU64::new(0));
    {
        let (errors, short) = (errors.clone(), short.clone());
        std::thread::spawn(move || {
            loop {
                let t = Instant::now();
                std::thread::sleep(Duration::from_millis(300));
                if t.elapsed() < Duration::from_millis(300) {
                    eprintln!("short sleep ended early: {:?}", t.elapsed());
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                short.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    {
        let (errors, long) = (errors.clone(), long.clone());
        std::thread::spawn(move || {
            loop {
                let t = Instant::now();
                std::thread::sleep(Duration::from_secs(3));
                if t.elapsed() < Duration::from_secs(3) {
                    eprintln!("long sleep ended early: {:?}", t.elapsed());
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                long.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    {
        let (errors, timed, pair) = (errors.clone(), timed.clone(), pair.clone());
        std::thread::spawn(move || {
            let (lock, cv) = &*pair;
            loop {
                let t = Instant::now();
                let g = lock.lock().unwrap();
                let (_g, res) = cv
                    .wait_timeout_while(g, Duration::from_millis(200), |ready| !*ready)
                    .unwrap();
                if !res.timed_out() || t.elapsed() < Duration::from_millis(200) {
                    eprintln!("timed wait ended early: {:?}", t.elapsed());
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                timed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    {
        let (errors, pair) = (errors.clone(), pair.clone());
        std::thread::spawn(move || {
            let (lock, cv) = &*pair;
            // Nobody ever notifies: this wait must never return.
            let g = lock.lock().unwrap();
            let _g = cv.wait_while(g, |ready| !*ready).unwrap();
            eprintln!("untimed wait returned");
            errors.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Raw calls that the kernel restarts through its restart_block when a
    // tracer interrupts them (ERESTART_RESTARTBLOCK): none of them may
    // return EINTR, since no signal handler ran.
    {
        let errors = errors.clone();
        std::thread::spawn(move || {
            // SAFETY: poll on no fds, no timeout: returns only on error.
            let r = unsafe { libc::poll(std::ptr::null_mut(), 0, -1) };
            eprintln!(
                "poll without timeout returned {r}: {}",
                std::io::Error::last_os_error()
            );
            errors.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Sleeps of 10 s: still under way at a second freeze soon after a
    // first (the kernel resumed them through restart_syscall, whose
    // restart function no stack shows).
    for clock in [None, Some(libc::CLOCK_MONOTONIC)] {
        let errors = errors.clone();
        std::thread::spawn(move || {
            let ten = libc::timespec {
                tv_sec: 10,
                tv_nsec: 0,
            };
            loop {
                let failed = match clock {
                    // SAFETY: a timespec on the stack, no remainder asked for.
                    None => match unsafe { libc::nanosleep(&ten, std::ptr::null_mut()) } {
                        0 => None,
                        _ => Some(("nanosleep", std::io::Error::last_os_error())),
                    },
                    // SAFETY: as above.
                    Some(clock) => {
                        match unsafe { libc::clock_nanosleep(clock, 0, &ten, std::ptr::null_mut()) }
                        {
                            0 => None,
                            e => Some(("clock_nanosleep", std::io::Error::from_raw_os_error(e))),
                        }
                    }
                };
                if let Some((call, e)) = failed {
                    eprintln!("{call}: {e}");
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    {
        let errors = errors.clone();
        std::thread::spawn(move || {
            let word = std::sync::atomic::AtomicU32::new(0);
            let second = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            loop {
                // SAFETY: a private futex wait on a word of ours that
                // stays 0, with a relative timeout.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        word.as_ptr(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        0u32,
                        &second,
                    )
                };
                let err = std::io::Error::last_os_error();
                if r != -1 || err.raw_os_error() != Some(libc::ETIMEDOUT) {
                    eprintln!("futex wait with a timeout returned {r}: {err}");
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    // Waits the kernel never restarts: a tracer's interrupt ends them with
    // EINTR, which crstream must not let through (no signal handler ran).
    // SAFETY: an epoll instance watching an eventfd nobody writes.
    let epoll = unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let ev = libc::eventfd(0, libc::EFD_CLOEXEC);
        let mut e = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ev, &mut e), 0);
        ep
    };
    let never = |what: &'static str, errors: Arc<AtomicU64>, wait: fn(i32) -> i64| {
        std::thread::spawn(move || {
            let r = wait(epoll);
            eprintln!("{what} returned {r}: {}", std::io::Error::last_os_error());
            errors.fetch_add(1, Ordering::SeqCst);
        });
    };
    // SAFETY (all three): waits on our epoll instance or AIO context, into
    // a buffer on the waiting thread's stack.
    never("epoll_wait without timeout", errors.clone(), |ep| unsafe {
        let mut e = libc::epoll_event { events: 0, u64: 0 };
        libc::epoll_wait(ep, &mut e, 1, -1) as i64
    });
    never("epoll_pwait without timeout", errors.clone(), |ep| unsafe {
        let mut e = libc::epoll_event { events: 0, u64: 0 };
        libc::epoll_pwait(ep, &mut e, 1, -1, std::ptr::null()) as i64
    });
    never("io_getevents without timeout", errors.clone(), |_| unsafe {
        let mut ctx: libc::c_ulong = 0;
        assert_eq!(
            libc::syscall(libc::SYS_io_setup, 1, &mut ctx),
            0,
            "io_setup"
        );
        let mut events = [0u64; 4];
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            1,
            1,
            events.as_mut_ptr(),
            std::ptr::null::<libc::timespec>(),
        )
    });
    {
        let errors = errors.clone();
        std::thread::spawn(move || {
            loop {
                let mut e = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: as above, with a 1 s timeout.
                let r = unsafe { libc::epoll_wait(epoll, &mut e, 1, 1000) };
                if r != 0 {
                    eprintln!(
                        "epoll_wait with a timeout returned {r}: {}",
                        std::io::Error::last_os_error()
                    );
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let pid = std::process::id();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let s = format!(
            "{pid} {} {} {} {}\n",
            errors.load(Ordering::SeqCst),
            short.load(Ordering::SeqCst),
            long.load(Ordering::SeqCst),
            timed.load(Ordering::SeqCst)
        );
        report(&path, &s);
    }
}
