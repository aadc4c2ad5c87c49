//! Restore orchestration: read the metadata, let every kind check that the
//! image can come back here, create the processes with their saved PIDs,
//! then apply the kinds phase by phase (memory, with its pages; files;
//! process-wide state; threads; signals; final), set registers last and
//! let the tree run. On failure nothing is left behind.

mod image;
mod pages;
mod tree;
mod validate;

use crate::error::RestoreError;
use crate::kind::{Kind, Phase, RestoreObjects, RestoreProcess};
use crate::kinds::memory::{self, Memory};
use crate::lazy::{self, LazyInput};
use crate::records::ProcessImage;
use crate::stub::{Stub, StubGuard, TRAMP_LEN};
use crstream_proto::{FileKind, FileTable, MemoryMap, ProcessState, VmArea};
use crstream_streamer::{ImageSource, PAGE_SIZE};
use image::Image;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Restore a shell job (dumped with `shell_job`): its terminal fds
    /// open the terminal on the restorer's stdin.
    pub shell_job: bool,
    /// Restore established TCP connections closed (`--tcp-close`).
    pub tcp_close: bool,
    /// Restore even on a CPU that lacks what the image's CPU had, with
    /// mapped files that changed since the dump (`--skip-validation`).
    pub skip_validation: bool,
    /// Files handed in (`--inherit-fd fd[N]:KEY`): crstream's fd N stands
    /// for the file KEY of the image ("socket:[INODE]" or a path).
    pub inherit_fds: Vec<(i32, String)>,
    /// Restore into a new PID namespace (`--pidns`): each process with its
    /// saved PID inside, whatever PIDs are taken outside.
    pub pidns: bool,
    /// Labels the image must carry with these values (`--require-label`):
    /// checked before anything is created.
    pub required_labels: Vec<(String, String)>,
    /// The restorer returns once the tree runs (`--detach`): the root's
    /// parent, crstream, is then gone at once, so the root's parent-death
    /// signal is not set again (it would end the process as the restore
    /// returns).
    pub detached: bool,
}

impl RestoreOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_shell_job(mut self, on: bool) -> Self {
        self.shell_job = on;
        self
    }

    pub fn with_skip_validation(mut self, on: bool) -> Self {
        self.skip_validation = on;
        self
    }

    pub fn with_tcp_close(mut self, on: bool) -> Self {
        self.tcp_close = on;
        self
    }

    pub fn with_required_label(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.required_labels.push((name.into(), value.into()));
        self
    }

    pub fn with_pidns(mut self, on: bool) -> Self {
        self.pidns = on;
        self
    }

    pub fn with_detached(mut self, on: bool) -> Self {
        self.detached = on;
        self
    }

    pub fn with_inherit_fd(mut self, fd: i32, key: impl Into<String>) -> Self {
        self.inherit_fds.push((fd, key.into()));
        self
    }
}

/// A restored tree: running, detached; its root is a child of the calling
/// thread. PIDs are as crstream sees them, unless said otherwise.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The root process.
    pub pid: i32,
    /// Threads of the root process.
    pub tids: Vec<i32>,
    /// Every process of the tree (zombies included), root first.
    pub processes: Vec<i32>,
    /// The same processes' saved PIDs, as they see themselves (different
    /// in a new PID namespace).
    pub saved_pids: Vec<i32>,
    /// `--pidns`, when the root is not PID 1 of the namespace: crstream's
    /// init of it, a child of the calling thread too, which exits when the
    /// root does.
    pub ns_init: Option<i32>,
}

