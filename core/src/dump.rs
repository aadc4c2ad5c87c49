//! Dump orchestration: freeze the tree, read every kind of state of every
//! process (the registry, in order), let the kinds check the tree as a
//! whole, write the records, then the pages; undo everything on failure.

use crate::error::DumpError;
use crate::escape::Gadgets;
use crate::freeze::{Frozen, FrozenTree};
use crate::inject::RemoteMem;
use crate::kind::{DumpObjects, DumpProcess, DumpTree, Injector, Kind, ProcessDump};
use crate::kinds::memory::{Memory, PageStream, PagesFrom};
use crate::proc;
use crate::records::{Owner, Records};
use crate::snapshot::Snapshot;
use crstream_proto::record::Body;
use crstream_proto::{Inventory, ProcessTree, StreamKind, ThreadCore};
use crstream_streamer::{ImageSink, PAGE_SIZE};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    /// The process will run on after the dump (recorded in the image).
    pub leave_running: bool,
    /// With `leave_running`: the tree runs on as soon as its metadata is
    /// read, while its pages are written from copy-on-write snapshots
    /// (`crate::snapshot`); processes that cannot be snapshotted stay
    /// frozen until their pages are written.
    pub live: bool,
    /// The tree is a job of an interactive shell: save its terminal fds
    /// (restore hands it the restorer's terminal) instead of refusing them.
    pub shell_job: bool,
    /// Established TCP connections: refused, saved, or saved closed.
    pub tcp: crate::fd::tcp::TcpMode,
    /// Unix sockets connected outside the tree (--ext-unix-sk): saved with
    /// their peer's name instead of refused.
    pub ext_unix: bool,
    /// Resources outside the tree the image may name (`--external`): pipe
    /// inodes whose other end is held outside; restore needs each handed
    /// in (`--inherit-fd`).
    pub external_pipes: Vec<u64>,
    /// Terminals outside the tree (`--external tty[RDEV:DEV]`): (rdev,
    /// dev) of each; restore needs each handed in (`--inherit-fd`).
    pub external_ttys: Vec<(u64, u64)>,
    /// Connections waiting in a listener's accept queue (not accepted yet:
    /// no socket of the tree holds them) are dropped instead of refused
    /// (--skip-in-flight): their clients see them reset.
    pub skip_in_flight: bool,
    /// Raised from another thread to stop the dump at the next safe point
    /// (with [`DumpError::Interrupted`]); the tree runs on unharmed.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Names and values recorded in the image (`Inventory.labels`).
    pub labels: Vec<(String, String)>,
    /// A unix socket (SOCK_SEQPACKET) to which dump hands, as it makes
    /// them, an fd on each connection it takes from a listener's accept
    /// queue and a pidfd of each memory snapshot: should the dumping
    /// process die outright, whoever holds the other end puts the
    /// connections back and has the snapshots reaped
    /// (`recover_from_dead_dump`, see `handoff`).
    pub handoff: Option<Arc<std::os::fd::OwnedFd>>,
}

