//! Fetching frames for the lazy phase: workers that take the frames a
//! fault waits for first, then prefetch the rest in index order, retrying
//! failed fetches for a while.

use super::{LazyOptions, PageFetcher};
use crstream_streamer::PageBatch;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Fetches a frame, retrying failures that may heal with backoff for
/// `retry_for`.
pub(crate) fn fetch_with_retry(
    fetcher: &dyn PageFetcher,
    offset: u64,
    len: u64,
    retry_for: Duration,
    stop: Option<&AtomicBool>,
) -> Result<PageBatch, String> {
    let t0 = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err("the lazy phase ended".into());
        }
        match fetcher.fetch(offset, len) {
            Ok(b) => return Ok(b),
            Err(e) if !e.retryable => return Err(e.message),
            Err(e) => {
                let left = retry_for.saturating_sub(t0.elapsed());
                if left.is_zero() || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return Err(e.message);
                }
                tracing::warn!(offset, "fetching frame failed ({e}); retrying in {wait:?}");
                std::thread::sleep(wait.min(left));
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub(super) struct Queue {
    pub urgent: VecDeque<usize>,
    pub next: usize,
    pub next_prefetch_at: Instant,
}

pub(super) struct Shared {
    pub queue: Mutex<Queue>,
    pub cv: Condvar,
    pub claimed: Vec<AtomicBool>,
    pub stop: AtomicBool,
}

pub(super) fn worker(
    shared: &Shared,
    frames: &[(u64, u64)],
    fetcher: &dyn PageFetcher,
    opts: &LazyOptions,
    tx: &mpsc::SyncSender<(usize, Result<PageBatch, String>)>,
    efd: &OwnedFd,
) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(f) = q.urgent.pop_front() {
                    if !shared.claimed[f].swap(true, Ordering::Relaxed) {
                        break f;
                    }
                    continue;
                }
                while q.next < frames.len() && shared.claimed[q.next].load(Ordering::Relaxed) {
                    q.next += 1;
                }
                if q.next >= frames.len() {
                    // Everything is claimed: no fault can need us any more.
                    return;
                }
                let now = Instant::now();
                if now < q.next_prefetch_at {
                    let d = q.next_prefetch_at - now;
                    q = shared.cv.wait_timeout(q, d).unwrap().0;
                    continue;
                }
                let f = q.next;
                q.next += 1;
                if shared.claimed[f].swap(true, Ordering::Relaxed) {
                    continue;
                }
                q.next_prefetch_at = now + opts.prefetch_delay;
                break f;
            }
        };
        let (offset, len) = frames[job];
        let r = fetch_with_retry(fetcher, offset, len, opts.retry_for, Some(&shared.stop));
        if tx.send((job, r)).is_err() {
            return;
        }
        let _ = rustix::io::write(efd, &1u64.to_ne_bytes());
    }
}
