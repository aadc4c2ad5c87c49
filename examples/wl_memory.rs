//! Workload for the engine tests: fills N MiB (3/8 random words, 5/8 a
//! counter) and, every 100 ms, verifies its checksum, increments a counter
//! and reports "counter checksum pid" to the report file (written
//! atomically).
//!
//! With PROCESSES > 1, it first forks PROCESSES-1 children that do the same
//! with their own MIB MiB (verifying silently; a corrupt child exits 3);
//! only the root reports.
//!
//! Usage: wl_memory REPORT [MIB [PROCESSES]]
//!
//! WL_PERIOD_MS (100) sets the period: a long one leaves the process idle
//! between checks (how a restore runs beside a process that is not
//! touching all of its memory all the time).

use std::time::Duration;

mod wl_common;
use wl_common::report;

fn checksum(buf: &[u64]) -> u64 {
    buf.iter().enumerate().fold(0u64, |acc, (i, &w)| {
        acc.rotate_left(5) ^ w.wrapping_mul(i as u64 | 1)
    })
}

fn main() {
    // Drop fds inherited from whoever started us (e.g. a CI runner's pipes):
    // the engine refuses pipes.
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: wl_memory REPORT [MIB]").clone();
    let mib: usize = args.get(2).map_or(16, |s| s.parse().expect("MiB"));
    let processes: usize = args.get(3).map_or(1, |s| s.parse().expect("PROCESSES"));
    let mut path = path;
    for _ in 1..processes {
        // SAFETY: single-threaded so far; the child runs the same loop.
        if unsafe { libc::fork() } == 0 {
            path = String::new();
            break;
        }
    }
    let words = mib << 17;
    // 3 words in 8 look random, the other 5 are a counter (memory as the
    // performance issue measures it: about 2:1 for zstd).
    let mut buf: Vec<u64> = (0..words as u64)
        .map(|i| {
            if i % 8 < 3 {
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5
            } else {
                i / 8
            }
        })
        .collect();
    let expected = checksum(&buf);
    let pid = std::process::id();
    let period = std::env::var("WL_PERIOD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(100), Duration::from_millis);
    let mut counter: u64 = 0;
    loop {
        let sum = checksum(&buf);
        if sum != expected {
            if !path.is_empty() {
                report(&path, &format!("CORRUPT {counter} {sum} {pid}\n"));
            }
            std::process::exit(3);
        }
        counter += 1;
        // Rewrite a word with its own value through a volatile write, so the
        // pages keep being written without changing the checksum.
        let i = (counter as usize * 4099) % words;
        let p = &mut buf[i] as *mut u64;
        unsafe { p.write_volatile(p.read_volatile()) };
        if !path.is_empty() {
            report(&path, &format!("{counter} {sum} {pid}\n"));
        }
        std::thread::sleep(period);
    }
}