impl DumpOptions {
    /// Err if the dump was asked to stop.
    pub(crate) fn check_interrupt(&self) -> Result<(), DumpError> {
        match &self.interrupt {
            Some(f) if f.load(Ordering::Relaxed) => Err(DumpError::Interrupted),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub pages: u64,
    pub page_bytes: u64,
    /// How long the process was stopped.
    pub frozen: std::time::Duration,
    pub total: std::time::Duration,
    pub threads: usize,
    /// Processes in the tree, zombies included.
    pub processes: usize,
    /// Their PIDs, root first.
    pub pids: Vec<i32>,
    /// The tree ran on while its pages were written (a live dump).
    pub live: bool,
    /// The network lock (nftables table) that keeps the tree's TCP
    /// connections away until restore lifts it, once the tree is killed.
    pub net_lock: Option<String>,
}

/// A dumped tree, still frozen: the caller makes the image durable, then
/// ends it with [`Dumped::finish`]. Dropping it lets every process run on
/// unharmed, which is what a failure to store the image must do.
pub struct Dumped {
    /// Before the tree: dropped first, its connections leave repair mode
    /// before the processes run on.
    tcp: crate::fd::tcp::TcpHold,
    pty: crate::fd::pty::PtyHold,
    tree: FrozenTree,
    stats: DumpStats,
    frozen_at: Instant,
    /// A live dump let the tree run on after this long.
    released_after: Option<std::time::Duration>,
    started: Instant,
}

impl Dumped {
    pub fn stats(&self) -> &DumpStats {
        &self.stats
    }

    /// Kills the tree (`kill`) or lets it run on, and returns the final
    /// figures: frozen time runs until now, since the processes stayed
    /// stopped while the image was being stored.
    pub fn finish(mut self, kill: bool) -> DumpStats {
        let tcp = std::mem::take(&mut self.tcp);
        let pty = std::mem::take(&mut self.pty);
        let mut stats = self.stats.clone();
        if kill {
            self.tree.kill();
            stats.net_lock = tcp.after_kill();
            pty.after_kill();
        } else {
            drop(tcp);
            drop(pty);
            self.tree.release();
        }
        stats.frozen = self
            .released_after
            .unwrap_or_else(|| self.frozen_at.elapsed());
        stats.total = self.started.elapsed();
        stats
    }
}

pub(crate) fn dump(opts: &DumpOptions, sink: &mut dyn ImageSink) -> Result<Dumped, DumpError> {
    let started = Instant::now();
    let pid = opts.pid;
    if pid == std::process::id() as i32 {
        return Err(DumpError::SelfDump { pid });
    }
    let status = proc::status(pid).map_err(|_| DumpError::NoSuchProcess { pid })?;
    refuse_unrestorable_here(pid)?;
    if status.tgid != pid {
        return Err(DumpError::Unsupported {
            pid,
            what: "target",
            reason: format!("it is a thread of process {}", status.tgid),
        });
    }
    opts.check_interrupt()?;
    let mut tree = FrozenTree::freeze(pid)?;
    let frozen_at = Instant::now();
    // Each process's snapshot, if it has one: ended (which has its parent
    // reap it) only once the tree runs again, whatever happens.
    let mut snapshots: Vec<Option<Snapshot>> = Vec::new();
    let (mut read, written) = match dump_frozen(&mut tree, opts, sink, &mut snapshots) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(pid, "dump failed, letting the processes run on: {e}");
            tree.release();
            drop(snapshots);
            return Err(e);
        }
    };
    let (mut tcp, mut pty) = (
        std::mem::take(&mut read.objects.tcp),
        std::mem::take(&mut read.objects.pty),
    );
    let mut released_after = None;
    // Live (a snapshot holds the rest): the tree runs on from here, as
    // `Dumped::finish` would let it.
    if written.as_ref().is_none_or(|(_, _, live)| !live.is_empty()) {
        drop(std::mem::take(&mut tcp));
        drop(std::mem::take(&mut pty));
        tree.release();
        released_after = Some(frozen_at.elapsed());
        tracing::debug!(pid, "running again; writing the rest from its snapshots");
    }
    let (mut pages, threads, live) = match written {
        Some(w) => w,
        None => write_image(&tree, opts, &mut read, &snapshots, sink, false)?,
    };
    for (pid, stream, i) in live {
        let Some(snapshot) = snapshots[i].take() else {
            continue;
        };
        crate::failpoint::pause("snapshot-pages");
        pages +=
            read.memory
                .write_pages(pid, PagesFrom::Snapshot(snapshot.pid), sink, stream, opts)?;
        tracing::info!(pid, pages, "pages written from the snapshot");
    }
    let stats = DumpStats {
        pages,
        page_bytes: pages * PAGE_SIZE as u64,
        frozen: released_after.unwrap_or_else(|| frozen_at.elapsed()),
        live: released_after.is_some(),
        total: started.elapsed(),
        threads,
        processes: tree.entries.len(),
        pids: tree.entries.iter().map(|e| e.pid as i32).collect(),
        net_lock: None,
    };
    Ok(Dumped {
        tcp,
        pty,
        tree,
        stats,
        frozen_at,
        released_after,
        started,
    })
}

