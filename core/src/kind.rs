//! The contract every kind of process state implements, and what it is
//! given to work with.
//!
//! A kind (memory, open files, credentials, timers, ...) lives in one file
//! with its dump side, its restore side and its records. Dump calls
//! [`Kind::dump`] for every frozen process, in registry order, then
//! [`Kind::dump_tree`] once; restore calls [`Kind::check`] for every
//! process before it creates anything, then [`Kind::restore`] for every
//! process, phase by phase (see [`Phase`]). The registry is
//! `kinds::registry()`.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::freeze::FrozenThread;
use crate::inject::{Remote, RemoteMem};
use crate::proc::{Stat, Status};
use crate::records::{ProcessImage, Records};
use crate::stub::{Stub, StubGuard};
use crstream_proto::ProcessEntry;

/// When restore applies a kind. The processes exist before the first phase
/// (forked from their parents' stubs, in their sessions and groups); after
/// the last, registers are set and the tree resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Memory areas mapped; their pages are filled right after.
    Memory,
    /// Every fd table, before any process state (a chroot or chdir of a
    /// process sharing its fs state must not change how paths open).
    Files,
    /// Process-wide state set from inside each process.
    Process,
    /// Threads created, per-thread state, state naming threads.
    Threads,
    /// Pending signals, queued once nothing else will be injected that a
    /// signal could interrupt.
    Signals,
    /// Last, before registers: what would hinder restore's own injected
    /// syscalls if set earlier.
    Final,
}

/// One kind of process state.
pub(crate) trait Kind {
    /// What it is, for logs.
    fn name(&self) -> &'static str;
    /// When restore applies it.
    fn phase(&self) -> Phase;
    /// Reads this kind's state of one frozen process into its records.
    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError>;
    /// Once every process is read: what needs the whole tree (shared
    /// objects, peers that must be inside it).
    fn dump_tree(&mut self, _t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        Ok(())
    }
    /// Before restore creates anything: refuses what cannot come back on
    /// this machine.
    fn check(&self, _p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        Ok(())
    }
    /// Sets this kind's state in one restored process (called for every
    /// live process, parents first).
    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError>;
    /// After `restore` ran for every process.
    fn restore_done(&mut self, _objects: &RestoreObjects<'_>) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Objects several processes of a tree may share, saved once for it:
/// files with no name (memfds, deleted files) and System V segments.
#[derive(Default)]
pub(crate) struct DumpObjects {
    pub unlinked: crate::unlinked::Collector,
    pub sysv: crate::sysv::Collector,
    /// The tree's TCP connections, read in repair mode behind a network lock.
    pub tcp: crate::fd::tcp::TcpHold,
    /// Terminal output read out of the tree's pseudo-terminal masters.
    pub pty: crate::fd::pty::PtyHold,
}

/// Injected syscalls into a frozen process: through its leader, with a
/// scratch page mapped in it for the calls' buffers.
pub(crate) struct Injector {
    pub leader: Remote,
    pub mem: RemoteMem,
    /// Address of a writable page in the process.
    pub scratch: u64,
    /// Address of a `syscall` instruction in the process.
    pub syscall_ip: u64,
    /// The code escape frames need, if the process has it.
    pub gadgets: Option<crate::escape::Gadgets>,
}

impl Injector {
    /// Runs a syscall in the leader.
    pub(crate) fn call(&self, name: &'static str, nr: i64, args: &[u64]) -> Result<i64, TaskError> {
        self.leader.call(name, nr, args)
    }

    /// Runs a syscall in the leader that fills a buffer of `N` bytes at
    /// `self.scratch` (one of `args`); returns the buffer.
    pub(crate) fn call_reading<const N: usize>(
        &self,
        name: &'static str,
        nr: i64,
        args: &[u64],
    ) -> Result<[u8; N], TaskError> {
        self.leader.call(name, nr, args)?;
        let mut b = [0u8; N];
        self.mem.read(self.scratch, &mut b)?;
        Ok(b)
    }
}

/// One frozen process, as kinds read it.
pub(crate) struct DumpProcess<'a> {
    pub pid: i32,
    pub status: &'a Status,
    pub stat: &'a Stat,
    /// Dumping a job of an interactive shell (`--shell-job`).
    pub shell_job: bool,
    /// What to do with established TCP connections.
    pub tcp: crate::fd::tcp::TcpMode,
    /// Unix sockets connected outside the tree are allowed (--ext-unix-sk).
    pub ext_unix: bool,
    /// Pipes whose other end may be outside the tree (--external).
    pub external_pipes: &'a [u64],
    /// Terminals outside the tree, (rdev, dev) (--external tty[RDEV:DEV]).
    pub external_ttys: &'a [(u64, u64)],
    /// Connections waiting in accept queues are dropped (--skip-in-flight).
    pub skip_in_flight: bool,
    /// A live dump will take a copy-on-write snapshot of the process:
    /// what the snapshot keeps can be read from it once the tree runs.
    pub snapshot_planned: bool,
    pub objects: &'a mut DumpObjects,
    /// Injected syscalls, once memory has been read (see `dump`).
    pub inject: Option<&'a Injector>,
    /// Some area carries a memory protection key (memory says so).
    pub keyed_areas: bool,
    /// Areas no escape frame may move to (memory says which; see
    /// [`RemoteMem::keep_escapes_out_of`](crate::inject::RemoteMem::keep_escapes_out_of)).
    pub no_escapes: Vec<std::ops::Range<u64>>,
    /// Its threads, leader first.
    pub threads: &'a mut [FrozenThread],
    /// /proc/TID/status of each thread, read once while frozen.
    pub thread_status: &'a [Status],
    /// The records of the process's stream, and of each thread's.
    pub records: &'a mut Records,
    pub thread_records: &'a mut [Records],
}

impl<'a> DumpProcess<'a> {
    /// Injected syscalls into the process. Memory, which is read first,
    /// must not use them: the scratch page they need is not mapped yet.
    pub(crate) fn injector(&self) -> &'a Injector {
        self.inject
            .expect("kinds after memory inject syscalls; memory does not")
    }

