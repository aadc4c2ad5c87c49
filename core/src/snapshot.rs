//! Live dump (`--leave-running`): a copy-on-write snapshot of a frozen
//! process's memory, so that it runs on while its pages are written out.
//!
//! While the process is frozen, crstream injects a `clone3` without
//! CLONE_VM into it: the child's memory is the parent's at that instant,
//! shared copy-on-write by the kernel, so whatever the parent writes,
//! unmaps or releases afterwards, the child's pages stay as they were at
//! the freeze. The pages are read from the child with process_vm_readv;
//! then the child is killed and the parent is made to reap it.
//!
//! The child never runs a user instruction: it is created under ptrace
//! (PTRACE_O_TRACECLONE), stopped, and gets PTRACE_O_EXITKILL at once, so
//! it dies with crstream. It shares the parent's fd table (CLONE_FILES:
//! no file is kept open by it), reports no exit signal (exit_signal 0:
//! the parent's plain `wait` never sees it), and starts with a stack
//! pointer below `mmap_min_addr` and every signal blocked, so that in the
//! microseconds before EXITKILL is set, a crstream that dies would leave a
//! child that faults on its first stack access and dies of SIGSEGV. Dead,
//! it stays a zombie until its parent reaps it: a pidfd of it goes to the
//! dump's supervisor at once (`DumpOptions::handoff`), which has the
//! parent reap it should the worker die ([`reap_abandoned`]).
//!
//! Areas the child does not share copy-on-write (MAP_SHARED memory, which
//! the parent's writes still reach; MADV_DONTFORK and MADV_WIPEONFORK
//! areas, which the child lacks or sees zeroed) are written while the
//! process is still frozen.

use crate::dump::SCRATCH_LEN;
use crate::error::{DumpError, TaskError};
use crate::escape::Gadgets;
use crate::inject::{Remote, RemoteMem};
use crate::kind::Injector;
use crate::sys::process::CloneArgs;
use crate::sys::ptrace::{self, Stop};
use rustix::event::{PollFd, PollFlags, Timespec};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

/// A stopped copy-on-write child of a process being dumped. Dropping it
/// kills the child and has the process reap it.
pub(crate) struct Snapshot {
    /// The process it is a snapshot of.
    pub parent: i32,
    /// The child, whose memory is the parent's at the freeze.
    pub pid: i32,
    /// Where syscalls are injected into the child: a `syscall`
    /// instruction, and scratch memory of 256 bytes (the parent's, which
    /// its own copy of the memory has too).
    pub syscall_ip: u64,
    pub scratch: u64,
    ended: bool,
}

/// Stack pointer the child starts with: below `mmap_min_addr`, where
/// nothing can ever be mapped.
const NO_STACK: u64 = 0x1000;

impl Snapshot {
    /// Takes a snapshot of the process `leader` belongs to, with its
    /// ptrace options `options` (put back after), through `remote`, the
    /// leader's injector, and a `scratch` buffer of 88 bytes in it. A
    /// pidfd of the snapshot goes to `handoff` (the supervisor of the dump,
    /// see `DumpOptions::handoff`), which has its parent reap it should
    /// crstream die first (see [`reap_abandoned`]).
    pub(crate) fn take(
        remote: &Remote,
        mem: &RemoteMem,
        scratch: u64,
        options: u64,
        handoff: Option<&OwnedFd>,
    ) -> Result<Self, DumpError> {
        let leader = remote.tid;
        tracing::debug!(pid = leader, "taking a memory snapshot");
        let args = CloneArgs {
            flags: (libc::CLONE_FILES | libc::CLONE_FS) as u64,
            stack: NO_STACK,
            stack_size: NO_STACK,
            ..Default::default()
        };
        mem.write(scratch, &args.to_bytes())?;
        ptrace::set_options(leader, options | ptrace::PTRACE_O_TRACECLONE)?;
        let called = remote.raw(libc::SYS_clone3, &[scratch, CloneArgs::SIZE]);
        let put_back = ptrace::set_options(leader, options);
        let (ret, events) = called?;
        let snapshot = Snapshot {
            parent: leader,
            pid: events.child.unwrap_or(0),
            syscall_ip: remote.syscall_ip,
            scratch,
            ended: events.child.is_none(),
        };
        // At once, before anything else can fail or take time.
        if let (Some(child), Some(to)) = (events.child, handoff) {
            let sent = crate::sys::pidfd::open(child).and_then(|pidfd| {
                crate::handoff::hand(to, crate::handoff::SNAPSHOT, pidfd.as_fd())
            });
            if let Err(e) = sent {
                tracing::warn!(pid = leader, "handing the snapshot to the supervisor: {e}");
            }
        }
        match snapshot.stopped(ret, put_back, options) {
            Ok(()) => {
                tracing::debug!(pid = leader, child = snapshot.pid, "memory snapshot taken");
                Ok(snapshot)
            }
            Err(e) => {
                // The parent is still frozen (by us): it reaps the child
                // through the injector we hold.
                let mut snapshot = snapshot;
                if !std::mem::replace(&mut snapshot.ended, true) {
                    ptrace::kill_and_reap(snapshot.pid);
                    let flags = (libc::__WALL | libc::WNOHANG) as u64;
                    let _ = remote.raw(libc::SYS_wait4, &[snapshot.pid as u64, 0, flags, 0]);
                }
                Err(e)
            }
        }
    }