/// An image that restore would refuse on this machine is never written
/// (the process would be killed for nothing): dump needs what restore
/// needs here.
fn refuse_unrestorable_here(pid: i32) -> Result<(), DumpError> {
    let missing: Vec<String> = crate::check::required_and_cheap()
        .into_iter()
        .filter(|c| c.required && !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DumpError::Unsupported {
        pid,
        what: "this machine",
        reason: format!(
            "restore could not bring the process back here, for lack of {} (see `crstream \
             check`)",
            missing.join(", ")
        ),
    })
}

/// A tree as read while frozen: what its image is written from.
struct Read {
    objects: DumpObjects,
    memory: Memory,
    processes: Vec<ProcessDump>,
}

/// What writing the image while frozen left: the pages written, the
/// threads, and what a live dump writes once the tree runs again: the
/// pages each snapshot holds (pid, its page stream, the index of its
/// snapshot).
type Written = (u64, usize, Vec<(i32, PageStream, usize)>);

/// Everything that needs the tree frozen; each process's snapshot (a live
/// dump) goes into `snapshots`. The image is written too, unless every
/// process has a snapshot and no page outside it: the tree then need not
/// wait for it (None), and the areas the snapshots keep are scanned in
/// them once it runs again.
fn dump_frozen(
    tree: &mut FrozenTree,
    opts: &DumpOptions,
    sink: &mut dyn ImageSink,
    snapshots: &mut Vec<Option<Snapshot>>,
) -> Result<(Read, Option<Written>), DumpError> {
    tree.mark_shared_tables()?;
    let mut objects = DumpObjects::default();
    objects.tcp.handoff = opts.handoff.clone();
    let mut memory = Memory::default();
    let mut kinds = crate::kinds::registry();
    let mut processes = Vec::new();
    for frozen in tree.procs.iter_mut() {
        opts.check_interrupt()?;
        let (p, snapshot) = read_process(frozen, opts, &mut objects, &mut memory, &mut kinds)?;
        let child = snapshot.as_ref().map(|s| s.pid);
        snapshots.push(snapshot);
        // After the push: on an error, the snapshot ends once the tree is
        // released (its parent reaps it).
        memory.after_snapshot(p.pid, child)?;
        processes.push(p);
    }
    tree.refuse_tracers()?;
    let mut t = DumpTree {
        entries: &tree.entries,
        processes: &mut processes,
        objects: &mut objects,
    };
    // The snapshots share their processes' fds.
    let snapshot_pids: Vec<i32> = snapshots.iter().flatten().map(|s| s.pid).collect();
    crate::fd::refuse_shared_outside(&t, &snapshot_pids)?;
    t.objects.tcp.lock_and_read(t.processes)?;
    crate::failpoint::pause("tcp-locked");
    for k in kinds.iter_mut() {
        k.dump_tree(&mut t)?;
    }
    let mut read = Read {
        objects,
        memory,
        processes,
    };
    let later = snapshots.iter().all(Option::is_some)
        && read
            .processes
            .iter()
            .all(|p| !read.memory.has_pages_outside_snapshot(p.pid));
    if later {
        return Ok((read, None));
    }
    let written = write_image(tree, opts, &mut read, snapshots, sink, true)?;
    Ok((read, Some(written)))
}

