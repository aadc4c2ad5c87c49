//! Workload for the lazy-restore tests: changes its memory layout right
//! after it is restored, while most of its pages are still missing.
//!
//! It fills a 32 MiB private anonymous area with a known pattern, then every
//! 100 ms increments a counter and reports "pid counter STATE". Until
//! REPORT.op exists it touches nothing but its counter, so a lazy restore
//! has fetched almost nothing when the first tick after restore reads the
//! op file, removes it and does the op:
//! - `munmap`: unmaps the first quarter of the area;
//! - `dontneed`: madvise(MADV_DONTNEED) on the second quarter (reads as
//!   zeros afterwards);
//! - `mremap`: moves the last quarter to a new address;
//! - `mprotect`: makes 100 pages inside the last quarter read-only, which
//!   splits the area at two addresses no frame boundary falls on (every
//!   page still holds its pattern);
//! - `fork`: forks a child that exits at once, and reaps it.
//! - `free`: reads the third quarter (so its pages arrive), then
//!   madvise(MADV_FREE) and MADV_PAGEOUT on it: the kernel drops those
//!   pages with no userfaultfd event, and each then reads as zeros or, if
//!   it was kept, its pattern.
//!
//! From then on every tick checks every page it still has against what it
//! must hold; STATE is `idle`, `ok-OP` or `BAD-page-N`.
//!
//! Usage: wl_churn REPORT

use std::time::Duration;

mod wl_common;
use wl_common::report;

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;
const PAGES: usize = 8192; // 32 MiB
const QUARTER: usize = PAGES / 4;

fn pattern(page: usize, word: usize) -> u64 {
    ((page * WORDS + word) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Pattern,
    Zero,
    Gone,
    /// MADV_FREE: zeros if the kernel dropped the page, else the pattern.
    PatternOrZero,
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_churn REPORT");
    let op_file = format!("{path}.op");
    // SAFETY: a fresh anonymous mapping.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(area, libc::MAP_FAILED, "mmap");
    // Where page i lives now (mremap moves the last quarter).
    let mut base: Vec<*mut u64> = (0..PAGES)
        // SAFETY: inside the mapping.
        .map(|i| unsafe { area.cast::<u64>().add(i * WORDS) })
        .collect();
    for (i, &p) in base.iter().enumerate() {
        // SAFETY: page i of the mapping, written before anything else runs.
        let page = unsafe { std::slice::from_raw_parts_mut(p, WORDS) };
        for (w, v) in page.iter_mut().enumerate() {
            *v = pattern(i, w);
        }
    }
    let mut expect = vec![Expect::Pattern; PAGES];
    let mut op: Option<String> = None;
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        if op.is_none()
            && let Ok(name) = std::fs::read_to_string(&op_file)
        {
            let _ = std::fs::remove_file(&op_file);
            let name = name.trim().to_string();
            do_op(&name, area.cast(), &mut base, &mut expect);
            op = Some(name);
        }
        let state = match &op {
            None => "idle".to_string(),
            Some(name) => match check(&base, &expect) {
                None => format!("ok-{name}"),
                Some(bad) => format!("BAD-page-{bad}"),
            },
        };
        counter += 1;
        report(&path, &format!("{pid} {counter} {state}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn do_op(name: &str, area: *mut u8, base: &mut [*mut u64], expect: &mut [Expect]) {
    match name {
        "munmap" => {
            // SAFETY: the first quarter of our own mapping; never used again.
            let r = unsafe { libc::munmap(area.cast(), QUARTER * PAGE) };
            assert_eq!(r, 0, "munmap");
            expect[..QUARTER].fill(Expect::Gone);
        }
        "dontneed" => {
            // SAFETY: the second quarter of our own mapping.
            let r = unsafe {
                libc::madvise(
                    area.add(QUARTER * PAGE).cast(),
                    QUARTER * PAGE,
                    libc::MADV_DONTNEED,
                )
            };
            assert_eq!(r, 0, "madvise");
            expect[QUARTER..2 * QUARTER].fill(Expect::Zero);
        }
        "mremap" => {
            let from = 3 * QUARTER;
            // SAFETY: moves the last quarter of our own mapping; `base` is
            // updated so nothing uses the old address.
            let to = unsafe {
                libc::mremap(
                    area.add(from * PAGE).cast(),
                    QUARTER * PAGE,
                    QUARTER * PAGE,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    area.add(PAGES * PAGE + 64 * PAGE).cast::<libc::c_void>(),
                )
            };
            assert_ne!(to, libc::MAP_FAILED, "mremap");
            for i in 0..QUARTER {
                // SAFETY: inside the moved range.
                base[from + i] = unsafe { to.cast::<u64>().add(i * WORDS) };
            }
        }
        "mprotect" => {
            // SAFETY: part of our own mapping, only read from then on.
            let r = unsafe {
                libc::mprotect(
                    area.add((3 * QUARTER + 7) * PAGE).cast(),
                    100 * PAGE,
                    libc::PROT_READ,
                )
            };
            assert_eq!(r, 0, "mprotect");
        }
        "fork" => {
            // SAFETY: the child only calls _exit.
            let child = unsafe { libc::fork() };
            if child == 0 {
                // SAFETY: exits the child at once.
                unsafe { libc::_exit(0) };
            }
            assert!(child > 0, "fork");
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
        }
        "free" => {
            let (first, len) = (2 * QUARTER, QUARTER * PAGE);
            let mut sum = 0u64;
            for &p in &base[first..first + QUARTER] {
                // SAFETY: page of our own mapping; the read makes it arrive.
                sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(p) });
            }
            std::hint::black_box(sum);
            // SAFETY: the third quarter of our own mapping.
            let start = unsafe { area.add(first * PAGE) };
            for advice in [libc::MADV_FREE, libc::MADV_PAGEOUT] {
                // SAFETY: as above.
                let r = unsafe { libc::madvise(start.cast(), len, advice) };
                assert_eq!(r, 0, "madvise({advice})");
            }
            expect[first..first + QUARTER].fill(Expect::PatternOrZero);
        }
        other => panic!("unknown op {other}"),
    }
}

/// The first page that does not hold what it must.
fn check(base: &[*mut u64], expect: &[Expect]) -> Option<usize> {
    static ZERO: [u64; WORDS] = [0; WORDS];
    let mut want = [0u64; WORDS];
    for (i, (&p, &e)) in base.iter().zip(expect).enumerate() {
        if e == Expect::Gone {
            continue;
        }
        // SAFETY: page i is mapped (it is not Gone).
        let page = unsafe { std::slice::from_raw_parts(p, WORDS) };
        let good = match e {
            Expect::Zero => page == &ZERO[..],
            _ => {
                for (w, v) in want.iter_mut().enumerate() {
                    *v = pattern(i, w);
                }
                page == &want[..] || (e == Expect::PatternOrZero && page == &ZERO[..])
            }
        };
        if !good {
            return Some(i);
        }
    }
    None
}
