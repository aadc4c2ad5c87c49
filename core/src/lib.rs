//! crstream's checkpoint/restore engine.
//!
//! Dump freezes every thread of a process tree with PTRACE_SEIZE and
//! PTRACE_INTERRUPT, reads each kind of state of each process (one file
//! per kind, see `kind` and `kinds`), and writes records then pages to an
//! [`ImageSink`]. Restore creates each process with its saved PID (clone3
//! with set_tid; children forked from their parents' stubs) and rebuilds
//! it with injected syscalls, kind by kind, driven entirely by ptrace from
//! the calling thread.
//!
//! The engine is synchronous: ptrace requests must come from the thread
//! that attached, so call [`dump`] and [`restore`] from one thread.

mod check;
mod dump;
pub mod error;
mod escape;
mod failpoint;
mod fd;
mod freeze;
mod group_stop;
mod handoff;
mod inject;
mod kind;
mod kinds;
pub mod lazy;
mod namespaces;
mod netlock;
mod paths;
mod pidns;
mod proc;
mod records;
mod restore;
mod session;
mod snapshot;
mod stub;
mod sys;
mod sysv;
mod unlinked;

pub use check::FeatureCheck;
pub use dump::{DumpOptions, DumpStats, Dumped};
pub use error::{DumpError, ProcError, RestoreError, TaskError};
pub use fd::tcp::TcpMode;
pub use handoff::{Handed, recover_from_dead_dump};
pub use lazy::{
    FetchError, FrameStream, LazyError, LazyOptions, LazySession, LazyStats, PageFetcher,
};
pub use pidns::start_in_new_pid_namespace;
pub use restore::{RestoreOptions, Restored};

use crstream_streamer::{ImageSink, ImageSource};

/// Checkpoints process `opts.pid` into `sink` and returns it still frozen:
/// store the image, then call [`Dumped::finish`] (kill it, or let it run
/// on). On failure, or if the [`Dumped`] is dropped, every change is undone
/// and the process runs on.
pub fn dump(opts: &DumpOptions, sink: &mut dyn ImageSink) -> Result<Dumped, DumpError> {
    dump::dump(opts, sink)
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
        lazy::LazyInput {
            pages,
            fetcher,
            opts: lazy_opts,
        },
    )
}

/// The ELF build-id of the file at `path`; None for a file that is not
/// ELF or has none.
pub fn elf_build_id(path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
    kinds::memory::identity::build_id(path)
}

/// Whether process `pid` exists and has not ended (a zombie, exiting).
pub fn process_alive(pid: i32) -> bool {
    proc::alive(pid)
}

/// What this machine supports.
pub fn check() -> Vec<FeatureCheck> {
    check::check()
}