/// Scans what a live dump left for later (in each snapshot, or in the
/// process while still `frozen` if it has none), then writes the metadata
/// and the pages of every process that a snapshot does not hold (none when
/// the tree runs again).
fn write_image(
    tree: &FrozenTree,
    opts: &DumpOptions,
    read: &mut Read,
    snapshots: &[Option<Snapshot>],
    sink: &mut dyn ImageSink,
    frozen: bool,
) -> Result<Written, DumpError> {
    for (i, p) in read.processes.iter_mut().enumerate() {
        let snapshot = snapshots.get(i).and_then(Option::as_ref);
        read.memory
            .scan_kept(p.pid, snapshot.map_or(p.pid, |s| s.pid))?;
        if let Some(s) = snapshot {
            let injector = s.injector()?;
            crate::kinds::signals::fill_actions(&mut p.records, &injector)?;
            injector.mem.put_back(s.pid)?;
        }
    }
    let mut t = DumpTree {
        entries: &tree.entries,
        processes: &mut read.processes,
        objects: &mut read.objects,
    };
    read.memory.dump_tree(&mut t)?;
    let page_streams = write_metadata(tree, opts, &mut read.objects, &read.processes, sink)?;
    let mut pages = 0;
    let mut threads = 0;
    let mut live = Vec::new();
    for (i, (p, stream)) in read.processes.iter().zip(page_streams).enumerate() {
        let snapshot = snapshots.get(i).is_some_and(Option::is_some);
        let n = match (snapshot, frozen) {
            (false, _) => read
                .memory
                .write_pages(p.pid, PagesFrom::Process, sink, stream, opts)?,
            (true, true) => {
                read.memory
                    .write_pages(p.pid, PagesFrom::NotInSnapshot, sink, stream, opts)?
            }
            (true, false) => 0, // it has none (see `dump_frozen`)
        };
        pages += n;
        threads += p.threads.len();
        tracing::info!(pid = p.pid, pages = n, threads = p.threads.len(), "dumped");
        if snapshot {
            live.push((p.pid, stream, i));
        }
    }
    Ok((pages, threads, live))
}

/// Bytes of scratch memory injected syscalls may fill.
pub(crate) const SCRATCH_LEN: u64 = 256;

/// Puts back, when dropped, what dump wrote into a process.
struct PutBack<'a>(&'a RemoteMem);

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        // A process killed meanwhile has nothing to put back into.
        if let Err(e) = self.0.put_back(self.0.pid)
            && crate::proc::alive(self.0.pid)
        {
            tracing::warn!(
                pid = self.0.pid,
                "putting back the memory below its stack: {e}"
            );
        }
    }
}