    /// The new child (clone3 returned `ret`), stopped and set to die with
    /// crstream.
    fn stopped(
        &self,
        ret: i64,
        put_back: Result<(), TaskError>,
        options: u64,
    ) -> Result<(), DumpError> {
        let leader = self.parent;
        put_back?;
        if ret < 0 {
            return Err(TaskError::Syscall {
                tid: leader,
                name: "clone3",
                errno: (-ret) as i32,
            }
            .into());
        }
        if self.ended {
            return Err(DumpError::Unsupported {
                pid: leader,
                what: "live dump",
                reason: "the snapshot child was not reported to its tracer".into(),
            });
        }
        match ptrace::wait(self.pid)? {
            (_, Stop::Signal(libc::SIGSTOP) | Stop::Event(ptrace::PTRACE_EVENT_STOP)) => {}
            (status, _) => {
                return Err(TaskError::UnexpectedStop {
                    tid: self.pid,
                    status,
                    while_doing: "waiting for the snapshot child to stop",
                }
                .into());
            }
        }
        // TRACESYSGOOD: syscalls are injected into it too, past the
        // seccomp filters it inherited while its parent's are suspended
        // (setting options replaces those it inherited).
        ptrace::set_options(
            self.pid,
            ptrace::PTRACE_O_EXITKILL
                | ptrace::PTRACE_O_TRACESYSGOOD
                | options & ptrace::PTRACE_O_SUSPEND_SECCOMP,
        )?;
        Ok(())
    }

    /// Injected syscalls into the child, which dies with crstream (no
    /// escape frame needed) and has every signal blocked from its start.
    /// What its calls write into the scratch memory is kept, to be put
    /// back (`RemoteMem::put_back`) before its pages are read.
    pub(crate) fn injector(&self) -> Result<Injector, TaskError> {
        let mem = RemoteMem::open(self.pid, true)?.journaled();
        mem.remember(self.scratch, SCRATCH_LEN as usize)?;
        Ok(Injector {
            leader: Remote::new(self.pid, self.syscall_ip)?,
            mem,
            scratch: self.scratch,
            syscall_ip: self.syscall_ip,
            gadgets: None,
        })
    }

    /// Kills the child, and has the parent (running again: snapshots end
    /// only once the tree is released) reap it: one of its threads is
    /// stopped for as long as one injected wait4 takes.
    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        ptrace::kill_and_reap(self.pid);
        tracing::debug!(
            pid = self.parent,
            child = self.pid,
            "memory snapshot killed"
        );
        if !std::path::Path::new(&format!("/proc/{}", self.parent)).exists() {
            return; // the child went to the parent's reaper
        }
        if let Err(e) = reap_in(self.parent, self.pid) {
            tracing::warn!(
                pid = self.parent,
                child = self.pid,
                "the process could not be made to reap its memory snapshot, which stays a \
                 zombie until it does: {e}"
            );
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.end();
    }
}

