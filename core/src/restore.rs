//! Restore orchestration: read the metadata, create the stub with the saved
//! PID, rebuild memory, files, process and thread state by injected
//! syscalls, set registers last and let it run.

use crate::error::RestoreError;
use crate::ptrace;
use crate::stub::{self, TRAMP_LEN};
use crate::{RestoreOptions, Restored, lazy, memory, threads};
use crstream_proto::{
    FileTable, Inventory, MemoryMap, PageRange, ProcessCore, ProcessTree, SignalState, ThreadCore,
    record::Body,
};
use crstream_streamer::{ImageSource, Item, PAGE_SIZE};
use std::collections::HashMap;
use std::time::Instant;

/// The metadata of one image, collected up to the end-of-metadata frame.
#[derive(Default)]
struct Image {
    inventory: Option<Inventory>,
    tree: Option<ProcessTree>,
    core: Option<ProcessCore>,
    mm: Option<MemoryMap>,
    files: Option<FileTable>,
    signals: Option<SignalState>,
    threads: Vec<ThreadCore>,
    blobs: HashMap<u32, Vec<u8>>,
}

fn missing(what: &str) -> RestoreError {
    RestoreError::Image(format!("missing {what} record"))
}

fn read_metadata(source: &mut dyn ImageSource) -> Result<Image, RestoreError> {
    let mut img = Image::default();
    loop {
        match source.next_item()? {
            None | Some(Item::End { .. }) => {
                return Err(RestoreError::Image(
                    "the image ends before the end of metadata".into(),
                ));
            }
            Some(Item::MetadataEnd) => return Ok(img),
            Some(Item::Blob { stream_id, data }) => img
                .blobs
                .entry(stream_id)
                .or_default()
                .extend_from_slice(&data),
            Some(Item::Pages { .. }) => {
                return Err(RestoreError::Image(
                    "pages before the end of metadata".into(),
                ));
            }
            Some(Item::Record { body, .. }) => match body {
                Body::Inventory(i) => img.inventory = Some(i),
                Body::ProcessTree(t) => img.tree = Some(t),
                Body::ProcessCore(c) => {
                    if img.core.is_some() {
                        return Err(RestoreError::Image(
                            "more than one process: not supported yet".into(),
                        ));
                    }
                    img.core = Some(c)
                }
                Body::MemoryMap(m) => img.mm = Some(m),
                Body::FileTable(f) => img.files = Some(f),
                Body::SignalState(s) => img.signals = Some(s),
                Body::ThreadCore(t) => img.threads.push(t),
                Body::StreamDecl(_) | Body::BlobInfo(_) => {}
            },
        }
    }
}

/// What a lazy restore needs besides the metadata: the page index and a
/// way to fetch frames.
pub(crate) struct LazyInput<'a> {
    pub pages: &'a [PageRange],
    pub fetcher: std::sync::Arc<dyn lazy::PageFetcher>,
    pub opts: &'a lazy::LazyOptions,
}

pub fn restore(
    source: &mut dyn ImageSource,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    restore_inner(source, opts, None).map(|(r, _)| r)
}

pub(crate) fn restore_lazy(
    source: &mut dyn ImageSource,
    opts: &RestoreOptions,
    input: LazyInput<'_>,
) -> Result<(Restored, lazy::LazySession), RestoreError> {
    let (r, s) = restore_inner(source, opts, Some(&input))?;
    Ok((r, s.expect("lazy session")))
}

