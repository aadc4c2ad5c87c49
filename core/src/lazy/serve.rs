//! Serving the lazy phase: faults and events read from the userfaultfd,
//! frames fetched by the workers copied in (UFFDIO_COPY), until every page
//! is in or the process exits.

use super::fetch::{Queue, Shared, worker};
use super::{LazyError, LazyOptions, LazySession, LazyStats, PAGE};
use crate::sys::uffd::{Event, Userfaultfd};
use crstream_streamer::PageBatch;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Instant;

impl LazySession {
    /// Serves faults and prefetches until every frame is in (or the process
    /// exits), then closes the userfaultfd. On failure the process is
    /// killed (and reaped) before this returns.
    pub fn serve(mut self, opts: &LazyOptions) -> Result<LazyStats, LazyError> {
        self.resumed = Instant::now();
        let (r, workers) = self.serve_inner(opts);
        let r = r.and_then(|stats| {
            if !stats.exited_early {
                self.restore_death_signal().map_err(|reason| LazyError {
                    pid: self.pid,
                    reason,
                    frame_failed: false,
                })?;
            }
            Ok(stats)
        });
        if let Err(e) = &r {
            tracing::debug!("{e}");
            crate::sys::ptrace::kill_and_reap(self.pid);
        }
        // Closing the userfaultfd unregisters every area; only after the
        // kill above, so that no faulting thread runs on with a zero page.
        self.uffd = None;
        self.armed = false;
        // Stopped and cut off from the copies: each ends after the fetch
        // it may be in.
        for w in workers {
            let _ = w.join();
        }
        r
    }

