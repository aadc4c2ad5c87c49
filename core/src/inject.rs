//! Remote syscall injection: run one syscall inside a ptrace-stopped task by
//! pointing its rip at an existing `syscall` instruction (in the vDSO, or in
//! the restorer's trampoline page) and stepping it with PTRACE_SYSCALL from
//! the entry stop to the exit stop. The task's code is never modified.
//!
//! Also: access to a task's memory through /proc/PID/mem (which works on
//! areas without read or write permission).

use crate::error::TaskError;
use crate::escape::{Escape, Gadgets};
use crate::sys::ptrace::{self, Regs, Stop};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Events seen while a syscall ran (e.g. the tid of a thread created by an
/// injected clone3 under PTRACE_O_TRACECLONE).
#[derive(Debug, Default)]
pub struct SyscallEvents {
    pub clone: bool,
    pub fork: bool,
    /// The task the clone or fork created, by its PID in our namespace.
    pub child: Option<i32>,
}

/// A stopped task into which syscalls can be injected.
pub struct Remote {
    pub tid: i32,
    /// Address of a `syscall` (0f 05) instruction mapped executable in the task.
    pub syscall_ip: u64,
    /// Registers the injected calls start from (all but rip/rax/args kept).
    pub base: Regs,
    /// A task being dumped: what it gets back at the end of every call.
    own: Option<Own>,
    /// Where its calls start from, if it has a way back should crstream
    /// die during one (see [`crate::escape`]).
    escape: Option<Escape>,
    /// Its alternate signal stack (a stack_t), read on the way to placing
    /// the escape frame there.
    altstack: Option<[u8; 24]>,
    /// The escape frame moved to that stack.
    escape_moved: bool,
}

/// A thread's escape frame as placed, and its alternate signal stack.
#[derive(Clone, Copy)]
pub(crate) struct PlacedEscape {
    escape: Option<Escape>,
    altstack: Option<[u8; 24]>,
    moved: bool,
}

/// A task's own registers (ready to resume on its own) and signal mask.
#[derive(Clone, Copy)]
struct Own {
    regs: Regs,
    mask: u64,
}

impl Remote {
    /// A stub being rebuilt: its registers are restore's to set.
    pub fn new(tid: i32, syscall_ip: u64) -> Result<Self, TaskError> {
        let base = ptrace::get_regs(tid)?;
        Ok(Self {
            tid,
            syscall_ip,
            base,
            own: None,
            escape: None,
            altstack: None,
            escape_moved: false,
        })
    }

    /// A task being dumped, stopped with registers `regs` and signal mask
    /// `mask`: it blocks every signal only while a call runs (a pending
    /// one would stop it on the way), and after each call it gets its
    /// registers and mask back, ready to resume on its own (an interrupted
    /// syscall set to restart, see [`adjust_restart`]), so that it never
    /// waits between calls with any state of ours.
    pub(crate) fn for_dump(tid: i32, syscall_ip: u64, regs: Regs, mask: u64) -> Self {
        let mut own = regs;
        adjust_restart(&mut own, Resume::SameTask);
        Self {
            tid,
            syscall_ip,
            base: regs,
            own: Some(Own { regs: own, mask }),
            escape: None,
            altstack: None,
            escape_moved: false,
        }
    }

    /// Gives a task being dumped its way back (a signal frame below
    /// `below`, or on its alternate signal stack: see
    /// `move_escape_to_altstack`), if `gadgets` were found in its process.
    /// Every thread of the process is frozen, their stack pointers noted in
    /// `mem` ([`RemoteMem::note_stack_pointers`]).
    pub(crate) fn with_escape(
        mut self,
        gadgets: Option<&Gadgets>,
        mem: &RemoteMem,
        below: u64,
    ) -> Self {
        if let (Some(g), Some(own)) = (gadgets, self.own) {
            let mark = mem.journal_len();
            self.escape = crate::escape::prepare(self.tid, g, mem, &own.regs, own.mask, below, 0);
            let may_move = !mem.escapes_stay.load(std::sync::atomic::Ordering::Relaxed);
            if let (Some(first), Some(mark), true) = (self.escape, mark, may_move) {
                self.move_escape_to_altstack(g, mem, first.rsp..below, mark);
            }
            crate::failpoint::pause("escape-placed");
        }
        self
    }

    /// Moves the escape frame from below the stack pointer to the top of
    /// the thread's alternate signal stack, if it has one it is not on:
    /// where the kernel writes the frame of any signal its handlers take
    /// there, so nothing of the program's can be. Below the stack pointer
    /// may lie another stack (Go runs goroutines on small stacks in its
    /// heap and takes every signal on an alternate stack), which a dump
    /// killed before it puts back what it wrote would leave overwritten.
    /// The bytes the frame at `first` overwrote are put back at once (a
    /// journaled `mem`, from its write `mark` on): only this one call ran
    /// with the frame there.
    fn move_escape_to_altstack(
        &mut self,
        g: &Gadgets,
        mem: &RemoteMem,
        first: std::ops::Range<u64>,
        mark: usize,
    ) {
        let Some(own) = self.own else {
            return;
        };
        let buf = (first.start - 32) & !15;
        if mem.remember(buf, 24).is_err() {
            return;
        }
        if !matches!(self.raw(libc::SYS_sigaltstack, &[0, buf]), Ok((0, _))) {
            return;
        }
        let mut ss = [0u8; 24];
        if mem.read(buf, &mut ss).is_err() {
            return;
        }
        self.altstack = Some(ss);
        let word = |i: usize| u64::from_le_bytes(ss[i..i + 8].try_into().expect("8 bytes"));
        let (sp, flags, size) = (word(0), word(8) as u32 as i32, word(16));
        let top = sp.saturating_add(size);
        let on_it = (sp..=top).contains(&own.regs.rsp);
        let overlaps = sp < first.end && buf < top;
        let mut kept_out = mem.no_escapes.lock().unwrap();
        let barred = kept_out.iter().any(|r| r.start < top && sp < r.end);
        if flags & libc::SS_DISABLE != 0 || size == 0 || on_it || overlaps || barred {
            return;
        }
        let Some(written) = mem.journal_len() else {
            return;
        };
        let Some(moved) = crate::escape::prepare(self.tid, g, mem, &own.regs, own.mask, top, sp)
        else {
            return;
        };
        // Another thread's frame does not go there too (threads may share
        // a stack).
        kept_out.push(sp..top);
        self.escape = Some(moved);
        self.escape_moved = true;
        // Should this fail, the journal still puts it back at the end.
        if let Err(e) = mem.put_back_between(mark, written) {
            tracing::debug!(tid = self.tid, "putting back below the stack pointer: {e}");
        }
    }

    /// The thread's alternate signal stack (a stack_t), if placing its
    /// escape frame read it.
    pub(crate) fn altstack(&self) -> Option<[u8; 24]> {
        self.altstack
    }

    /// Room for `len` bytes right under the escape frame, if the frame
    /// moved to the thread's alternate signal stack and they fit there.
    pub(crate) fn room_under_escape(&self, len: u64) -> Option<u64> {
        let (e, ss) = (self.escape?, self.altstack?);
        if !self.escape_moved {
            return None;
        }
        let sp = u64::from_le_bytes(ss[..8].try_into().expect("8 bytes"));
        let at = e.rsp.checked_sub(len)? & !15;
        (at >= sp).then_some(at)
    }

    /// Where [`with_escape`](Self::with_escape) put the escape frame, for
    /// the thread's later injectors.
    pub(crate) fn placed_escape(&self) -> PlacedEscape {
        PlacedEscape {
            escape: self.escape,
            altstack: self.altstack,
            moved: self.escape_moved,
        }
    }

    /// The escape frame another injector of the same frozen thread placed.
    pub(crate) fn with_placed_escape(mut self, placed: PlacedEscape) -> Self {
        (self.escape, self.altstack, self.escape_moved) =
            (placed.escape, placed.altstack, placed.moved);
        self
    }

    /// Runs syscall `nr` with `args`; returns the raw result (negative errno
    /// on failure). A stub is left in its syscall-exit stop; a task being
    /// dumped has its own registers and mask again.
    pub fn raw(&self, nr: i64, args: &[u64]) -> Result<(i64, SyscallEvents), TaskError> {
        let tid = self.tid;
        let mut r = self.base;
        match self.escape {
            Some(e) => (r.rip, r.rsp) = (e.rip, e.rsp),
            None => r.rip = self.syscall_ip,
        }
        r.rax = nr as u64;
        // -1: no syscall is being restarted, so the kernel's restart logic
        // leaves our registers alone on the way back to user mode.
        r.orig_rax = u64::MAX;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a[0], a[1], a[2], a[3], a[4], a[5]);
        // Registers first, then the mask, and the other way round after
        // the call: with an escape frame, the task is never left with our
        // mask and its own registers.
        ptrace::set_regs(tid, &r)?;
        if self.own.is_some() {
            ptrace::set_sigmask(tid, !0)?;
        }
        ptrace::syscall(tid, 0)?;
        let (status, stop) = ptrace::wait(tid)?;
        match stop {
            Stop::Syscall => {}
            Stop::Gone => return Err(TaskError::Gone { tid, status }),
            _ => {
                return Err(TaskError::UnexpectedStop {
                    tid,
                    status,
                    while_doing: "waiting for a syscall-entry stop",
                });
            }
        }
        // The task holds registers of ours now: the worst moment to die.
        crate::failpoint::pause("syscall");
        let mut events = SyscallEvents::default();
        loop {
            ptrace::syscall(tid, 0)?;
            let (status, stop) = ptrace::wait(tid)?;
            match stop {
                Stop::Syscall => break,
                Stop::Event(ptrace::PTRACE_EVENT_CLONE) => {
                    events.clone = true;
                    events.child = ptrace::event_msg(tid).ok().map(|p| p as i32);
                }
                Stop::Event(ptrace::PTRACE_EVENT_FORK) => {
                    events.fork = true;
                    events.child = ptrace::event_msg(tid).ok().map(|p| p as i32);
                }
                Stop::Gone => return Err(TaskError::Gone { tid, status }),
                _ => {
                    return Err(TaskError::UnexpectedStop {
                        tid,
                        status,
                        while_doing: "waiting for a syscall-exit stop",
                    });
                }
            }
        }
        // The call is done; the task still holds our registers.
        crate::failpoint::pause("syscall-exit");
        let out = ptrace::get_regs(tid)?;
        if let Some(own) = &self.own {
            ptrace::set_sigmask(tid, own.mask)?;
            ptrace::set_regs(tid, &own.regs)?;
        }
        Ok((out.rax as i64, events))
    }

    /// Runs a syscall and turns a negative result into an error naming it.
    pub fn call(&self, name: &'static str, nr: i64, args: &[u64]) -> Result<i64, TaskError> {
        let (ret, _) = self.raw(nr, args)?;
        tracing::trace!(tid = self.tid, name, ret, "injected syscall");
        if (-4095..0).contains(&ret) {
            return Err(TaskError::Syscall {
                tid: self.tid,
                name,
                errno: (-ret) as i32,
            });
        }
        Ok(ret)
    }
}

