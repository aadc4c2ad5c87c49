//! The kinds of process state, one file each, and the registry dump and
//! restore walk (see `crate::kind` for the contract). Open files are a kind
//! too, with a file per kind of open file under `crate::fd`.

pub(crate) mod aio;
pub(crate) mod creds;
pub(crate) mod fs_context;
pub(crate) mod itimers;
pub(crate) mod landlock;
pub(crate) mod loginuid;
pub(crate) mod membarrier;
pub(crate) mod memory;
pub(crate) mod mm;
pub(crate) mod oom;
pub(crate) mod pkeys;
pub(crate) mod posix_timers;
pub(crate) mod prctl;
pub(crate) mod rlimits;
pub(crate) mod sched;
pub(crate) mod seccomp;
pub(crate) mod signals;
pub(crate) mod stopped;
pub(crate) mod sysv_sem;
pub(crate) mod threads;

use crate::kind::Kind;

/// Every kind but memory (which the orchestrators also drive page by
/// page), in the order dump reads them; restore applies them phase by
/// phase, in this order within a phase.
pub(crate) fn registry() -> Vec<Box<dyn Kind>> {
    vec![
        Box::new(crate::fd::Files::new()),
        Box::new(crate::fd::locks::Locks::default()),
        Box::new(prctl::Prctl),
        Box::new(oom::Oom),
        Box::new(loginuid::LoginUidKind),
        Box::new(signals::SignalActions),
        Box::new(itimers::Itimers),
        Box::new(mm::Mm),
        Box::new(membarrier::MembarrierKind),
        Box::new(aio::Aio),
        // As root, before the process's own credentials.
        Box::<sysv_sem::SysvSemaphoresKind>::default(),
        // After every kind that opens a path in the process (the
        // executable, /proc/self files): a chroot would hide them.
        Box::new(fs_context::FsContext),
        // Once nothing restore maps in the process is left to lock.
        Box::new(prctl::FutureLocks),
        // Once nothing restore does in the process needs room under them
        // (a process whose fds fill RLIMIT_NOFILE, threads under
        // RLIMIT_NPROC, signals queued under RLIMIT_SIGPENDING); set from
        // crstream, so before the process's own credentials.
        Box::new(rlimits::Rlimits),
        Box::new(seccomp::SeccompKind),
        Box::<landlock::Landlock>::default(),
        Box::new(creds::Creds),
        Box::new(crate::fd::owner::Owners),
        // Once the owners are set: the break signals the holder.
        Box::new(crate::fd::locks::LeaseBreaks),
        Box::new(threads::Threads),
        // Once the threads exist.
        Box::new(crate::fd::pidfd::ThreadPidfds),
        Box::new(crate::fd::regular::ThreadProcFiles),
        Box::new(posix_timers::PosixTimers),
        Box::new(stopped::Stopped),
        Box::new(signals::PendingSignals),
        Box::new(sched::Sched),
    ]
}
