//! Writing saved pages into a stub. Private anonymous areas are filled
//! with UFFDIO_COPY through a userfaultfd of the stub's mm: the kernel
//! copies each page into a fresh page it installs, where a write through
//! /proc/PID/mem would fault in a zeroed page first and copy over it (a
//! third faster for large processes). Everything else, and any page the
//! kernel already put there (the rebuild touches a few), is written
//! through /proc/PID/mem. A [`Copier`] thread takes every other batch of a
//! registered area: installing fresh pages, not reading the image, is what
//! a restore waits on, and two CPUs install them about twice as fast.

use super::{is_mapped_area, map_err};
use crate::error::RestoreError;
use crate::inject::RemoteMem;
use crate::lazy::is_lazy_area;
use crate::stub::Stub;
use crate::sys::uffd::Userfaultfd;
use crstream_proto::VmArea;
use crstream_streamer::{PAGE_SIZE, PageBatch};
use std::sync::{Arc, mpsc};

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
    uffd: Option<Arc<Userfaultfd>>,
    /// Areas registered with `uffd`, by index (none without one).
    registered: Vec<bool>,
    /// The process's memory, opened for a [`Copier`] (None: the batches
    /// of this process are all written here).
    mem: Option<Arc<RemoteMem>>,
}

impl PageWriter {
    /// Writes every page through /proc/PID/mem.
    pub(crate) fn plain() -> Self {
        Self {
            uffd: None,
            registered: Vec::new(),
            mem: None,
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
            uffd: Some(Arc::new(uffd)),
            registered,
            mem: RemoteMem::open(stub.pid, true).ok().map(Arc::new),
        }
    }

    /// The userfaultfd, if the batch's area is registered with it.
    fn registered_uffd(&self, batch: &PageBatch) -> Option<&Arc<Userfaultfd>> {
        self.uffd
            .as_ref()
            .filter(|_| self.registered.get(batch.area as usize) == Some(&true))
    }

    /// Writes one page batch, or hands it to `copier` when that has room;
    /// returns its pages.
    pub(crate) fn fill_with(
        &self,
        copier: Option<&mut Copier>,
        pid: i32,
        mem: &RemoteMem,
        areas: &[VmArea],
        batch: PageBatch,
    ) -> Result<u64, RestoreError> {
        let uffd = self.registered_uffd(&batch);
        let (Some(copier), Some(uffd), Some(own_mem)) = (copier, uffd, &self.mem) else {
            return self.fill(pid, mem, areas, &batch);
        };
        let area = check_batch(pid, areas, &batch)?;
        let pages = batch.page_count();
        let job = Box::new(CopyJob {
            uffd: uffd.clone(),
            mem: own_mem.clone(),
            area: area.clone(),
            batch,
        });
        if let Err(job) = copier.try_send(job) {
            job.run()?;
        }
        Ok(pages)
    }

    /// Writes one page batch; returns its pages.
    pub(crate) fn fill(
        &self,
        pid: i32,
        mem: &RemoteMem,
        areas: &[VmArea],
        batch: &PageBatch,
    ) -> Result<u64, RestoreError> {
        let area = check_batch(pid, areas, batch)?;
        let uffd = self.registered_uffd(batch);
        for (run, data) in batch.runs_with_data() {
            match uffd {
                Some(uffd) => copy(uffd, mem, area, run.start, data)?,
                None => mem.write(run.start, data)?,
            }
        }
        Ok(batch.page_count())
    }
}

/// The area a batch names, if every run of it lies inside.
fn check_batch<'a>(
    pid: i32,
    areas: &'a [VmArea],
    batch: &PageBatch,
) -> Result<&'a VmArea, RestoreError> {
    let area = areas
        .get(batch.area as usize)
        .ok_or_else(|| RestoreError::Pages {
            pid,
            addr: batch.runs[0].start,
            reason: format!("page batch names area {} of {}", batch.area, areas.len()),
        })?;
    for run in &batch.runs {
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
    }
    Ok(area)
}

/// One batch of a registered area, for the [`Copier`].
pub(crate) struct CopyJob {
    uffd: Arc<Userfaultfd>,
    mem: Arc<RemoteMem>,
    area: VmArea,
    batch: PageBatch,
}

impl CopyJob {
    fn run(&self) -> Result<(), RestoreError> {
        for (run, data) in self.batch.runs_with_data() {
            copy(&self.uffd, &self.mem, &self.area, run.start, data)?;
        }
        Ok(())
    }
}

/// A second thread that installs pages (see the module comment): it takes
/// a batch whenever it has room for one, so neither thread waits on the
/// other. Its results are collected by [`Copier::wait`], which must come
/// before anything relies on the pages (a fork, the end of the fill).
pub(crate) struct Copier {
    jobs: Option<mpsc::SyncSender<Box<CopyJob>>>,
    results: mpsc::Receiver<Result<(), RestoreError>>,
    outstanding: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Copier {
    /// None on one CPU. `cpus`: where the thread may run (the restorer's
    /// own thread is pinned to one CPU, which this thread would inherit).
    pub(crate) fn start(cpus: Option<nix::sched::CpuSet>) -> Option<Self> {
        // (Counted on `cpus`: the pinned thread sees one CPU.)
        let n = match &cpus {
            Some(set) => (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .count(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if n < 2 {
            return None;
        }
        let (jobs, rx) = mpsc::sync_channel::<Box<CopyJob>>(1);
        let (tx, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("page-copier".into())
            .spawn(move || {
                if let Some(cpus) = cpus {
                    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus);
                }
                for job in rx {
                    let r = job.run();
                    // Its userfaultfd is closed (the areas unregistered)
                    // before anyone learns the batch is in.
                    drop(job);
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Self {
            jobs: Some(jobs),
            results,
            outstanding: 0,
            thread: Some(thread),
        })
    }

    /// Hands `job` over, or gives it back when the thread has one waiting.
    fn try_send(&mut self, job: Box<CopyJob>) -> Result<(), Box<CopyJob>> {
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        match jobs.try_send(job) {
            Ok(()) => {
                self.outstanding += 1;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// Waits until every batch handed over is in; the first failure.
    pub(crate) fn wait(&mut self) -> Result<(), RestoreError> {
        let mut first = Ok(());
        while self.outstanding > 0 {
            let r = self
                .results
                .recv()
                .unwrap_or_else(|_| Err(RestoreError::Image("the page copier stopped".into())));
            self.outstanding -= 1;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