/// Address of a `syscall` instruction in `pid` (through which syscalls are
/// injected into a process that is not a restore stub): in its vDSO, or,
/// where it has none (unmapped, or a kernel without one), in its own code
/// (see [`code_mappings`]). The two bytes need not start an instruction of
/// the program: the task runs just them, and is stopped at the exit of
/// the syscall.
pub(crate) fn syscall_site(pid: i32, mem: &RemoteMem) -> Result<u64, TaskError> {
    let maps = crate::proc::maps(pid).map_err(|_| TaskError::NoSyscallInsn { pid })?;
    code_mappings(&maps)
        .into_iter()
        .find_map(|m| search_code(mem, m, find_syscall_insn))
        .ok_or(TaskError::NoSyscallInsn { pid })
}

/// Looks for a piece of code with `find` in mapping `m`, read piece by
/// piece: libc's `__restore_rt` lies in the first tenth of its 1.6 MB of
/// code, and reading all of it cost ~2 ms of the freeze. Pieces overlap by
/// more than any pattern is long.
pub(crate) fn search_code(
    mem: &RemoteMem,
    m: &crate::proc::MapEntry,
    find: fn(&[u8], u64) -> Option<u64>,
) -> Option<u64> {
    const PIECE: u64 = 64 << 10;
    const OVERLAP: u64 = 64;
    let mut buf = vec![0u8; PIECE as usize];
    let mut at = m.start;
    while at < m.end {
        let len = PIECE.min(m.end - at) as usize;
        mem.read(at, &mut buf[..len]).ok()?;
        if let Some(found) = find(&buf[..len], at) {
            return Some(found);
        }
        if at + len as u64 >= m.end {
            break;
        }
        at += len as u64 - OVERLAP;
    }
    None
}