pub(crate) fn restore(
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

/// Every open file of every process of the image.
fn tree_files(img: &Image) -> impl Iterator<Item = &crstream_proto::OpenFile> {
    img.tree
        .processes
        .iter()
        .filter_map(|e| img.process(e.pid)?.get::<FileTable>())
        .flat_map(|t| &t.files)
}

/// For a shell job, the path of the terminal its terminal fds will open:
/// crstream's controlling terminal, on its stdin (or stdout, stderr). None
/// for other images.
fn shell_job_terminal(img: &Image, opts: &RestoreOptions) -> Result<Option<Vec<u8>>, RestoreError> {
    let has_tty = tree_files(img).any(|f| f.kind() == FileKind::Tty && f.external_tty.is_none());
    if !has_tty && !img.inventory.shell_job {
        return Ok(None);
    }
    if !opts.shell_job {
        return Err(RestoreError::Incompatible(
            "the image is a shell job (dumped with --shell-job): restore it with --shell-job, \
             from a terminal"
                .into(),
        ));
    }
    let our_sid = crate::sys::process::getsid(0);
    use rustix::stdio::{stderr, stdin, stdout};
    for fd in [stdin(), stdout(), stderr()] {
        // The job joins crstream's session and group: only the controlling
        // terminal of that session lets it read and write in the foreground.
        let ours = rustix::termios::isatty(fd) && crate::sys::process::tcgetsid(fd) == our_sid;
        if ours
            && let Ok(path) = crate::proc::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
        {
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

/// A shell job gets the terminal settings it had (raw mode for a
/// full-screen program), given to `terminal`, the one it takes
/// ([`shell_job_terminal`]). A failure only costs the settings: said, not
/// fatal.
fn give_job_termios(img: &Image, terminal: &[u8]) {
    let saved = tree_files(img).find(|f| f.kind() == FileKind::Tty && !f.job_termios.is_empty());
    let Some(f) = saved else {
        return;
    };
    if let Err(e) = crate::fd::tty::give_job_termios(terminal, &f.job_termios) {
        tracing::warn!("the job's terminal settings are not given back: {e}");
    }
}

/// A network lock for the TCP connections the image restores connected.
fn lock_connections(
    img: &Image,
    opts: &RestoreOptions,
) -> Result<Option<crate::netlock::NetLock>, RestoreError> {
    if opts.tcp_close {
        return Ok(None);
    }
    let conns: Vec<_> = img
        .tree
        .processes
        .iter()
        .filter_map(|e| img.process(e.pid)?.get::<FileTable>())
        .flat_map(|t| &t.files)
        .filter_map(|f| f.socket.as_ref())
        .flat_map(|s| {
            let connected = s.tcp.as_ref().is_some_and(|t| !t.closed);
            let queued = s.accept_queue.iter().map(|q| (&q.local_addr, &q.peer_addr));
            connected
                .then_some((&s.local_addr, &s.peer_addr))
                .into_iter()
                .chain(queued)
        })
        .filter_map(|(local, peer)| {
            Some((
                crate::netlock::socket_addr(local)?,
                crate::netlock::socket_addr(peer)?,
            ))
        })
        .collect();
    if conns.is_empty() {
        return Ok(None);
    }
    crate::netlock::sweep_stale_restore_locks();
    crate::netlock::NetLock::lock(&conns, crate::netlock::Holder::Restore)
        .map(Some)
        .map_err(|e| RestoreError::Incompatible(format!("locking the TCP connections: {e}")))
}

/// One live process of the image, checked against this machine before
/// anything is created: its PID and TIDs are free and every kind accepts
/// its records.
fn plan_process<'a>(
    img: &'a Image,
    entry: &'a crstream_proto::ProcessEntry,
    kinds: &[&dyn Kind],
    empty: &'a crate::records::Records,
    pids_here: bool,
    inherit: &'a [(i32, String)],
) -> Result<ProcessImage<'a>, RestoreError> {
    let pid = entry.pid as i32;
    let records = img.process(entry.pid).unwrap_or(empty);
    let mut threads = Vec::new();
    let mut thread_records = Vec::new();
    for &tid in &entry.threads {
        let records = img.thread(tid).ok_or(RestoreError::MissingRecord {
            what: "ThreadCore",
            owner: format!("tid {tid}"),
        })?;
        threads.push(records.need::<crstream_proto::ThreadCore>()?);
        thread_records.push(records);
    }
    if threads.first().map(|t| t.tid) != Some(entry.pid) {
        return Err(RestoreError::Image(format!(
            "the thread list of pid {pid} does not start with its leader"
        )));
    }
    if pids_here && !crate::proc::wait_pid_released(pid) {
        return Err(RestoreError::pid_in_use(pid));
    }
    for t in threads[1..].iter().filter(|_| pids_here) {
        if !crate::proc::wait_pid_released(t.tid as i32) {
            return Err(RestoreError::TidInUse {
                pid,
                tid: t.tid as i32,
            });
        }
    }
    let p = ProcessImage {
        pid,
        entry,
        records,
        threads,
        thread_records,
        version: img.inventory.format_version,
        inherit,
    };
    for k in kinds {
        k.check(&p)?;
    }
    Ok(p)
}

fn restore_inner(
    source: &mut dyn ImageSource,
    opts: &RestoreOptions,
    lazy_input: Option<&LazyInput<'_>>,
) -> Result<(Restored, Option<lazy::LazySession>), RestoreError> {
    let t0 = Instant::now();
    let img = image::read_metadata(source)?;
    let restored = restore_image(&img, source, opts, lazy_input, t0);
    let lock = &img.inventory.net_lock;
    if restored.is_err() && !lock.is_empty() {
        // Kept on purpose (see `netlock`), which the user must know to
        // either try again or give the connections up.
        tracing::warn!(
            "the image's TCP connections stay locked away for another restore of it \
             (`nft delete table inet {lock}` gives them up)"
        );
    }
    restored
}

/// Restores the tree of `img`, whose metadata is read (its pages follow
/// in `source`).
fn restore_image(
    img: &Image,
    source: &mut dyn ImageSource,
    opts: &RestoreOptions,
    lazy_input: Option<&LazyInput<'_>>,
    t0: Instant,
) -> Result<(Restored, Option<lazy::LazySession>), RestoreError> {
    let inv = &img.inventory;
    if inv.arch != "x86_64" || inv.page_size as usize != PAGE_SIZE {
        return Err(RestoreError::Incompatible(format!(
            "image of {} with {}-byte pages",
            inv.arch, inv.page_size
        )));
    }
    for (name, want) in &opts.required_labels {
        let have = inv.labels.get(name);
        if have != Some(want) {
            return Err(RestoreError::Incompatible(format!(
                "the image's label {name} is {}, not {want:?}",
                have.map_or("missing".to_string(), |v| format!("{v:?}"))
            )));
        }
    }
    if !opts.skip_validation {
        validate::check_cpu(inv, &validate::Cpu::here())?;
    }
    let terminal = shell_job_terminal(img, opts)?;
    // A tree dumped from its own PID namespace gets one again.
    let in_pidns = opts.pidns || inv.pid_namespace;
    let plan = tree::Plan::new(&img.tree.processes)?;
    let entries = plan.entries;
    let root = &entries[0];
    if in_pidns {
        for e in entries.iter() {
            crate::proc::wait_exiting(e.pid as i32);
        }
    }

    // Before the kinds, which hold copies of the sockets they made: dropped
    // after them, on failure it silences those sockets (see TcpBuilt).
    let tcp_built = crate::fd::tcp::TcpBuilt::default();
    let mut memory = Memory::default();
    memory.skip_validation = opts.skip_validation;
    let mut kinds = crate::kinds::registry();
    let empty = crate::records::Records::new(crate::records::Owner::Process(0));
    let mut processes: Vec<Option<ProcessImage<'_>>> = Vec::new();
    {
        let all: Vec<&dyn Kind> = std::iter::once(&memory as &dyn Kind)
            .chain(kinds.iter().map(|k| &**k))
            .collect();
        for e in entries {
            processes.push(match e.state() {
                ProcessState::Alive => Some(plan_process(
                    img,
                    e,
                    &all,
                    &empty,
                    !in_pidns,
                    &opts.inherit_fds,
                )?),
                _ => {
                    if !in_pidns && !crate::proc::wait_pid_released(e.pid as i32) {
                        return Err(RestoreError::pid_in_use(e.pid as i32));
                    }
                    None
                }
            });
        }
    }
    if lazy_input.is_some() && entries.len() > 1 {
        return Err(RestoreError::LazyTree {
            processes: entries.len(),
        });
    }
    let maps: Vec<&MemoryMap> = processes
        .iter()
        .flatten()
        .map(|p| p.need::<MemoryMap>())
        .collect::<Result<_, _>>()?;
    let no_areas: &[VmArea] = &[];
    let mut areas: Vec<&[VmArea]> = Vec::new();
    let mut live = maps.iter();
    for p in &processes {
        areas.push(match p {
            Some(_) => &live.next().expect("one map per live process").areas,
            None => no_areas,
        });
    }

    // The connections come back one socket at a time: until every end
    // exists, none may hear from the other (or from an outside peer).
    tcp_built.hold_lock(lock_connections(img, opts)?);
    let mut sysv = crate::sysv::Recreator::default();
    for seg in &img.sysv {
        sysv.add(*seg)?;
    }
    // In a new PID namespace: the root's saved PID, checked first.
    let mut pidns = match in_pidns {
        true => Some(crate::pidns::PidNamespace::new(root.pid as i32)?),
        false => None,
    };
    let pids = crate::pidns::PidMap::default();
    let handoff_at = crate::pidns::handoff_fd(
        processes
            .iter()
            .flatten()
            .filter_map(|p| p.records.get::<FileTable>()),
    );
    // Every stub is created from here on, and inherits the pin.
    let pinned = crate::sys::sched::PinnedThread::here();
    let ptys = crate::fd::pty::Masters::default();
    let objects = RestoreObjects {
        pids: &pids,
        unlinked: &img.unlinked,
        sysv: &sysv,
        terminal: terminal.as_deref(),
        tcp_close: opts.tcp_close,
        detached: opts.detached,
        inherit: &opts.inherit_fds,
        tcp_built: &tcp_built,
        unpinned_cpus: pinned.as_ref().map(|p| p.before()),
        stubs: &[],
        ptys: &ptys,
    };
    let live: Vec<usize> = (0..entries.len())
        .filter(|&i| processes[i].is_some())
        .collect();

    // Memory first, as each process is created: its areas, then (but
    // lazily) its pages, before its children are forked from it.
    let announced = processes
        .iter()
        .map(|p| {
            p.as_ref()
                .map_or(Ok(0), |p| Ok(p.need::<MemoryMap>()?.pages_total))
        })
        .collect::<Result<Vec<u64>, RestoreError>>()?;
    let copier = match lazy_input {
        None => crate::kinds::memory::Copier::start(pinned.as_ref().map(|p| *p.before())),
        Some(_) => None,
    };
    let mut filler = pages::PageFiller::new(source, announced, copier);
    let mut spawner = crate::stub::Spawner {
        ns: pidns.as_mut(),
        handoff_at,
        pids: &pids,
    };
    let (mut guards, stubs) = tree::build(
        &plan,
        &areas,
        opts.shell_job,
        &mut spawner,
        &mut |i, stubs, guard, kept| {
            let Some(image) = processes[i].as_ref() else {
                return Ok(()); // a zombie has no memory
            };
            // A session leader, before its session's processes are forked.
            let entry = &plan.entries[i];
            if entry.sid == entry.pid
                && !(i == 0 && opts.shell_job)
                && let Some(terminal) = crate::fd::pty::session_terminal(image, &opts.inherit_fds)
            {
                crate::fd::pty::acquire_session_terminal(&ptys, &stubs[i], &terminal)?;
            }
            let parent = (i > 0).then(|| &stubs[plan.parent_of[i]]);
            memory.restore_forked(
                &mut RestoreProcess {
                    image,
                    stub: &stubs[i],
                    guard,
                    objects: &objects,
                },
                kept,
                parent,
            )?;
            if lazy_input.is_none() {
                filler.fill_process(&plan, &areas, stubs, i)?;
            }
            Ok(())
        },
    )?;
    if let Some(ns) = pidns.as_mut() {
        ns.leave();
    }
    let live_stubs: Vec<&Stub> = live.iter().map(|&i| &stubs[i]).collect();
    let objects = RestoreObjects {
        stubs: &live_stubs,
        ..objects
    };
    let run_phase = |kind: &mut dyn Kind, guards: &mut [StubGuard]| {
        tracing::debug!(kind = kind.name(), "restoring");
        for &i in &live {
            kind.restore(&mut RestoreProcess {
                image: processes[i].as_ref().expect("live"),
                stub: &stubs[i],
                guard: &mut guards[i],
                objects: &objects,
            })?;
        }
        kind.restore_done(&objects)
    };

    // Lazy: only the pages that cannot wait are in now. Then the final
    // protections.
    let mut filled = Vec::new();
    match lazy_input {
        Some(input) => {
            let rseq: Vec<u64> = processes[0]
                .as_ref()
                .expect("root is alive")
                .threads
                .iter()
                .filter_map(|t| t.rseq.as_ref())
                .flat_map(|r| [r.addr, r.addr + (r.len as u64).max(1) - 1])
                .collect();
            let (n, f) = lazy::prepare(&stubs[0], areas[0], input, &rseq)?;
            filler.filled[0] = n;
            filled = f;
        }
        None => filler.finish(&plan, &areas, &stubs)?,
    }
    let pages = filler.filled;
    for (i, p) in processes.iter().enumerate() {
        if let Some(p) = p {
            let announced = p.need::<MemoryMap>()?.pages_total;
            if pages[i] != announced {
                return Err(RestoreError::Image(format!(
                    "the image holds {} pages of pid {}, its memory map announces {announced}",
                    pages[i], p.pid
                )));
            }
            let pkeys = p.need::<crstream_proto::PrctlValues>()?.pkeys;
            memory::finish(&stubs[i], areas[i], pkeys)?;
        }
    }

    // Lazy: the userfaultfd is made now, by a process still as privileged
    // as crstream and with fds to spare: the final phase may drop its
    // credentials (an unprivileged process may not make one here:
    // vm.unprivileged_userfaultfd) or fill its RLIMIT_NOFILE. It is
    // registered after the phases (see below).
    let uffd = match lazy_input {
        Some(_) => Some(crate::kinds::memory::take_userfaultfd(&stubs[0])?),
        None => None,
    };
    for phase in [
        Phase::Files,
        Phase::Process,
        Phase::Threads,
        Phase::Signals,
        Phase::Final,
    ] {
        for k in kinds.iter_mut().filter(|k| k.phase() == phase) {
            run_phase(&mut **k, &mut guards)?;
        }
        if phase == Phase::Files {
            // Every process has opened and mapped the unlinked files: a
            // write seal would refuse writable shared mappings made after.
            img.unlinked.seal()?;
        }
        if phase == Phase::Threads && crate::failpoint::armed("restore") {
            return Err(RestoreError::TestFailure("restore".into()));
        }
    }

    // Lazy: the areas are registered with the userfaultfd after
    // everything that touches the target's memory (a missing page would
    // block us from here on).
    let prepared = match (lazy_input, uffd) {
        (Some(input), Some(uffd)) => Some(lazy::setup(&stubs[0], areas[0], input, &filled, uffd)?),
        _ => None,
    };
    // Lazy: until every page is in, the process dies with crstream rather
    // than run on without its memory; its own parent-death signal is set
    // again once the memory is complete.
    let death_signal = match lazy_input {
        Some(_) => {
            let p = processes[0].as_ref().expect("root is alive");
            // Not again for a detached restore: see `RestoreOptions::detached`.
            let saved = match opts.detached {
                true => 0,
                false => p.need::<crstream_proto::PrctlValues>()?.pdeath_signal,
            };
            stubs[0].call(
                "prctl(PR_SET_PDEATHSIG)",
                libc::SYS_prctl,
                &[libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64],
            )?;
            saved
        }
        None => 0,
    };
    // The pidfd of crstream the stubs kept goes before anything runs
    // (a shared fd table is closed once: EBADF after).
    for &i in &live {
        if let Some(fd) = stubs[i].handoff {
            stubs[i].leader.raw(libc::SYS_close, &[fd as u64])?;
        }
    }
    // Registers last. The leader's last injected call drops the
    // trampoline: at its exit stop it gets its own registers and never
    // executes trampoline code again.
    for &i in &live {
        let (p, stub) = (processes[i].as_ref().expect("live"), &stubs[i]);
        let shared_pending: &[Vec<u8>] = p
            .records
            .get::<crstream_proto::SignalState>()
            .map_or(&[], |s| &s.shared_pending);
        for (k, t) in p.threads.iter().enumerate().skip(1) {
            crate::kinds::threads::set_registers(stub.vpid, guards[i].tids[k], t, shared_pending)?;
        }
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
        crate::kinds::threads::set_registers(stub.vpid, stub.pid, p.threads[0], shared_pending)?;
    }
    let session = match (lazy_input, prepared) {
        (Some(input), Some(prepared)) => Some(lazy::LazySession::new(
            stubs[0].pid,
            stubs[0].vpid,
            prepared,
            areas[0],
            input.pages,
            &filled,
            input.fetcher.clone(),
            death_signal,
        )),
        _ => None,
    };
    if let Some(terminal) = &terminal {
        give_job_termios(img, terminal);
    }
    // Children first, so that no parent runs before its children exist
    // as it left them.
    for &i in live.iter().rev() {
        for &tid in guards[i].tids.iter().rev() {
            crate::sys::ptrace::detach(tid, 0)?;
        }
        guards[i].armed = false;
    }
    let ns_init = pidns.and_then(|ns| ns.started(root.pid as i32));
    // Until here a failure removed the segments and temporary files this
    // restore created; now the tree runs and keeps them, and segments
    // removed at dump time are removed again (they go with the last detach).
    sysv.commit();
    tcp_built.commit();
    img.unlinked.commit();
    // The tree runs: the connections the dump locked away may talk again
    // (a failed restore keeps the lock, for another try of the image).
    if !inv.net_lock.is_empty()
        && let Err(e) = crate::netlock::unlock(&inv.net_lock)
    {
        tracing::error!(
            table = inv.net_lock,
            "the restored TCP connections stay locked: {e}"
        );
    }
    let tids = guards[0].tids.clone();
    let saved_pids: Vec<i32> = entries.iter().map(|e| e.pid as i32).collect();
    tracing::info!(
        pid = stubs[0].pid,
        saved_pid = root.pid,
        processes = saved_pids.len(),
        pages = pages.iter().sum::<u64>(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        lazy = lazy_input.is_some(),
        "restored"
    );
    Ok((
        Restored {
            pid: stubs[0].pid,
            tids,
            processes: stubs.iter().map(|s| s.pid).collect(),
            saved_pids,
            ns_init,
        },
        session,
    ))
}