/// Reads every kind of one frozen process: memory first, then the
/// registry, whose kinds may inject syscalls; the threads get their own
/// registers back after each call and their signal mask at the end.
fn read_process(
    frozen: &mut Frozen,
    opts: &DumpOptions,
    objects: &mut DumpObjects,
    memory: &mut Memory,
    kinds: &mut [Box<dyn Kind>],
) -> Result<(ProcessDump, Option<Snapshot>), DumpError> {
    let pid = frozen.pid;
    let (frozen_stop, frozen_options) = (frozen.stop_signal, frozen.options);
    // A process in a group stop (SIGSTOP, ...) does not run on anyway, and
    // would not reap its snapshot until continued: read while frozen.
    let snapshot_planned = opts.live && opts.leave_running && frozen_stop == 0;
    let proc_err = |err| DumpError::Proc { pid, err };
    let status = proc::status(pid).map_err(proc_err)?;
    let stat = proc::stat(pid).map_err(proc_err)?;
    let thread_status = frozen
        .threads
        .iter()
        .map(|t| proc::status(t.tid))
        .collect::<Result<Vec<_>, _>>()
        .map_err(proc_err)?;
    let mut records = Records::new(Owner::Process(pid as u32));
    let mut thread_records: Vec<Records> = frozen
        .threads
        .iter()
        .map(|t| Records::new(Owner::Thread(t.tid as u32)))
        .collect();
    // Writable: escape frames are written below the threads' stacks (and
    // put back, see `RemoteMem::journaled`).
    let mem = RemoteMem::open(pid, true)?.journaled();
    mem.note_stack_pointers(frozen.threads.iter().map(|t| t.regs.rsp));
    let syscall_ip = crate::inject::syscall_site(pid, &mem)?;
    let mut p = DumpProcess {
        pid,
        status: &status,
        stat: &stat,
        shell_job: opts.shell_job,
        tcp: opts.tcp,
        ext_unix: opts.ext_unix,
        external_pipes: &opts.external_pipes,
        external_ttys: &opts.external_ttys,
        skip_in_flight: opts.skip_in_flight,
        snapshot_planned,
        objects,
        inject: None,
        keyed_areas: false,
        no_escapes: Vec::new(),
        threads: &mut frozen.threads,
        thread_status: &thread_status,
        records: &mut records,
        thread_records: &mut thread_records,
    };
    memory.dump(&mut p)?;

    // Scratch memory for the calls' buffers: below the leader's stack
    // pointer and its red zone, where the kernel would put a signal frame,
    // so that nothing is mapped in it that a failed dump could leave
    // behind (and put back once the process is read).
    let scratch = (p.threads[0].regs.rsp - 128 - SCRATCH_LEN) & !15;
    mem.remember(scratch, SCRATCH_LEN as usize)?;
    let gadgets = Gadgets::find(pid, &mem);
    mem.keep_escapes_out_of(std::mem::take(&mut p.no_escapes));
    let leader = p.threads[0].remote(syscall_ip, gadgets.as_ref(), &mem, scratch);
    // Where the leader's escape frame moved to its alternate signal stack,
    // the buffers go there too, under it (nothing wrote the first place
    // yet): then nothing of crstream's stays below a stack pointer, should
    // the worker be killed.
    let scratch = match leader.room_under_escape(SCRATCH_LEN) {
        Some(at) => {
            mem.remember(at, SCRATCH_LEN as usize)?;
            at
        }
        None => scratch,
    };
    let injector = Injector {
        leader,
        mem,
        scratch,
        syscall_ip,
        gadgets,
    };
    p.inject = Some(&injector);
    // However the reading ends, the process gets back what the calls'
    // buffers and escape frames overwrote.
    let _put_back = PutBack(&injector.mem);
    kinds.iter_mut().try_for_each(|k| {
        opts.check_interrupt()?;
        tracing::trace!(pid, kind = k.name(), "dumping");
        k.dump(&mut p)
    })?;
    let snapshot = if snapshot_planned {
        match Snapshot::take(
            &injector.leader,
            &injector.mem,
            injector.scratch,
            frozen_options,
            opts.handoff.as_deref(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::info!(
                    pid,
                    "no live dump of this process (it stays frozen until its pages are written): {e}"
                );
                // What was left for the snapshot is read here.
                crate::kinds::signals::fill_actions(&mut records, &injector)?;
                None
            }
        }
    } else {
        None
    };
    // Its copy too, whose pages go into the image.
    if let Some(s) = &snapshot {
        injector.mem.put_back(s.pid)?;
    }
    Ok((
        ProcessDump {
            pid,
            records,
            threads: thread_records,
        },
        snapshot,
    ))
}

/// Whether the image has what records version 12 added, which a reader of
/// 11 would restore wrong: see `memory::needs_records_12` and
/// `prctl::needs_records_12`.
fn needs_records_12(processes: &[ProcessDump]) -> bool {
    crate::kinds::memory::needs_records_12(processes)
        || processes
            .iter()
            .filter_map(|p| p.records.get::<crstream_proto::PrctlValues>())
            .any(crate::kinds::prctl::needs_records_12)
}

