//! The prefetch as one sequential read, where the storage offers one
//! ([`PageFetcher::stream`]): frames arrive in order, read ahead by the
//! storage's own tasks, and each one no fault has taken yet is claimed,
//! checked, decompressed and copied into the process here, then reported
//! like a worker's. Faults keep their own workers and ranged reads.
//!
//! What it holds is bounded by the read-ahead (a few runs of stored
//! frames) and the frames its copiers are at.

use super::copy::Copied;
use super::fetch::{Arrived, Backoff, Shared, report};
use super::{FrameStream, LazyOptions, PageFetcher};
use crstream_streamer::StoredFrame;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// Reads `frames` through `stream` (opened on all of them), and opens it
/// again from the first frame not yet read after a failure that may heal,
/// with a worker's backoff and time limit (counted from the first
/// failure since the last frame read).
pub(super) fn prefetch(
    shared: &Shared,
    frames: &[(u64, u64)],
    stream: FrameStream,
    fetcher: &dyn PageFetcher,
    opts: &LazyOptions,
    tx: &mpsc::Sender<Arrived>,
    efd: &OwnedFd,
) {
    let (jobs, taken) = mpsc::sync_channel::<(usize, StoredFrame)>(COPIERS);
    let taken = Mutex::new(taken);
    std::thread::scope(|scope| {
        for _ in 0..COPIERS {
            scope.spawn(|| copy_frames(shared, &taken, fetcher, tx, efd));
        }
        read_frames(shared, frames, stream, fetcher, opts, tx, efd, jobs);
    });
}

/// Threads that check, decompress and copy what the stream read: two
/// install pages about twice as fast as one, and installing them is what
/// the prefetch waits on once the storage is fast.
const COPIERS: usize = 2;

fn copy_frames(
    shared: &Shared,
    taken: &Mutex<mpsc::Receiver<(usize, StoredFrame)>>,
    fetcher: &dyn PageFetcher,
    tx: &mpsc::Sender<Arrived>,
    efd: &OwnedFd,
) {
    // Once the lazy phase ends (or this copier ended it), what is still
    // handed over is dropped: returning instead could leave the reader
    // waiting forever to hand over a frame.
    let mut ended = false;
    loop {
        // The lock only while waiting: both copiers copy at once.
        let job = taken.lock().unwrap().recv();
        let Ok((frame, stored)) = job else {
            return;
        };
        if ended || shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        let arrived = match fetcher.decode(stored) {
            Ok(batch) => match shared.copier.copy(batch, &shared.stop) {
                Copied::Done(pages) => Arrived::Copied { frame, pages },
                Copied::Gone => Arrived::Gone,
                Copied::Stopped => continue,
                Copied::Failed(reason) => Arrived::CopyFailed(reason),
            },
            Err(e) => Arrived::FetchFailed {
                frame,
                reason: e.message,
            },
        };
        // The serving thread stops everything on what is not a copy.
        let copied = matches!(arrived, Arrived::Copied { .. });
        ended = !report(tx, efd, arrived) || !copied;
    }
}

/// Hands every frame the stream reads, unless a fault took it already, to
/// the copiers (through `jobs`).
#[allow(clippy::too_many_arguments)]
fn read_frames(
    shared: &Shared,
    frames: &[(u64, u64)],
    mut stream: FrameStream,
    fetcher: &dyn PageFetcher,
    opts: &LazyOptions,
    tx: &mpsc::Sender<Arrived>,
    efd: &OwnedFd,
    jobs: mpsc::SyncSender<(usize, StoredFrame)>,
) {
    let report = |arrived: Arrived| report(tx, efd, arrived);
    // The first frame the stream has not given yet.
    let mut next = 0usize;
    let mut backoff = Backoff::new(opts.retry_for, None);
    while next < frames.len() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let stored = match stream.next() {
            Some(Ok(stored)) => stored,
            Some(Err(e)) => {
                let pause = if e.retryable {
                    backoff.after_failure()
                } else {
                    None
                };
                let Some(pause) = pause else {
                    report(Arrived::FetchFailed {
                        frame: next,
                        reason: e.message,
                    });
                    return;
                };
                tracing::warn!(
                    offset = frames[next].0,
                    "reading frames failed ({e}); retrying from there in {pause:?}"
                );
                if !sleep_unless_stopped(shared, pause) {
                    return;
                }
                let Some(again) = fetcher.stream(&frames[next..], shared.stop.clone()) else {
                    report(Arrived::FetchFailed {
                        frame: next,
                        reason: format!("{e}, and the storage reads no frames any more"),
                    });
                    return;
                };
                stream = again;
                continue;
            }
            // Stopped, or (a bug of the storage's stream) ended early.
            None if shared.stop.load(Ordering::Relaxed) => return,
            None => {
                report(Arrived::FetchFailed {
                    frame: next,
                    reason: "the read of the frames ended before this one".into(),
                });
                return;
            }
        };
        backoff = Backoff::new(opts.retry_for, None);
        let frame = next;
        next += 1;
        if stored.offset != frames[frame].0 {
            report(Arrived::FetchFailed {
                frame,
                reason: format!("the read of the frames gave offset {}", stored.offset),
            });
            return;
        }
        if !opts.prefetch_delay.is_zero() && !sleep_unless_stopped(shared, opts.prefetch_delay) {
            // Tests: a fault during the pause takes the frame instead.
            return;
        }
        // Unless a fault brought it already.
        if !shared.claimed[frame].swap(true, Ordering::Relaxed)
            && jobs.send((frame, stored)).is_err()
        {
            return;
        }
    }
}

/// Sleeps `d`, or less if the lazy phase ends meanwhile (false then): the
/// serving thread waits for this thread before it lets the process go.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    while !shared.stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    false
}
