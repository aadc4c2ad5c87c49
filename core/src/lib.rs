//! crstream's checkpoint/restore engine.
//!
//! Dump freezes every thread of a process with PTRACE_SEIZE +
//! PTRACE_INTERRUPT, reads what /proc and ptrace give, gets the rest by
//! injecting single syscalls, and writes records then pages to an
//! [`ImageSink`]. Restore creates a stub with the saved PID (clone3 +
//! set_tid) and rebuilds the process in it with injected syscalls, driven
//! entirely by ptrace from the calling thread.
//!
//! The engine is synchronous: ptrace requests must come from the thread
//! that attached, so call [`dump`] and [`restore`] from one thread.

mod check;
mod creds;
mod dump;
pub mod error;
mod fdkinds;
mod files;
pub mod lazy;
mod memory;
mod mm;
pub mod proc;
pub mod ptrace;
mod restore;
mod session;
mod signals;
mod stub;
pub mod syscall;
mod sysv;
mod threads;
mod timers;
mod unlinked;

pub use check::FeatureCheck;
pub use error::{DumpError, ProcError, RestoreError, TaskError};
pub use lazy::{LazyError, LazyOptions, LazySession, LazyStats, PageFetcher};

use crstream_streamer::{ImageSink, ImageSource};

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    /// The process will run on after the dump (recorded in the image).
    pub leave_running: bool,
    /// The tree is a job of an interactive shell: save its terminal fds
    /// (restore hands it the restorer's terminal) instead of refusing them.
    pub shell_job: bool,
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
}

pub use dump::Dumped;

/// Checkpoints process `opts.pid` into `sink` and returns it still frozen:
/// store the image, then call [`Dumped::finish`] (kill it, or let it run
/// on). On failure, or if the [`Dumped`] is dropped, every change is undone
/// and the process runs on.
pub fn dump(opts: &DumpOptions, sink: &mut dyn ImageSink) -> Result<Dumped, DumpError> {
    dump::dump(opts, sink)
}

#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Restore a shell job (dumped with `shell_job`): its terminal fds
    /// open the terminal on the restorer's stdin.
    pub shell_job: bool,
}

impl RestoreOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_shell_job(mut self, on: bool) -> Self {
        self.shell_job = on;
        self
    }
}

/// A restored tree: running, detached; its root is a child of the calling
/// thread.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The root process.
    pub pid: i32,
    /// Threads of the root process.
    pub tids: Vec<i32>,
    /// Every process of the tree (zombies included), root first.
    pub processes: Vec<i32>,
}

/// Restores the process of an image with its PID and TIDs. On failure
/// nothing is left behind.
pub fn restore(
    source: &mut dyn ImageSource,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    restore::restore(source, opts)
}

/// Restores the process of an image like [`restore`], but lazily: the
/// metadata comes from `source` (which is not read past the end of
/// metadata); areas that userfaultfd cannot serve (file-backed private
/// pages, shared memory) are filled through `fetcher` before the process
/// runs; its private anonymous memory arrives afterwards, on demand and by
/// prefetch, while [`LazySession::serve`] runs. `pages` is the image's page
/// index. On failure nothing is left behind.
pub fn restore_lazy(
    source: &mut dyn ImageSource,
    opts: &RestoreOptions,
    pages: &[crstream_proto::PageRange],
    fetcher: std::sync::Arc<dyn PageFetcher>,
    lazy_opts: &LazyOptions,
) -> Result<(Restored, LazySession), RestoreError> {
    restore::restore_lazy(
        source,
        opts,
        restore::LazyInput {
            pages,
            fetcher,
            opts: lazy_opts,
        },
    )
}

/// What this machine supports.
pub fn check() -> Vec<FeatureCheck> {
    check::check()
}