/// Lazy mode, before the process runs: checks the index against the memory
/// map and fills the areas that cannot be served lazily. Returns the pages
/// of the image.
/// Also fills, eagerly, the frames holding `touched` addresses: pages the
/// kernel writes into while the process is rebuilt (rseq areas), which
/// must hold their saved contents before that write, as in an eager
/// restore. Returns the pages of the image and the frames filled.
fn fill_eager(
    stub: &stub::Stub,
    pid: i32,
    areas: &[crstream_proto::VmArea],
    input: &LazyInput<'_>,
    touched: &[u64],
) -> Result<(u64, Vec<u64>), RestoreError> {
    let mut pages = 0u64;
    let mut frames: Vec<(u64, u64)> = Vec::new();
    for p in input.pages.iter().filter(|p| p.pid as i32 == pid) {
        let a = areas
            .get(p.area as usize)
            .ok_or_else(|| RestoreError::Pages {
                pid,
                addr: p.start,
                reason: format!("index names area {} of {}", p.area, areas.len()),
            })?;
        let end = p.start + p.pages * PAGE_SIZE as u64;
        if p.start < a.start || end > a.end || !memory::is_mapped_area(a) || !a.has_pages {
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
        let hit = touched.iter().any(|&t| t >= p.start && t < end);
        if (hit || !lazy::is_lazy_area(a))
            && frames.last() != Some(&(p.frame_offset, p.frame_len as u64))
        {
            frames.push((p.frame_offset, p.frame_len as u64));
        }
    }
    frames.sort_unstable();
    frames.dedup();
    fill_frames(stub, pid, areas, input, &frames)?;
    Ok((pages, frames.iter().map(|f| f.0).collect()))
}

fn fill_frames(
    stub: &stub::Stub,
    pid: i32,
    areas: &[crstream_proto::VmArea],
    input: &LazyInput<'_>,
    frames: &[(u64, u64)],
) -> Result<(), RestoreError> {
    for &(offset, len) in frames {
        let batch =
            lazy::fetch_with_retry(&*input.fetcher, offset, len, input.opts.retry_for, None)
                .map_err(|e| RestoreError::Pages {
                    pid,
                    addr: 0,
                    reason: format!(
                        "fetching frame at offset {offset} of {}: {e}",
                        input.fetcher.describe()
                    ),
                })?;
        if batch.pid as i32 != pid {
            return Err(RestoreError::Image(format!(
                "pages of pid {} in the image of {pid}",
                batch.pid
            )));
        }
        memory::fill(pid, &stub.mem, areas, &batch)?;
    }
    Ok(())
}

/// Safety net before the lazy areas are registered: pages of the image
/// that became present during the rebuild (written by the kernel) would
/// never receive their saved contents (UFFDIO_COPY finds them present).
/// Their frames are filled now, with a warning.
fn fill_touched(
    stub: &stub::Stub,
    pid: i32,
    areas: &[crstream_proto::VmArea],
    input: &LazyInput<'_>,
    filled: &[u64],
) -> Result<(), RestoreError> {
    let path = format!("/proc/{pid}/pagemap");
    let pagemap = std::fs::File::open(&path).map_err(|err| RestoreError::Io {
        pid,
        what: format!("opening {path}"),
        err,
    })?;
    let mut present = Vec::new();
    for a in areas.iter().filter(|a| lazy::is_lazy_area(a)) {
        match memory::scan_ioctl(&pagemap, a.start, a.end, memory::Save::Private) {
            Ok(runs) => present.extend(runs),
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
    for p in input.pages.iter().filter(|p| p.pid as i32 == pid) {
        if filled.contains(&p.frame_offset) {
            continue;
        }
        let end = p.start + p.pages * PAGE_SIZE as u64;
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
    fill_frames(stub, pid, areas, input, &frames)
}

fn restore_inner(
    source: &mut dyn ImageSource,
    _opts: &RestoreOptions,
    lazy_input: Option<&LazyInput<'_>>,
) -> Result<(Restored, Option<lazy::LazySession>), RestoreError> {
    let t0 = Instant::now();
    let img = read_metadata(source)?;
    let inv = img.inventory.as_ref().ok_or_else(|| missing("Inventory"))?;
    if inv.arch != "x86_64" || inv.page_size as usize != PAGE_SIZE {
        return Err(RestoreError::Incompatible(format!(
            "image of {} with {}-byte pages",
            inv.arch, inv.page_size
        )));
    }
    let tree = img.tree.as_ref().ok_or_else(|| missing("ProcessTree"))?;
    if tree.processes.len() != 1 {
        return Err(RestoreError::Image(format!(
            "{} processes in the tree: only one is supported",
            tree.processes.len()
        )));
    }
    let core = img.core.as_ref().ok_or_else(|| missing("ProcessCore"))?;
    let mm = img.mm.as_ref().ok_or_else(|| missing("MemoryMap"))?;
    let pid = core.pid as i32;
    let entry = &tree.processes[0];
    if entry.pid != core.pid || mm.pid != core.pid {
        return Err(RestoreError::Image("records of different processes".into()));
    }
    let mut cores: Vec<&ThreadCore> = Vec::new();
    for &tid in &entry.threads {
        cores.push(
            img.threads
                .iter()
                .find(|t| t.tid == tid)
                .ok_or_else(|| missing(&format!("ThreadCore of tid {tid}")))?,
        );
    }
    if cores.first().map(|t| t.tid) != Some(core.pid) {
        return Err(RestoreError::Image(
            "the thread list does not start with the leader".into(),
        ));
    }
    if crate::proc::pid_exists(pid) {
        return Err(RestoreError::PidInUse { pid });
    }
    for t in &cores[1..] {
        if crate::proc::pid_exists(t.tid as i32) {
            return Err(RestoreError::TidInUse {
                pid,
                tid: t.tid as i32,
            });
        }
    }
    if let Some(c) = &core.creds {
        crate::creds::check(pid, c)?;
    }
    let mm_fields = core.mm.as_ref().ok_or_else(|| missing("MmFields"))?;
    // Files that changed in a way that would corrupt the process are
    // refused before anything is created.
    memory::check_files(pid, &mm.areas)?;
    let empty = FileTable::default();
    let files = img.files.as_ref().unwrap_or(&empty);
    crate::files::check(pid, files)?;
    let fail_at = crate::dump::test_fail_point();

    let mut guard = stub::spawn(pid)?;
    let stub = stub::prepare(&guard, &mm.areas)?;
    // First: everything after may depend on the session (e.g. a tty).
    crate::session::restore(&stub, entry)?;
    memory::map_areas(&stub, &mm.areas)?;

    // Page data follows the metadata (lazy: only what cannot wait).
    let mut pages = 0u64;
    let mut filled = Vec::new();
    if let Some(input) = lazy_input {
        let rseq: Vec<u64> = cores
            .iter()
            .filter_map(|t| t.rseq.as_ref())
            .flat_map(|r| [r.addr, r.addr + (r.len as u64).max(1) - 1])
            .collect();
        let (n, f) = fill_eager(&stub, pid, &mm.areas, input, &rseq)?;
        pages = n;
        filled = f;
    }
    while lazy_input.is_none() {
        match source.next_item()? {
            Some(Item::Pages { batch, .. }) => {
                if batch.pid != core.pid {
                    return Err(RestoreError::Image(format!(
                        "pages of pid {} in the image of {pid}",
                        batch.pid
                    )));
                }
                pages += memory::fill(pid, &stub.mem, &mm.areas, &batch)?;
            }
            Some(Item::End { .. }) => break,
            None => {
                return Err(RestoreError::Image(
                    "the image ends without its index".into(),
                ));
            }
            Some(_) => {
                return Err(RestoreError::Image(
                    "unexpected item among page data".into(),
                ));
            }
        }
    }
    if pages != mm.pages_total {
        return Err(RestoreError::Image(format!(
            "the image holds {pages} pages, the memory map announces {}",
            mm.pages_total
        )));
    }
    memory::finish(&stub, &mm.areas)?;

    // Process-wide state.
    let _tmp_files = crate::files::restore(&stub, files, &img.blobs)?;
    let io = |what: String| {
        move |e: crate::error::TaskError| RestoreError::Io {
            pid,
            what,
            err: std::io::Error::other(e.to_string()),
        }
    };
    let p = stub.put_path(&core.cwd)?;
    stub.call("chdir", libc::SYS_chdir, &[p])
        .map_err(io(format!("chdir to {}", core.cwd)))?;
    if core.root != "/" {
        let p = stub.put_path(&core.root)?;
        stub.call("chroot", libc::SYS_chroot, &[p])
            .map_err(io(format!("chroot to {}", core.root)))?;
    }
    stub.call("umask", libc::SYS_umask, &[core.umask as u64])?;
    stub.call(
        "personality",
        libc::SYS_personality,
        &[core.personality as u64],
    )?;
    for r in &core.rlimits {
        let new = libc::rlimit64 {
            rlim_cur: r.cur,
            rlim_max: r.max,
        };
        // SAFETY: prlimit64 on our child with a local struct.
        if unsafe { libc::prlimit64(pid, r.resource as _, &new, std::ptr::null_mut()) } != 0 {
            tracing::warn!(
                pid,
                resource = r.resource,
                "setting rlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    crate::signals::restore_actions(
        &stub,
        img.signals.as_ref().unwrap_or(&SignalState::default()),
    )?;
    crate::timers::restore(
        &stub,
        [&core.itimer_real, &core.itimer_virtual, &core.itimer_prof],
    )?;
    crate::mm::restore(&stub, mm_fields)?;
    if core.pdeath_signal != 0 {
        stub.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            &[libc::PR_SET_PDEATHSIG as u64, core.pdeath_signal as u64],
        )?;
    }
    if core.child_subreaper != 0 {
        stub.call(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            &[libc::PR_SET_CHILD_SUBREAPER as u64, 1],
        )?;
    }
    if core.creds.as_ref().is_some_and(|c| c.no_new_privs) {
        stub.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        )?;
    }

    // Threads.
    let mut remotes = Vec::new();
    for t in &cores[1..] {
        let tid = t.tid as i32;
        let r = threads::create(&stub, tid)?;
        guard.tids.push(tid);
        threads::restore_state(&stub, &r, t)?;
        remotes.push(r);
    }
    threads::restore_state(&stub, &stub.leader, cores[0])?;
    if fail_at.as_deref() == Some("restore") {
        return Err(RestoreError::TestFailure("restore".into()));
    }
    for t in &cores {
        for si in &t.pending_signals {
            crate::signals::queue(&stub, Some(t.tid as i32), si)?;
        }
    }
    if let Some(s) = &img.signals {
        for si in &s.shared_pending {
            crate::signals::queue(&stub, None, si)?;
        }
    }
    for t in &cores[1..] {
        threads::set_registers(pid, t)?;
        ptrace::set_sigmask(t.tid as i32, t.blocked_signals)?;
    }
    // Lazy: the userfaultfd, after everything that touches the target's
    // memory (a missing page would block us from here on).
    let mut prepared = match lazy_input {
        Some(input) => {
            fill_touched(&stub, pid, &mm.areas, input, &filled)?;
            Some(lazy::setup(&stub, &mm.areas)?)
        }
        None => None,
    };
    // Last injected call: drop the trampoline. At its exit stop the leader
    // gets its own registers and never executes trampoline code again.
    let (r, _) = stub
        .leader
        .raw(libc::SYS_munmap, &[stub.tramp, TRAMP_LEN])?;
    if r != 0 {
        return Err(RestoreError::Io {
            pid,
            what: "unmapping the trampoline".into(),
            err: std::io::Error::from_raw_os_error(-r as i32),
        });
    }
    threads::set_registers(pid, cores[0])?;
    ptrace::set_sigmask(pid, cores[0].blocked_signals)?;
    let session = lazy_input.map(|input| {
        lazy::LazySession::new(
            pid,
            prepared.take().expect("userfaultfd"),
            &mm.areas,
            input.pages,
            input.fetcher.clone(),
        )
    });
    let tids: Vec<i32> = cores.iter().map(|t| t.tid as i32).collect();
    for &tid in tids.iter().rev() {
        ptrace::detach(tid, 0)?;
    }
    guard.armed = false;
    tracing::info!(
        pid,
        threads = tids.len(),
        pages,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        lazy = lazy_input.is_some(),
        "restored"
    );
    Ok((Restored { pid, tids }, session))
}
