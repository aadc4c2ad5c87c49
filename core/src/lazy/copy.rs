//! Copying fetched pages into the process (UFFDIO_COPY), from the fetch
//! workers, each right after its fetch while the pages are still in its
//! cache; and the ranges the process released since it resumed, which no
//! copy may fill.
//!
//! The order that keeps a released range empty: from the moment the process
//! starts a madvise(DONTNEED) or munmap until the serving thread has read
//! its event, the kernel fails copies with EAGAIN; madvise clears the range
//! only after the event is read (munmap removes it before, and a copy into
//! it then finds no registered area). The serving thread reads events
//! holding [`Copier::removed`] for writing, which waits out every copy in
//! flight, and a worker holds it for reading across each copy of at most
//! [`CHUNK_PAGES`], so a copy either ends before the event is read (the
//! clearing then undoes it) or starts after the range is recorded (and
//! skips it).

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

/// Pages one copy covers at most, so that reading an event never waits
/// long for the copies in flight.
const CHUNK_PAGES: u64 = 256;

impl Copier {
    /// Copies the runs of `batch` that lie outside released ranges,
    /// retrying after the serving thread has read the events that make
    /// the kernel refuse a copy for now.
    pub(super) fn copy(&self, batch: PageBatch, stop: &AtomicBool) -> Copied {
        let mut copied = 0u64;
        for (run, data) in batch.runs_with_data() {
            let inside = self
                .areas
                .iter()
                .any(|&(s, e)| run.start >= s && run.end() <= e);
            if !inside {
                return Copied::Failed(format!(
                    "bad image: the frame holds pages at {:#x} ({} pages), outside the \
                     memory areas restored lazily",
                    run.start, run.pages
                ));
            }
            let mut at = run.start;
            while at < run.end() {
                let end = (at + CHUNK_PAGES * PAGE).min(run.end());
                match self.copy_chunk(run.start, data, at, end) {
                    Ok(n) => {
                        copied += n;
                        at = end;
                    }
                    Err(CopyErr::Again(from, n)) => {
                        // Retried from where the kernel stopped, against
                        // the ranges the pending event adds.
                        copied += n;
                        at = from;
                        if stop.load(Ordering::Relaxed) {
                            return Copied::Stopped;
                        }
                        // The serving thread reads the pending event at once.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(CopyErr::Gone) => return Copied::Gone,
                    Err(CopyErr::Other(at, e)) => {
                        return Copied::Failed(format!("UFFDIO_COPY at {at:#x}: {e}"));
                    }
                }
            }
        }
        Copied::Done(copied)
    }

    /// [at, end) of a run whose pages `data` holds from `run_start`, but
    /// for released ranges, under the lock; pages copied.
    fn copy_chunk(&self, run_start: u64, data: &[u8], at: u64, end: u64) -> Result<u64, CopyErr> {
        let removed = self.removed.read().unwrap();
        let mut copied = 0;
        for (s, e) in subtract(at, end, &removed) {
            let off = (s - run_start) as usize;
            match copy_range(&self.uffd, s, &data[off..off + (e - s) as usize]) {
                Ok(n) => copied += n,
                Err(CopyErr::Again(from, n)) => return Err(CopyErr::Again(from, copied + n)),
                Err(e) => return Err(e),
            }
        }
        Ok(copied)
    }
}

enum CopyErr {
    /// Retry from this address (after reading events); pages copied so far.
    Again(u64, u64),
    Gone,
    Other(u64, std::io::Error),
}

/// UFFDIO_COPY of `data` to `dst`, past pages that are already there or
/// no longer in a registered area. Returns pages copied.
fn copy_range(uffd: &Userfaultfd, dst: u64, data: &[u8]) -> Result<u64, CopyErr> {
    let end = dst + data.len() as u64;
    let mut at = dst;
    let mut pages = 0u64;
    // A copy must lie in one area: once the process has split the area
    // (mprotect, mlock, madvise on part of it: no event says so), a copy
    // across the split fails as a whole with ENOENT. The rest then goes
    // page by page, and only a page that is itself in no registered area
    // is skipped.
    let mut page_by_page = false;
    while at < end {
        let off = (at - dst) as usize;
        let len = if page_by_page {
            PAGE as usize
        } else {
            data.len() - off
        };
        match uffd.copy(at, &data[off..off + len]) {
            (n, Ok(())) => {
                pages += n / PAGE;
                at += n;
            }
            (n, Err(e)) => {
                if n > 0 {
                    pages += n / PAGE;
                    at += n;
                    continue;
                }
                match e.raw_os_error() {
                    Some(libc::ENOENT) if len > PAGE as usize => page_by_page = true,
                    // Already there, or unmapped since: skip that page.
                    Some(libc::EEXIST) | Some(libc::ENOENT) => {
                        uffd.wake(at, PAGE);
                        at += PAGE;
                    }
                    Some(libc::EAGAIN) => return Err(CopyErr::Again(at, pages)),
                    Some(libc::ESRCH) => return Err(CopyErr::Gone),
                    _ => return Err(CopyErr::Other(at, e)),
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