/// Whether the image has what records version 13 added, which a reader of
/// 12 would drop: guard regions, multicast memberships, the directory a
/// unix socket's relative name is relative to, an autogroup's nice value,
/// protection keys, a thread's memory policy or speculation mitigations,
/// the packets of a packet-mode pipe, mlockall's MCL_FUTURE, the owner or
/// mode of a terminal other than a new pair's.
fn needs_records_13(processes: &[ProcessDump]) -> bool {
    use crstream_proto::{FileTable, MemoryMap, PrctlValues, ThreadCore};
    let records = || processes.iter().map(|p| &p.records);
    let mut values = records().filter_map(|r| r.get::<PrctlValues>());
    let mut areas = records()
        .filter_map(|r| r.get::<MemoryMap>())
        .flat_map(|m| &m.areas);
    let mut files = records()
        .filter_map(|r| r.get::<FileTable>())
        .flat_map(|t| &t.files);
    let mut threads = processes.iter().flat_map(|p| &p.threads);
    values.any(|v| v.autogroup_nice.is_some() || v.pkeys != 0 || v.mlockall != 0)
        || threads.any(|t| {
            t.get::<ThreadCore>().is_some_and(|t| {
                t.mempolicy.is_some() || t.spec_store_bypass != 0 || t.spec_indirect_branch != 0
            })
        })
        || areas.any(|a| !a.guards.is_empty() || a.pkey != 0)
        || files.any(|f| {
            let relative = |s: &crstream_proto::SocketFile| {
                s.socket_file
                    .as_ref()
                    .is_some_and(|f| !f.relative_to.is_empty() || !f.root.is_empty())
            };
            f.pipe.as_ref().is_some_and(|p| !p.packets.is_empty())
                || f.socket
                    .as_ref()
                    .is_some_and(|s| !s.ip_memberships.is_empty() || relative(s))
                || f.pty.as_ref().is_some_and(|p| {
                    p.slave_mode.is_some_and(|m| m != 0o600) || p.slave_uid != 0 || p.slave_gid != 0
                })
        })
}

/// Whether the image has what records version 14 added, which a reader of
/// version 13 would drop: a timerfd's settime flags, the TOS of queued
/// datagrams, the System V semaphores whose SEM_UNDO units restore takes
/// again.
fn needs_records_14(processes: &[ProcessDump]) -> bool {
    processes
        .iter()
        .filter_map(|p| p.records.get::<crstream_proto::FileTable>())
        .flat_map(|t| &t.files)
        .any(|f| {
            f.timerfd.as_ref().is_some_and(|t| t.settime_flags != 0)
                || f.socket.as_ref().is_some_and(|s| !s.queued_tos.is_empty())
        })
        || processes
            .iter()
            .any(|p| p.records.get::<crstream_proto::SysvSemaphores>().is_some())
}

/// Whether the image has what records version 16 added, which a reader of
/// version 15 would drop: a thread's machine-check kill policy, RDTSC or
/// CPUID faulting.
fn needs_records_16(processes: &[ProcessDump]) -> bool {
    processes
        .iter()
        .flat_map(|p| &p.threads)
        .filter_map(|t| t.get::<ThreadCore>())
        .any(|t| t.machine_check_kill != 0 || t.tsc_faults || t.cpuid_faults)
}

