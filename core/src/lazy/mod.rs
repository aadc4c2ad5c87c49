//! Lazy restore: the restored process runs before its private anonymous
//! memory is filled. Its areas are registered with a userfaultfd that
//! belongs to its mm (created by a syscall injected into the stub and taken
//! with `pidfd_getfd`); crstream serves each fault by fetching the one
//! frame that holds the page (and copies the whole frame, so neighbouring
//! pages arrive too), while a background prefetch copies everything else.
//! When every frame is in, the userfaultfd is closed.
//!
//! One thread (the caller of [`LazySession::serve`]) owns the userfaultfd:
//! it reads faults and events and does every copy, so an event (madvise
//! DONTNEED, munmap) is always recorded before any later copy could land in
//! the range it names. Fetch workers only fetch and hand batches over.
//!
//! What cannot be served lazily is refused loudly: mremap of a registered
//! area and fork kill the restored process with an error naming the event,
//! and so does a frame that cannot be fetched after retries. The process
//! never runs on with missing memory.

use crate::error::RestoreError;
use crate::stub::Stub;
use crstream_proto::{AreaKind, PageRange, VmArea};
use crstream_streamer::{PAGE_SIZE, PageBatch};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

// linux/userfaultfd.h
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
/// Features requested: the events this module handles. REMAP and FORK are
/// requested so that they are reported (and refused) instead of silently
/// leaving moved or inherited memory unregistered, which would read zeros.
const FEATURES: u64 = UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP;
const MSG_LEN: usize = 32;
const PAGE: u64 = PAGE_SIZE as u64;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// Fetches page frames for the lazy phase (blocking; called from worker
/// threads). The engine knows nothing about where the image lives.
pub trait PageFetcher: Send + Sync + 'static {
    /// The page batch of the frame at `offset` (`len` bytes with header).
    fn fetch(&self, offset: u64, len: u64) -> Result<PageBatch, String>;
    /// Where the image lives, for error messages (e.g. its URL).
    fn describe(&self) -> String;
}

/// Tuning of the lazy phase.
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// Frames fetched at the same time.
    pub fetch_threads: usize,
    /// How long a failing frame fetch is retried (100 ms doubling up to
    /// 5 s between attempts) before the restore is given up.
    pub retry_for: Duration,
    /// Pause between two prefetched frames (for tests; zero normally).
    pub prefetch_delay: Duration,
}

impl Default for LazyOptions {
    fn default() -> Self {
        Self {
            fetch_threads: 4,
            retry_for: Duration::from_secs(30),
            prefetch_delay: Duration::ZERO,
        }
    }
}

/// What the lazy phase did.
#[derive(Debug, Clone, Default)]
pub struct LazyStats {
    pub frames: usize,
    pub pages_copied: u64,
    pub faults: u64,
    pub zero_pages: u64,
    /// From resume until every frame was in.
    pub elapsed: Duration,
    /// The process exited before every page arrived.
    pub exited_early: bool,
}

/// Why the lazy phase failed; the restored process has been killed.
#[derive(Debug, thiserror::Error)]
#[error("lazy restore of pid {pid} failed: {reason}; the process was killed")]
pub struct LazyError {
    pub pid: i32,
    pub reason: String,
}