/// The executable mappings of a process to look for code in, in order: the
/// vDSO, libc, its other files, anonymous code (a JIT's); at most 64 MiB
/// each.
pub(crate) fn code_mappings(maps: &[crate::proc::MapEntry]) -> Vec<&crate::proc::MapEntry> {
    let mut code: Vec<&crate::proc::MapEntry> = maps
        .iter()
        .filter(|m| m.exec && m.read && m.len() <= 64 << 20 && m.path != b"[vsyscall]")
        .collect();
    code.sort_by_key(|m| {
        if m.path == b"[vdso]" {
            0
        } else if m.path.windows(4).any(|w| w == b"libc") {
            1
        } else if m.path.starts_with(b"/") {
            2
        } else {
            3
        }
    });
    code
}

/// Finds a `syscall` instruction in a vDSO image mapped at `base`.
pub fn find_syscall_insn(vdso: &[u8], base: u64) -> Option<u64> {
    vdso.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| base + i as u64)
}

/// /proc/PID/mem of a task: reads and writes regardless of page protections.
pub struct RemoteMem {
    pub pid: i32,
    file: File,
    /// What was in memory this writes over, in order (see [`journaled`]).
    ///
    /// [`journaled`]: RemoteMem::journaled
    journal: Option<std::sync::Mutex<Vec<Overwritten>>>,
    /// Where no escape frame moves to: areas unfit for one
    /// ([`Self::keep_escapes_out_of`]), the frozen threads' stack pointers
    /// ([`Self::note_stack_pointers`]), and the alternate stacks frames
    /// moved to already.
    no_escapes: std::sync::Mutex<Vec<std::ops::Range<u64>>>,
    /// No frame moves at all (see [`Self::keep_escapes_in_place`]).
    escapes_stay: std::sync::atomic::AtomicBool,
}

