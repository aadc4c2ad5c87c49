//! Copying fetched pages into the process (UFFDIO_COPY), from the fetch
//! workers, each right after its fetch while the pages are still in its
//! cache; and the ranges the process released since it resumed, which no
//! copy may fill.
//!
//! The order that keeps a released range empty: the kernel fails a copy
//! with EAGAIN while an event (madvise DONTNEED, munmap) is unread, and the
//! process clears the range only after the serving thread has read the
//! event. The serving thread reads events holding [`Copier::removed`] for
//! writing, and a worker holds it for reading across each copy, so every
//! copy either ends before the event is read (the clearing then undoes it)
//! or starts after the range is recorded (and skips it).

use super::PAGE;
use crate::sys::uffd::Userfaultfd;
use crstream_streamer::PageBatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub(super) struct Copier {
    pub uffd: Arc<Userfaultfd>,
    /// Lazy areas (start, end): a frame's pages must lie inside them.
    pub areas: Vec<(u64, u64)>,
    /// Ranges the process released (start, end) since it resumed.
    pub removed: RwLock<Vec<(u64, u64)>>,
}

/// How copying a batch ended.
pub(super) enum Copied {
    /// Pages copied (those already present or released are skipped).
    Done(u64),
    /// The process is gone.
    Gone,
    /// The lazy phase is ending: the rest is not needed.
    Stopped,
    Failed(String),
}

impl Copier {
    /// Copies the runs of `batch` that lie outside released ranges,
    /// retrying after the serving thread has read the events that make
    /// the kernel refuse a copy for now.
    pub(super) fn copy(&self, mut batch: PageBatch, stop: &AtomicBool) -> Copied {
        let mut copied = 0u64;
        loop {
            let attempt = {
                let removed = self.removed.read().unwrap();
                self.copy_batch(&batch, &removed)
            };
            match attempt {
                Attempt::Done(pages) => return Copied::Done(copied + pages),
                Attempt::Again(rest, pages) => {
                    copied += pages;
                    batch = rest;
                    if stop.load(Ordering::Relaxed) {
                        return Copied::Stopped;
                    }
                    // The serving thread reads the pending event at once.
                    std::thread::sleep(Duration::from_micros(200));
                }
                Attempt::Gone => return Copied::Gone,
                Attempt::Failed(e) => return Copied::Failed(e),
            }
        }
    }

    /// One pass over `batch`. `Again` carries what is left when the kernel
    /// asks to retry after pending events are read.
    fn copy_batch(&self, batch: &PageBatch, removed: &[(u64, u64)]) -> Attempt {
        let mut copied = 0u64;
        // Where each run's pages begin in `batch.data`.
        let mut at_byte = 0usize;
        for (i, (run, data)) in batch.runs_with_data().enumerate() {
            let inside = self
                .areas
                .iter()
                .any(|&(s, e)| run.start >= s && run.end() <= e);
            if !inside {
                return Attempt::Failed(format!(
                    "bad image: the frame holds pages at {:#x} ({} pages), outside the \
                     memory areas restored lazily",
                    run.start, run.pages
                ));
            }
            for (s, e) in subtract(run.start, run.end(), removed) {
                let off = (s - run.start) as usize;
                match copy_range(&self.uffd, s, &data[off..off + (e - s) as usize]) {
                    Ok(n) => copied += n,
                    Err(CopyErr::Again(at, n)) => {
                        copied += n;
                        // The rest of this run (from `at`) and the later
                        // runs: the tail of the batch's pages, shared (so
                        // it keeps its share of the fetch window).
                        let o = (at - run.start) as usize;
                        let mut runs = vec![crstream_streamer::PageRun {
                            start: at,
                            pages: (run.end() - at) / PAGE,
                        }];
                        runs.extend_from_slice(&batch.runs[i + 1..]);
                        let rest = PageBatch {
                            pid: batch.pid,
                            area: batch.area,
                            runs,
                            data: batch.data.slice(at_byte + o..),
                        };
                        return Attempt::Again(rest, copied);
                    }
                    Err(CopyErr::Gone) => return Attempt::Gone,
                    Err(CopyErr::Other(e)) => {
                        return Attempt::Failed(format!("UFFDIO_COPY at {s:#x}: {e}"));
                    }
                }
            }
            at_byte += data.len();
        }
        Attempt::Done(copied)
    }
}

enum Attempt {
    Done(u64),
    Again(PageBatch, u64),
    Gone,
    Failed(String),
}

enum CopyErr {
    /// Retry from this address (after reading events); pages copied so far.
    Again(u64, u64),
    Gone,
    Other(std::io::Error),
}

/// UFFDIO_COPY of `data` to `dst`, page by page past pages that already
/// exist or vanished. Returns pages copied.
fn copy_range(uffd: &Userfaultfd, dst: u64, data: &[u8]) -> Result<u64, CopyErr> {
    let end = dst + data.len() as u64;
    let mut at = dst;
    let mut pages = 0u64;
    while at < end {
        let off = (at - dst) as usize;
        match uffd.copy(at, &data[off..]) {
            (n, Ok(())) => {
                pages += n / PAGE;
                at = end;
            }
            (n, Err(e)) => {
                if n > 0 {
                    pages += n / PAGE;
                    at += n;
                    continue;
                }
                match e.raw_os_error() {
                    // Already there (or gone since): skip that page.
                    Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::EFAULT) => {
                        uffd.wake(at, PAGE);
                        at += PAGE;
                    }
                    Some(libc::EAGAIN) => return Err(CopyErr::Again(at, pages)),
                    Some(libc::ESRCH) => return Err(CopyErr::Gone),
                    _ => return Err(CopyErr::Other(e)),
                }
            }
        }
    }
    Ok(pages)
}

pub(super) fn in_ranges(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges.iter().any(|&(s, e)| addr >= s && addr < e)
}

/// [start, end) minus `holes`, as sorted pieces.
fn subtract(start: u64, end: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces = vec![(start, end)];
    for &(hs, he) in holes {
        let mut next = Vec::new();
        for (s, e) in pieces {
            if he <= s || hs >= e {
                next.push((s, e));
                continue;
            }
            if hs > s {
                next.push((s, hs));
            }
            if he < e {
                next.push((he.next_multiple_of(PAGE), e));
            }
        }
        pieces = next.into_iter().filter(|(s, e)| s < e).collect();
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracts_holes() {
        assert_eq!(subtract(0x1000, 0x5000, &[]), vec![(0x1000, 0x5000)]);
        assert_eq!(
            subtract(0x1000, 0x5000, &[(0x2000, 0x3000)]),
            vec![(0x1000, 0x2000), (0x3000, 0x5000)]
        );
        assert_eq!(subtract(0x1000, 0x5000, &[(0, 0x9000)]), vec![]);
        assert_eq!(
            subtract(0x1000, 0x5000, &[(0x4000, 0x9000), (0, 0x2000)]),
            vec![(0x2000, 0x4000)]
        );
    }
}