    /// An injector of syscalls into thread `i` (leader: 0), from its own
    /// registers and mask, which it gets back after every call.
    pub(crate) fn thread_remote(&mut self, i: usize) -> Result<Remote, TaskError> {
        let inj = self.injector();
        // First placed (then cached: see `FrozenThread::remote`), the
        // leader's escape frame goes below the scratch buffer, under its
        // stack pointer; another thread's below its own stack pointer and
        // red zone. Either may then move to an alternate signal stack.
        let below = match i {
            0 => inj.scratch,
            _ => self.threads[i].regs.rsp - 128,
        };
        Ok(self.threads[i].remote(inj.syscall_ip, inj.gadgets.as_ref(), &inj.mem, below))
    }
}

/// What one process of the tree holds once dump read every kind.
pub(crate) struct ProcessDump {
    pub pid: i32,
    pub records: Records,
    /// Leader first.
    pub threads: Vec<Records>,
}

/// The whole tree once dump read every kind of every process.
pub(crate) struct DumpTree<'a> {
    /// Every process, zombies included, parents first.
    pub entries: &'a [ProcessEntry],
    /// The live processes, in the same order.
    pub processes: &'a mut [ProcessDump],
    pub objects: &'a mut DumpObjects,
}

/// What restore rebuilt or recreated that several processes share.
pub(crate) struct RestoreObjects<'a> {
    /// How crstream names the processes and threads of the tree.
    pub pids: &'a crate::pidns::PidMap,
    pub unlinked: &'a crate::unlinked::Recreator,
    pub sysv: &'a crate::sysv::Recreator,
    /// The restorer's terminal, for a shell job's terminal fds.
    pub terminal: Option<&'a [u8]>,
    /// Restore established TCP connections closed (--tcp-close).
    pub tcp_close: bool,
    /// The restorer returns once the tree runs (see
    /// `RestoreOptions::detached`).
    pub detached: bool,
    /// Files handed in by the restorer (--inherit-fd): (crstream's fd, the
    /// file it stands for: "socket:[INODE]" or a path).
    pub inherit: &'a [(i32, String)],
    /// The TCP connections restore has built so far.
    pub tcp_built: &'a crate::fd::tcp::TcpBuilt,
    /// The CPUs a restored thread may run on unless it saved its own
    /// affinity, where the restorer pinned itself (and so every task it
    /// created) to one CPU for the rebuild.
    pub unpinned_cpus: Option<&'a nix::sched::CpuSet>,
    /// The stubs of the tree's live processes, once they all exist (the
    /// phases), for calls that must be made by one of them.
    pub stubs: &'a [&'a Stub],
    /// The pseudo-terminal pairs of the tree made so far.
    pub ptys: &'a crate::fd::pty::Masters,
}

/// One process being restored, as kinds rebuild it.
pub(crate) struct RestoreProcess<'a> {
    pub image: &'a ProcessImage<'a>,
    pub stub: &'a Stub,
    /// Kills the half-restored process on failure; threads a kind creates
    /// are added to it.
    pub guard: &'a mut StubGuard,
    pub objects: &'a RestoreObjects<'a>,
}

impl RestoreProcess<'_> {
    /// Its PID as crstream sees it (for /proc, ptrace, crstream's calls).
    pub(crate) fn pid(&self) -> i32 {
        self.stub.pid
    }

    /// Its PID as it sees itself: the saved one.
    pub(crate) fn vpid(&self) -> i32 {
        self.stub.vpid
    }

    /// Thread `i`'s TID (leader: 0) as crstream sees it, once created.
    pub(crate) fn host_tid(&self, i: usize) -> i32 {
        self.guard.tids[i]
    }

    pub(crate) fn entry(&self) -> &ProcessEntry {
        self.image.entry
    }
}
