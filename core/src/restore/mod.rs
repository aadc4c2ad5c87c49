//! Restore orchestration: read the metadata, create the stub with the saved
//! PID, rebuild memory, files, process and thread state by injected
//! syscalls, set registers last and let it run.

use crate::error::RestoreError;
use crate::ptrace;
use crate::stub::{self, TRAMP_LEN};
use crate::{RestoreOptions, Restored, lazy, memory, threads};
use crstream_proto::{
    FileTable, Inventory, MemoryMap, PageRange, ProcessCore, ProcessEntry, ProcessState,
    ProcessTree, SignalState, ThreadCore, record::Body,
};
use crstream_streamer::{ImageSource, Item, PAGE_SIZE};
use std::collections::HashMap;
use std::time::Instant;

/// The metadata of one image, collected up to the end-of-metadata frame,
/// by process.
#[derive(Default)]
struct Image {
    inventory: Option<Inventory>,
    tree: Option<ProcessTree>,
    cores: HashMap<u32, ProcessCore>,
    mms: HashMap<u32, MemoryMap>,
    files: HashMap<u32, FileTable>,
    signals: HashMap<u32, SignalState>,
    threads: HashMap<u32, ThreadCore>,
    /// Memfds and deleted files, recreated as their contents arrive.
    unlinked: crate::unlinked::Recreator,
    sysv: Vec<crstream_proto::SysvShm>,
    /// Blobs of images older than `UnlinkedFile` (deleted fds' contents).
    legacy_blobs: HashMap<u32, Vec<u8>>,
}

fn missing(what: &str) -> RestoreError {
    RestoreError::Image(format!("missing {what} record"))
}

/// Inserts a per-process record, refusing a second one for the same key.
fn once<T>(map: &mut HashMap<u32, T>, key: u32, v: T, what: &str) -> Result<(), RestoreError> {
    if map.insert(key, v).is_some() {
        return Err(RestoreError::Image(format!("two {what} records for {key}")));
    }
    Ok(())
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
            Some(Item::MetadataEnd) => {
                adopt_legacy_deleted(&mut img)?;
                img.unlinked.check_complete()?;
                return Ok(img);
            }
            Some(Item::Blob { stream_id, data }) if img.unlinked.takes(stream_id) => {
                img.unlinked.write(stream_id, &data)?
            }
            Some(Item::Blob { stream_id, data }) => {
                // Only an old image's deleted fd names its blob itself.
                let named =
                    img.files.values().flat_map(|t| &t.files).any(|f| {
                        f.deleted && f.unlinked_file == 0 && f.contents_stream == stream_id
                    });
                if !named {
                    return Err(RestoreError::Image(format!(
                        "blob stream {stream_id} belongs to no UnlinkedFile or deleted fd \
                         record before it"
                    )));
                }
                img.legacy_blobs
                    .entry(stream_id)
                    .or_default()
                    .extend_from_slice(&data)
            }
            Some(Item::Pages { .. }) => {
                return Err(RestoreError::Image(
                    "pages before the end of metadata".into(),
                ));
            }
            Some(Item::Record { body, .. }) => match body {
                Body::Inventory(i) => img.inventory = Some(i),
                Body::ProcessTree(t) => img.tree = Some(t),
                Body::ProcessCore(c) => once(&mut img.cores, c.pid, c, "ProcessCore")?,
                Body::MemoryMap(m) => once(&mut img.mms, m.pid, m, "MemoryMap")?,
                Body::FileTable(f) => once(&mut img.files, f.pid, f, "FileTable")?,
                Body::SignalState(s) => once(&mut img.signals, s.pid, s, "SignalState")?,
                Body::ThreadCore(t) => once(&mut img.threads, t.tid, t, "ThreadCore")?,
                Body::UnlinkedFile(u) => img.unlinked.add(u)?,
                Body::SysvShm(seg) => img.sysv.push(seg),
                Body::StreamDecl(_) | Body::BlobInfo(_) => {}
            },
        }
    }
}

