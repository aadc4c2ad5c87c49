//! Dump orchestration: freeze every thread, read the state of each kind,
//! write the records, then the pages; undo everything on failure.

use crate::error::{DumpError, TaskError};
use crate::memory;
use crate::proc;
use crate::ptrace::{self, Regs, Stop};
use crate::syscall::{Remote, RemoteMem, find_syscall_insn};
use crate::threads::{self, Resume};
use crate::{DumpOptions, DumpStats};
use crstream_proto::{
    FileKind, Inventory, ProcessCore, ProcessEntry, ProcessState, ProcessTree, Rlimit, StreamKind,
    record::Body,
};
use crstream_streamer::{ImageSink, PAGE_SIZE};
use std::time::Instant;

struct FrozenThread {
    tid: i32,
    regs: Regs,
    mask: u64,
    /// Registers were changed by injected syscalls.
    touched: bool,
    /// The signal mask was replaced by "all blocked".
    masked: bool,
}

/// Every thread of the target, stopped under ptrace. Dropping it puts
/// every register and mask back and detaches: the target runs on.
struct Frozen {
    pid: i32,
    threads: Vec<FrozenThread>,
    released: bool,
}

/// Waits until a seized+interrupted thread reaches its interrupt stop,
/// passing on signals it was about to receive. Ok(false): it exited.
fn wait_interrupt_stop(tid: i32) -> Result<bool, TaskError> {
    loop {
        let (status, stop) = ptrace::wait(tid)?;
        match stop {
            Stop::Event(ptrace::PTRACE_EVENT_STOP) => return Ok(true),
            // A signal-delivery-stop: deliver it; the pending interrupt
            // stops the thread again before it runs user code.
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Gone => return Ok(false),
            _ => {
                return Err(TaskError::UnexpectedStop {
                    tid,
                    status,
                    while_doing: "waiting for the interrupt stop",
                });
            }
        }
    }
}

impl Frozen {
    fn freeze(pid: i32) -> Result<Self, DumpError> {
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            released: false,
        };
        // Threads may be created while we attach: repeat until a listing
        // shows no new thread (stopped threads cannot create more).
        loop {
            let tids = proc::tasks(pid).map_err(|err| DumpError::Proc { pid, err })?;
            let new: Vec<i32> = tids
                .into_iter()
                .filter(|t| !f.threads.iter().any(|x| x.tid == *t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match ptrace::seize(tid, ptrace::PTRACE_O_TRACESYSGOOD) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(err) => return Err(DumpError::Attach { pid, tid, err }),
                }
                // SAFETY: plain integers; filled in below.
                let zero: Regs = unsafe { std::mem::zeroed() };
                f.threads.push(FrozenThread {
                    tid,
                    regs: zero,
                    mask: 0,
                    touched: false,
                    masked: false,
                });
                ptrace::interrupt(tid)?;
                if !wait_interrupt_stop(tid)? {
                    f.threads.pop();
                    if tid == pid {
                        return Err(DumpError::NoSuchProcess { pid });
                    }
                    continue;
                }
                let t = f.threads.last_mut().unwrap();
                t.regs = ptrace::get_regs(tid)?;
                t.mask = ptrace::get_sigmask(tid)?;
                // No signal may interrupt our injected syscalls.
                ptrace::set_sigmask(tid, !0)?;
                t.masked = true;
            }
        }
        if f.threads.first().map(|t| t.tid) != Some(pid) {
            return Err(DumpError::NoSuchProcess { pid });
        }
        tracing::debug!(pid, threads = f.threads.len(), "frozen");
        Ok(f)
    }

    /// Puts registers and masks back and detaches every thread.
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for t in self.threads.iter().rev() {
            if t.touched {
                let mut regs = t.regs;
                threads::adjust_restart(&mut regs, Resume::SameTask);
                if let Err(e) = ptrace::set_regs(t.tid, &regs) {
                    tracing::error!(tid = t.tid, "restoring registers: {e}");
                }
            }
            if t.masked
                && let Err(e) = ptrace::set_sigmask(t.tid, t.mask)
            {
                tracing::error!(tid = t.tid, "restoring the signal mask: {e}");
            }
            if let Err(e) = ptrace::detach(t.tid, 0) {
                tracing::error!(tid = t.tid, "detaching: {e}");
            }
        }
        tracing::debug!(pid = self.pid, "released");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release();
    }
}

