//! Workload for the live dump: writes its memory all the time. It sweeps
//! over N MiB page by page, writing the sweep's number into each page's
//! first word after checking that the page holds the previous sweep's, so
//! that memory saved from different instants (a page from before, another
//! from after the process moved on) shows as a page out of step, which it
//! reports as "TORN page expected found" and exits 3. After each sweep it
//! reports "sweep pid" to the report file (written atomically).
//!
//! Usage: wl_sweep REPORT [MIB]

use std::time::Duration;

mod wl_common;
use wl_common::report;

/// u64 words per page.
const WORDS: usize = 4096 / 8;

fn main() {
    // SAFETY: no fd above 2 is in use yet (see wl_memory).
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: wl_sweep REPORT [MIB]").clone();
    let mib: usize = args.get(2).map_or(16, |s| s.parse().expect("MiB"));
    let pages = mib * 256;
    let mut buf: Vec<u64> = vec![0; pages * WORDS];
    // Other words of each page hold a pattern the sweeps leave alone.
    for (i, w) in buf.iter_mut().enumerate() {
        if i % WORDS != 0 {
            *w = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    let pid = std::process::id();
    let mut sweep: u64 = 1;
    loop {
        for page in 0..pages {
            let w = &mut buf[page * WORDS];
            // Volatile: every page is read and written on every sweep.
            let p = w as *mut u64;
            // SAFETY: p points into buf.
            let found = unsafe { p.read_volatile() };
            if found != sweep - 1 {
                report(&path, &format!("TORN {page} {} {found}\n", sweep - 1));
                std::process::exit(3);
            }
            // SAFETY: as above.
            unsafe { p.write_volatile(sweep) };
        }
        report(&path, &format!("{sweep} {pid}\n"));
        sweep += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}
