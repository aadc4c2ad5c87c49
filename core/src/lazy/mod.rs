//! Lazy restore: the restored process runs before its private anonymous
//! memory is filled. Its areas are registered with a userfaultfd that
//! belongs to its mm (created by a syscall injected into the stub and taken
//! with `pidfd_getfd`); crstream serves each fault by fetching the one
//! frame that holds the page (and copies the whole frame, so neighbouring
//! pages arrive too), while a background prefetch copies everything else.
//! When every frame is in, the userfaultfd is closed.
//!
//! Before the process runs, restore fills through the same fetcher what
//! userfaultfd cannot serve (file-backed private pages, shared memory) and
//! the pages the kernel writes while the process is rebuilt ([`prepare`]).
//!
//! One thread (the caller of [`LazySession::serve`]) reads faults and
//! events from the userfaultfd and maps zero pages; the fetch workers copy
//! what they fetch into the process themselves, each frame as it arrives,
//! and report it. An event (madvise DONTNEED, munmap) is always recorded
//! before any later copy could land in the range it names ([`copy`]).
//!
//! What cannot be served lazily is refused loudly: mremap of a registered
//! area and fork kill the restored process with an error naming the event,
//! and so does a frame that cannot be fetched after retries. The process
//! never runs on with missing memory.

mod copy;
mod fetch;
mod serve;
mod stream;
mod window;

use crate::error::RestoreError;
use crate::stub::Stub;
use crate::sys::uffd::{self, Userfaultfd};
use crstream_proto::{AreaKind, PageRange, VmArea};
use crstream_streamer::{PAGE_SIZE, PageBatch, StoredFrame};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Features requested: the events this module handles. REMAP and FORK are
/// requested so that they are reported (and refused) instead of silently
/// leaving moved or inherited memory unregistered, which would read zeros.
const FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP;
const PAGE: u64 = PAGE_SIZE as u64;

/// Fetches page frames for the lazy phase (blocking; called from worker
/// threads). The engine knows nothing about where the image lives.
pub trait PageFetcher: Send + Sync + 'static {
    /// The page batches of consecutive frames, each (offset, length with
    /// its header) and starting where the previous one ends, in one
    /// request where the storage allows: one batch per frame, in order.
    fn fetch_run(&self, frames: &[(u64, u64)]) -> Result<Vec<PageBatch>, FetchError>;
    /// The frames, in order, read as one sequential stream that runs ahead
    /// of the caller (blocking iterator), for the prefetch: an object store
    /// serves that with far less work than ranged reads waited for one by
    /// one. Each comes stored, for [`decode`](Self::decode), so that a
    /// frame a fault already brought costs no decompression. None where
    /// ranged reads cost as little (a local file): the prefetch then
    /// fetches runs of frames with [`fetch_run`](Self::fetch_run). Once
    /// `stop` is set, the stream ends (None) without waiting for a read.
    fn stream(
        &self,
        _frames: &[(u64, u64)],
        _stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Option<FrameStream> {
        None
    }
    /// Checks and decompresses a frame [`stream`](Self::stream) gave.
    fn decode(&self, _stored: StoredFrame) -> Result<PageBatch, FetchError> {
        Err(FetchError {
            message: "this storage streams no frames".into(),
            retryable: false,
        })
    }
    /// Where the image lives, for error messages (e.g. its URL).
    fn describe(&self) -> String;
}

/// Frames read ahead, in order (see [`PageFetcher::stream`]).
pub type FrameStream = Box<dyn Iterator<Item = Result<StoredFrame, FetchError>> + Send>;

/// Why a frame could not be fetched.
#[derive(Debug, Clone)]
pub struct FetchError {
    pub message: String,
    /// A failure that may heal (the network, a busy server, a timeout) and
    /// is worth retrying; not a damaged or wrong frame.
    pub retryable: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Tuning of the lazy phase.
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// Prefetch requests at the same time (one more fetch serves faults),
    /// where the storage streams no frames ([`PageFetcher::stream`]).
    pub fetch_threads: usize,
    /// Bytes fetched and not yet copied into the process at most: what
    /// crstream's memory holds beyond its own (~25 MiB). Faults never wait
    /// for room. A streamed prefetch holds its read-ahead instead.
    pub window: u64,
    /// How long a failing frame fetch is retried (100 ms doubling up to
    /// 5 s between attempts) before the restore is given up.
    pub retry_for: Duration,
    /// Pause between two prefetched frames (for tests; zero normally).
    pub prefetch_delay: Duration,
    /// Frames (by offset) written before the process runs, like those of
    /// memory userfaultfd cannot serve: the working set an earlier lazy
    /// restore of the image recorded, so that the process does not wait
    /// for them one fault at a time.
    pub working_set: Vec<u64>,
    /// Faults are recorded as the working set only this long after the
    /// process resumes: its first moments, which a later restore should
    /// not wait for; what it touches later (a request served minutes into
    /// a long prefetch) would only make every later restore slower to run.
    pub record_for: Duration,
}

