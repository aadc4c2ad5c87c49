//! Serving the lazy phase: faults and events read from the userfaultfd,
//! zero pages mapped, and the frames the workers copied in counted, until
//! every page is in or the process exits.

use super::copy::{Copier, in_ranges};
use super::fetch::{Arrived, Queue, Shared, worker};
use super::{LazyError, LazyOptions, LazySession, LazyStats, PAGE};
use crate::sys::uffd::Event;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, mpsc};
use std::time::Instant;

impl LazySession {
    /// Serves faults and prefetches until every frame is in (or the process
    /// exits), then closes the userfaultfd. On failure the process is
    /// killed (and reaped) before this returns.
    pub fn serve(mut self, opts: &LazyOptions) -> Result<LazyStats, LazyError> {
        self.resumed = Instant::now();
        let (r, workers) = self.serve_inner(opts);
        if let Err(e) = &r {
            tracing::debug!("{e}");
            crate::sys::ptrace::kill_and_reap(self.pid);
        }
        // Stopped: each ends after the fetch or copy it may be in.
        for w in workers {
            let _ = w.join();
        }
        // Closing the userfaultfd (the workers held it too) unregisters
        // every area: after the kill above, so that no faulting thread runs
        // on with a zero page; and before the freeze below, which could
        // never stop a thread that waits for its munmap or madvise event
        // to be read.
        self.uffd = None;
        let r = r.and_then(|stats| {
            if stats.exited_early {
                return Ok(stats);
            }
            crate::failpoint::pause("lazy-all-in");
            if let Err(reason) = self.restore_death_signal() {
                // It ended on its own once every page was in: its status
                // is left to whoever reaps it (the parent it has after us).
                if self.exited() {
                    return Ok(stats);
                }
                crate::sys::ptrace::kill_and_reap(self.pid);
                return Err(LazyError {
                    pid: self.pid,
                    reason,
                    frame_failed: false,
                });
            }
            Ok(stats)
        });
        self.armed = false;
        r
    }

    /// Whether the process has ended (a zombie or gone), without waiting
    /// for a live one. A leader already a zombie or exiting is waited for: its other
    /// threads may still be tearing its memory down.
    fn exited(&self) -> bool {
        let ending = crate::proc::ending(self.pid);
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let wait = Timespec {
            tv_sec: if ending { 30 } else { 0 },
            tv_nsec: 0,
        };
        loop {
            match rustix::event::poll(&mut fds, Some(&wait)) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.is_ok_and(|n| n > 0),
            }
        }
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
            stop: Arc::new(AtomicBool::new(false)),
            copier: Copier {
                uffd: self.uffd.clone().expect("served once"),
                areas: std::mem::take(&mut self.areas),
                removed: RwLock::new(Vec::new()),
            },
        });
        let (tx, rx) = mpsc::channel::<Arrived>();
        let mut workers = Vec::new();
        // The prefetch reads the frames as one stream where the storage
        // offers one; two workers then serve faults. Otherwise workers
        // fetch runs of frames, and one more waits for faults only, so that
        // a fault never waits behind the long requests of the prefetch.
        let stream = self.fetcher.stream(&self.frames, shared.stop.clone());
        stats.streamed = stream.is_some();
        let (count, faults_only) = match &stream {
            Some(_) => (2.min(n), 2),
            None => {
                let count = (opts.fetch_threads.max(1) + 1).min(n.max(1));
                (count, usize::from(count > 1))
            }
        };
        // What each thread takes along.
        let parts = || {
            let (fetcher, frames) = (self.fetcher.clone(), self.frames.clone());
            (
                shared.clone(),
                tx.clone(),
                efd.clone(),
                fetcher,
                frames,
                opts.clone(),
            )
        };
        if let Some(stream) = stream {
            let (shared, tx, efd, fetcher, frames, opts) = parts();
            workers.push(std::thread::spawn(move || {
                super::stream::prefetch(&shared, &frames, stream, &*fetcher, &opts, &tx, &efd)
            }));
        }
        for i in 0..count {
            let (shared, tx, efd, fetcher, frames, opts) = parts();
            workers.push(std::thread::spawn(move || {
                worker(
                    &shared,
                    &frames,
                    &*fetcher,
                    &opts,
                    &tx,
                    &efd,
                    i < faults_only,
                )
            }));
        }
        drop(tx);
        let stop_workers = |shared: &Shared| {
            shared.stop.store(true, Ordering::Relaxed);
            shared.cv.notify_all();
        };
        let (uffd, removed) = (&shared.copier.uffd, &shared.copier.removed);
        let mut done = vec![false; n];
        let mut faulted = vec![false; n];
        let mut done_count = 0usize;
        let mut waiters: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut pending_zero: Vec<u64> = Vec::new();
        let result = 'outer: loop {
            if done_count == n && pending_zero.is_empty() {
                break Ok(());
            }
            let idle = pending_zero.is_empty();
            let timeout = Timespec {
                tv_sec: if idle { 1 } else { 0 },
                tv_nsec: if idle { 0 } else { 5_000_000 },
            };
            let mut fds = [
                PollFd::new(&**uffd, PollFlags::IN),
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
            // Faults and events, read with no copy under way: a range an
            // event releases is recorded before any later copy could land
            // in it (see the copy module).
            if ready(0) {
                let mut released = removed.write().unwrap();
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
                                if in_ranges(&released, page) {
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
                                        // Woken by the copy of its frame (and
                                        // again once it is reported, in case
                                        // the page was present by then).
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
                                released.push((start & !(PAGE - 1), end));
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
            }
            let released = removed.read().unwrap();
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
            // Frames the workers have copied in.
            let _ = rustix::io::read(&*efd, &mut [0u8; 8]);
            while let Ok(arrived) = rx.try_recv() {
                match arrived {
                    Arrived::Copied { frame, pages } => {
                        stats.pages_copied += pages;
                        done[frame] = true;
                        done_count += 1;
                        for page in waiters.remove(&frame).unwrap_or_default() {
                            if in_ranges(&released, page) {
                                pending_zero.push(page);
                            } else {
                                uffd.wake(page, PAGE);
                            }
                        }
                    }
                    Arrived::FetchFailed { frame, reason } => {
                        break 'outer Err(LazyError {
                            frame_failed: true,
                            ..fail(format!(
                                "fetching frame at offset {} of {}: {reason}",
                                self.frames[frame].0,
                                self.fetcher.describe()
                            ))
                        });
                    }
                    Arrived::CopyFailed(reason) => break 'outer Err(fail(reason)),
                    Arrived::Gone => {
                        stats.exited_early = true;
                        break 'outer Ok(());
                    }
                }
            }
        };
        stop_workers(&shared);
        drop(rx);
        stats.elapsed = self.resumed.elapsed();
        (result.map(|()| stats), workers)
    }
}
