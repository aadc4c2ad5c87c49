//! Fetching frames for the lazy phase: workers that take the frames a
//! fault waits for first, then prefetch the rest in index order, retrying
//! failed fetches for a while.

use super::copy::{Copied, Copier};
use super::{LazyOptions, PageFetcher};
use crstream_streamer::PageBatch;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Fetches consecutive frames in one request, retrying failures that may
/// heal with backoff for `retry_for`.
pub(crate) fn fetch_run_with_retry(
    fetcher: &dyn PageFetcher,
    run: &[(u64, u64)],
    retry_for: Duration,
    stop: Option<&AtomicBool>,
) -> Result<Vec<PageBatch>, String> {
    let offset = run.first().map_or(0, |f| f.0);
    let batches = retrying(offset, retry_for, stop, || fetcher.fetch_run(run))?;
    if batches.len() != run.len() {
        return Err(format!(
            "{} page batches for a run of {} frames",
            batches.len(),
            run.len()
        ));
    }
    Ok(batches)
}

/// Calls `fetch` until it succeeds, fails for good, or failures that may
/// heal have gone on for `retry_for` (counted from the first attempt).
fn retrying<T>(
    offset: u64,
    retry_for: Duration,
    stop: Option<&AtomicBool>,
    mut fetch: impl FnMut() -> Result<T, super::FetchError>,
) -> Result<T, String> {
    let mut backoff = Backoff::new(retry_for, Some(Instant::now()));
    loop {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err("the lazy phase ended".into());
        }
        match fetch() {
            Ok(b) => return Ok(b),
            Err(e) if !e.retryable => return Err(e.message),
            Err(e) => {
                let pause = backoff.after_failure();
                let Some(pause) =
                    pause.filter(|_| !stop.is_some_and(|s| s.load(Ordering::Relaxed)))
                else {
                    return Err(e.message);
                };
                tracing::warn!(offset, "fetching frame failed ({e}); retrying in {pause:?}");
                std::thread::sleep(pause);
            }
        }
    }
}

/// The pauses between attempts at reading frames after failures that may
/// heal: 100 ms, doubling up to 5 s, for `retry_for` from `since` (the
/// first attempt, or else the first failure).
pub(super) struct Backoff {
    retry_for: Duration,
    since: Option<Instant>,
    wait: Duration,
}

impl Backoff {
    pub(super) fn new(retry_for: Duration, since: Option<Instant>) -> Self {
        Self {
            retry_for,
            since,
            wait: Duration::from_millis(100),
        }
    }

    /// After a failure that may heal: the pause before the next attempt,
    /// cut to the time left; None once `retry_for` has passed.
    pub(super) fn after_failure(&mut self) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let left = self.retry_for.saturating_sub(since.elapsed());
        if left.is_zero() {
            return None;
        }
        let pause = self.wait.min(left);
        self.wait = (self.wait * 2).min(Duration::from_secs(5));
        Some(pause)
    }
}

pub(super) struct Queue {
    /// Frames faults wait for.
    pub urgent: VecDeque<usize>,
    pub next: usize,
    pub next_prefetch_at: Instant,
}

pub(super) struct Shared {
    pub queue: Mutex<Queue>,
    /// What fetched frames not yet copied may hold.
    pub window: std::sync::Arc<super::window::Window>,
    pub cv: Condvar,
    pub claimed: Vec<AtomicBool>,
    /// Set when the lazy phase ends (also read by the fetcher's stream).
    pub stop: std::sync::Arc<AtomicBool>,
    pub copier: Copier,
}