/// Deleted fds of images written before `UnlinkedFile` existed carry
/// their contents in a blob of their own.
fn adopt_legacy_deleted(img: &mut Image) -> Result<(), RestoreError> {
    for table in img.files.values_mut() {
        for f in table.files.iter_mut() {
            if f.deleted && f.unlinked_file == 0 && f.dup_of_fd.is_none() {
                let data = img.legacy_blobs.get(&f.contents_stream).ok_or_else(|| {
                    RestoreError::Image(format!(
                        "pid {} fd {}: contents of deleted {} (blob stream {}) missing",
                        table.pid, f.fd, f.path, f.contents_stream
                    ))
                })?;
                if data.len() as u64 != f.size {
                    return Err(RestoreError::Image(format!(
                        "pid {} fd {}: saved contents hold {} bytes, the file had {}",
                        table.pid,
                        f.fd,
                        data.len(),
                        f.size
                    )));
                }
                img.unlinked.adopt_legacy(f, data)?;
            }
        }
    }
    img.legacy_blobs.clear();
    Ok(())
}

/// For a shell job, the path of the terminal its terminal fds will open:
/// crstream's controlling terminal, on its stdin (or stdout, stderr). None
/// for other images.
fn shell_job_terminal(img: &Image, opts: &RestoreOptions) -> Result<Option<String>, RestoreError> {
    let has_tty = img
        .files
        .values()
        .flat_map(|t| &t.files)
        .any(|f| f.kind() == crstream_proto::FileKind::Tty);
    let dumped_as_job = img.inventory.as_ref().is_some_and(|i| i.shell_job);
    if !has_tty && !dumped_as_job {
        return Ok(None);
    }
    if !opts.shell_job {
        return Err(RestoreError::Incompatible(
            "the image is a shell job (dumped with --shell-job): restore it with --shell-job, \
             from a terminal"
                .into(),
        ));
    }
    for fd in 0..3 {
        // The job joins crstream's session and group: only the controlling
        // terminal of that session lets it read and write in the foreground.
        // SAFETY: terminal queries on a standard fd.
        let ours = unsafe { libc::isatty(fd) == 1 && libc::tcgetsid(fd) == libc::getsid(0) };
        if ours && let Ok(path) = crate::proc::read_link(format!("/proc/self/fd/{fd}")) {
            return Ok(Some(path));
        }
    }
    if has_tty {
        return Err(RestoreError::Incompatible(
            "--shell-job: none of crstream's stdin, stdout and stderr is its controlling \
             terminal, to give the job"
                .into(),
        ));
    }
    Ok(None)
}

/// One live process of the image, checked and ready to rebuild.
struct Plan<'a> {
    core: &'a ProcessCore,
    mm: &'a MemoryMap,
    files: &'a FileTable,
    signals: Option<&'a SignalState>,
    threads: Vec<&'a ThreadCore>,
}

