//! Writing saved pages into a stub. Private anonymous areas are filled
//! with UFFDIO_COPY through a userfaultfd of the stub's mm: the kernel
//! copies each page into a fresh page it installs, where a write through
//! /proc/PID/mem would fault in a zeroed page first and copy over it (a
//! third faster for large processes). Everything else, and any page the
//! kernel already put there (the rebuild touches a few), is written
//! through /proc/PID/mem.

use super::{is_mapped_area, map_err};
use crate::error::RestoreError;
use crate::inject::RemoteMem;
use crate::lazy::is_lazy_area;
use crate::stub::Stub;
use crate::sys::uffd::Userfaultfd;
use crstream_proto::VmArea;
use crstream_streamer::{PAGE_SIZE, PageBatch};

const PAGE: u64 = PAGE_SIZE as u64;

/// Creates a userfaultfd in the stub's mm and takes it into crstream (the
/// stub's own fd is closed again): whoever holds it copies pages into that
/// mm, and closing it unregisters every area registered with it.
pub(crate) fn take_userfaultfd(stub: &Stub) -> Result<Userfaultfd, RestoreError> {
    let pid = stub.pid;
    let io = |what: &str, err: std::io::Error| RestoreError::Io {
        pid,
        what: what.to_string(),
        err,
    };
    let tfd = stub.call(
        "userfaultfd",
        libc::SYS_userfaultfd,
        &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64],
    )?;
    let got =
        crate::sys::pidfd::open(pid).and_then(|pidfd| crate::sys::pidfd::getfd(&pidfd, tfd as i32));
    stub.call("close(userfaultfd)", libc::SYS_close, &[tfd as u64])?;
    Ok(Userfaultfd::new(
        got.map_err(|e| io("pidfd_getfd of the userfaultfd", e))?,
    ))
}

/// Writes the pages of one process; see the module comment. Dropping it
/// unregisters the areas, so it must be dropped before anything else
/// touches the process's memory (a missing page of a registered area would
/// block whoever touches it).
pub(crate) struct PageWriter {
    uffd: Option<Userfaultfd>,
    /// Areas registered with `uffd`, by index (none without one).
    registered: Vec<bool>,
}

impl PageWriter {
    /// Writes every page through /proc/PID/mem.
    pub(crate) fn plain() -> Self {
        Self {
            uffd: None,
            registered: Vec::new(),
        }
    }

    /// Registers the private anonymous areas of `areas` that have pages.
    /// Without a userfaultfd (none, or the handshake fails), every page goes
    /// through /proc/PID/mem.
    pub(crate) fn new(stub: &Stub, areas: &[VmArea]) -> Self {
        let uffd = match take_userfaultfd(stub) {
            Ok(uffd) => uffd,
            Err(e) => {
                tracing::debug!(pid = stub.pid, "no userfaultfd for the page fill: {e}");
                return Self::plain();
            }
        };
        if let Err(e) = uffd.api(0) {
            tracing::debug!(pid = stub.pid, "UFFDIO_API: {e}");
            return Self::plain();
        }
        let mut registered = vec![false; areas.len()];
        for (i, a) in areas.iter().enumerate() {
            if is_lazy_area(a) {
                match uffd.register_missing(a.start, a.end - a.start) {
                    Ok(()) => registered[i] = true,
                    Err(e) => {
                        tracing::debug!(pid = stub.pid, addr = a.start, "UFFDIO_REGISTER: {e}")
                    }
                }
            }
        }
        Self {
            uffd: Some(uffd),
            registered,
        }
    }

    /// Writes one page batch; returns its pages.
    pub(crate) fn fill(
        &self,
        pid: i32,
        mem: &RemoteMem,
        areas: &[VmArea],
        batch: &PageBatch,
    ) -> Result<u64, RestoreError> {
        let area = areas
            .get(batch.area as usize)
            .ok_or_else(|| RestoreError::Pages {
                pid,
                addr: batch.runs[0].start,
                reason: format!("page batch names area {} of {}", batch.area, areas.len()),
            })?;
        let uffd = self
            .uffd
            .as_ref()
            .filter(|_| self.registered.get(batch.area as usize) == Some(&true));
        for (run, data) in batch.runs_with_data() {
            if run.start < area.start || run.end() > area.end || !is_mapped_area(area) {
                return Err(RestoreError::Pages {
                    pid,
                    addr: run.start,
                    reason: format!(
                        "run of {} pages lies outside area {:#x}-{:#x}",
                        run.pages, area.start, area.end
                    ),
                });
            }
            match uffd {
                Some(uffd) => copy(uffd, mem, area, run.start, data)?,
                None => mem.write(run.start, data)?,
            }
        }
        Ok(batch.page_count())
    }
}

/// UFFDIO_COPY of `data` to `dst`; a page already present (EEXIST) is
/// written through /proc/PID/mem instead, as is the rest of the run after
/// any other error (the write then reports what is wrong).
fn copy(
    uffd: &Userfaultfd,
    mem: &RemoteMem,
    area: &VmArea,
    dst: u64,
    data: &[u8],
) -> Result<(), RestoreError> {
    let end = dst + data.len() as u64;
    let mut at = dst;
    while at < end {
        let off = (at - dst) as usize;
        match uffd.copy_quiet(at, &data[off..]) {
            (_, Ok(())) => return Ok(()),
            (n, Err(_)) if n > 0 => at += n,
            (_, Err(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                mem.write(at, &data[off..off + PAGE_SIZE])?;
                at += PAGE;
            }
            (_, Err(e)) => {
                tracing::debug!(
                    pid = mem.pid,
                    addr = at,
                    "UFFDIO_COPY: {e}; writing instead"
                );
                mem.write(at, &data[off..])
                    .map_err(|w| map_err(mem.pid, area, w.to_string()))?;
                return Ok(());
            }
        }
    }
    Ok(())
}
