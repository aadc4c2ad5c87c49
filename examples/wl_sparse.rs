//! Workload: a sparse 1 GiB anonymous area (MAP_PRIVATE|MAP_ANONYMOUS|
//! MAP_NORESERVE, MADV_NOHUGEPAGE). About 10 MiB of it is written with
//! incompressible data: every 256th page plus a contiguous 6 MiB. Another
//! 12 MiB is only read (every 256th page at offset 128, plus a contiguous
//! 8 MiB), which maps the shared zero page; the rest is never touched.
//!
//! Every 100 ms it verifies the checksum of the written pages and that the
//! read-only pages are still zero, increments a counter and reports
//! "pid counter checksum written_pages STATUS passes". When REPORT.verify
//! exists it removes it and checks that every page it never wrote, the whole
//! ~1 GiB, reads as zeros; `passes` counts such full checks that succeeded.
//!
//! Usage: wl_sparse REPORT

use std::time::Duration;

mod wl_common;
use wl_common::report;

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;
const PAGES: usize = 1 << 18; // 1 GiB
const SPREAD: usize = 256;
const CONT_START: usize = 100_001;
const CONT_PAGES: usize = 1536; // 6 MiB
const READ_START: usize = 200_000;
const READ_PAGES: usize = 2048; // 8 MiB

fn written(i: usize) -> bool {
    i % SPREAD == 0 || (CONT_START..CONT_START + CONT_PAGES).contains(&i)
}

fn read_only(i: usize) -> bool {
    !written(i) && (i % SPREAD == SPREAD / 2 || (READ_START..READ_START + READ_PAGES).contains(&i))
}

struct Area(*mut u64);

impl Area {
    fn page(&self, i: usize) -> &[u64] {
        // SAFETY: page i lies inside the 1 GiB mapping, which lives as long
        // as the process.
        unsafe { std::slice::from_raw_parts(self.0.add(i * WORDS), WORDS) }
    }
    #[allow(clippy::mut_from_ref)]
    fn page_mut(&self, i: usize) -> &mut [u64] {
        // SAFETY: as above; single-threaded, no other reference is live.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(i * WORDS), WORDS) }
    }
    /// The first non-zero word of page i, if any.
    fn nonzero(&self, i: usize) -> Option<usize> {
        static ZERO: [u64; WORDS] = [0; WORDS];
        let page = self.page(i);
        // Slice equality is a memcmp: fast even in a debug build.
        if page == &ZERO[..] {
            return None;
        }
        page.iter().position(|&w| w != 0)
    }
}

fn checksum(area: &Area) -> u64 {
    let mut acc = 0u64;
    for i in (0..PAGES).filter(|&i| written(i)) {
        for (w, &v) in area.page(i).iter().enumerate() {
            acc = acc.rotate_left(7) ^ v.wrapping_mul((i * WORDS + w) as u64 | 1);
        }
    }
    acc
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: wl_sparse REPORT").clone();
    let verify = format!("{path}.verify");
    // SAFETY: a fresh anonymous mapping, never unmapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    // Without this, THP would fill whole 2 MiB ranges around each page.
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(p, PAGES * PAGE, libc::MADV_NOHUGEPAGE) };
    let area = Area(p.cast());

    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut written_pages = 0u64;
    for i in (0..PAGES).filter(|&i| written(i)) {
        for w in area.page_mut(i) {
            // xorshift64: incompressible, never all-zero pages.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x;
        }
        written_pages += 1;
    }
    let expected = checksum(&area);
    let mut status = String::from("OK");
    for i in (0..PAGES).filter(|&i| read_only(i)) {
        if let Some(w) = area.nonzero(i) {
            status = format!("NONZERO-page-{i}-word-{w}");
        }
    }

    let pid = std::process::id();
    let mut counter = 0u64;
    let mut passes = 0u64;
    loop {
        counter += 1;
        let sum = checksum(&area);
        if sum != expected {
            status = format!("CORRUPT-checksum-{sum}");
        }
        for i in (0..PAGES).filter(|&i| read_only(i)) {
            if let Some(w) = area.nonzero(i) {
                status = format!("NONZERO-page-{i}-word-{w}");
            }
        }
        if std::fs::remove_file(&verify).is_ok() {
            let bad = (0..PAGES)
                .filter(|&i| !written(i))
                .find_map(|i| area.nonzero(i).map(|w| (i, w)));
            match bad {
                None => passes += 1,
                Some((i, w)) => status = format!("NONZERO-page-{i}-word-{w}"),
            }
        }
        report(
            &path,
            &format!("{pid} {counter} {expected} {written_pages} {status} {passes}\n"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
