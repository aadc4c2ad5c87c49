//! Round trips of fd kinds on fds of the test process itself: dump one,
//! then create its copy the way restore would (in crstream, before it is
//! handed over).

use super::{DumpFd, FdKind, Reopen, fd_kinds};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpObjects, RestoreObjects};
use crate::paths::show;
use crstream_proto::OpenFile;
use std::os::fd::{OwnedFd, RawFd};

/// Held by the tests that open pseudo-terminals: one that frees an index
/// and takes it again must not see another test take it meanwhile.
pub(super) static PTY_INDEXES: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn me() -> i32 {
    std::process::id() as i32
}

/// Dumps fd `fd` of this process as the Files kind does, trying kinds
/// with `try_kinds`.
fn dump_fd_with(
    fd: RawFd,
    try_kinds: impl FnMut(&mut DumpFd<'_>, &mut OpenFile) -> Result<bool, DumpError>,
) -> Result<OpenFile, DumpError> {
    dump_job_fd_with(fd, None, try_kinds)
}

/// As a dump with `--shell-job` (`job_tty`: the job's terminal) or not.
fn dump_job_fd_with(
    fd: RawFd,
    job_tty: Option<u64>,
    mut try_kinds: impl FnMut(&mut DumpFd<'_>, &mut OpenFile) -> Result<bool, DumpError>,
) -> Result<OpenFile, DumpError> {
    let link = crate::proc::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    let info = crate::proc::fdinfo(me(), fd).unwrap();
    let md = std::fs::metadata(format!("/proc/self/fd/{fd}"));
    let mut f = super::open_file(fd, &info);
    let mut objects = DumpObjects::default();
    let stat = crate::proc::stat(me()).unwrap();
    let mut d = DumpFd {
        pid: me(),
        fd,
        link: &link,
        md: md.as_ref().ok(),
        stat: &stat,
        shell_job: job_tty.is_some(),
        tcp: super::tcp::TcpMode::Refuse,
        ext_unix: false,
        external_pipes: &[],
        external_ttys: &[],
        skip_in_flight: false,
        job_tty: job_tty.unwrap_or(0),
        objects: &mut objects,
        inject: None,
    };
    if try_kinds(&mut d, &mut f)? {
        return Ok(f);
    }
    panic!("{}: no fd kind takes it", show(&link));
}

/// Dumps fd `fd` of this process, trying every fd kind.
pub(super) fn dump_own(fd: RawFd) -> Result<OpenFile, DumpError> {
    let mut kinds = fd_kinds();
    dump_fd_with(fd, |d, f| super::dump_by_kind(&mut kinds, d, f))
}

/// Dumps fd `fd` of this process with one fd kind (whose state carries
/// from one fd to the next, as within one dump).
pub(super) fn dump_with(kind: &mut dyn FdKind, fd: RawFd) -> Result<OpenFile, DumpError> {
    dump_fd_with(fd, |d, f| kind.dump(d, f))
}

/// Dumps fd `fd` of this process with one fd kind, as a dump with
/// `--shell-job` of a job whose terminal is `job_tty` would.
pub(super) fn dump_job_fd(
    kind: &mut dyn FdKind,
    fd: RawFd,
    job_tty: u64,
) -> Result<OpenFile, DumpError> {
    dump_job_fd_with(fd, Some(job_tty), |d, f| kind.dump(d, f))
}

/// How `f` would come back, by the kind that restores it.
pub(super) fn restore_own(f: &OpenFile) -> Result<Reopen, RestoreError> {
    let mut kinds = fd_kinds();
    let k = kinds
        .iter_mut()
        .find(|k| k.restores(f))
        .expect("a kind restores it");
    open_with(&mut **k, f)
}

fn open_with(kind: &mut dyn FdKind, f: &OpenFile) -> Result<Reopen, RestoreError> {
    open_on_terminal(kind, f, None)
}

/// How `kind` brings `f` back when the restorer's terminal is `terminal`.
pub(super) fn open_on_terminal(
    kind: &mut dyn FdKind,
    f: &OpenFile,
    terminal: Option<&[u8]>,
) -> Result<Reopen, RestoreError> {
    let unlinked = crate::unlinked::Recreator::default();
    let sysv = crate::sysv::Recreator::default();
    let objects = RestoreObjects {
        pids: &Default::default(),
        unlinked: &unlinked,
        sysv: &sysv,
        terminal,
        tcp_close: false,
        detached: false,
        inherit: &[],
        tcp_built: &Default::default(),
        unpinned_cpus: None,
        stubs: &[],
        ptys: &Default::default(),
    };
    kind.open(me(), f, &objects)
}

/// The object `kind` creates in crstream for `f` (state carries from one
/// fd to the next, as within one restore).
/// What restore does once every fd table is in place (queues, shutdowns)
/// is done right after.
pub(super) fn created(kind: &mut dyn FdKind, f: &OpenFile) -> OwnedFd {
    let fd = match open_with(kind, f).unwrap() {
        Reopen::Created(fd) => fd,
        Reopen::Path { path, .. } => {
            panic!("{} is reopened by path, not created", show(&path))
        }
    };
    if let Some(p) = kind.take_fills() {
        for fill in &p.fills {
            fill.send(&[]).unwrap();
        }
        for (s, bits, _) in p.shutdowns {
            super::socket::shutdown_bits(&s, bits).unwrap();
        }
    }
    fd
}

/// Everything readable now on a non-blocking fd (a socket or not).
pub(super) fn read_avail(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Err(rustix::io::Errno::NOTSOCK) => rustix::io::read(fd, &mut buf),
            r => r.map(|(n, _)| n),
        };
        match n {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return out,
        }
    }
}