/// Bytes at an address, as they were before a write.
type Overwritten = (u64, Vec<u8>);

impl RemoteMem {
    pub fn open(pid: i32, write: bool) -> Result<Self, TaskError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|err| TaskError::RemoteMemory {
                pid,
                what: "opening /proc/PID/mem for",
                addr: 0,
                len: 0,
                err,
            })?;
        Ok(Self {
            pid,
            file,
            journal: None,
            no_escapes: Default::default(),
            escapes_stay: Default::default(),
        })
    }

    /// Keeps what every write overwrites, to be put back with
    /// [`put_back`](RemoteMem::put_back): dump's buffers and escape frames
    /// go below the threads' stack pointers, where a signal frame would,
    /// but a runtime whose threads run on small stacks of its own and
    /// take signals on an alternate stack (Go) keeps other stacks there.
    pub fn journaled(mut self) -> Self {
        self.journal = Some(std::sync::Mutex::new(Vec::new()));
        self
    }

    /// Notes what `len` bytes at `addr` hold now (memory the kernel may
    /// write into: an injected call's buffer).
    pub fn remember(&self, addr: u64, len: usize) -> Result<(), TaskError> {
        if let Some(journal) = &self.journal {
            let mut was = vec![0u8; len];
            self.read(addr, &mut was)?;
            journal.lock().unwrap().push((addr, was));
        }
        Ok(())
    }

    /// Notes the stack pointers of every frozen thread of the process (see
    /// [`Remote::with_escape`]): no frame moves to an alternate stack one
    /// of them is on (running a handler), its top included.
    pub(crate) fn note_stack_pointers(&self, rsps: impl IntoIterator<Item = u64>) {
        let at = |rsp: u64| rsp.saturating_sub(1)..rsp.saturating_add(1);
        self.no_escapes
            .lock()
            .unwrap()
            .extend(rsps.into_iter().map(at));
    }

    /// Keeps escape frames from moving to alternate stacks in `areas`.
    pub(crate) fn keep_escapes_out_of(&self, areas: Vec<std::ops::Range<u64>>) {
        self.no_escapes.lock().unwrap().extend(areas);
    }

    /// Keeps escape frames where they are first placed: for a single call,
    /// whose frame is put back right after it, or in a process whose other
    /// threads run.
    pub(crate) fn keep_escapes_in_place(&self) {
        self.escapes_stay
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many writes the journal kept so far; None: no journal.
    pub fn journal_len(&self) -> Option<usize> {
        self.journal.as_ref().map(|j| j.lock().unwrap().len())
    }

    /// Writes back what the journaled writes `from..to` overwrote (they
    /// stay in the journal: writing them back again at
    /// [`put_back`](Self::put_back) changes nothing).
    pub fn put_back_between(&self, from: usize, to: usize) -> Result<(), TaskError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let writes: Vec<(u64, Vec<u8>)> = journal.lock().unwrap()[from..to].to_vec();
        for (addr, was) in writes.iter().rev() {
            self.write_unjournaled(*addr, was)?;
        }
        Ok(())
    }

    /// Writes back, into the memory of `pid` (this process, or a copy of
    /// its memory: a snapshot child), everything the journal kept.
    pub fn put_back(&self, pid: i32) -> Result<(), TaskError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let into = if pid == self.pid {
            None
        } else {
            Some(RemoteMem::open(pid, true)?)
        };
        let target = into.as_ref().unwrap_or(self);
        // Last first: the first copy of a place is what it held.
        for (addr, was) in journal.lock().unwrap().iter().rev() {
            target.write_unjournaled(*addr, was)?;
        }
        Ok(())
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TaskError> {
        self.file
            .read_exact_at(buf, addr)
            .map_err(|err| TaskError::RemoteMemory {
                pid: self.pid,
                what: "reading",
                addr,
                len: buf.len(),
                err,
            })
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), TaskError> {
        self.remember(addr, data.len())?;
        self.write_unjournaled(addr, data)
    }

    fn write_unjournaled(&self, addr: u64, data: &[u8]) -> Result<(), TaskError> {
        self.file
            .write_all_at(data, addr)
            .map_err(|err| TaskError::RemoteMemory {
                pid: self.pid,
                what: "writing",
                addr,
                len: data.len(),
                err,
            })
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, TaskError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
pub(crate) const ERESTART_RESTARTBLOCK: i64 = 516;

/// Where the registers of a thread stopped inside a syscall go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The same task continues (dump failed or --leave-running): the
    /// kernel's restart_block is intact, so RESTART_RESTARTBLOCK restarts
    /// through restart_syscall.
    SameTask,
    /// A restored task: no restart_block, so those syscalls (nanosleep,
    /// clock_nanosleep, poll, futex waits with a timeout) start again with
    /// their own arguments: a sleep or a timed wait may last longer than
    /// asked, which they all allow, where EINTR would end a wait that no
    /// signal interrupted (`sleep` in perl returns early, `tail -F`
    /// exits). A relative nanosleep or clock_nanosleep that asked for the
    /// time left (its `rem`, which the kernel wrote as the freeze
    /// interrupted it) sleeps that instead: what was left at the freeze.
    /// Only a task already inside restart_syscall (its original call known
    /// to the lost restart_block alone) gets EINTR.
    Restored,
}