impl Default for LazyOptions {
    fn default() -> Self {
        Self {
            fetch_threads: 4,
            window: window::DEFAULT_WINDOW,
            retry_for: Duration::from_secs(30),
            prefetch_delay: Duration::ZERO,
            working_set: Vec::new(),
            record_for: Duration::from_secs(2),
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
    /// The prefetch read the frames as one stream ([`PageFetcher::stream`]).
    pub streamed: bool,
    /// The working set: frames (by offset) the process faulted on before
    /// they arrived, in the order of the first fault on each.
    pub working_set: Vec<u64>,
}

/// Why the lazy phase failed; the restored process has been killed.
#[derive(Debug, thiserror::Error)]
#[error("lazy restore of pid {pid} failed: {reason}; the process was killed")]
pub struct LazyError {
    pub pid: i32,
    pub reason: String,
    /// A frame could not be fetched, or was not what the index says (then
    /// the image itself may be damaged).
    pub frame_failed: bool,
}

/// Signals that would end crstream while it serves pages (and so let the
/// restored process run on with missing memory): blocked in every thread by
/// [`block_termination_signals`] and read from a signalfd by
/// [`LazySession::serve`], which then kills the restored process.
fn term_signals() -> u64 {
    use crate::sys::signal::bit;
    bit(libc::SIGINT) | bit(libc::SIGTERM) | bit(libc::SIGHUP)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every
/// thread it creates from now on. Call it at the start of a lazy restore,
/// before any other thread (e.g. an async runtime) is started.
pub fn block_termination_signals() {
    crate::sys::signal::thread_mask(term_signals(), true);
}

/// Undoes [`block_termination_signals`] in the calling thread (after the
/// lazy phase: a pending signal is delivered now).
pub fn unblock_termination_signals() {
    crate::sys::signal::thread_mask(term_signals(), false);
}

/// Whether an area's pages can be served by userfaultfd (MISSING mode
/// covers private anonymous memory).
pub(crate) fn is_lazy_area(a: &VmArea) -> bool {
    a.has_pages
        && matches!(a.kind(), AreaKind::Anon | AreaKind::Heap | AreaKind::Stack)
        && a.flags as i32 & libc::MAP_PRIVATE != 0
        && a.flags as i32 & libc::MAP_SHARED == 0
        && a.flags as i32 & libc::MAP_ANONYMOUS != 0
}

/// What a lazy restore needs besides the metadata: the page index and a
/// way to fetch frames.
pub(crate) struct LazyInput<'a> {
    pub pages: &'a [PageRange],
    pub fetcher: Arc<dyn PageFetcher>,
    pub opts: &'a LazyOptions,
}

/// Before the process runs: checks the index against the memory map and
/// fills, eagerly, the areas that cannot be served lazily and the frames
/// holding `touched` addresses (pages the kernel writes into while the
/// process is rebuilt, such as rseq areas, which must hold their saved
/// contents before that write, as in an eager restore). Returns the pages
/// of the image and the frames filled.
pub(crate) fn prepare(
    stub: &Stub,
    areas: &[VmArea],
    input: &LazyInput<'_>,
    touched: &[u64],
) -> Result<(u64, Vec<u64>), RestoreError> {
    let pid = stub.pid;
    let working_set: std::collections::HashSet<u64> =
        input.opts.working_set.iter().copied().collect();
    let mut pages = 0u64;
    let mut frames: Vec<(u64, u64)> = Vec::new();
    // The image names the process by its saved PID.
    for p in input.pages.iter().filter(|p| p.pid as i32 == stub.vpid) {
        let a = areas
            .get(p.area as usize)
            .ok_or_else(|| RestoreError::Pages {
                pid,
                addr: p.start,
                reason: format!("index names area {} of {}", p.area, areas.len()),
            })?;
        let end = p.start + p.pages * PAGE;
        if p.start < a.start
            || end > a.end
            || !crate::kinds::memory::is_mapped_area(a)
            || !a.has_pages
        {
            return Err(RestoreError::Pages {
                pid,
                addr: p.start,
                reason: format!(
                    "index range of {} pages lies outside area {:#x}-{:#x}",
                    p.pages, a.start, a.end
                ),
            });
        }
        pages += p.pages;
        let hit = touched.iter().any(|&t| t >= p.start && t < end)
            || working_set.contains(&p.frame_offset);
        if (hit || !is_lazy_area(a)) && frames.last() != Some(&(p.frame_offset, p.frame_len as u64))
        {
            frames.push((p.frame_offset, p.frame_len as u64));
        }
    }
    frames.sort_unstable();
    frames.dedup();
    let t0 = std::time::Instant::now();
    fill_frames(stub, areas, input, &frames)?;
    tracing::debug!(
        pid,
        frames = frames.len(),
        bytes = frames.iter().map(|f| f.1).sum::<u64>(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "filled the frames that cannot wait before the process runs"
    );
    Ok((pages, frames.iter().map(|f| f.0).collect()))
}

/// Requests at once for the frames written before the process runs: it
/// waits for all of them, so many are asked for at once (on an object
/// store, one round trip instead of one per few runs), within the window.
const PREFILL_IN_FLIGHT: usize = 32;

/// Fetches `frames` (sorted by offset) and writes them into the stub: runs
/// of consecutive frames in one request each, up to [`PREFILL_IN_FLIGHT`]
/// at a time within the window, each written as soon as it arrives.
fn fill_frames(
    stub: &Stub,
    areas: &[VmArea],
    input: &LazyInput<'_>,
    frames: &[(u64, u64)],
) -> Result<(), RestoreError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pid = stub.pid;
    let runs =
        crstream_streamer::random::consecutive_runs(frames, fetch::RUN_FRAMES, fetch::RUN_BYTES);
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let window = window::Window::new(input.opts.window);
    let first_error: std::sync::Mutex<Option<RestoreError>> = std::sync::Mutex::new(None);
    let fill_run = |run: &[(u64, u64)]| -> Result<(), RestoreError> {
        let _taken = window.take(run.iter().map(|f| f.1).sum());
        let batches =
            fetch::fetch_run_with_retry(&*input.fetcher, run, input.opts.retry_for, Some(&stop))
                .map_err(|e| RestoreError::Pages {
                    pid,
                    addr: 0,
                    reason: format!(
                        "fetching frames at offset {} of {}: {e}",
                        run[0].0,
                        input.fetcher.describe()
                    ),
                })?;
        let writer = crate::kinds::memory::PageWriter::plain();
        for batch in batches {
            if batch.pid as i32 != stub.vpid {
                return Err(RestoreError::Image(format!(
                    "pages of pid {} in the image of {}",
                    batch.pid, stub.vpid
                )));
            }
            writer.fill(pid, &stub.mem, areas, &batch)?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        for _ in 0..PREFILL_IN_FLIGHT.min(runs.len()) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(run) = runs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if let Err(e) = fill_run(run) {
                        // The first failure is the one reported (kept
                        // before the others see `stop` and fail too).
                        first_error.lock().unwrap().get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Safety net before the lazy areas are registered: pages of the image
/// that became present during the rebuild (written by the kernel) would
/// never receive their saved contents (UFFDIO_COPY finds them present).
/// Their frames are filled now, with a warning.
fn fill_touched(
    stub: &Stub,
    areas: &[VmArea],
    input: &LazyInput<'_>,
    filled: &[u64],
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let path = format!("/proc/{pid}/pagemap");
    let pagemap = std::fs::File::open(&path).map_err(|err| RestoreError::Io {
        pid,
        what: format!("opening {path}"),
        err,
    })?;
    let mut present = Vec::new();
    for a in areas.iter().filter(|a| is_lazy_area(a)) {
        let private = crate::kinds::memory::Save::Private;
        match crate::kinds::memory::scan_ioctl(&pagemap, a.start, a.end, private) {
            Ok(runs) => present.extend(runs.pages),
            Err(e) => {
                tracing::debug!(pid, "PAGEMAP_SCAN: {e}; not checking for touched pages");
                return Ok(());
            }
        }
    }
    if present.is_empty() {
        return Ok(());
    }
    let mut frames = Vec::new();
    for p in input.pages.iter().filter(|p| p.pid as i32 == stub.vpid) {
        if filled.contains(&p.frame_offset) {
            continue;
        }
        let end = p.start + p.pages * PAGE;
        if let Some(&(s, _)) = present.iter().find(|&&(s, l)| s < end && s + l > p.start) {
            tracing::warn!(
                pid,
                addr = s,
                "page written during the rebuild; filling its frame before the process runs"
            );
            frames.push((p.frame_offset, p.frame_len as u64));
        }
    }
    frames.sort_unstable();
    frames.dedup();
    fill_frames(stub, areas, input, &frames)
}

/// The userfaultfd of the restored process, set up while it is still a
/// stopped stub; see [`setup`].
pub(crate) struct Prepared {
    uffd: Userfaultfd,
    pidfd: OwnedFd,
}

/// Registers the lazy areas (MISSING mode) with `uffd`, the stub's (see
/// [`take_userfaultfd`](crate::kinds::memory::take_userfaultfd)), after
/// filling the frames of pages the rebuild touched (see
/// [`fill_touched`]). Call this after
/// everything that touches the target's memory: from here on, an access to
/// a page not yet copied blocks until it is served.
pub(crate) fn setup(
    stub: &Stub,
    areas: &[VmArea],
    input: &LazyInput<'_>,
    filled: &[u64],
    uffd: Userfaultfd,
) -> Result<Prepared, RestoreError> {
    fill_touched(stub, areas, input, filled)?;
    let pid = stub.pid;
    let io = |what: &str, err: std::io::Error| RestoreError::Io {
        pid,
        what: what.to_string(),
        err,
    };
    let pidfd = crate::sys::pidfd::open(pid).map_err(|e| io("pidfd_open", e))?;
    let features = uffd.api(FEATURES).map_err(|e| io("UFFDIO_API", e))?;
    if features & FEATURES != FEATURES {
        return Err(RestoreError::Incompatible(format!(
            "userfaultfd lacks features {:#x}",
            FEATURES & !features
        )));
    }
    for a in areas.iter().filter(|a| is_lazy_area(a)) {
        uffd.register_missing(a.start, a.end - a.start)
            .map_err(|err| RestoreError::Mapping {
                pid,
                start: a.start,
                end: a.end,
                path: crate::paths::show(&a.path).into_owned(),
                reason: format!("UFFDIO_REGISTER: {err}"),
            })?;
    }
    Ok(Prepared { uffd, pidfd })
}

/// A restored process whose memory is still arriving: call
/// [`serve`](Self::serve) right away. Dropping it unserved kills the
/// process.
pub struct LazySession {
    pid: i32,
    uffd: Option<Arc<Userfaultfd>>,
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
    /// The process's own parent-death signal, set again once its memory is
    /// complete (until then it is SIGKILL: it dies with crstream).
    death_signal: u32,
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
            crate::sys::ptrace::kill_and_reap(self.pid);
        }
    }
}

impl LazySession {
    /// `pid`: the process as crstream sees it; `image_pid`: as the image
    /// names it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pid: i32,
        image_pid: i32,
        prepared: Prepared,
        areas: &[VmArea],
        pages: &[PageRange],
        filled: &[u64],
        fetcher: Arc<dyn PageFetcher>,
        death_signal: u32,
    ) -> Self {
        let filled: std::collections::HashSet<u64> = filled.iter().copied().collect();
        let mut frames: Vec<(u64, u64)> = Vec::new();
        let mut frame_idx: HashMap<u64, usize> = HashMap::new();
        let mut ranges = Vec::new();
        for p in pages {
            let Some(a) = areas.get(p.area as usize) else {
                continue;
            };
            // Frames written before the process ran are in already: a
            // fault in one (a page it released since) gets a zero page.
            if p.pid as i32 != image_pid || !is_lazy_area(a) || filled.contains(&p.frame_offset) {
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
            uffd: Some(Arc::new(prepared.uffd)),
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
            death_signal,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Frames still to fetch.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Once every page is in: the process's own parent-death signal again,
    /// set from inside it while it is briefly frozen.
    fn restore_death_signal(&self) -> Result<(), String> {
        let pid = self.pid;
        let err = |e: &dyn std::fmt::Display| format!("setting its parent-death signal again: {e}");
        // It may end meanwhile (exiting as it is seized, or killed while
        // frozen): its status is its next parent's.
        let _keep = crate::sys::ptrace::KeepExit::of(pid);
        let mut frozen = crate::freeze::Frozen::freeze(pid).map_err(|e| err(&e))?;
        // The process is held under ptrace: a kill now leaves its threads
        // zombies that only we can collect.
        crate::failpoint::pause("lazy-frozen-at-end");
        // What the call writes below its stack pointer is put back.
        let mem = crate::inject::RemoteMem::open(pid, true)
            .map_err(|e| err(&e))?
            .journaled();
        // One call: its frame stays where it is first placed, and is put
        // back right after.
        mem.keep_escapes_in_place();
        let ip = crate::inject::syscall_site(pid, &mem).map_err(|e| err(&e))?;
        let gadgets = crate::escape::Gadgets::find(pid, &mem);
        let leader = &mut frozen.threads[0];
        let below = leader.regs.rsp - 128;
        leader
            .remote(ip, gadgets.as_ref(), &mem, below)
            .call(
                "prctl(PR_SET_PDEATHSIG)",
                libc::SYS_prctl,
                &[libc::PR_SET_PDEATHSIG as u64, self.death_signal as u64],
            )
            .map_err(|e| err(&e))?;
        mem.put_back(pid)
            .map_err(|e| format!("putting back the memory below its stack: {e}"))
    }

    fn frame_of(&self, addr: u64) -> Option<usize> {
        let pos = self.ranges.partition_point(|r| r.0 <= addr);
        let r = self.ranges.get(pos.checked_sub(1)?)?;
        (addr < r.1).then_some(r.2)
    }
}
