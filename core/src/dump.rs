//! Dump orchestration: freeze every thread, read the state of each kind,
//! write the records, then the pages; undo everything on failure.

use crate::error::{DumpError, TaskError};
use crate::memory;
use crate::proc;
use crate::ptrace::{self, Regs, Stop};
use crate::syscall::{Remote, RemoteMem, find_syscall_insn};
use crate::threads::{self, Resume};
use crate::{DumpOptions, DumpStats};
use crstream_proto::{
    BlobInfo, Inventory, ProcessCore, ProcessEntry, ProcessState, ProcessTree, Rlimit, StreamKind,
    record::Body,
};
use crstream_streamer::{ImageSink, PAGE_SIZE};
use std::time::Instant;

struct FrozenThread {
    tid: i32,
    regs: Regs,
    mask: u64,
    /// Registers were changed by injected syscalls.
    touched: bool,
    /// The signal mask was replaced by "all blocked".
    masked: bool,
}

/// Every thread of the target, stopped under ptrace. Dropping it puts
/// every register and mask back and detaches: the target runs on.
struct Frozen {
    pid: i32,
    threads: Vec<FrozenThread>,
    released: bool,
}

/// Waits until a seized+interrupted thread reaches its interrupt stop,
/// passing on signals it was about to receive. Ok(false): it exited.
fn wait_interrupt_stop(tid: i32) -> Result<bool, TaskError> {
    loop {
        let (status, stop) = ptrace::wait(tid)?;
        match stop {
            Stop::Event(ptrace::PTRACE_EVENT_STOP) => return Ok(true),
            // A signal-delivery-stop: deliver it; the pending interrupt
            // stops the thread again before it runs user code.
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Gone => return Ok(false),
            _ => {
                return Err(TaskError::UnexpectedStop {
                    tid,
                    status,
                    while_doing: "waiting for the interrupt stop",
                });
            }
        }
    }
}

impl Frozen {
    fn freeze(pid: i32) -> Result<Self, DumpError> {
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            released: false,
        };
        // Threads may be created while we attach: repeat until a listing
        // shows no new thread (stopped threads cannot create more).
        loop {
            let tids = proc::tasks(pid).map_err(|err| DumpError::Proc { pid, err })?;
            let new: Vec<i32> = tids
                .into_iter()
                .filter(|t| !f.threads.iter().any(|x| x.tid == *t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match ptrace::seize(tid, ptrace::PTRACE_O_TRACESYSGOOD) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(err) => return Err(DumpError::Attach { pid, tid, err }),
                }
                // SAFETY: plain integers; filled in below.
                let zero: Regs = unsafe { std::mem::zeroed() };
                f.threads.push(FrozenThread {
                    tid,
                    regs: zero,
                    mask: 0,
                    touched: false,
                    masked: false,
                });
                ptrace::interrupt(tid)?;
                if !wait_interrupt_stop(tid)? {
                    f.threads.pop();
                    if tid == pid {
                        return Err(DumpError::NoSuchProcess { pid });
                    }
                    continue;
                }
                let t = f.threads.last_mut().unwrap();
                t.regs = ptrace::get_regs(tid)?;
                t.mask = ptrace::get_sigmask(tid)?;
                // No signal may interrupt our injected syscalls.
                ptrace::set_sigmask(tid, !0)?;
                t.masked = true;
            }
        }
        if f.threads.first().map(|t| t.tid) != Some(pid) {
            return Err(DumpError::NoSuchProcess { pid });
        }
        tracing::debug!(pid, threads = f.threads.len(), "frozen");
        Ok(f)
    }

    /// Puts registers and masks back and detaches every thread.
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for t in self.threads.iter().rev() {
            if t.touched {
                let mut regs = t.regs;
                threads::adjust_restart(&mut regs, Resume::SameTask);
                if let Err(e) = ptrace::set_regs(t.tid, &regs) {
                    tracing::error!(tid = t.tid, "restoring registers: {e}");
                }
            }
            if t.masked
                && let Err(e) = ptrace::set_sigmask(t.tid, t.mask)
            {
                tracing::error!(tid = t.tid, "restoring the signal mask: {e}");
            }
            if let Err(e) = ptrace::detach(t.tid, 0) {
                tracing::error!(tid = t.tid, "detaching: {e}");
            }
        }
        tracing::debug!(pid = self.pid, "released");
    }

    /// SIGKILLs the target (after a successful dump) and collects the exit
    /// of every traced thread.
    fn kill(&mut self) {
        self.released = true;
        // SAFETY: signalling the process we dumped.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        for t in self.threads.iter().rev() {
            let mut st = 0;
            // SAFETY: collects the exit notification of a tracee.
            unsafe { libc::waitpid(t.tid, &mut st, libc::__WALL) };
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release();
    }
}