/// Turns the registers of a thread stopped inside a syscall into registers
/// that restart it (or report EINTR) when the thread resumes with no
/// further kernel restart processing (orig_rax = -1).
pub fn adjust_restart(regs: &mut Regs, mode: Resume) {
    if (regs.orig_rax as i64) >= 0 {
        match -(regs.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                regs.rax = regs.orig_rax;
                regs.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => match mode {
                Resume::SameTask => {
                    regs.rax = libc::SYS_restart_syscall as u64;
                    regs.rip -= 2;
                }
                Resume::Restored if regs.orig_rax == libc::SYS_restart_syscall as u64 => {
                    regs.rax = (-libc::EINTR) as i64 as u64
                }
                Resume::Restored => {
                    regs.rax = regs.orig_rax;
                    regs.rip -= 2;
                    sleep_what_was_left(regs);
                }
            },
            _ => {}
        }
    }
    regs.orig_rax = u64::MAX;
}

/// Whether a thread stopped with these registers was ended with EINTR in
/// a wait the kernel never restarts (the freeze alone ends it so): a
/// signal wait (sigwaitinfo, sigtimedwait), epoll_wait and epoll_pwait,
/// semop and semtimedop, io_getevents. Unless a signal it would take is
/// pending, it waits again rather than see EINTR, after a restore as after
/// a dump that leaves it running: event loops take EINTR for a signal
/// handler that ran, or give up (and CPython's sigtimedwait, told EINTR
/// after its deadline, returns a siginfo it never filled). A wait with a
/// timeout may last longer than asked, which a timeout allows.
pub(crate) fn ended_by_the_freeze(regs: &Regs) -> bool {
    const WAITS: [i64; 8] = [
        libc::SYS_rt_sigtimedwait,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_io_getevents,
        333, // io_pgetevents
    ];
    regs.rax as i64 == -(libc::EINTR as i64) && WAITS.contains(&(regs.orig_rax as i64))
}