/// Checks one live process of the image against its tree entry and this
/// machine, before anything is created.
fn plan<'a>(
    img: &'a Image,
    entry: &ProcessEntry,
    empty: &'a FileTable,
) -> Result<Plan<'a>, RestoreError> {
    let pid = entry.pid as i32;
    let of = |what: &str| missing(&format!("{what} of pid {pid}"));
    let core = img.cores.get(&entry.pid).ok_or_else(|| of("ProcessCore"))?;
    let mm = img.mms.get(&entry.pid).ok_or_else(|| of("MemoryMap"))?;
    let mut threads = Vec::new();
    for tid in &entry.threads {
        threads.push(
            img.threads
                .get(tid)
                .ok_or_else(|| missing(&format!("ThreadCore of tid {tid}")))?,
        );
    }
    if threads.first().map(|t| t.tid) != Some(entry.pid) {
        return Err(RestoreError::Image(format!(
            "the thread list of pid {pid} does not start with its leader"
        )));
    }
    if crate::proc::pid_exists(pid) {
        return Err(RestoreError::PidInUse { pid });
    }
    for t in &threads[1..] {
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
    core.mm.as_ref().ok_or_else(|| of("MmFields"))?;
    // Files that changed in a way that would corrupt the process are
    // refused before anything is created.
    memory::check_files(pid, &mm.areas)?;
    let files = img.files.get(&entry.pid).unwrap_or(empty);
    crate::files::check(pid, files)?;
    Ok(Plan {
        core,
        mm,
        files,
        signals: img.signals.get(&entry.pid),
        threads,
    })
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
    opts: &RestoreOptions,
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
    let terminal = shell_job_terminal(&img, opts)?;
    let tree = img.tree.as_ref().ok_or_else(|| missing("ProcessTree"))?;
    let entries = &tree.processes;
    let root = entries
        .first()
        .ok_or_else(|| missing("process in ProcessTree"))?;
    if root.state() != ProcessState::Alive {
        return Err(RestoreError::Image("the root process is not alive".into()));
    }
    // Parents come before their children: each is forked from its parent.
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut parent_of = vec![usize::MAX; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            match index.get(&e.ppid) {
                Some(&p) if entries[p].state() == ProcessState::Alive => parent_of[i] = p,
                _ => {
                    return Err(RestoreError::Image(format!(
                        "process {}: its parent {} is not a live process listed before it",
                        e.pid, e.ppid
                    )));
                }
            }
        }
        if index.insert(e.pid, i).is_some() {
            return Err(RestoreError::Image(format!(
                "process {} listed twice",
                e.pid
            )));
        }
    }
    let empty = FileTable::default();
    let mut plans: Vec<Option<Plan<'_>>> = Vec::new();
    for e in entries {
        match e.state() {
            ProcessState::Alive => plans.push(Some(plan(&img, e, &empty)?)),
            ProcessState::Zombie => {
                if crate::proc::pid_exists(e.pid as i32) {
                    return Err(RestoreError::PidInUse { pid: e.pid as i32 });
                }
                plans.push(None);
            }
            other => {
                return Err(RestoreError::Image(format!(
                    "process {} in state {other:?}",
                    e.pid
                )));
            }
        }
    }
    if lazy_input.is_some() && entries.len() > 1 {
        return Err(RestoreError::Incompatible(format!(
            "--lazy restores a single process; this image holds a tree of {} processes",
            entries.len()
        )));
    }
    let fail_at = crate::dump::test_fail_point();
    let no_areas: &[crstream_proto::VmArea] = &[];
    let areas_of = |i: usize| plans[i].as_ref().map_or(no_areas, |p| &p.mm.areas[..]);
    let all_areas: Vec<(u64, u64)> = (0..entries.len())
        .flat_map(|i| areas_of(i).iter().map(|a| (a.start, a.end)))
        .collect();

    // The processes, each forked from its parent's stub, in their sessions.
    let mut guards: Vec<stub::StubGuard> = Vec::new();
    let mut stubs: Vec<stub::Stub> = Vec::new();
    let mut helpers = crate::session::Helpers::default();
    let in_tree = |pid: u32| index.contains_key(&pid);
    // SAFETY: getsid(0) has no preconditions.
    let our_sid = unsafe { libc::getsid(0) } as u32;
    // A shell job joins the restorer's session, whatever it was in.
    if !opts.shell_job && crate::session::needs_session_helper(root, our_sid, in_tree(root.sid)) {
        // Created inside a helper's session, as crstream's child.
        let h = helpers.new_session(None, root.sid as i32, &all_areas)?;
        let (g, s) = stub::fork(
            &h.stub,
            root.pid as i32,
            0,
            areas_of(0),
            libc::CLONE_PARENT as u64,
        )?;
        guards.push(g);
        if root.pgid == root.pid {
            s.call("setpgid", libc::SYS_setpgid, &[0, 0])
                .map_err(|err| RestoreError::Session {
                    pid: root.pid as i32,
                    reason: format!("it led its process group, cannot again: {err}"),
                })?;
        }
        stubs.push(s);
    } else {
        let guard = stub::spawn(root.pid as i32)?;
        stubs.push(stub::prepare(&guard, areas_of(0), &all_areas)?);
        guards.push(guard);
        // First: everything after may depend on the session (e.g. a tty).
        crate::session::restore(&stubs[0], root, opts.shell_job)?;
    }
    for (i, e) in entries.iter().enumerate().skip(1) {
        let pid = e.pid as i32;
        let exit_signal = plans[i]
            .as_ref()
            .map_or(libc::SIGCHLD as u32, |p| p.core.exit_signal);
        let parent = parent_of[i];
        let parent_sid = entries[parent].sid;
        let mut share = 0;
        if e.shares_files_with_parent {
            share |= libc::CLONE_FILES as u64;
        }
        if e.shares_fs_with_parent {
            share |= libc::CLONE_FS as u64;
        }
        let (g, s) = if crate::session::needs_session_helper(e, parent_sid, in_tree(e.sid)) {
            let h = match helpers.get(e.sid) {
                Some(h) if h.parent() == Some(parent) => h,
                Some(_) => {
                    return Err(RestoreError::Session {
                        pid,
                        reason: format!(
                            "its session {} (whose leader is gone) holds processes of \
                             different parents: not supported",
                            e.sid
                        ),
                    });
                }
                None => helpers.new_session(Some((parent, &stubs[parent])), e.sid as i32, &[])?,
            };
            if exit_signal != libc::SIGCHLD as u32 {
                tracing::warn!(pid, exit_signal, "restored with SIGCHLD as its exit signal");
            }
            if share != 0 {
                return Err(RestoreError::Session {
                    pid,
                    reason: "it shares its fd table or fs state with its parent and is in a \
                             session whose leader is gone: not supported"
                        .into(),
                });
            }
            stub::fork(&h.stub, pid, 0, areas_of(i), libc::CLONE_PARENT as u64)?
        } else {
            stub::fork(&stubs[parent], pid, exit_signal, areas_of(i), share)?
        };
        guards.push(g);
        if e.sid == e.pid {
            s.call("setsid", libc::SYS_setsid, &[])
                .map_err(|err| RestoreError::Session {
                    pid,
                    reason: format!("it led its session, cannot make it one again: {err}"),
                })?;
        } else if e.sid != parent_sid && helpers.get(e.sid).is_none() {
            return Err(RestoreError::Session {
                pid,
                reason: format!(
                    "it is in session {} but its parent {} is in session {}, and it does not \
                     lead it; the session's leader is not in the tree and PID {} is taken, so \
                     no helper can lead the session again",
                    e.sid, e.ppid, parent_sid, e.sid
                ),
            });
        }
        stubs.push(s);
    }
    crate::session::restore_groups(&stubs, entries, &mut helpers)?;
    helpers.end(&stubs)?;

    // Memory: shared anonymous memory is created by the first process that
    // maps it and mapped from there by the others.
    let mut sysv = crate::sysv::Recreator::default();
    for seg in &img.sysv {
        sysv.add(*seg)?;
    }
    let objects = memory::Mappable {
        unlinked: &img.unlinked,
        sysv: &sysv,
    };
    let mut shm_origin: HashMap<u64, memory::ShmemOrigin> = HashMap::new();
    for (i, s) in stubs.iter().enumerate() {
        if let Some(p) = &plans[i] {
            memory::map_areas(s, &p.mm.areas, &mut shm_origin, &objects)?;
        }
    }

    // Page data follows the metadata (lazy: only what cannot wait).
    let mut pages = vec![0u64; entries.len()];
    let mut filled = Vec::new();
    if let Some(input) = lazy_input {
        let p = plans[0].as_ref().expect("root is alive");
        let rseq: Vec<u64> = p
            .threads
            .iter()
            .filter_map(|t| t.rseq.as_ref())
            .flat_map(|r| [r.addr, r.addr + (r.len as u64).max(1) - 1])
            .collect();
        let (n, f) = fill_eager(&stubs[0], root.pid as i32, &p.mm.areas, input, &rseq)?;
        pages[0] = n;
        filled = f;
    }
    while lazy_input.is_none() {
        match source.next_item()? {
            Some(Item::Pages { batch, .. }) => {
                let i = match index.get(&batch.pid) {
                    Some(&i) if plans[i].is_some() => i,
                    _ => {
                        return Err(RestoreError::Image(format!(
                            "pages of pid {}, which is not a live process of the image",
                            batch.pid
                        )));
                    }
                };
                let areas = areas_of(i);
                pages[i] += memory::fill(batch.pid as i32, &stubs[i].mem, areas, &batch)?;
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
    for (i, p) in plans.iter().enumerate() {
        if let Some(p) = p {
            if pages[i] != p.mm.pages_total {
                return Err(RestoreError::Image(format!(
                    "the image holds {} pages of pid {}, its memory map announces {}",
                    pages[i], entries[i].pid, p.mm.pages_total
                )));
            }
            memory::finish(&stubs[i], &p.mm.areas)?;
        }
    }

    // Process-wide state, owners of shared files first (tree order).
    let mut created = crate::fdkinds::Registry::default();
    let reopen = crate::files::Reopen {
        unlinked: &img.unlinked,
        terminal: terminal.as_deref(),
    };
    // Every fd table before any process state: paths are opened outside a
    // chroot that a process sharing its fs state (CLONE_FS) would enter.
    for (i, p) in plans.iter().enumerate() {
        // A shared fd table was filled by the parent (earlier in order).
        if let Some(p) = p
            && !entries[i].shares_files_with_parent
        {
            crate::files::restore(&stubs[i], p.files, &reopen, &mut created)?;
        }
    }
    drop(created);
    for (i, p) in plans.iter().enumerate() {
        if let Some(p) = p {
            restore_process_state(&stubs[i], p, entries[i].shares_fs_with_parent)?;
        }
    }
    img.unlinked.seal()?;
    // Zombies exit now, with their saved status; their parents keep no
    // trace of it but the zombie.
    for (i, e) in entries.iter().enumerate() {
        if plans[i].is_none() {
            stub::exit_as_zombie(&stubs[i], e.exit_code, &e.comm)?;
            guards[i].armed = false;
            crate::signals::discard_child_signal(&stubs[parent_of[i]])?;
        }
    }

    // Threads.
    for (i, p) in plans.iter().enumerate() {
        let Some(p) = p else { continue };
        let stub = &stubs[i];
        for t in &p.threads[1..] {
            let tid = t.tid as i32;
            let r = threads::create(stub, tid)?;
            guards[i].tids.push(tid);
            threads::restore_state(stub, &r, t)?;
        }
        threads::restore_state(stub, &stub.leader, p.threads[0])?;
        // After the threads: a SIGEV_THREAD_ID timer names one of them.
        crate::timers::restore_posix(stub, &p.core.posix_timers)?;
    }
    if fail_at.as_deref() == Some("restore") {
        return Err(RestoreError::TestFailure("restore".into()));
    }
    for (i, p) in plans.iter().enumerate() {
        let Some(p) = p else { continue };
        let stub = &stubs[i];
        let timers = &p.core.posix_timers;
        for t in &p.threads {
            for si in t.pending_signals.iter() {
                if !crate::timers::raised_again(timers, si) {
                    crate::signals::queue(stub, Some(t.tid as i32), si)?;
                }
            }
        }
        if let Some(s) = p.signals {
            for si in s.shared_pending.iter() {
                if !crate::timers::raised_again(timers, si) {
                    crate::signals::queue(stub, None, si)?;
                }
            }
        }
        for t in &p.threads[1..] {
            threads::set_registers(stub.pid, t)?;
            ptrace::set_sigmask(t.tid as i32, t.blocked_signals)?;
        }
    }
    // Lazy: the userfaultfd, after everything that touches the target's
    // memory (a missing page would block us from here on).
    let mut prepared = match lazy_input {
        Some(input) => {
            let areas = areas_of(0);
            fill_touched(&stubs[0], root.pid as i32, areas, input, &filled)?;
            Some(lazy::setup(&stubs[0], areas)?)
        }
        None => None,
    };
    // Last injected call: drop the trampoline. At its exit stop the leader
    // gets its own registers and never executes trampoline code again.
    for (i, p) in plans.iter().enumerate() {
        let Some(p) = p else { continue };
        let stub = &stubs[i];
        let (r, _) = stub
            .leader
            .raw(libc::SYS_munmap, &[stub.tramp, TRAMP_LEN])?;
        if r != 0 {
            return Err(RestoreError::Io {
                pid: stub.pid,
                what: "unmapping the trampoline".into(),
                err: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        threads::set_registers(stub.pid, p.threads[0])?;
        ptrace::set_sigmask(stub.pid, p.threads[0].blocked_signals)?;
    }
    let session = lazy_input.map(|input| {
        lazy::LazySession::new(
            root.pid as i32,
            prepared.take().expect("userfaultfd"),
            areas_of(0),
            input.pages,
            input.fetcher.clone(),
        )
    });
    // Children first, so that no parent runs before its children exist
    // as it left them.
    for (i, p) in plans.iter().enumerate().rev() {
        let Some(p) = p else { continue };
        for t in p.threads.iter().rev() {
            ptrace::detach(t.tid as i32, 0)?;
        }
        guards[i].armed = false;
    }
    // Until here a failure removed the segments this restore created; now
    // the tree runs and keeps them, and those removed at dump time are
    // removed again (they go with the last detach).
    sysv.commit();
    let tids: Vec<i32> = plans[0]
        .as_ref()
        .expect("root is alive")
        .threads
        .iter()
        .map(|t| t.tid as i32)
        .collect();
    let processes: Vec<i32> = entries.iter().map(|e| e.pid as i32).collect();
    tracing::info!(
        pid = root.pid,
        processes = processes.len(),
        pages = pages.iter().sum::<u64>(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        lazy = lazy_input.is_some(),
        "restored"
    );
    Ok((
        Restored {
            pid: root.pid as i32,
            tids,
            processes,
        },
        session,
    ))
}

/// Process-wide state of one process, set from inside it.
/// `shares_fs`: cwd, root and umask are its parent's (CLONE_FS), set there.
fn restore_process_state(
    stub: &stub::Stub,
    p: &Plan<'_>,
    shares_fs: bool,
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let core = p.core;
    let io = |what: String| {
        move |e: crate::error::TaskError| RestoreError::Io {
            pid,
            what,
            err: std::io::Error::other(e.to_string()),
        }
    };
    if !shares_fs {
        let path = stub.put_path(&core.cwd)?;
        stub.call("chdir", libc::SYS_chdir, &[path])
            .map_err(io(format!("chdir to {}", core.cwd)))?;
        if core.root != "/" {
            let path = stub.put_path(&core.root)?;
            stub.call("chroot", libc::SYS_chroot, &[path])
                .map_err(io(format!("chroot to {}", core.root)))?;
        }
        stub.call("umask", libc::SYS_umask, &[core.umask as u64])?;
    }
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
        // SAFETY: prlimit64 on our stub with a local struct.
        if unsafe { libc::prlimit64(pid, r.resource as _, &new, std::ptr::null_mut()) } != 0 {
            tracing::warn!(
                pid,
                resource = r.resource,
                "setting rlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    crate::signals::restore_actions(stub, p.signals.unwrap_or(&SignalState::default()))?;
    crate::timers::restore(
        stub,
        [&core.itimer_real, &core.itimer_virtual, &core.itimer_prof],
    )?;
    crate::mm::restore(stub, core.mm.as_ref().ok_or_else(|| missing("MmFields"))?)?;
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
    Ok(())
}