pub(crate) fn test_fail_point() -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var("CRSTREAM_TEST_FAIL_AT").ok()
    } else {
        None
    }
}

/// A dumped process, still frozen: the caller makes the image durable, then
/// ends it with [`Dumped::finish`]. Dropping it lets the process run on
/// unharmed, which is what a failure to store the image must do.
pub struct Dumped {
    frozen: Frozen,
    stats: DumpStats,
    frozen_at: Instant,
    started: Instant,
}

impl Dumped {
    pub fn stats(&self) -> &DumpStats {
        &self.stats
    }

    /// Kills the process (`kill`) or lets it run on, and returns the final
    /// figures: frozen time runs until now, since the process stayed stopped
    /// while the image was being stored.
    pub fn finish(mut self, kill: bool) -> DumpStats {
        if kill {
            self.frozen.kill();
        } else {
            self.frozen.release();
        }
        let mut stats = self.stats.clone();
        stats.frozen = self.frozen_at.elapsed();
        stats.total = self.started.elapsed();
        stats
    }
}

pub fn dump(opts: &DumpOptions, sink: &mut dyn ImageSink) -> Result<Dumped, DumpError> {
    let started = Instant::now();
    let pid = opts.pid;
    if pid == std::process::id() as i32 {
        return Err(DumpError::SelfDump { pid });
    }
    let status = proc::status(pid).map_err(|_| DumpError::NoSuchProcess { pid })?;
    if status.tgid != pid {
        return Err(DumpError::Unsupported {
            pid,
            what: "target",
            reason: format!("it is a thread of process {}", status.tgid),
        });
    }
    refuse_children(pid)?;
    let mut frozen = Frozen::freeze(pid)?;
    let frozen_at = Instant::now();
    let (pages, threads) = match dump_frozen(&mut frozen, opts, sink) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(pid, "dump failed, letting the process run on: {e}");
            frozen.release();
            return Err(e);
        }
    };
    let stats = DumpStats {
        pages,
        page_bytes: pages * PAGE_SIZE as u64,
        frozen: frozen_at.elapsed(),
        total: started.elapsed(),
        threads,
    };
    Ok(Dumped {
        frozen,
        stats,
        frozen_at,
        started,
    })
}

/// Process trees come later: a dump of a parent alone would leave its
/// children behind, so refuse it and name them.
fn refuse_children(pid: i32) -> Result<(), DumpError> {
    let tasks = proc::tasks(pid).map_err(|_| DumpError::NoSuchProcess { pid })?;
    let mut children: Vec<String> = Vec::new();
    for tid in tasks {
        let list =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
        children.extend(list.split_whitespace().map(str::to_string));
    }
    if children.is_empty() {
        return Ok(());
    }
    Err(DumpError::Unsupported {
        pid,
        what: "process tree",
        reason: format!(
            "it has child processes ({}); dumping a process with children is not supported yet",
            children.join(", ")
        ),
    })
}

fn cpu_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

fn xcr0() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is available when XSAVE is (checked above).
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}

