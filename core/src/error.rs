//! Typed errors of the engine. Every variant names the process, thread, fd or
//! address at fault so that the binary can report it without more context.

use std::io;

/// A failure while driving one task (ptrace, waitpid, injected syscalls,
/// remote memory). Shared by dump and restore.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("ptrace {op} on tid {tid}: {err}")]
    Ptrace {
        tid: i32,
        op: &'static str,
        err: io::Error,
    },
    #[error("waitpid on tid {tid}: {err}")]
    Wait { tid: i32, err: io::Error },
    #[error("tid {tid} exited or was killed while being traced (wait status {status:#x})")]
    Gone { tid: i32, status: i32 },
    #[error("tid {tid}: unexpected stop while {while_doing} (wait status {status:#x})")]
    UnexpectedStop {
        tid: i32,
        status: i32,
        while_doing: &'static str,
    },
    #[error("tid {tid}: injected syscall {name} failed: {}", io::Error::from_raw_os_error(*errno))]
    Syscall {
        tid: i32,
        name: &'static str,
        errno: i32,
    },
    #[error("pid {pid}: {what} memory at {addr:#x} ({len} bytes): {err}")]
    RemoteMemory {
        pid: i32,
        what: &'static str,
        addr: u64,
        len: usize,
        err: io::Error,
    },
    #[error("pid {pid}: no syscall instruction found in its vDSO or its code")]
    NoSyscallInsn { pid: i32 },
}

impl TaskError {
    pub(crate) fn ptrace(tid: i32, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |err| TaskError::Ptrace { tid, op, err }
    }

    /// The task no longer exists (killed while held, say).
    pub(crate) fn is_gone(&self) -> bool {
        match self {
            TaskError::Ptrace { err, .. } => err.raw_os_error() == Some(libc::ESRCH),
            TaskError::Gone { .. } => true,
            _ => false,
        }
    }
}

/// A /proc file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("parsing {path}: {detail}")]
    Parse { path: String, detail: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("pid {pid}: no such process")]
    NoSuchProcess { pid: i32 },
    #[error("pid {pid}: cannot dump crstream itself or its own process")]
    SelfDump { pid: i32 },
    #[error("attaching to pid {pid} tid {tid}: {err}")]
    Attach { pid: i32, tid: i32, err: io::Error },
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("pid {pid}: {err}")]
    Proc { pid: i32, err: ProcError },
    #[error("pid {pid}: mapping {start:#x}-{end:#x} {path}: {reason}")]
    UnsupportedMapping {
        pid: i32,
        start: u64,
        end: u64,
        path: String,
        reason: String,
    },
    #[error("pid {pid} fd {fd}: unsupported file kind {what}")]
    UnsupportedFile { pid: i32, fd: i32, what: String },
    #[error("pid {pid} fd {fd} ({path}): {err}")]
    File {
        pid: i32,
        fd: i32,
        path: String,
        err: io::Error,
    },
    #[error("pid {pid}: {what}: {reason}")]
    Unsupported {
        pid: i32,
        what: &'static str,
        reason: String,
    },
    #[error("pid {pid}: scanning pages of {start:#x}-{end:#x}: {err}")]
    PageScan {
        pid: i32,
        start: u64,
        end: u64,
        err: io::Error,
    },
    // Shown, not chained as a source (a chain printer would show it twice).
    #[error("writing the image: {0}")]
    Stream(crstream_streamer::StreamError),
    #[error("saving the contents of {what} (opened by pid {pid}): {err}")]
    UnlinkedContents {
        pid: i32,
        what: String,
        err: io::Error,
    },
    #[error("injected test failure at {0} (CRSTREAM_TEST_FAIL_AT)")]
    TestFailure(String),
    #[error("interrupted")]
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    // Shown, not chained as a source (a chain printer would show it twice).
    #[error("reading the image: {0}")]
    Stream(crstream_streamer::StreamError),
    #[error("bad image: {0}")]
    Image(String),
    #[error("bad image: no {what} record for {owner}")]
    MissingRecord { what: &'static str, owner: String },
    #[error("bad image: two {what} records for {owner}")]
    DuplicateRecord { what: &'static str, owner: String },
    #[error("image is incompatible with this machine: {0}")]
    Incompatible(String),
    #[error(
        "--lazy restores a single process; this image holds a tree of {processes} processes \
         (restore it without --lazy)"
    )]
    LazyTree { processes: usize },
    #[error("PID {pid} is in use{by}")]
    PidInUse { pid: i32, by: String },
    #[error("TID {tid} (of pid {pid}) is in use")]
    TidInUse { pid: i32, tid: i32 },
    #[error("creating the process with pid {pid}: {err}")]
    Clone { pid: i32, err: io::Error },
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("pid {pid}: mapping area {start:#x}-{end:#x} {path}: {reason}")]
    Mapping {
        pid: i32,
        start: u64,
        end: u64,
        path: String,
        reason: String,
    },
    #[error("pid {pid}: page data at {addr:#x}: {reason}")]
    Pages { pid: i32, addr: u64, reason: String },
    #[error("pid {pid} fd {fd} ({path}): {reason}")]
    File {
        pid: i32,
        fd: u32,
        path: String,
        reason: String,
    },
    #[error("pid {pid}: credentials differ from the restorer's: {reason}")]
    Credentials { pid: i32, reason: String },
    #[error("pid {pid}: {what}: {err}")]
    Io {
        pid: i32,
        what: String,
        err: io::Error,
    },
    #[error("pid {pid} tid {tid}: {reason}")]
    Thread { pid: i32, tid: i32, reason: String },
    #[error("pid {pid}: {what} cannot be restored here: {reason}")]
    Unsupported {
        pid: i32,
        what: &'static str,
        reason: String,
    },
    #[error("pid {pid}: session or process group: {reason}")]
    Session { pid: i32, reason: String },
    #[error("recreating {what}: {reason}")]
    Recreate { what: String, reason: String },
    #[error("injected test failure at {0} (CRSTREAM_TEST_FAIL_AT)")]
    TestFailure(String),
}

impl From<crstream_streamer::StreamError> for DumpError {
    fn from(e: crstream_streamer::StreamError) -> Self {
        DumpError::Stream(e)
    }
}

impl From<crstream_streamer::StreamError> for RestoreError {
    fn from(e: crstream_streamer::StreamError) -> Self {
        RestoreError::Stream(e)
    }
}

impl RestoreError {
    /// PID `pid` is taken here: by a process, or, where none has it, as
    /// the process group or session ID of one (the kernel keeps the number
    /// for them), named so the restorer can tell what to end.
    pub(crate) fn pid_in_use(pid: i32) -> RestoreError {
        let by = if let Ok(s) = crate::proc::stat(pid) {
            format!(" (by {}, running here)", s.comm)
        } else {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find_map(|p| {
                    let s = crate::proc::stat(p).ok()?;
                    // proc(5): field 5 is the process group, 6 the session.
                    let what = if s.field(6) == pid as u64 {
                        "session"
                    } else if s.field(5) == pid as u64 {
                        "process group"
                    } else {
                        return None;
                    };
                    Some(format!(
                        " (no process has it, but it is the {what} ID of pid {p} ({}), which \
                         keeps it taken until that process leaves it)",
                        s.comm
                    ))
                })
                .unwrap_or_default()
        };
        RestoreError::PidInUse { pid, by }
    }
}
