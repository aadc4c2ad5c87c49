//! Freezing a process tree for dump: every thread of every process stopped
//! under ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT), top down, with the
//! tree's entries (PIDs, parents, sessions, zombies). Dropping the frozen
//! tree puts back what dump changed and lets every process run on.

use crate::error::{DumpError, TaskError};
use crate::escape::Gadgets;
use crate::inject::{Remote, RemoteMem, Resume, adjust_restart};
use crate::proc;
use crate::sys::kcmp::{self, Shared};
use crate::sys::ptrace::{self, Regs, Stop};
use crstream_proto::{ProcessEntry, ProcessState};

/// One thread of a frozen process.
pub(crate) struct FrozenThread {
    pub tid: i32,
    /// Its registers and signal mask when it was stopped.
    pub regs: Regs,
    pub mask: u64,
    /// Syscalls were injected into it: its registers and mask may have
    /// been changed (and are put back on release).
    touched: bool,
    /// The signal that stopped it, if it was in a group stop (SIGSTOP,
    /// SIGTSTP, ...; it stays stopped when released): 0 if it ran.
    pub group_stop: i32,
    /// Inside restart_syscall: the call it restarts (see [`restarting`]).
    pub restarting: Option<i64>,
    /// Its escape frame and alternate signal stack, once the first of its
    /// injectors placed the frame: the later ones use the same.
    escape: Option<crate::inject::PlacedEscape>,
}

impl FrozenThread {
    /// A way to inject syscalls into this thread (see
    /// [`Remote::for_dump`]), with an escape frame below `below` when the
    /// process's `gadgets` were found.
    pub(crate) fn remote(
        &mut self,
        syscall_ip: u64,
        gadgets: Option<&Gadgets>,
        mem: &RemoteMem,
        below: u64,
    ) -> Remote {
        self.touched = true;
        let remote = Remote::for_dump(self.tid, syscall_ip, self.regs, self.mask);
        match self.escape {
            Some(placed) => remote.with_placed_escape(placed),
            None => {
                let remote = remote.with_escape(gadgets, mem, below);
                self.escape = Some(remote.placed_escape());
                remote
            }
        }
    }
}

/// Every thread of one process, stopped under ptrace. Dropping it puts
/// every register and mask back and detaches: the process runs on (or
/// stays stopped, if it was).
pub(crate) struct Frozen {
    pub pid: i32,
    /// Leader first.
    pub threads: Vec<FrozenThread>,
    /// The signal of the group stop it was in (0: it ran); dump continued
    /// it under ptrace (see `group_stop.rs`).
    pub stop_signal: i32,
    /// The ptrace options its threads were seized with.
    pub options: u64,
    released: bool,
}

/// For a thread inside restart_syscall (a call a stop interrupted, which
/// the kernel restarts from its restart_block, which no interface reads):
/// the call it restarts, told by the restart function on its kernel stack.
/// Read before the freeze interrupts it (then the stack shows the ptrace
/// stop); None for any other thread, or one whose call is not known here.
fn restarting(tid: i32) -> Option<i64> {
    // "NR ARG1 ... ARG6 SP PC" (the arguments are those of the first call).
    let call = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?;
    let mut fields = call.split_whitespace();
    if fields.next()? != libc::SYS_restart_syscall.to_string() {
        return None;
    }
    let first_arg = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    let stack = std::fs::read_to_string(format!("/proc/{tid}/stack")).ok()?;
    let has = |f: &str| stack.lines().any(|l| l.contains(&format!("] {f}+")));
    // A stack that shows nothing above the system call entry: the restart
    // function is scheduler code, which stacks leave out, as is nanosleep's
    // (hrtimer_nanosleep_restart); the others show.
    const ENTRY: [&str; 5] = [
        "do_syscall_64",
        "entry_SYSCALL_64",
        "x64_sys_call",
        "__x64_sys_restart_syscall",
        "__do_sys_restart_syscall",
    ];
    let hidden = !stack.trim().is_empty()
        && stack
            .lines()
            .all(|l| ENTRY.iter().any(|f| l.contains(&format!("] {f}"))));
    if has("do_restart_poll") {
        Some(libc::SYS_poll)
    } else if has("futex_wait_restart") {
        Some(libc::SYS_futex)
    } else if has("hrtimer_nanosleep_restart") || hidden {
        // nanosleep's first argument is a pointer, clock_nanosleep's a
        // clock id.
        Some(if first_arg < 4096 {
            libc::SYS_clock_nanosleep
        } else {
            libc::SYS_nanosleep
        })
    } else if has("posix_cpu_nsleep_restart") || has("alarm_timer_nsleep_restart") {
        Some(libc::SYS_clock_nanosleep)
    } else {
        None
    }
}