/// A fetch worker: frames faults wait for first, then (unless
/// `faults_only`, which keeps one worker free for faults while the others
/// are busy with long prefetch requests) the rest in order; it copies what
/// it fetched into the process and reports each frame.
pub(super) fn worker(
    shared: &Shared,
    frames: &[(u64, u64)],
    fetcher: &dyn PageFetcher,
    opts: &LazyOptions,
    tx: &mpsc::Sender<Arrived>,
    efd: &OwnedFd,
    faults_only: bool,
) {
    loop {
        // Room for a whole run, taken before any frame is claimed: a fault
        // on a claimed frame must never wait for the window.
        let mut room = (!faults_only).then(|| shared.window.take(RUN_BYTES));
        let job = {
            let mut q = shared.queue.lock().unwrap();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(f) = q.urgent.pop_front() {
                    if !shared.claimed[f].swap(true, Ordering::Relaxed) {
                        break Job::One(f);
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
                if faults_only {
                    // Woken for a fault, a stop, or to look again.
                    q = shared
                        .cv
                        .wait_timeout(q, Duration::from_millis(100))
                        .unwrap()
                        .0;
                    continue;
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
                // The frames that follow it in the stream, unclaimed, come
                // with it in one request (not while tests slow the
                // prefetch down to one frame at a time).
                let mut last = f;
                let mut bytes = frames[f].1;
                while opts.prefetch_delay.is_zero()
                    && last + 1 < frames.len()
                    && last + 1 - f < RUN_FRAMES
                    && bytes + frames[last + 1].1 <= RUN_BYTES
                    && frames[last].0 + frames[last].1 == frames[last + 1].0
                    && !shared.claimed[last + 1].swap(true, Ordering::Relaxed)
                {
                    last += 1;
                    bytes += frames[last].1;
                }
                q.next = q.next.max(last + 1);
                break Job::Run(f, last);
            }
        };
        let (first, last) = match job {
            Job::One(f) => (f, f),
            Job::Run(first, last) => (first, last),
        };
        let run = &frames[first..=last];
        let stored: u64 = run.iter().map(|f| f.1).sum();
        let mut room = match room.take() {
            Some(mut r) => {
                r.shrink_to(stored);
                r
            }
            None => shared.window.take_now(stored),
        };
        let report = |arrived: Arrived| report(tx, efd, arrived);
        let batches = match fetch_run_with_retry(fetcher, run, opts.retry_for, Some(&shared.stop)) {
            Ok(batches) => batches,
            Err(reason) => {
                report(Arrived::FetchFailed {
                    frame: first,
                    reason,
                });
                return;
            }
        };
        // What the batches hold once decompressed is what counts.
        let held: u64 = batches.iter().map(|b| b.data.len() as u64).sum();
        room.grow_to(held);
        for (frame, mut batch) in (first..=last).zip(batches) {
            let len = batch.data.len() as u64;
            room.attach(&mut batch, len);
            // Copied here, while the pages are still in this core's cache,
            // and by every worker at once: one thread copying everything
            // would be the slowest part of the lazy phase.
            let arrived = match shared.copier.copy(batch, &shared.stop) {
                Copied::Done(pages) => Arrived::Copied { frame, pages },
                Copied::Gone => Arrived::Gone,
                Copied::Stopped => return,
                Copied::Failed(reason) => Arrived::CopyFailed(reason),
            };
            let end = !matches!(arrived, Arrived::Copied { .. });
            if !report(arrived) || end {
                return;
            }
        }
    }
}

/// Tells the serving thread (and wakes it); false once it is gone.
pub(super) fn report(tx: &mpsc::Sender<Arrived>, efd: &OwnedFd, arrived: Arrived) -> bool {
    let sent = tx.send(arrived).is_ok();
    let _ = rustix::io::write(efd, &1u64.to_ne_bytes());
    sent
}

/// What a worker tells the serving thread.
pub(super) enum Arrived {
    /// A frame is in: the faults waiting for it can be woken.
    Copied {
        frame: usize,
        pages: u64,
    },
    FetchFailed {
        frame: usize,
        reason: String,
    },
    CopyFailed(String),
    /// The process is gone.
    Gone,
}

/// Frames a prefetch request takes at most, and their bytes: large ranged
/// reads keep an object store's throughput up where one frame per request
/// would pay a round trip per MiB.
pub(crate) const RUN_FRAMES: usize = 16;
pub(crate) const RUN_BYTES: u64 = 16 << 20;

/// What a worker fetches next: a frame a fault waits for, or a run of
/// frames to prefetch (first..=last).
enum Job {
    One(usize),
    Run(usize, usize),
}
