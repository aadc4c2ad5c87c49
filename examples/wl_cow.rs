//! Workload: a parent and a child sharing private memory copy-on-write, as
//! a fork leaves it. The parent fills 32 MiB at a fixed address, then
//! forks; afterwards the child rewrites the first eighth of the pages, the
//! parent the second eighth, and the child drops 16 pages after those
//! (MADV_DONTNEED: zeros for it, data for the parent). The rest stays
//! shared. Both check every page of the area each round; the child posts
//! its rounds and problems in a shared page. Reports "pid counter STATUS".
//!
//! Usage: wl_cow REPORT

use std::time::Duration;

mod wl_common;
use wl_common::report;

/// Where the area lives, so that a test can compare the page frames of
/// parent and child at the same addresses.
const AREA: usize = 0x5a00_0000_0000;
const PAGES: usize = 8192;
const PAGE: usize = 4096;
const DROPPED: usize = 16;

/// What word `i` of page `p` holds for a writer `tag`.
fn word(tag: u64, p: usize, i: usize) -> u64 {
    tag << 56 | (p as u64) << 16 | i as u64
}

fn fill(area: *mut u64, tag: u64, pages: std::ops::Range<usize>) {
    for p in pages {
        for i in 0..PAGE / 8 {
            // SAFETY: inside the area.
            unsafe { area.add(p * PAGE / 8 + i).write_volatile(word(tag, p, i)) };
        }
    }
}

/// The first page of the area whose contents are not what `want(p)` says
/// (None: a page of zeros).
fn check(area: *const u64, want: impl Fn(usize) -> Option<u64>) -> Option<usize> {
    (0..PAGES).find(|&p| {
        (0..PAGE / 8).any(|i| {
            // SAFETY: inside the area.
            let got = unsafe { area.add(p * PAGE / 8 + i).read_volatile() };
            got != want(p).map_or(0, |tag| word(tag, p, i))
        })
    })
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_cow REPORT");
    // SAFETY: fresh mappings at an address nothing else uses.
    let (area, board) = unsafe {
        let area = libc::mmap(
            AREA as *mut _,
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        let board = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_eq!(area as usize, AREA, "mmap at the fixed address");
        assert_ne!(board, libc::MAP_FAILED);
        (area as *mut u64, board as *mut u64)
    };
    fill(area, 1, 0..PAGES);
    let (child_wrote, parent_wrote) = (0..PAGES / 8, PAGES / 8..PAGES / 4);
    let dropped = PAGES / 4..PAGES / 4 + DROPPED;
    // SAFETY: a single-threaded process.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        fill(area, 2, child_wrote.clone());
        // SAFETY: pages of our own area.
        unsafe {
            libc::madvise(
                area.add(dropped.start * PAGE / 8).cast(),
                DROPPED * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        let want = |p: usize| {
            if child_wrote.contains(&p) {
                Some(2)
            } else if dropped.contains(&p) {
                None
            } else {
                Some(1)
            }
        };
        loop {
            // SAFETY: the shared board: [0] rounds, [1] first bad page + 1.
            unsafe {
                if let Some(p) = check(area, want) {
                    board.add(1).write_volatile(p as u64 + 1);
                }
                board.write_volatile(board.read_volatile() + 1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fill(area, 3, parent_wrote.clone());
    let want = |p: usize| Some(if parent_wrote.contains(&p) { 3 } else { 1 });
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut status = String::from("OK");
    let mut child_rounds = 0;
    loop {
        counter += 1;
        if let Some(p) = check(area, want) {
            status = format!("parent-page-{p}-differs");
        }
        // SAFETY: the shared board.
        let (rounds, bad) = unsafe { (board.read_volatile(), board.add(1).read_volatile()) };
        if bad != 0 {
            status = format!("child-page-{}-differs", bad - 1);
        }
        // The child goes on too (checked every 10 rounds: it runs as fast).
        if counter % 10 == 0 {
            if rounds == child_rounds {
                status = "child-stopped-checking".into();
            }
            child_rounds = rounds;
        }
        report(&path, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