/// Whether a signal thread `t` would take is pending for it (or for its
/// process); if that cannot be read, as if one were.
fn takes_a_signal(t: &FrozenThread) -> bool {
    proc::status(t.tid).map_or(true, |s| (s.sig_pnd | s.shd_pnd) & !t.mask != 0)
}

/// Waits until a seized+interrupted thread reaches its interrupt stop,
/// passing on signals it was about to receive. Returns the stop's signal:
/// SIGTRAP for the interrupt of a running thread, the stopping signal
/// (SIGSTOP, SIGTSTP, ...) for a thread in a group stop; None: it exited.
pub(crate) fn wait_interrupt_stop(
    tid: i32,
    limit: Option<std::time::Duration>,
) -> Result<Option<i32>, TaskError> {
    let until = limit.map(|l| std::time::Instant::now() + l);
    loop {
        let (status, stop) = match until {
            None => ptrace::wait(tid)?,
            Some(until) => ptrace::wait_until(tid, until)?.ok_or(TaskError::UnexpectedStop {
                tid,
                status: 0,
                while_doing: "waiting for the interrupt stop (none came in time)",
            })?,
        };
        match stop {
            Stop::Event(ptrace::PTRACE_EVENT_STOP) => return Ok(Some(libc::WSTOPSIG(status))),
            // A signal-delivery-stop: deliver it; the pending interrupt
            // stops the thread again before it runs user code.
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Gone => return Ok(None),
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

/// The ptrace options the threads of `pid` are seized with to inject
/// syscalls: a process with seccomp filters (on any thread: a thread may
/// filter its own syscalls alone) has them suspended while traced, so that
/// they do not filter the injected syscalls.
pub(crate) fn seize_options(pid: i32) -> u64 {
    let filtered = |tid: i32| proc::status(tid).is_ok_and(|s| s.seccomp != 0);
    let seccomp = proc::tasks(pid).is_ok_and(|tids| tids.into_iter().any(filtered));
    ptrace::PTRACE_O_TRACESYSGOOD
        | if seccomp {
            ptrace::PTRACE_O_SUSPEND_SECCOMP
        } else {
            0
        }
}

impl Frozen {
    pub(crate) fn freeze(pid: i32) -> Result<Self, DumpError> {
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            stop_signal: 0,
            options: seize_options(pid),
            released: false,
        };
        let options = f.options;
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
                match ptrace::seize(tid, options) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(err) => return Err(DumpError::Attach { pid, tid, err }),
                }
                f.threads.push(FrozenThread {
                    tid,
                    regs: ptrace::zero_regs(),
                    mask: 0,
                    touched: false,
                    group_stop: 0,
                    restarting: restarting(tid),
                    escape: None,
                });
                ptrace::interrupt(tid)?;
                let Some(sig) = wait_interrupt_stop(tid, None)? else {
                    f.threads.pop();
                    if tid == pid {
                        return Err(DumpError::NoSuchProcess { pid });
                    }
                    continue;
                };
                let t = f.threads.last_mut().expect("just pushed");
                if sig != libc::SIGTRAP {
                    t.group_stop = sig;
                }
                t.regs = ptrace::get_regs(tid)?;
                t.mask = ptrace::get_sigmask(tid)?;
            }
        }
        if f.threads.first().map(|t| t.tid) != Some(pid) {
            return Err(DumpError::NoSuchProcess { pid });
        }
        f.stop_signal = f.threads.iter().map(|t| t.group_stop).max().unwrap_or(0);
        if f.stop_signal != 0 {
            // Continued under ptrace, so that syscalls can be injected;
            // stopped again when released.
            let tids: Vec<i32> = f.threads.iter().map(|t| t.tid).collect();
            crate::group_stop::leave(pid, &tids)?;
            for t in f.threads.iter_mut() {
                t.regs = ptrace::get_regs(t.tid)?;
                t.mask = ptrace::get_sigmask(t.tid)?;
            }
        }
        tracing::debug!(pid, threads = f.threads.len(), "frozen");
        Ok(f)
    }

    /// Puts registers and masks back and detaches every thread.
    pub(crate) fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for t in self.threads.iter().rev() {
            let again = crate::inject::ended_by_the_freeze(&t.regs) && !takes_a_signal(t);
            if t.touched || again {
                let mut regs = t.regs;
                if again {
                    crate::inject::call_again(&mut regs);
                }
                adjust_restart(&mut regs, Resume::SameTask);
                if let Err(e) = ptrace::set_regs(t.tid, &regs)
                    && !e.is_gone()
                {
                    tracing::error!(tid = t.tid, "restoring registers: {e}");
                }
            }
            if t.touched
                && let Err(e) = ptrace::set_sigmask(t.tid, t.mask)
                && !e.is_gone()
            {
                tracing::error!(tid = t.tid, "restoring the signal mask: {e}");
            }
        }
        if self.stop_signal != 0 {
            let tids: Vec<i32> = self.threads.iter().map(|t| t.tid).collect();
            let handled = proc::status(self.pid)
                .is_ok_and(|s| s.sig_cgt & (1 << (self.stop_signal - 1)) != 0);
            if let Err(e) = crate::group_stop::enter(
                self.pid,
                &tids,
                self.stop_signal,
                handled,
                crate::group_stop::OtherSignals::Deliver,
                true,
            ) {
                tracing::error!(pid = self.pid, "stopping it again: {e}");
            }
        }
        for t in self.threads.iter().rev() {
            match ptrace::detach(t.tid, 0) {
                Ok(()) => {}
                // Killed while we held it (only SIGKILL ends a ptrace
                // stop): a zombie until its tracer, us, collects it.
                Err(crate::error::TaskError::Ptrace { err, .. })
                    if err.raw_os_error() == Some(libc::ESRCH) =>
                {
                    ptrace::reap(t.tid)
                }
                Err(e) => tracing::error!(tid = t.tid, "detaching: {e}"),
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

/// The frozen tree: every live process stopped under ptrace, and the
/// entries of every process, parents before children (the order restore
/// creates them in).
pub(crate) struct FrozenTree {
    pub procs: Vec<Frozen>,
    pub entries: Vec<ProcessEntry>,
    /// The scan for processes the tree traces (see [`refuse_tracers`]),
    /// under way while the tree is read: it reads every task of the
    /// machine, a few milliseconds the tree would otherwise stay frozen.
    tracers: Option<std::thread::JoinHandle<Result<(), DumpError>>>,
}

/// (pgid, sid) of a process from its /proc/PID/stat.
fn group_and_session(stat: &proc::Stat) -> (u32, u32) {
    (stat.field(5) as u32, stat.field(6) as u32)
}

impl FrozenTree {
    /// Freezes `root` and every descendant, top down: a frozen process
    /// cannot fork, so once it is stopped its list of children is final.
    pub(crate) fn freeze(root: i32) -> Result<Self, DumpError> {
        let mut tree = FrozenTree {
            procs: Vec::new(),
            entries: Vec::new(),
            tracers: None,
        };
        let mut queue = std::collections::VecDeque::from([root]);
        // How many PID namespaces deep the root is.
        let mut root_depth = None;
        while let Some(pid) = queue.pop_front() {
            if pid == std::process::id() as i32 {
                return Err(DumpError::SelfDump { pid });
            }
            let stat = proc::stat(pid).map_err(|_| DumpError::NoSuchProcess { pid })?;
            let (pgid, sid) = group_and_session(&stat);
            if stat.state() == 'Z' || stat.state() == 'X' {
                // A main thread that called pthread_exit: the process
                // runs on in its other threads.
                if std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1) {
                    return Err(DumpError::Unsupported {
                        pid,
                        what: "threads",
                        reason: "its main thread has exited while its other threads run".into(),
                    });
                }
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
            let status = proc::status(pid).map_err(|err| DumpError::Proc { pid, err })?;
            refuse_unfreezable(pid, &stat, &status)?;
            // A namespace made inside for some children (`unshare --pid
            // --fork` in the tree) would come back flattened.
            let depth = *root_depth.get_or_insert(status.nspid.len());
            if status.nspid.len() != depth {
                return Err(DumpError::Unsupported {
                    pid,
                    what: "PID namespace",
                    reason: "it is in a PID namespace made inside the tree (only processes in \
                             the namespace of the tree's root can be restored)"
                        .into(),
                });
            }
            // A vfork parent waits uninterruptibly (state D).
            if stat.state() == 'D' {
                refuse_vfork_parent(pid)?;
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
            tree.entries.push(ProcessEntry {
                pid: pid as u32,
                ppid: status.ppid as u32,
                pgid,
                sid,
                threads: frozen.threads.iter().map(|t| t.tid as u32).collect(),
                state: ProcessState::Alive as i32,
                exit_signal: stat.field(38) as u32,
                stop_signal: frozen.stop_signal as u32,
                comm: stat.comm.clone(),
                cmdline: proc::read_bytes(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                ..Default::default()
            });
            tree.procs.push(frozen);
            queue.extend(proc::children(pid).map_err(|err| DumpError::Proc { pid, err })?);
        }
        // (tid, pid) of every frozen thread.
        let threads: Vec<(i32, i32)> = tree
            .procs
            .iter()
            .flat_map(|f| f.threads.iter().map(|t| (t.tid, f.pid)))
            .collect();
        tree.tracers = match std::thread::Builder::new().name("tracers".into()).spawn({
            let threads = threads.clone();
            move || refuse_tracers(&threads)
        }) {
            Ok(scan) => Some(scan),
            // No thread to spare (a pids limit): the scan is done here.
            Err(_) => {
                refuse_tracers(&threads)?;
                None
            }
        };
        tracing::debug!(root, processes = tree.entries.len(), "tree frozen");
        Ok(tree)
    }

    /// Waits for the scan started when the tree was frozen: an error if a
    /// process of the tree traces another. Must be called while the tree
    /// is still frozen, for an answer that holds at the point the image is.
    pub(crate) fn refuse_tracers(&mut self) -> Result<(), DumpError> {
        match self.tracers.take().map(|scan| scan.join()) {
            None => Ok(()),
            Some(Ok(answer)) => answer,
            Some(Err(_)) => Err(DumpError::Unsupported {
                pid: self.procs.first().map_or(0, |f| f.pid),
                what: "tracer",
                reason: "the scan for processes the tree traces failed (a bug of crstream)".into(),
            }),
        }
    }

    pub(crate) fn release(&mut self) {
        for f in self.procs.iter_mut().rev() {
            f.release();
        }
    }

    /// SIGKILLs every process first (so none runs on without the others).
    /// That ends the dump: a process stopped under ptrace goes from SIGKILL
    /// straight to its exit, never to its own code again. The exits are
    /// collected on a thread of their own, children first (the first
    /// process of a PID namespace finishes its exit only once every other
    /// process there is reaped): a killed process frees all its memory
    /// before it exits (~0.15 s per GiB here), which is no part of the
    /// dump. A restore waits for PIDs still held by such exits
    /// (`proc::wait_pid_released`); if crstream exits first, the kernel
    /// hands the exits to the processes' parents.
    pub(crate) fn kill(&mut self) {
        for f in &self.procs {
            let Ok(mem) = crate::inject::RemoteMem::open(f.pid, true) else {
                continue;
            };
            for t in &f.threads {
                empty_robust_list(&mem, t.tid);
            }
        }
        for f in &mut self.procs {
            f.released = true;
            let _ = crate::sys::process::kill(f.pid, libc::SIGKILL);
        }
        let tids: Vec<i32> = self
            .procs
            .iter()
            .rev()
            .flat_map(|f| f.threads.iter().rev().map(|t| t.tid))
            .collect();
        let reap_all = move || tids.into_iter().for_each(ptrace::reap);
        let reaper = std::thread::Builder::new().name("reaper".into());
        if let Err(e) = reaper.spawn(reap_all.clone()) {
            tracing::debug!("no thread to collect the exits ({e}): collected here");
            reap_all();
        }
    }

    /// Processes of the tree may share their fd table (CLONE_FILES) or
    /// their cwd, root and umask (CLONE_FS) with their parent: they are
    /// marked, and restore forks them sharing those again. Sharing that
    /// restore could not rebuild that way is refused: memory (CLONE_VM
    /// without CLONE_THREAD, e.g. a vfork child before exec), or a table
    /// shared with a process other than the parent (the parent would come
    /// back with a table of its own).
    pub(crate) fn mark_shared_tables(&mut self) -> Result<(), DumpError> {
        let same = |a: i32, b: i32, what: Shared| kcmp::shares(a, b, what).unwrap_or(false);
        let pids: Vec<i32> = self.procs.iter().map(|p| p.pid).collect();
        for (j, &b) in pids.iter().enumerate().skip(1) {
            let entry = self
                .entries
                .iter_mut()
                .find(|e| e.pid as i32 == b)
                .expect("every frozen process has an entry");
            let parent = entry.ppid as i32;
            for (what, name) in [
                (Shared::Vm, "its memory"),
                (Shared::Files, "its fd table"),
                (Shared::Fs, "its cwd, root and umask"),
            ] {
                if what != Shared::Vm && same(parent, b, what) {
                    if what == Shared::Files {
                        entry.shares_files_with_parent = true;
                    } else {
                        entry.shares_fs_with_parent = true;
                    }
                    continue;
                }
                if let Some(&a) = pids[..j].iter().find(|&&a| same(a, b, what)) {
                    return Err(DumpError::Unsupported {
                        pid: b,
                        what: "shared process state",
                        reason: if what == Shared::Vm {
                            format!("it shares {name} with process {a} (CLONE_VM without threads)")
                        } else {
                            format!("it shares {name} with process {a}, which is not its parent")
                        },
                    });
                }
            }
        }
        Ok(())
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        self.release();
    }
}

/// Refuses, before anything is changed, a process dump cannot freeze or
/// restore cannot bring back, saying which and why.
fn refuse_unfreezable(pid: i32, stat: &proc::Stat, status: &proc::Status) -> Result<(), DumpError> {
    /// Task flag of a kernel thread (include/linux/sched.h).
    const PF_KTHREAD: u64 = 0x0020_0000;
    let refuse = |what: &'static str, reason: String| DumpError::Unsupported { pid, what, reason };
    if stat.field(9) & PF_KTHREAD != 0 {
        return Err(refuse(
            "kernel thread",
            format!(
                "{} runs in the kernel and has no user state to dump",
                stat.comm
            ),
        ));
    }
    if status.tracer_pid != 0 {
        let tracer = status.tracer_pid;
        let comm = proc::read_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
        return Err(refuse(
            "traced process",
            format!(
                "pid {tracer} ({}) traces it, and a process has one tracer at a time",
                comm.trim()
            ),
        ));
    }
    let own = proc::status(std::process::id() as i32)
        .map(|s| s.nspid.len())
        .unwrap_or(1);
    // One namespace inside ours is dumped with its PIDs there (see
    // pidns::TreeNamespace); deeper nesting is not.
    if status.nspid.len() > own + 1 {
        return Err(refuse(
            "PID namespace",
            format!(
                "it is {} PID namespaces inside crstream's (PID {} in the innermost); one \
                 level is supported",
                status.nspid.len() - own,
                status.nspid.last().copied().unwrap_or(0)
            ),
        ));
    }
    if status.nspid.len() == own && status.nspid.last() == Some(&1) {
        return Err(refuse(
            "PID namespace",
            "it is the first process (PID 1) of its PID namespace, which no signal from \
             inside ends"
                .into(),
        ));
    }
    crate::namespaces::refuse_unsaved(pid, status.nspid.len() > own)
}

/// Refuses a tree one of whose threads traces a process (a debugger, a
/// strace, a sandbox supervisor): the attachment ends with the dumped
/// process, and the restored one would go on believing it holds its
/// tracee. A tracee inside the tree is refused when it is frozen (its
/// seize fails); this finds the tracees outside it. Once the tree is frozen, no
/// thread of it can attach to another process: the scan is final.
fn refuse_tracers(threads: &[(i32, i32)]) -> Result<(), DumpError> {
    let tracer_pid = |tid: i32| threads.iter().find(|t| t.0 == tid).map(|t| t.1);
    let first = threads.first().map_or(0, |t| t.1);
    for pid in proc::processes().map_err(|err| DumpError::Proc { pid: first, err })? {
        let Ok(tasks) = proc::tasks(pid) else {
            continue; // gone meanwhile
        };
        for tid in tasks {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
                continue;
            };
            let traced_by = text
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
                .unwrap_or(0);
            if traced_by == 0 {
                continue;
            }
            if let Some(tracer) = tracer_pid(traced_by) {
                let comm = proc::read_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Err(DumpError::Unsupported {
                    pid: tracer,
                    what: "tracer",
                    reason: format!(
                        "it traces pid {pid} ({}{}), and a ptrace attachment is not restored",
                        comm.trim(),
                        if tid == pid {
                            String::new()
                        } else {
                            format!(", thread {tid}")
                        }
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Empties the robust futex list of thread `tid` (its head made
/// to point to itself, no operation pending), so that its exit at the
/// dump's kill leaves the robust mutexes it holds alone: the kernel would
/// mark each one's owner dead (FUTEX_OWNER_DIED), and one in shared memory
/// (not in the image) would then be taken by another process while the
/// restored thread still holds it. Best effort: a thread without a list, or
/// whose head cannot be written, exits as it would have.
fn empty_robust_list(mem: &crate::inject::RemoteMem, tid: i32) {
    let (mut head, mut len) = (0u64, 0usize);
    // SAFETY: get_robust_list writes the head pointer and its length into
    // the two locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r != 0 || head == 0 {
        return;
    }
    // struct robust_list_head: list.next at 0, list_op_pending at 16.
    let _ = mem.write(head, &head.to_ne_bytes());
    let _ = mem.write(head + 16, &0u64.to_ne_bytes());
}

/// Refuses a process whose child shares its memory (a vfork child that
/// has not exec'd yet, CLONE_VM without threads), before freezing it: a
/// vfork parent waits in the kernel, where no ptrace stop reaches it, until
/// the child execs or exits; the freeze would wait as long, silently.
fn refuse_vfork_parent(pid: i32) -> Result<(), DumpError> {
    for child in proc::children(pid).map_err(|err| DumpError::Proc { pid, err })? {
        if kcmp::shares(pid, child, Shared::Vm).unwrap_or(false) {
            return Err(DumpError::Unsupported {
                pid: child,
                what: "shared process state",
                reason: format!(
                    "it shares its memory with process {pid} (CLONE_VM without threads, such \
                     as a vfork child that has not exec'd yet)"
                ),
            });
        }
    }
    Ok(())
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