/// Makes a thread stopped at the end of a syscall make it again.
pub(crate) fn call_again(regs: &mut Regs) {
    regs.rax = regs.orig_rax;
    regs.rip -= 2;
}

/// A relative nanosleep(req, rem) or clock_nanosleep(clock, flags, req,
/// rem) with a `rem`, about to start again: asks for `rem`, the time left
/// at the interruption (the caller never reads the argument registers
/// back). An absolute one starts again as it is.
fn sleep_what_was_left(regs: &mut Regs) {
    const TIMER_ABSTIME: u64 = 1;
    match regs.orig_rax as i64 {
        libc::SYS_nanosleep if regs.rsi != 0 => regs.rdi = regs.rsi,
        libc::SYS_clock_nanosleep if regs.rsi & TIMER_ABSTIME == 0 && regs.r10 != 0 => {
            regs.rdx = regs.r10
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig: i64, rax: i64) -> Regs {
        let mut r = ptrace::zero_regs();
        r.orig_rax = orig as u64;
        r.rax = rax as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restart_adjustment() {
        for code in [512, 513, 514] {
            let mut r = regs(202, -code);
            adjust_restart(&mut r, Resume::Restored);
            assert_eq!((r.rax, r.rip, r.orig_rax as i64), (202, 0x1000, -1));
        }
        let mut r = regs(230, -516);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax, r.rip, r.orig_rax as i64), (230, 0x1000, -1));
        let mut r = regs(libc::SYS_restart_syscall, -516);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax as i64, r.rip), (-(libc::EINTR as i64), 0x1002));
        // A relative sleep with a remainder asks for what was left.
        let mut r = regs(libc::SYS_nanosleep, -516);
        (r.rdi, r.rsi) = (0x5000, 0x6000);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!(
            (r.rax, r.rdi, r.rsi),
            (libc::SYS_nanosleep as u64, 0x6000, 0x6000)
        );
        let mut r = regs(libc::SYS_nanosleep, -516);
        (r.rdi, r.rsi) = (0x5000, 0);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!(r.rdi, 0x5000);
        let mut r = regs(230, -516);
        (r.rsi, r.rdx, r.r10) = (0, 0x5000, 0x6000);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!(r.rdx, 0x6000);
        let mut r = regs(230, -516);
        (r.rsi, r.rdx, r.r10) = (1 /* TIMER_ABSTIME */, 0x5000, 0x6000);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!(r.rdx, 0x5000);
        let mut r = regs(230, -516);
        adjust_restart(&mut r, Resume::SameTask);
        assert_eq!((r.rax, r.rip), (libc::SYS_restart_syscall as u64, 0x1000));
        // Not in a syscall, or a finished one: untouched but for orig_rax.
        let mut r = regs(-1, -512);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax as i64, r.rip), (-512, 0x1002));
        let mut r = regs(0, 5);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax, r.rip, r.orig_rax as i64), (5, 0x1002, -1));
    }

    #[test]
    fn finds_syscall_insn() {
        assert_eq!(
            find_syscall_insn(&[0x90, 0x0f, 0x05, 0xc3], 0x1000),
            Some(0x1001)
        );
        assert_eq!(find_syscall_insn(&[0x90, 0x0f, 0xc3], 0x1000), None);
    }
}