    /// The fetch workers it started come back stopped, to be joined.
    #[allow(clippy::type_complexity)]
    fn serve_inner(
        &mut self,
        opts: &LazyOptions,
    ) -> (
        Result<LazyStats, LazyError>,
        Vec<std::thread::JoinHandle<()>>,
    ) {
        let pid = self.pid;
        let fail = |reason: String| LazyError {
            pid,
            reason,
            frame_failed: false,
        };
        let n = self.frames.len();
        let mut stats = LazyStats {
            frames: n,
            ..Default::default()
        };
        let efd = match rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK) {
            Ok(fd) => Arc::new(fd),
            Err(e) => return (Err(fail(format!("eventfd: {e}"))), Vec::new()),
        };
        let sfd = match crate::sys::signal::signalfd(
            super::term_signals(),
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(e) => return (Err(fail(format!("signalfd: {e}"))), Vec::new()),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                urgent: VecDeque::new(),
                next: 0,
                next_prefetch_at: Instant::now(),
            }),
            cv: Condvar::new(),
            window: super::window::Window::new(opts.window),
            claimed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        // Bounded: a worker that is ahead of the copies waits, so fetched
        // but uncopied frames never hold more than a few frames of memory.
        let (tx, rx) =
            mpsc::sync_channel::<(usize, Result<PageBatch, String>)>(opts.fetch_threads.max(1));
        let mut workers = Vec::new();
        // One more worker waits for faults only, so that a fault never
        // waits behind the long requests of the prefetch.
        let count = (opts.fetch_threads.max(1) + 1).min(n.max(1));
        for i in 0..count {
            let shared = shared.clone();
            let tx = tx.clone();
            let efd = efd.clone();
            let fetcher = self.fetcher.clone();
            let frames = self.frames.clone();
            let opts = opts.clone();
            workers.push(std::thread::spawn(move || {
                worker(
                    &shared,
                    &frames,
                    &*fetcher,
                    &opts,
                    &tx,
                    &efd,
                    i == 0 && count > 1,
                )
            }));
        }
        drop(tx);
        let stop_workers = |shared: &Shared| {
            shared.stop.store(true, Ordering::Relaxed);
            shared.cv.notify_all();
        };
        let uffd = self.uffd.as_ref().expect("served once");
        let mut done = vec![false; n];
        let mut faulted = vec![false; n];
        let mut done_count = 0usize;
        let mut waiters: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut removed: Vec<(u64, u64)> = Vec::new();
        let mut pending: VecDeque<(usize, PageBatch)> = VecDeque::new();
        let mut pending_zero: Vec<u64> = Vec::new();
        let result = 'outer: loop {
            if done_count == n && pending.is_empty() && pending_zero.is_empty() {
                break Ok(());
            }
            let idle = pending.is_empty() && pending_zero.is_empty();
            let timeout = Timespec {
                tv_sec: if idle { 1 } else { 0 },
                tv_nsec: if idle { 0 } else { 5_000_000 },
            };
            let mut fds = [
                PollFd::new(uffd, PollFlags::IN),
                PollFd::new(&self.pidfd, PollFlags::IN),
                PollFd::new(&*efd, PollFlags::IN),
                PollFd::new(&sfd, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break Err(fail(format!("poll: {e}"))),
            }
            let ready = |i: usize| !fds[i].revents().is_empty();
            if ready(3) {
                let signo = crate::sys::signal::read_signalfd(&sfd).unwrap_or(0);
                break Err(fail(format!(
                    "crstream received signal {signo} while pages were still missing"
                )));
            }
            if ready(1) {
                tracing::info!(pid, "the process exited during the lazy phase");
                stats.exited_early = true;
                break Ok(());
            }
            // Faults and events first: a copy must never land in a range
            // an event has just released.
            loop {
                let events = match uffd.read_events() {
                    Ok(ev) if ev.is_empty() => break,
                    Ok(ev) => ev,
                    Err(e) => break 'outer Err(fail(format!("reading the userfaultfd: {e}"))),
                };
                for ev in events {
                    match ev {
                        Event::PageFault { addr } => {
                            stats.faults += 1;
                            let page = addr & !(PAGE - 1);
                            if in_ranges(&removed, page) {
                                pending_zero.push(page);
                                continue;
                            }
                            match self.frame_of(page) {
                                None => pending_zero.push(page),
                                Some(f) if done[f] => uffd.wake(page, PAGE),
                                Some(f) => {
                                    if !faulted[f] && self.resumed.elapsed() < opts.record_for {
                                        faulted[f] = true;
                                        stats.working_set.push(self.frames[f].0);
                                    }
                                    waiters.entry(f).or_default().push(page);
                                    if !shared.claimed[f].load(Ordering::Relaxed) {
                                        shared.queue.lock().unwrap().urgent.push_back(f);
                                        shared.cv.notify_all();
                                    }
                                }
                            }
                        }
                        Event::Released { start, end } => {
                            tracing::debug!(pid, start, end, "range released");
                            removed.push((start & !(PAGE - 1), end));
                        }
                        Event::Remap { from, to, len } => {
                            break 'outer Err(fail(format!(
                                "the process moved memory with mremap ({from:#x} -> {to:#x}, \
                                 {len} bytes) while it was being restored lazily (userfaultfd \
                                 REMAP event): not supported"
                            )));
                        }
                        Event::Fork { child } => {
                            drop(child);
                            break 'outer Err(fail(
                                "the process forked while it was being restored lazily \
                                 (userfaultfd FORK event): not supported"
                                    .into(),
                            ));
                        }
                        Event::Other(event) => {
                            tracing::warn!(pid, event, "unknown userfaultfd event");
                        }
                    }
                }
            }
            // Zero pages for faults outside the image (or released ranges).
            let mut again = Vec::new();
            for page in pending_zero.drain(..) {
                match uffd.zeropage(page, PAGE).map_err(|e| e.raw_os_error()) {
                    Ok(()) => stats.zero_pages += 1,
                    Err(Some(libc::EAGAIN)) => again.push(page),
                    Err(Some(libc::ESRCH)) => {
                        stats.exited_early = true;
                        break 'outer Ok(());
                    }
                    Err(_) => uffd.wake(page, PAGE),
                }
            }
            pending_zero = again;
            // Arrived frames.
            let _ = rustix::io::read(&*efd, &mut [0u8; 8]);
            loop {
                match rx.try_recv() {
                    Ok((f, Ok(batch))) => pending.push_back((f, batch)),
                    Ok((f, Err(e))) => {
                        break 'outer Err(LazyError {
                            frame_failed: true,
                            ..fail(format!(
                                "fetching frame at offset {} of {}: {e}",
                                self.frames[f].0,
                                self.fetcher.describe()
                            ))
                        });
                    }
                    Err(_) => break,
                }
            }
            let mut again = VecDeque::new();
            while let Some((f, batch)) = pending.pop_front() {
                match self.copy_batch(uffd, &batch, &removed) {
                    Copy::Done(pages) => {
                        stats.pages_copied += pages;
                        done[f] = true;
                        done_count += 1;
                        for page in waiters.remove(&f).unwrap_or_default() {
                            if in_ranges(&removed, page) {
                                pending_zero.push(page);
                            } else {
                                uffd.wake(page, PAGE);
                            }
                        }
                    }
                    Copy::Again(rest, pages) => {
                        stats.pages_copied += pages;
                        again.push_back((f, rest));
                    }
                    Copy::Gone => {
                        stats.exited_early = true;
                        break 'outer Ok(());
                    }
                    Copy::Failed(e) => break 'outer Err(fail(e)),
                }
            }
            pending = again;
        };
        stop_workers(&shared);
        drop(rx);
        stats.elapsed = self.resumed.elapsed();
        (result.map(|()| stats), workers)
    }

    /// Copies the runs of a batch that lie in lazy areas and outside
    /// released ranges. `Again` carries what is left when the kernel asks
    /// to retry after reading pending events.
    fn copy_batch(&self, uffd: &Userfaultfd, batch: &PageBatch, removed: &[(u64, u64)]) -> Copy {
        let mut copied = 0u64;
        // Where each run's pages begin in `batch.data`.
        let mut at_byte = 0usize;
        for (i, (run, data)) in batch.runs_with_data().enumerate() {
            let inside = self
                .areas
                .iter()
                .any(|&(s, e)| run.start >= s && run.end() <= e);
            if !inside {
                return Copy::Failed(format!(
                    "bad image: the frame holds pages at {:#x} ({} pages), outside the \
                     memory areas restored lazily",
                    run.start, run.pages
                ));
            }
            for (s, e) in subtract(run.start, run.end(), removed) {
                let off = (s - run.start) as usize;
                match copy_range(uffd, s, &data[off..off + (e - s) as usize]) {
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
                        return Copy::Again(rest, copied);
                    }
                    Err(CopyErr::Gone) => return Copy::Gone,
                    Err(CopyErr::Other(e)) => {
                        return Copy::Failed(format!("UFFDIO_COPY at {s:#x}: {e}"));
                    }
                }
            }
            at_byte += data.len();
        }
        Copy::Done(copied)
    }
}

enum Copy {
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

fn in_ranges(ranges: &[(u64, u64)], addr: u64) -> bool {
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