/// Signals that would end crstream while it serves pages (and so let the
/// restored process run on with missing memory): blocked in every thread by
/// [`block_termination_signals`] and read from a signalfd by
/// [`LazySession::serve`], which then kills the restored process.
const TERM_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn term_sigset() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in TERM_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every
/// thread it creates from now on. Call it at the start of a lazy restore,
/// before any other thread (e.g. an async runtime) is started.
pub fn block_termination_signals() {
    let set = term_sigset();
    // SAFETY: changes the calling thread's signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Undoes [`block_termination_signals`] in the calling thread (after the
/// lazy phase: a pending signal is delivered now).
pub fn unblock_termination_signals() {
    let set = term_sigset();
    // SAFETY: changes the calling thread's signal mask.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Whether an area's pages can be served by userfaultfd (MISSING mode
/// covers private anonymous memory).
pub fn is_lazy_area(a: &VmArea) -> bool {
    a.has_pages
        && matches!(a.kind(), AreaKind::Anon | AreaKind::Heap | AreaKind::Stack)
        && a.flags as i32 & libc::MAP_PRIVATE != 0
        && a.flags as i32 & libc::MAP_SHARED == 0
        && a.flags as i32 & libc::MAP_ANONYMOUS != 0
}

/// Fetches a frame, retrying with backoff for `retry_for`.
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
            Err(e) => {
                let left = retry_for.saturating_sub(t0.elapsed());
                if left.is_zero() || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return Err(e);
                }
                tracing::warn!(offset, "fetching frame failed ({e}); retrying in {wait:?}");
                std::thread::sleep(wait.min(left));
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn ioctl<T>(fd: RawFd, req: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the #[repr(C)] structure the request expects.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The userfaultfd of the restored process, set up while it is still a
/// stopped stub; see [`setup`].
pub(crate) struct Prepared {
    pub uffd: OwnedFd,
    pub pidfd: OwnedFd,
}

/// Creates a userfaultfd in the stub's mm, takes it into crstream and
/// registers the lazy areas (MISSING mode). Call this after everything
/// that touches the target's memory: from here on, an access to a page
/// not yet copied blocks until it is served.
pub(crate) fn setup(stub: &Stub, areas: &[VmArea]) -> Result<Prepared, RestoreError> {
    let pid = stub.pid;
    let io = |what: &str, err: std::io::Error| RestoreError::Io {
        pid,
        what: what.to_string(),
        err,
    };
    let tfd = stub.call(
        "userfaultfd",
        libc::SYS_userfaultfd,
        &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64],
    )?;
    // SAFETY: pidfd_open on our own child; returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io("pidfd_open", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd duplicates the target's fd into ours (CLOEXEC).
    let ufd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), tfd, 0) };
    let got = std::io::Error::last_os_error();
    stub.call("close(userfaultfd)", libc::SYS_close, &[tfd as u64])?;
    if ufd < 0 {
        return Err(io("pidfd_getfd of the userfaultfd", got));
    }
    // SAFETY: a fresh fd we own.
    let uffd = unsafe { OwnedFd::from_raw_fd(ufd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: FEATURES,
        ioctls: 0,
    };
    ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api).map_err(|e| io("UFFDIO_API", e))?;
    if api.features & FEATURES != FEATURES {
        return Err(RestoreError::Incompatible(format!(
            "userfaultfd lacks features {:#x}",
            FEATURES & !api.features
        )));
    }
    for a in areas.iter().filter(|a| is_lazy_area(a)) {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: a.start,
                len: a.end - a.start,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg).map_err(|err| {
            RestoreError::Mapping {
                pid,
                start: a.start,
                end: a.end,
                path: a.path.clone(),
                reason: format!("UFFDIO_REGISTER: {err}"),
            }
        })?;
    }
    Ok(Prepared { uffd, pidfd })
}

/// A restored process whose memory is still arriving: call
/// [`serve`](Self::serve) right away. Dropping it unserved kills the
/// process.
pub struct LazySession {
    pid: i32,
    uffd: Option<OwnedFd>,
    pidfd: OwnedFd,
    /// Lazy page ranges (start, end, frame index), sorted by start.
    ranges: Vec<(u64, u64, usize)>,
    /// Frames (offset, len), in index order.
    frames: Vec<(u64, u64)>,
    /// Lazy areas (start, end).
    areas: Vec<(u64, u64)>,
    fetcher: Arc<dyn PageFetcher>,
    resumed: Instant,
    armed: bool,
}

impl std::fmt::Debug for LazySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySession")
            .field("pid", &self.pid)
            .field("frames", &self.frames.len())
            .finish()
    }
}

impl Drop for LazySession {
    fn drop(&mut self) {
        if self.armed {
            crate::ptrace::kill_and_reap(self.pid);
        }
    }
}