pub(crate) fn test_fail_point() -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var("CRSTREAM_TEST_FAIL_AT").ok()
    } else {
        None
    }
}

/// The frozen tree: every live process stopped under ptrace, and the
/// entries of every process, parents before children (the order restore
/// creates them in).
struct FrozenTree {
    procs: Vec<Frozen>,
    entries: Vec<ProcessEntry>,
}

impl FrozenTree {
    /// Freezes `root` and every descendant, top down: a frozen process
    /// cannot fork, so once it is stopped its list of children is final.
    fn freeze(root: i32) -> Result<Self, DumpError> {
        let mut tree = FrozenTree {
            procs: Vec::new(),
            entries: Vec::new(),
        };
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(pid) = queue.pop_front() {
            if pid == std::process::id() as i32 {
                return Err(DumpError::SelfDump { pid });
            }
            let stat = proc::stat(pid).map_err(|_| DumpError::NoSuchProcess { pid })?;
            let (pgid, sid) = crate::session::dump(&stat);
            if stat.state() == 'Z' || stat.state() == 'X' {
                if pid == root {
                    return Err(DumpError::Unsupported {
                        pid,
                        what: "target",
                        reason: "it is a zombie".into(),
                    });
                }
                tree.entries.push(zombie_entry(pid, &stat, pgid, sid));
                continue;
            }
            let frozen = match Frozen::freeze(pid) {
                Ok(f) => f,
                // It exited between the listing and the attach.
                Err(_) if pid != root && proc::stat(pid).is_ok_and(|s| s.state() == 'Z') => {
                    let stat = proc::stat(pid).map_err(|err| DumpError::Proc { pid, err })?;
                    tree.entries.push(zombie_entry(pid, &stat, pgid, sid));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = proc::status(pid).map_err(|err| DumpError::Proc { pid, err })?;
            tree.entries.push(ProcessEntry {
                pid: pid as u32,
                ppid: status.ppid as u32,
                pgid,
                sid,
                threads: frozen.threads.iter().map(|t| t.tid as u32).collect(),
                state: ProcessState::Alive as i32,
                ..Default::default()
            });
            tree.procs.push(frozen);
            queue.extend(proc::children(pid).map_err(|err| DumpError::Proc { pid, err })?);
        }
        tracing::debug!(root, processes = tree.entries.len(), "tree frozen");
        Ok(tree)
    }

    fn release(&mut self) {
        for f in self.procs.iter_mut().rev() {
            f.release();
        }
    }

    /// SIGKILLs every process first (so none runs on without the others),
    /// then collects the exits of the traced threads.
    fn kill(&mut self) {
        for f in &mut self.procs {
            f.released = true;
            // SAFETY: signalling a process we dumped.
            unsafe { libc::kill(f.pid, libc::SIGKILL) };
        }
        for f in &self.procs {
            for t in f.threads.iter().rev() {
                let mut st = 0;
                // SAFETY: collects the exit notification of a tracee.
                unsafe { libc::waitpid(t.tid, &mut st, libc::__WALL) };
            }
        }
    }
}

fn zombie_entry(pid: i32, stat: &proc::Stat, pgid: u32, sid: u32) -> ProcessEntry {
    ProcessEntry {
        pid: pid as u32,
        ppid: stat.field(4) as u32,
        pgid,
        sid,
        threads: vec![pid as u32],
        state: ProcessState::Zombie as i32,
        // The wait status its parent will read (proc(5) field 52).
        exit_code: stat.field(52) as i32,
        comm: stat.comm.clone(),
        ..Default::default()
    }
}

/// A dumped tree, still frozen: the caller makes the image durable, then
/// ends it with [`Dumped::finish`]. Dropping it lets every process run on
/// unharmed, which is what a failure to store the image must do.
pub struct Dumped {
    tree: FrozenTree,
    stats: DumpStats,
    frozen_at: Instant,
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
        if kill {
            self.tree.kill();
        } else {
            self.tree.release();
        }
        let mut stats = self.stats.clone();
        stats.frozen = self.frozen_at.elapsed();
        stats.total = self.started.elapsed();
        stats
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        self.release();
    }
}

pub fn dump(opts: &DumpOptions, sink: &mut dyn ImageSink) -> Result<Dumped, DumpError> {
    let started = Instant::now();
    let pid = opts.pid;
    if pid == std::process::id() as i32 {
        return Err(DumpError::SelfDump { pid });
    }
    let status = proc::status(pid).map_err(|_| DumpError::NoSuchProcess { pid })?;
    if status.tgid != pid {
        return Err(DumpError::Unsupported {
            pid,
            what: "target",
            reason: format!("it is a thread of process {}", status.tgid),
        });
    }
    let mut tree = FrozenTree::freeze(pid)?;
    let frozen_at = Instant::now();
    let (pages, threads) = match dump_frozen(&mut tree, opts, sink) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(pid, "dump failed, letting the processes run on: {e}");
            tree.release();
            return Err(e);
        }
    };
    let stats = DumpStats {
        pages,
        page_bytes: pages * PAGE_SIZE as u64,
        frozen: frozen_at.elapsed(),
        total: started.elapsed(),
        threads,
        processes: tree.entries.len(),
        pids: tree.entries.iter().map(|e| e.pid as i32).collect(),
    };
    Ok(Dumped {
        tree,
        stats,
        frozen_at,
        started,
    })
}

