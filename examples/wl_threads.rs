//! Workload: 8 threads, each counting and doing floating-point work whose
//! results it checks, with its own MXCSR rounding mode (which lives in the
//! FPU/xstate registers that restore must bring back). Reports, every
//! 100 ms, "pid STATUS" then one line per thread: "index tid counter".
//!
//! Usage: wl_threads REPORT [main-exits]
//!
//! With `main-exits`, the main thread reports from another thread and
//! exits alone (as after pthread_exit): the process runs on in its others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

const THREADS: usize = 8;

fn mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: stmxcsr stores the SSE control register into v.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v) };
    v
}

fn set_mxcsr(v: u32) {
    // SAFETY: ldmxcsr with a valid control value (exceptions masked).
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v) };
}

/// A deterministic floating-point computation.
fn work(seed: u64) -> f64 {
    let mut x = seed as f64 * 0.001 + 1.0;
    let mut acc = 0.0f64;
    for i in 1..200 {
        x = (x * 1.000_1 + 1.0 / i as f64).sqrt() + 0.5;
        acc += x * x - x / 3.0;
    }
    acc
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_threads REPORT");
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let tids: Arc<Vec<AtomicI32>> = Arc::new((0..THREADS).map(|_| AtomicI32::new(0)).collect());
    let bad = Arc::new(AtomicBool::new(false));
    for i in 0..THREADS {
        let (counters, tids, bad) = (counters.clone(), tids.clone(), bad.clone());
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tids[i].store(unsafe { libc::gettid() }, Ordering::SeqCst);
            // Rounding mode bits 13-14: each thread its own.
            let want = (0x1f80 & !(3 << 13)) | (((i as u32) % 4) << 13);
            set_mxcsr(want);
            let reference: Vec<f64> = (0..16).map(work).collect();
            let mut n: u64 = 0;
            loop {
                let k = (n % 16) as usize;
                // Recomputed under the same rounding mode: must be identical.
                if work(k as u64) != reference[k] || mxcsr() & 0xffc0 != want & 0xffc0 {
                    eprintln!(
                        "thread {i}: wrong result or MXCSR {:#x} (want {want:#x})",
                        mxcsr()
                    );
                    bad.store(true, Ordering::SeqCst);
                }
                n += 1;
                counters[i].store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    let main_exits = std::env::args().nth(2).as_deref() == Some("main-exits");
    let pid = std::process::id();
    let reporter = move || loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut s = format!(
            "{pid} {}\n",
            if bad.load(Ordering::SeqCst) {
                "CORRUPT"
            } else {
                "OK"
            }
        );
        for i in 0..THREADS {
            s += &format!(
                "{i} {} {}\n",
                tids[i].load(Ordering::SeqCst),
                counters[i].load(Ordering::SeqCst)
            );
        }
        report(&path, &s);
    };
    if !main_exits {
        reporter();
    }
    std::thread::spawn(reporter);
    // SAFETY: the raw exit ends this thread only, unwinding nothing.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}