impl LazySession {
    pub(crate) fn new(
        pid: i32,
        prepared: Prepared,
        areas: &[VmArea],
        pages: &[PageRange],
        fetcher: Arc<dyn PageFetcher>,
    ) -> Self {
        let mut frames: Vec<(u64, u64)> = Vec::new();
        let mut frame_idx: HashMap<u64, usize> = HashMap::new();
        let mut ranges = Vec::new();
        for p in pages {
            let Some(a) = areas.get(p.area as usize) else {
                continue;
            };
            if p.pid as i32 != pid || !is_lazy_area(a) {
                continue;
            }
            let i = *frame_idx.entry(p.frame_offset).or_insert_with(|| {
                frames.push((p.frame_offset, p.frame_len as u64));
                frames.len() - 1
            });
            ranges.push((p.start, p.start + p.pages * PAGE, i));
        }
        ranges.sort_unstable();
        Self {
            pid,
            uffd: Some(prepared.uffd),
            pidfd: prepared.pidfd,
            ranges,
            frames,
            areas: areas
                .iter()
                .filter(|a| is_lazy_area(a))
                .map(|a| (a.start, a.end))
                .collect(),
            fetcher,
            resumed: Instant::now(),
            armed: true,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Frames still to fetch.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    fn frame_of(&self, addr: u64) -> Option<usize> {
        let pos = self.ranges.partition_point(|r| r.0 <= addr);
        let r = self.ranges.get(pos.checked_sub(1)?)?;
        (addr < r.1).then_some(r.2)
    }

    /// Serves faults and prefetches until every frame is in (or the process
    /// exits), then closes the userfaultfd. On failure the process is
    /// killed (and reaped) before this returns.
    pub fn serve(mut self, opts: &LazyOptions) -> Result<LazyStats, LazyError> {
        self.resumed = Instant::now();
        let r = self.serve_inner(opts);
        if let Err(e) = &r {
            tracing::debug!("{e}");
            crate::ptrace::kill_and_reap(self.pid);
        }
        // Closing the userfaultfd unregisters every area; only after the
        // kill above, so that no faulting thread runs on with a zero page.
        self.uffd = None;
        self.armed = false;
        r
    }

    fn serve_inner(&mut self, opts: &LazyOptions) -> Result<LazyStats, LazyError> {
        let pid = self.pid;
        let fail = |reason: String| LazyError { pid, reason };
        let n = self.frames.len();
        let mut stats = LazyStats {
            frames: n,
            ..Default::default()
        };
        // SAFETY: eventfd with no preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(fail(format!(
                "eventfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: a fresh fd we own.
        let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let set = term_sigset();
        // SAFETY: a signalfd for the blocked termination signals.
        let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if sfd < 0 {
            return Err(fail(format!(
                "signalfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: a fresh fd we own.
        let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                urgent: VecDeque::new(),
                next: 0,
                next_prefetch_at: Instant::now(),
            }),
            cv: Condvar::new(),
            claimed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        // Bounded: a worker that is ahead of the copies waits, so fetched
        // but uncopied frames never hold more than a few frames of memory.
        let (tx, rx) =
            mpsc::sync_channel::<(usize, Result<PageBatch, String>)>(opts.fetch_threads.max(1));
        let mut workers = Vec::new();
        for _ in 0..opts.fetch_threads.max(1).min(n.max(1)) {
            let shared = shared.clone();
            let tx = tx.clone();
            let efd = efd.clone();
            let fetcher = self.fetcher.clone();
            let frames = self.frames.clone();
            let opts = opts.clone();
            workers.push(std::thread::spawn(move || {
                worker(&shared, &frames, &*fetcher, &opts, &tx, efd.as_raw_fd())
            }));
        }
        drop(tx);
        let stop_workers = |shared: &Shared| {
            shared.stop.store(true, Ordering::Relaxed);
            shared.cv.notify_all();
        };
        let uffd = self.uffd.as_ref().unwrap().as_raw_fd();
        let mut done = vec![false; n];
        let mut done_count = 0usize;
        let mut waiters: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut removed: Vec<(u64, u64)> = Vec::new();
        let mut pending: VecDeque<(usize, PageBatch)> = VecDeque::new();
        let mut pending_zero: Vec<u64> = Vec::new();
        let result = 'outer: loop {
            if done_count == n && pending.is_empty() && pending_zero.is_empty() {
                break Ok(());
            }
            let mut fds = [
                libc::pollfd {
                    fd: uffd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: efd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = if pending.is_empty() && pending_zero.is_empty() {
                1000
            } else {
                5
            };
            // SAFETY: four valid pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 4, timeout) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(fail(format!("poll: {e}")));
            }
            if fds[3].revents != 0 {
                let mut info = [0u8; 128];
                // SAFETY: reading one signalfd_siginfo into a local buffer.
                unsafe { libc::read(sfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
                let signo = u32::from_le_bytes(info[..4].try_into().unwrap());
                break Err(fail(format!(
                    "crstream received signal {signo} while pages were still missing"
                )));
            }
            if fds[1].revents != 0 {
                tracing::info!(pid, "the process exited during the lazy phase");
                stats.exited_early = true;
                break Ok(());
            }
            // Faults and events first: a copy must never land in a range
            // an event has just released.
            let mut msg = [0u8; MSG_LEN * 16];
            loop {
                // SAFETY: reading into a local buffer.
                let got = unsafe { libc::read(uffd, msg.as_mut_ptr().cast(), msg.len()) };
                if got < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::EINTR) => continue,
                        _ => break 'outer Err(fail(format!("reading the userfaultfd: {e}"))),
                    }
                }
                if got == 0 {
                    break;
                }
                for m in msg[..got as usize].chunks_exact(MSG_LEN) {
                    let word =
                        |i: usize| u64::from_le_bytes(m[8 + 8 * i..16 + 8 * i].try_into().unwrap());
                    match m[0] {
                        UFFD_EVENT_PAGEFAULT => {
                            stats.faults += 1;
                            let page = word(1) & !(PAGE - 1);
                            if in_ranges(&removed, page) {
                                pending_zero.push(page);
                                continue;
                            }
                            match self.frame_of(page) {
                                None => pending_zero.push(page),
                                Some(f) if done[f] => wake(uffd, page),
                                Some(f) => {
                                    waiters.entry(f).or_default().push(page);
                                    if !shared.claimed[f].load(Ordering::Relaxed) {
                                        shared.queue.lock().unwrap().urgent.push_back(f);
                                        shared.cv.notify_one();
                                    }
                                }
                            }
                        }
                        UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => {
                            let (s, e) = (word(0), word(1));
                            tracing::debug!(pid, start = s, end = e, "range released");
                            removed.push((s & !(PAGE - 1), e));
                        }
                        UFFD_EVENT_REMAP => {
                            break 'outer Err(fail(format!(
                                "the process moved memory with mremap ({:#x} -> {:#x}, {} bytes) \
                                 while it was being restored lazily (userfaultfd REMAP event): not supported",
                                word(0),
                                word(1),
                                word(2)
                            )));
                        }
                        UFFD_EVENT_FORK => {
                            let child = word(0) as u32 as RawFd;
                            // SAFETY: the kernel installed this fd in our table for us.
                            unsafe { libc::close(child) };
                            break 'outer Err(fail(
                                "the process forked while it was being restored lazily \
                                 (userfaultfd FORK event): not supported"
                                    .into(),
                            ));
                        }
                        other => {
                            tracing::warn!(pid, event = other, "unknown userfaultfd event");
                        }
                    }
                }
            }
            // Zero pages for faults outside the image (or released ranges).
            let mut again = Vec::new();
            for page in pending_zero.drain(..) {
                match zeropage(uffd, page) {
                    Ok(()) => stats.zero_pages += 1,
                    Err(Some(libc::EAGAIN)) => again.push(page),
                    Err(Some(libc::ESRCH)) => {
                        stats.exited_early = true;
                        break 'outer Ok(());
                    }
                    Err(_) => wake(uffd, page),
                }
            }
            pending_zero = again;
            // Arrived frames.
            let mut buf = 0u64;
            // SAFETY: reading the eventfd counter into a local.
            unsafe { libc::read(efd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
            loop {
                match rx.try_recv() {
                    Ok((f, Ok(batch))) => pending.push_back((f, batch)),
                    Ok((f, Err(e))) => {
                        break 'outer Err(fail(format!(
                            "fetching frame at offset {} of {}: {e}",
                            self.frames[f].0,
                            self.fetcher.describe()
                        )));
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
                                wake(uffd, page);
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
        stats.elapsed = self.resumed.elapsed();
        if result.is_ok() {
            for w in workers {
                let _ = w.join();
            }
        }
        result.map(|()| stats)
    }

    /// Copies the runs of a batch that lie in lazy areas and outside
    /// released ranges. `Again` carries what is left when the kernel asks
    /// to retry after reading pending events.
    fn copy_batch(&self, uffd: RawFd, batch: &PageBatch, removed: &[(u64, u64)]) -> Copy {
        let mut copied = 0u64;
        let mut left_runs = Vec::new();
        let mut left_data = Vec::new();
        let mut again = false;
        for (run, data) in batch.runs_with_data() {
            if again {
                left_runs.push(run);
                left_data.extend_from_slice(data);
                continue;
            }
            let inside = self
                .areas
                .iter()
                .any(|&(s, e)| run.start >= s && run.end() <= e);
            if !inside {
                tracing::warn!(
                    start = run.start,
                    "page run outside the lazy areas; skipped"
                );
                continue;
            }
            for (s, e) in subtract(run.start, run.end(), removed) {
                let off = (s - run.start) as usize;
                match copy_range(uffd, s, &data[off..off + (e - s) as usize]) {
                    Ok(n) => copied += n,
                    Err(CopyErr::Again(at, n)) => {
                        copied += n;
                        // Keep the rest of this run (from `at`) and later runs.
                        let o = (at - run.start) as usize;
                        left_runs.push(crstream_streamer::PageRun {
                            start: at,
                            pages: (run.end() - at) / PAGE,
                        });
                        left_data.extend_from_slice(&data[o..]);
                        again = true;
                        break;
                    }
                    Err(CopyErr::Gone) => return Copy::Gone,
                    Err(CopyErr::Other(e)) => {
                        return Copy::Failed(format!("UFFDIO_COPY at {s:#x}: {e}"));
                    }
                }
            }
        }
        if again {
            Copy::Again(
                PageBatch {
                    pid: batch.pid,
                    area: batch.area,
                    runs: left_runs,
                    data: left_data.into(),
                },
                copied,
            )
        } else {
            Copy::Done(copied)
        }
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
fn copy_range(uffd: RawFd, dst: u64, data: &[u8]) -> Result<u64, CopyErr> {
    let end = dst + data.len() as u64;
    let mut at = dst;
    let mut pages = 0u64;
    while at < end {
        let off = (at - dst) as usize;
        let mut c = UffdioCopy {
            dst: at,
            src: data[off..].as_ptr() as u64,
            len: end - at,
            mode: 0,
            copy: 0,
        };
        match ioctl(uffd, UFFDIO_COPY, &mut c) {
            Ok(()) => {
                pages += (end - at) / PAGE;
                at = end;
            }
            Err(e) => {
                if c.copy > 0 {
                    pages += c.copy as u64 / PAGE;
                    at += c.copy as u64;
                    continue;
                }
                match e.raw_os_error() {
                    // Already there (or gone since): skip that page.
                    Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::EFAULT) => {
                        wake(uffd, at);
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

fn zeropage(uffd: RawFd, page: u64) -> Result<(), Option<i32>> {
    let mut z = UffdioZeropage {
        range: UffdioRange {
            start: page,
            len: PAGE,
        },
        mode: 0,
        zeropage: 0,
    };
    ioctl(uffd, UFFDIO_ZEROPAGE, &mut z).map_err(|e| e.raw_os_error())
}

fn wake(uffd: RawFd, page: u64) {
    let mut r = UffdioRange {
        start: page,
        len: PAGE,
    };
    let _ = ioctl(uffd, UFFDIO_WAKE, &mut r);
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

struct Queue {
    urgent: VecDeque<usize>,
    next: usize,
    next_prefetch_at: Instant,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    claimed: Vec<AtomicBool>,
    stop: AtomicBool,
}

fn worker(
    shared: &Shared,
    frames: &[(u64, u64)],
    fetcher: &dyn PageFetcher,
    opts: &LazyOptions,
    tx: &mpsc::SyncSender<(usize, Result<PageBatch, String>)>,
    efd: RawFd,
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
        let one = 1u64;
        // SAFETY: writing the eventfd counter from a local.
        unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
    }
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