fn cpu_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

fn xcr0() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is available when XSAVE is (checked above).
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}

fn uname_release() -> String {
    // SAFETY: uname fills a plain struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    // SAFETY: NUL-terminated by the kernel.
    let c = |f: &[libc::c_char]| {
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    c(&u.release)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn prctl_int(
    remote: &Remote,
    mem: &RemoteMem,
    scratch: u64,
    name: &'static str,
    opt: u64,
) -> Result<u32, DumpError> {
    remote.call(name, libc::SYS_prctl, &[opt, scratch])?;
    let mut b = [0u8; 4];
    mem.read(scratch, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Everything while frozen. Returns (pages, threads).
/// What one frozen process holds, collected before anything is written.
struct ProcessDump {
    pid: i32,
    core: ProcessCore,
    areas: Vec<memory::DumpArea>,
    files: crstream_proto::FileTable,
    signals: crstream_proto::SignalState,
    threads: Vec<crstream_proto::ThreadCore>,
}

fn dump_frozen(
    tree: &mut FrozenTree,
    opts: &DumpOptions,
    sink: &mut dyn ImageSink,
) -> Result<(u64, usize), DumpError> {
    let fail_at = test_fail_point();
    mark_shared_tables(tree)?;
    let mut procs = Vec::new();
    let mut files_ctx = crate::fdkinds::DumpCtx::default();
    files_ctx.shell_job = opts.shell_job;
    files_ctx.job_tty = proc::stat(tree.procs[0].pid)
        .map(|s| s.field(7))
        .unwrap_or(0);
    let mut unlinked = crate::unlinked::Collector::default();
    let mut sysv = crate::sysv::Collector::default();
    for frozen in tree.procs.iter_mut() {
        procs.push(collect(frozen, &mut files_ctx, &mut unlinked, &mut sysv)?);
    }
    // Unix sockets are rebuilt as pairs: both ends must be in the tree.
    files_ctx.check_unix_peers()?;
    mark_shared_files(&mut procs);
    share_memory(&mut procs)?;
    refuse_session_terminal(tree, &procs)?;
    let root = &procs[0];
    sink.record(
        0,
        Body::Inventory(Inventory {
            format_version: crstream_proto::FORMAT_VERSION as u32,
            crstream_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: uname_release(),
            arch: "x86_64".into(),
            page_size: PAGE_SIZE as u32,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            hostname: hostname(),
            cpu_flags: cpu_flags(),
            xfeatures_mask: xcr0(),
            xsave_size: root.threads[0].xstate.len() as u32,
            root_pid: root.pid as u32,
            leave_running: opts.leave_running,
            shell_job: opts.shell_job,
        }),
    )?;
    sink.record(
        0,
        Body::ProcessTree(ProcessTree {
            processes: tree.entries.clone(),
        }),
    )?;
    unlinked.write_records(sink)?;
    for seg in sysv.into_records() {
        sink.record(0, Body::SysvShm(seg))?;
    }
    let mut page_streams = Vec::new();
    for p in procs.iter_mut() {
        let pid = p.pid;
        let ps = sink.declare(
            StreamKind::Process,
            pid as u32,
            0,
            &format!("process {pid}"),
        )?;
        page_streams.push(sink.declare(
            StreamKind::Pages,
            pid as u32,
            0,
            &format!("pages of {pid}"),
        )?);
        sink.record(ps, Body::ProcessCore(p.core.clone()))?;
        let pages_total: u64 = p
            .areas
            .iter()
            .flat_map(|a| a.runs.iter())
            .map(|r| r.1 / PAGE_SIZE as u64)
            .sum();
        sink.record(
            ps,
            Body::MemoryMap(crstream_proto::MemoryMap {
                pid: pid as u32,
                areas: p.areas.iter().map(|a| a.area.clone()).collect(),
                pages_total,
            }),
        )?;
        sink.record(ps, Body::FileTable(p.files.clone()))?;
        sink.record(ps, Body::SignalState(p.signals.clone()))?;
        for c in &p.threads {
            let ts = sink.declare(
                StreamKind::Thread,
                pid as u32,
                c.tid,
                &format!("thread {}", c.tid),
            )?;
            sink.record(ts, Body::ThreadCore(c.clone()))?;
        }
    }
    unlinked.write_contents(sink)?;
    sink.end_metadata()?;
    let mut pages = 0;
    let mut threads = 0;
    for (p, stream) in procs.iter().zip(page_streams) {
        let (n, _) = memory::write_pages(
            p.pid,
            &p.areas,
            sink,
            stream,
            fail_at.as_deref() == Some("memory"),
        )?;
        pages += n;
        threads += p.threads.len();
        tracing::info!(pid = p.pid, pages = n, threads = p.threads.len(), "dumped");
    }
    Ok((pages, threads))
}

/// A shell job's terminal is replaced by the restorer's, which works for
/// a job of a shell (the session and its leader stay behind). A tree that
/// leads its own session with a terminal would need that terminal itself.
fn refuse_session_terminal(tree: &FrozenTree, procs: &[ProcessDump]) -> Result<(), DumpError> {
    let root = &tree.entries[0];
    if root.sid != root.pid {
        return Ok(());
    }
    for p in procs {
        if let Some(f) = p.files.files.iter().find(|f| f.kind() == FileKind::Tty) {
            return Err(DumpError::UnsupportedFile {
                pid: p.pid,
                fd: f.fd as i32,
                what: format!(
                    "{} (a terminal, and the dumped tree leads its own session {}: \
                     --shell-job hands a job the restorer's terminal, it cannot give a \
                     session back its own)",
                    f.path, root.sid
                ),
            });
        }
    }
    Ok(())
}

/// Processes of the tree may share their fd table (CLONE_FILES) or their
/// cwd, root and umask (CLONE_FS) with their parent: they are marked, and
/// restore forks them sharing those again. Sharing that restore could not
/// rebuild that way is refused: memory (CLONE_VM without CLONE_THREAD, e.g.
/// a vfork child before exec), or a table shared with a process other than
/// the parent (the parent would come back with a table of its own).
fn mark_shared_tables(tree: &mut FrozenTree) -> Result<(), DumpError> {
    const KCMP_VM: i32 = 1;
    const KCMP_FILES: i32 = 2;
    const KCMP_FS: i32 = 3;
    // SAFETY: kcmp with integer arguments.
    let same =
        |a: i32, b: i32, kind: i32| unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, 0, 0) == 0 };
    let pids: Vec<i32> = tree.procs.iter().map(|p| p.pid).collect();
    for (j, &b) in pids.iter().enumerate().skip(1) {
        let entry = tree
            .entries
            .iter_mut()
            .find(|e| e.pid as i32 == b)
            .expect("every frozen process has an entry");
        let parent = entry.ppid as i32;
        for (kind, what) in [
            (KCMP_VM, "its memory"),
            (KCMP_FILES, "its fd table"),
            (KCMP_FS, "its cwd, root and umask"),
        ] {
            if kind != KCMP_VM && same(parent, b, kind) {
                if kind == KCMP_FILES {
                    entry.shares_files_with_parent = true;
                } else {
                    entry.shares_fs_with_parent = true;
                }
                continue;
            }
            if let Some(&a) = pids[..j].iter().find(|&&a| same(a, b, kind)) {
                return Err(DumpError::Unsupported {
                    pid: b,
                    what: "shared process state",
                    reason: if kind == KCMP_VM {
                        format!("it shares {what} with process {a} (CLONE_VM without threads)")
                    } else {
                        format!("it shares {what} with process {a}, which is not its parent")
                    },
                });
            }
        }
    }
    Ok(())
}

/// Gives every open file description held by more than one process of the
/// tree one `shared_id`, so that restore opens it once and shares it.
fn mark_shared_files(procs: &mut [ProcessDump]) {
    const KCMP_FILE: i32 = 0;
    let mut owners: Vec<(i32, u32, u64, u64)> = Vec::new(); // pid, fd, dev, inode
    for i in 0..procs.len() {
        let pid = procs[i].pid;
        for fi in 0..procs[i].files.files.len() {
            let f = &procs[i].files.files[fi];
            if f.dup_of_fd.is_some() {
                continue;
            }
            let found = owners.iter().find(|&&(op, ofd, dev, ino)| {
                op != pid
                    && dev == f.dev
                    && ino == f.inode
                    // SAFETY: kcmp with integer arguments.
                    && unsafe {
                        libc::syscall(libc::SYS_kcmp, op, pid, KCMP_FILE, ofd, f.fd)
                    } == 0
            });
            match found.copied() {
                Some((op, ofd, _, _)) => {
                    let id = ((op as u64) << 32) | ofd as u64;
                    procs[i].files.files[fi].shared_id = id;
                    let owner = procs.iter_mut().find(|p| p.pid == op).expect("owner");
                    if let Some(of) = owner.files.files.iter_mut().find(|x| x.fd == ofd) {
                        of.shared_id = id;
                    }
                }
                None => owners.push((pid, f.fd, f.dev, f.inode)),
            }
        }
    }
    // dups of a shared fd share it too
    for p in procs.iter_mut() {
        let ids: Vec<(u32, u64)> = p.files.files.iter().map(|f| (f.fd, f.shared_id)).collect();
        for f in p.files.files.iter_mut() {
            if let Some(of) = f.dup_of_fd
                && let Some(&(_, id)) = ids.iter().find(|(fd, _)| *fd == of)
            {
                f.shared_id = id;
            }
        }
    }
}

/// Shared anonymous memory seen by several processes is restored once (in
/// the first process that maps it) and mapped from there by the others:
/// its pages are saved once, where the first mapping covers them.
fn share_memory(procs: &mut [ProcessDump]) -> Result<(), DumpError> {
    let mut first: Vec<(u64, u64, u64)> = Vec::new(); // shmem id, pgoff, end offset
    for p in procs.iter_mut() {
        for a in p.areas.iter_mut().filter(|a| a.area.shmem_id != 0) {
            let (off, end) = (a.area.pgoff, a.area.pgoff + a.area.end - a.area.start);
            match first.iter().find(|f| f.0 == a.area.shmem_id) {
                Some(&(_, fo, fe)) if fo <= off && end <= fe => {
                    a.runs.clear();
                    a.area.has_pages = false;
                }
                Some(_) => {}
                None => first.push((a.area.shmem_id, off, end)),
            }
        }
    }
    Ok(())
}

/// Reads everything restore needs of one frozen process, by /proc and by
/// injected syscalls (undone before this returns).
fn collect(
    frozen: &mut Frozen,
    files_ctx: &mut crate::fdkinds::DumpCtx,
    unlinked: &mut crate::unlinked::Collector,
    sysv: &mut crate::sysv::Collector,
) -> Result<ProcessDump, DumpError> {
    let pid = frozen.pid;
    let proc_err = |err| DumpError::Proc { pid, err };

    // What /proc gives, and refusals, before touching anything.
    let status = proc::status(pid).map_err(proc_err)?;
    if status.seccomp != 0 {
        return Err(DumpError::Unsupported {
            pid,
            what: "seccomp",
            reason: "the process has seccomp filters".into(),
        });
    }
    let stat = proc::stat(pid).map_err(proc_err)?;
    let smaps = proc::smaps(pid).map_err(proc_err)?;
    let mut areas = memory::plan(pid, &smaps, unlinked, sysv)?;
    let files = crate::files::dump(files_ctx, unlinked, pid)?;
    memory::scan(pid, &mut areas)?;
    let vdso = smaps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or(TaskError::NoSyscallInsn { pid })?;
    let mem = RemoteMem::open(pid, false)?;
    let mut vdso_bytes = vec![0u8; vdso.len() as usize];
    mem.read(vdso.start, &mut vdso_bytes)?;
    let insn =
        find_syscall_insn(&vdso_bytes, vdso.start).ok_or(TaskError::NoSyscallInsn { pid })?;

    // Injected syscalls: scratch memory first, unmapped at the end.
    let leader_regs = frozen.threads[0].regs;
    frozen.threads[0].touched = true;
    let leader = Remote {
        tid: pid,
        syscall_ip: insn,
        base: leader_regs,
    };
    let scratch = leader.call(
        "mmap(scratch)",
        libc::SYS_mmap,
        &[
            0,
            PAGE_SIZE as u64,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )? as u64;
    let injected = (|| -> Result<_, DumpError> {
        let signals = crate::signals::dump(pid, &leader, &mem, scratch)?;
        let itimers = crate::timers::dump(&leader, &mem, scratch)?;
        let tids: Vec<i32> = frozen.threads.iter().map(|t| t.tid).collect();
        let posix_timers = crate::timers::dump_posix(pid, &tids, &leader, &mem, scratch)?;
        let mm = crate::mm::dump(pid, &stat, &leader)?;
        let pdeath = prctl_int(
            &leader,
            &mem,
            scratch,
            "prctl(PR_GET_PDEATHSIG)",
            libc::PR_GET_PDEATHSIG as u64,
        )?;
        let subreaper = prctl_int(
            &leader,
            &mem,
            scratch,
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::PR_GET_CHILD_SUBREAPER as u64,
        )?;
        let securebits = leader.call(
            "prctl(PR_GET_SECUREBITS)",
            libc::SYS_prctl,
            &[libc::PR_GET_SECUREBITS as u64],
        )? as u32;
        let mut cores = Vec::new();
        for t in frozen.threads.iter_mut() {
            t.touched = true;
            let remote = Remote {
                tid: t.tid,
                syscall_ip: insn,
                base: t.regs,
            };
            cores.push(threads::dump(
                pid, t.tid, &t.regs, t.mask, &remote, &mem, scratch,
            )?);
        }
        Ok((
            signals,
            (itimers, posix_timers),
            mm,
            pdeath,
            subreaper,
            securebits,
            cores,
        ))
    })();
    let unmapped = leader.call(
        "munmap(scratch)",
        libc::SYS_munmap,
        &[scratch, PAGE_SIZE as u64],
    );
    let (signals, (itimers, posix_timers), mm, pdeath, subreaper, securebits, cores) = injected?;
    unmapped?;

    let mut rlimits = Vec::new();
    // RLIMIT_CPU (0) .. RLIMIT_RTTIME (15)
    for res in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 reading into a local struct.
        if unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) } == 0 {
            rlimits.push(Rlimit {
                resource: res,
                cur: old.rlim_cur,
                max: old.rlim_max,
            });
        }
    }
    let personality = proc::read_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let core = ProcessCore {
        pid: pid as u32,
        comm: stat.comm.clone(),
        personality,
        umask: status.umask,
        cwd: proc::read_link(format!("/proc/{pid}/cwd")).map_err(proc_err)?,
        root: proc::read_link(format!("/proc/{pid}/root")).map_err(proc_err)?,
        creds: Some(crate::creds::from_status(&status, securebits)),
        rlimits,
        mm: Some(mm),
        itimer_real: Some(itimers[0]),
        itimer_virtual: Some(itimers[1]),
        itimer_prof: Some(itimers[2]),
        exit_signal: stat.field(38) as u32,
        pdeath_signal: pdeath,
        cmdline: proc::read_bytes(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        child_subreaper: subreaper as u64,
        posix_timers,
    };

    Ok(ProcessDump {
        pid,
        core,
        areas,
        files,
        signals,
        threads: cores,
    })
}