/// After the dump's worker died: has the parent of the snapshot `pidfd`
/// names reap it, if that parent is one of `tree`'s processes. Killed
/// with the worker (EXITKILL), a snapshot reports no exit signal, so it
/// would stay a zombie child of the process until the process waited for
/// it. Returns what could not be done.
pub(crate) fn reap_abandoned(pidfd: &OwnedFd, tree: &[i32]) -> Option<String> {
    // -1 once reaped (by the worker, before it died).
    let pid_of = || -> Option<i32> {
        let fd = pidfd.as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        crate::fd::fdinfo_field(&info, "Pid")?.parse().ok()
    };
    let pid = pid_of().filter(|&p| p > 0)?;
    // It dies as its tracer exits, a moment after: its pidfd says when.
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let _ = rustix::event::poll(
        &mut fds,
        Some(&Timespec {
            tv_sec: 2,
            tv_nsec: 0,
        }),
    );
    let stat = crate::proc::stat(pid).ok()?;
    let parent = stat.field(4) as i32;
    // Read about the same process (not reaped and its PID taken since).
    if pid_of() != Some(pid) {
        return None;
    }
    let what = format!("the memory snapshot of pid {parent} (pid {pid})");
    if stat.state() != 'Z' {
        return Some(format!("{what} is still alive"));
    }
    if !tree.contains(&parent) {
        return None; // its process died too: whoever inherited it reaps it
    }
    reap_in(parent, pid)
        .err()
        .map(|e| format!("{what} stays a zombie until the process reaps it: {e}"))
}

/// Injects `wait4(child, NULL, __WALL, NULL)` into a thread of `pid`.
fn reap_in(pid: i32, child: i32) -> Result<(), TaskError> {
    let tids = crate::proc::tasks(pid).map_err(|_| TaskError::Gone {
        tid: pid,
        status: 0,
    })?;
    // Writable: an escape frame goes below the thread's stack (and what
    // it overwrote is put back: see `RemoteMem::journaled`). It stays
    // there: the process's other threads run, and one of them could be
    // taking a signal on an alternate stack this thread shares.
    let mem = RemoteMem::open(pid, true)?.journaled();
    mem.keep_escapes_in_place();
    let syscall_ip = crate::inject::syscall_site(pid, &mem)?;
    let gadgets = Gadgets::find(pid, &mem);
    // As in a dump: seccomp filters, which may filter wait4, suspended.
    let options = crate::freeze::seize_options(pid);
    for tid in tids {
        if ptrace::seize(tid, options).is_err() {
            continue;
        }
        let result = reap_through(tid, syscall_ip, child, gadgets.as_ref(), &mem);
        if let Err(e) = mem.put_back(pid) {
            tracing::warn!(tid, "putting back the memory below its stack: {e}");
        }
        if let Err(e) = ptrace::detach(tid, 0) {
            tracing::debug!(tid, "detaching: {e}");
        }
        return result;
    }
    Err(TaskError::Gone {
        tid: pid,
        status: 0,
    })
}

fn reap_through(
    tid: i32,
    syscall_ip: u64,
    child: i32,
    gadgets: Option<&Gadgets>,
    mem: &RemoteMem,
) -> Result<(), TaskError> {
    ptrace::interrupt(tid)?;
    // Bounded: a thread in an uninterruptible wait (a hung NFS call) must
    // not hold the supervisor of a dead dump forever.
    match crate::freeze::wait_interrupt_stop(tid, Some(Duration::from_secs(2)))? {
        None => return Err(TaskError::Gone { tid, status: 0 }),
        Some(libc::SIGTRAP) => {}
        // In a group stop (SIGSTOP, ...): left alone, it reaps nothing
        // until continued.
        Some(sig) => {
            return Err(TaskError::UnexpectedStop {
                tid,
                status: (sig << 8) | 0x7f,
                while_doing: "reaping the memory snapshot (the process is stopped)",
            });
        }
    }
    let regs = ptrace::get_regs(tid)?;
    let mask = ptrace::get_sigmask(tid)?;
    // Its own registers and mask come back after the call, and from its
    // escape frame (below its stack pointer and red zone) should crstream
    // die during it.
    let remote =
        Remote::for_dump(tid, syscall_ip, regs, mask).with_escape(gadgets, mem, regs.rsp - 128);
    // WNOHANG: the child is dead already (killed and waited for as its
    // tracer), and a call that blocked would hold the thread.
    let flags = (libc::__WALL | libc::WNOHANG) as u64;
    let (ret, _) = remote.raw(libc::SYS_wait4, &[child as u64, 0, flags, 0])?;
    if ret != child as i64 {
        return Err(TaskError::Syscall {
            tid,
            name: "wait4 of the memory snapshot",
            // 0: not a zombie (yet).
            errno: if ret < 0 { (-ret) as i32 } else { libc::EAGAIN },
        });
    }
    Ok(())
}