fn uname_release() -> String {
    // SAFETY: uname fills a plain struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    // SAFETY: NUL-terminated by the kernel.
    let c = |f: &[libc::c_char]| {
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    c(&u.release)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn prctl_int(
    remote: &Remote,
    mem: &RemoteMem,
    scratch: u64,
    name: &'static str,
    opt: u64,
) -> Result<u32, DumpError> {
    remote.call(name, libc::SYS_prctl, &[opt, scratch])?;
    let mut b = [0u8; 4];
    mem.read(scratch, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Everything while frozen. Returns (pages, threads).
fn dump_frozen(
    frozen: &mut Frozen,
    opts: &DumpOptions,
    sink: &mut dyn ImageSink,
) -> Result<(u64, usize), DumpError> {
    let pid = frozen.pid;
    let proc_err = |err| DumpError::Proc { pid, err };
    let fail_at = test_fail_point();

    // What /proc gives, and refusals, before touching anything.
    let status = proc::status(pid).map_err(proc_err)?;
    if status.seccomp != 0 {
        return Err(DumpError::Unsupported {
            pid,
            what: "seccomp",
            reason: "the process has seccomp filters".into(),
        });
    }
    let stat = proc::stat(pid).map_err(proc_err)?;
    let smaps = proc::smaps(pid).map_err(proc_err)?;
    let mut areas = memory::plan(pid, &smaps)?;
    let mut files = crate::files::dump(pid)?;
    memory::scan(pid, &mut areas)?;

    let vdso = smaps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or(TaskError::NoSyscallInsn { pid })?;
    let mem = RemoteMem::open(pid, false)?;
    let mut vdso_bytes = vec![0u8; vdso.len() as usize];
    mem.read(vdso.start, &mut vdso_bytes)?;
    let insn =
        find_syscall_insn(&vdso_bytes, vdso.start).ok_or(TaskError::NoSyscallInsn { pid })?;

    // Injected syscalls: scratch memory first, unmapped at the end.
    let leader_regs = frozen.threads[0].regs;
    frozen.threads[0].touched = true;
    let leader = Remote {
        tid: pid,
        syscall_ip: insn,
        base: leader_regs,
    };
    let scratch = leader.call(
        "mmap(scratch)",
        libc::SYS_mmap,
        &[
            0,
            PAGE_SIZE as u64,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )? as u64;
    let injected = (|| -> Result<_, DumpError> {
        let signals = crate::signals::dump(pid, &leader, &mem, scratch)?;
        let itimers = crate::timers::dump(pid, &leader, &mem, scratch)?;
        let mm = crate::mm::dump(pid, &stat, &leader)?;
        let pdeath = prctl_int(
            &leader,
            &mem,
            scratch,
            "prctl(PR_GET_PDEATHSIG)",
            libc::PR_GET_PDEATHSIG as u64,
        )?;
        let subreaper = prctl_int(
            &leader,
            &mem,
            scratch,
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::PR_GET_CHILD_SUBREAPER as u64,
        )?;
        let securebits = leader.call(
            "prctl(PR_GET_SECUREBITS)",
            libc::SYS_prctl,
            &[libc::PR_GET_SECUREBITS as u64],
        )? as u32;
        let mut cores = Vec::new();
        for t in frozen.threads.iter_mut() {
            t.touched = true;
            let remote = Remote {
                tid: t.tid,
                syscall_ip: insn,
                base: t.regs,
            };
            cores.push(threads::dump(
                pid, t.tid, &t.regs, t.mask, &remote, &mem, scratch,
            )?);
        }
        Ok((signals, itimers, mm, pdeath, subreaper, securebits, cores))
    })();
    let unmapped = leader.call(
        "munmap(scratch)",
        libc::SYS_munmap,
        &[scratch, PAGE_SIZE as u64],
    );
    let (signals, itimers, mm, pdeath, subreaper, securebits, cores) = injected?;
    unmapped?;

    let mut rlimits = Vec::new();
    // RLIMIT_CPU (0) .. RLIMIT_RTTIME (15)
    for res in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 reading into a local struct.
        if unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) } == 0 {
            rlimits.push(Rlimit {
                resource: res,
                cur: old.rlim_cur,
                max: old.rlim_max,
            });
        }
    }
    let personality = proc::read_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let core = ProcessCore {
        pid: pid as u32,
        comm: stat.comm.clone(),
        personality,
        umask: status.umask,
        cwd: proc::read_link(format!("/proc/{pid}/cwd")).map_err(proc_err)?,
        root: proc::read_link(format!("/proc/{pid}/root")).map_err(proc_err)?,
        creds: Some(crate::creds::from_status(&status, securebits)),
        rlimits,
        mm: Some(mm),
        itimer_real: Some(itimers[0]),
        itimer_virtual: Some(itimers[1]),
        itimer_prof: Some(itimers[2]),
        exit_signal: stat.field(38) as u32,
        pdeath_signal: pdeath,
        cmdline: proc::read_bytes(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        child_subreaper: subreaper as u64,
    };

    // Records.
    let tids: Vec<u32> = frozen.threads.iter().map(|t| t.tid as u32).collect();
    sink.record(
        0,
        Body::Inventory(Inventory {
            format_version: crstream_proto::FORMAT_VERSION as u32,
            crstream_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: uname_release(),
            arch: "x86_64".into(),
            page_size: PAGE_SIZE as u32,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            hostname: hostname(),
            cpu_flags: cpu_flags(),
            xfeatures_mask: xcr0(),
            xsave_size: cores[0].xstate.len() as u32,
            root_pid: pid as u32,
            leave_running: opts.leave_running,
        }),
    )?;
    let (pgid, sid) = crate::session::dump(&stat);
    sink.record(
        0,
        Body::ProcessTree(ProcessTree {
            processes: vec![ProcessEntry {
                pid: pid as u32,
                ppid: status.ppid as u32,
                pgid,
                sid,
                threads: tids.clone(),
                state: ProcessState::Alive as i32,
                exit_code: 0,
            }],
        }),
    )?;
    let ps = sink.declare(
        StreamKind::Process,
        pid as u32,
        0,
        &format!("process {pid}"),
    )?;
    let pages_stream =
        sink.declare(StreamKind::Pages, pid as u32, 0, &format!("pages of {pid}"))?;
    sink.record(ps, Body::ProcessCore(core))?;
    let pages_total: u64 = areas
        .iter()
        .flat_map(|a| a.runs.iter())
        .map(|r| r.1 / PAGE_SIZE as u64)
        .sum();
    sink.record(
        ps,
        Body::MemoryMap(crstream_proto::MemoryMap {
            pid: pid as u32,
            areas: areas.iter().map(|a| a.area.clone()).collect(),
            pages_total,
        }),
    )?;
    let mut blobs = Vec::new();
    for f in files.files.iter_mut().filter(|f| f.deleted) {
        let id = sink.declare(
            StreamKind::Blob,
            pid as u32,
            0,
            &format!("fd {} contents", f.fd),
        )?;
        f.contents_stream = id;
        blobs.push(f.clone());
    }
    sink.record(ps, Body::FileTable(files))?;
    sink.record(ps, Body::SignalState(signals))?;
    for f in &blobs {
        sink.record(
            ps,
            Body::BlobInfo(BlobInfo {
                stream_id: f.contents_stream,
                size: f.size,
                what: format!("contents of deleted {} (fd {})", f.path, f.fd),
            }),
        )?;
    }
    for c in cores {
        let ts = sink.declare(
            StreamKind::Thread,
            pid as u32,
            c.tid,
            &format!("thread {}", c.tid),
        )?;
        sink.record(ts, Body::ThreadCore(c))?;
    }
    for f in &blobs {
        let n = crate::files::dump_contents(pid, f, sink, f.contents_stream)?;
        if n != f.size {
            return Err(DumpError::File {
                pid,
                fd: f.fd as i32,
                path: f.path.clone(),
                err: std::io::Error::other(format!("read {n} bytes of {}", f.size)),
            });
        }
    }
    sink.end_metadata()?;
    let (pages, _) = memory::write_pages(
        pid,
        &areas,
        sink,
        pages_stream,
        fail_at.as_deref() == Some("memory"),
    )?;
    tracing::info!(pid, pages, threads = tids.len(), "dumped");
    Ok((pages, tids.len()))
}