/// The inventory, the tree, the objects the tree shares, then every
/// process's stream and each of its threads' streams. Returns the page
/// stream of each process, declared with it (pages follow the metadata).
fn write_metadata(
    tree: &FrozenTree,
    opts: &DumpOptions,
    objects: &mut DumpObjects,
    processes: &[ProcessDump],
    sink: &mut dyn ImageSink,
) -> Result<Vec<PageStream>, DumpError> {
    let root = &processes[0];
    let xsave_size = root.threads[0]
        .get::<ThreadCore>()
        .map_or(0, |t| t.xstate.len() as u32);
    // A tree in a PID namespace of its own is written with its PIDs there.
    let ns = crate::pidns::TreeNamespace::of(&tree.entries)?;
    let inner = |pid: i32| ns.as_ref().and_then(|ns| ns.pid(pid)).unwrap_or(pid) as u32;
    sink.record(
        0,
        Body::Inventory(Inventory {
            // Older readers must not read inner PIDs as crstream's, nor
            // restore an external pipe (which they ignore) as a pipe of
            // their own.
            // Nor restore a queued message without the files it carries,
            // nor an external terminal as the restorer's, nor lines ended
            // by VEOF as one, nor a listener without its accept queue, nor a
            // unix socket's peer as root, nor a socket file where it was
            // bound, as root's and with crstream's umask, nor a file made
            // with O_TMPFILE as one that can never be linked, nor a file
            // linked elsewhere by a path that no longer exists, nor an
            // area without its guard regions, nor an absolute timerfd as a
            // relative one, nor meet a saved temporary file it cannot make,
            // nor drop what a thread is trapped or killed on.
            format_version: if needs_records_16(processes) {
                crstream_proto::RECORDS_VERSION
            } else if objects.unlinked.has_transient() {
                crstream_proto::RECORDS_VERSION_WITHOUT_THREAD_TRAPS
            } else if needs_records_14(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_TRANSIENT_FILES
            } else if needs_records_13(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_TIMER_FLAGS
            } else if needs_records_12(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_GUARDS
            } else if crate::fd::needs_records_11(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_SEALS
            } else if crate::fd::has_socket_files(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_FILE_HANDLES
            } else if crate::fd::has_peer_ids(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_SOCKET_FILES
            } else if crate::fd::has_accept_queues(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_PEER_IDS
            } else if crate::fd::needs_records_7(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_ACCEPT_QUEUES
            } else if crate::fd::passes_files(processes) {
                crstream_proto::RECORDS_VERSION_WITHOUT_EXTERNAL_TERMINALS
            } else if ns.is_some() || !opts.external_pipes.is_empty() {
                crstream_proto::RECORDS_VERSION_WITHOUT_PASSED_FILES
            } else {
                crstream_proto::RECORDS_VERSION_WITHOUT_PID_NAMESPACE
            },
            crstream_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            arch: "x86_64".into(),
            page_size: PAGE_SIZE as u32,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            hostname: hostname(),
            cpu_flags: crate::sys::cpu::flags(),
            xfeatures_mask: crate::sys::cpu::xcr0(),
            xsave_size,
            root_pid: inner(root.pid),
            pid_namespace: ns.is_some(),
            labels: opts.labels.iter().cloned().collect(),
            leave_running: opts.leave_running,
            shell_job: opts.shell_job,
            net_lock: objects.tcp.lock_name().unwrap_or_default().to_string(),
        }),
    )?;
    sink.record(
        0,
        Body::ProcessTree(ProcessTree {
            processes: match &ns {
                Some(ns) => tree.entries.iter().map(|e| ns.entry(e)).collect(),
                None => tree.entries.clone(),
            },
        }),
    )?;
    objects.unlinked.write_records(sink)?;
    for seg in std::mem::take(&mut objects.sysv).into_records() {
        sink.record(0, Body::SysvShm(seg))?;
    }
    let mut page_streams: Vec<PageStream> = Vec::new();
    let record = |sink: &mut dyn ImageSink, stream: u32, owner: i32, body: &Body| {
        let mut body = body.clone();
        if let Some(ns) = &ns {
            ns.record(owner, &mut body)?;
        }
        sink.record(stream, body).map_err(DumpError::from)
    };
    for p in processes {
        let pid = inner(p.pid);
        let stream = sink.declare(StreamKind::Process, pid, 0, &format!("process {pid}"))?;
        page_streams.push(PageStream {
            id: sink.declare(StreamKind::Pages, pid, 0, &format!("pages of {pid}"))?,
            pid,
        });
        for body in p.records.bodies() {
            record(sink, stream, p.pid, body)?;
        }
        for t in &p.threads {
            let Owner::Thread(tid) = t.owner() else {
                unreachable!("thread records belong to threads")
            };
            let tid = inner(tid as i32);
            let stream = sink.declare(StreamKind::Thread, pid, tid, &format!("thread {tid}"))?;
            for body in t.bodies() {
                record(sink, stream, p.pid, body)?;
            }
        }
    }
    objects.unlinked.write_contents(sink)?;
    sink.end_metadata()?;
    Ok(page_streams)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}
