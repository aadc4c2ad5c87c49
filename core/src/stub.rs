//! The restore stub: a child created with the saved PID (clone3 + set_tid)
//! that stops itself under ptrace, then is emptied and rebuilt entirely by
//! syscalls injected from the restorer thread.
//!
//! Injection first uses a `syscall` instruction of the vDSO (the stub is a
//! copy of crstream, so crstream's vDSO is at the same place in it); then a
//! trampoline page (`syscall; int3` + scratch space) mapped at an address
//! free in both the stub and the image, which survives while everything else
//! is unmapped and remapped.

use crate::error::{RestoreError, TaskError};
use crate::inject::{Remote, RemoteMem, find_syscall_insn};
use crate::proc::{self, MapEntry};
use crate::sys::process::CloneArgs;
use crate::sys::ptrace::{self, Stop};
use crstream_proto::{AreaKind, VmArea};
use crstream_streamer::PAGE_SIZE;

/// Trampoline: one code page then scratch pages.
pub const TRAMP_PAGES: u64 = 16;
pub const TRAMP_LEN: u64 = TRAMP_PAGES * PAGE_SIZE as u64;
/// Scratch offsets: a path buffer, then room for structures.
pub const SCRATCH_PATH: usize = 0;
pub const SCRATCH_PATH_LEN: usize = 8192;
pub const SCRATCH_DATA: usize = 8192;
pub const SCRATCH_LEN: usize = (TRAMP_LEN as usize) - PAGE_SIZE;

/// ptrace options of every stub and thread restore creates (threads and
/// forked children inherit them).
pub const STUB_OPTIONS: u64 = ptrace::PTRACE_O_TRACESYSGOOD
    | ptrace::PTRACE_O_TRACECLONE
    | ptrace::PTRACE_O_TRACEFORK
    | ptrace::PTRACE_O_EXITKILL;

/// Highest user address + 1 on x86_64 with 4-level paging.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Kills and reaps the stub (and its traced threads) unless disarmed: a
/// failed restore leaves nothing behind.
pub struct StubGuard {
    pub pid: i32,
    pub tids: Vec<i32>,
    pub armed: bool,
}

impl Drop for StubGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::debug!(pid = self.pid, "killing the half-restored process");
        let _ = crate::sys::process::kill(self.pid, libc::SIGKILL);
        for &t in self.tids.iter().filter(|&&t| t != self.pid) {
            ptrace::reap(t);
        }
        ptrace::kill_and_reap(self.pid);
    }
}

/// The stub being rebuilt: its leader, its memory, its trampoline.
pub struct Stub {
    /// Its PID as crstream sees it: for ptrace, /proc and crstream's calls.
    pub pid: i32,
    /// Its PID as it sees itself, the saved one: for the calls injected
    /// into the tree (they differ in a new PID namespace, `--pidns`).
    pub vpid: i32,
    /// Where it holds a pidfd of crstream, to take the files crstream made
    /// for it (`--pidns`: crstream has no PID inside); None: it uses
    /// crstream's PID.
    pub handoff: Option<i32>,
    pub leader: Remote,
    pub mem: RemoteMem,
    pub tramp: u64,
}

impl Stub {
    pub fn scratch(&self) -> u64 {
        self.tramp + PAGE_SIZE as u64
    }

    pub fn call(&self, name: &'static str, nr: i64, args: &[u64]) -> Result<i64, TaskError> {
        self.leader.call(name, nr, args)
    }

    /// Injection into thread `tid` of the stub (created by restore,
    /// stopped), through the trampoline, on the leader's stack.
    pub fn thread(&self, tid: i32) -> Result<Remote, TaskError> {
        let mut r = Remote::new(tid, self.tramp)?;
        r.base.rsp = self.leader.base.rsp;
        Ok(r)
    }

    /// Writes `data` at scratch offset `off`; returns its address in the stub.
    pub fn put(&self, off: usize, data: &[u8]) -> Result<u64, TaskError> {
        assert!(off + data.len() <= SCRATCH_LEN, "scratch overflow");
        let addr = self.scratch() + off as u64;
        self.mem.write(addr, data)?;
        Ok(addr)
    }

    /// Writes a NUL-terminated path into the path buffer.
    pub fn put_path(&self, path: &[u8]) -> Result<u64, TaskError> {
        let mut b = path.to_vec();
        b.push(0);
        if b.len() > SCRATCH_PATH_LEN {
            return Err(TaskError::Syscall {
                tid: self.pid,
                name: "path too long",
                errno: libc::ENAMETOOLONG,
            });
        }
        self.put(SCRATCH_PATH, &b)
    }

    /// openat(AT_FDCWD, path, flags, mode) in the stub (see
    /// [`Self::reachable`]).
    pub fn open(&self, path: &[u8], flags: i32, mode: u32) -> Result<i64, TaskError> {
        let (path, taken) = self.reachable(path)?;
        let p = self.put_path(&path)?;
        let got = self.call(
            "openat",
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, p, flags as u64, mode as u64],
        );
        self.close_taken(taken)?;
        got
    }

    /// `path` as the stub reaches it, and an fd of its own to close after
    /// using it ([`Self::close_taken`]). A path through an fd of crstream
    /// (/proc/CRSTREAM/fd/N: the files restore made again, such as removed
    /// ones) is not in a new PID namespace's /proc (`--pidns`): there the
    /// stub takes that fd and goes through its own.
    pub fn reachable(&self, path: &[u8]) -> Result<(Vec<u8>, Option<i64>), TaskError> {
        let Some(crstream) = self.handoff else {
            return Ok((path.to_vec(), None));
        };
        let through = crstream_fd_path("");
        let Some(fd) = path
            .strip_prefix(through.as_bytes())
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
        else {
            return Ok((path.to_vec(), None));
        };
        let own = self.call(
            "pidfd_getfd",
            libc::SYS_pidfd_getfd,
            &[crstream as u64, fd, 0],
        )?;
        Ok((format!("/proc/self/fd/{own}").into_bytes(), Some(own)))
    }

    /// Closes the fd [`Self::reachable`] took, if any.
    pub fn close_taken(&self, taken: Option<i64>) -> Result<(), TaskError> {
        match taken {
            Some(fd) => self.call("close", libc::SYS_close, &[fd as u64]).map(drop),
            None => Ok(()),
        }
    }
}

/// The path through which a stub reaches crstream's fd `fd` (an fd
/// number, or "" for the directory): restore hands it files so, and
/// [`Stub::reachable`] takes them where that path does not lead.
pub(crate) fn crstream_fd_path(fd: impl std::fmt::Display) -> String {
    format!("/proc/{}/fd/{fd}", std::process::id())
}

/// capset(2) injected into the thread `remote` of `stub`: version 3, two
/// 32-bit words per set (written at the start of the scratch data).
pub fn capset(
    stub: &Stub,
    remote: &Remote,
    effective: u64,
    permitted: u64,
    inheritable: u64,
) -> Result<(), TaskError> {
    let mut b = Vec::with_capacity(8 + 24);
    b.extend_from_slice(&crate::sys::ids::LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0, 32] {
        for set in [effective, permitted, inheritable] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    let header = stub.put(SCRATCH_DATA, &b)?;
    remote.call("capset", libc::SYS_capset, &[header, header + 8])?;
    Ok(())
}

/// Creates the stub with PID `vpid` (as the new process sees it), stopped
/// under ptrace by this thread. `flags`: more clone flags (a new PID or
/// mount namespace). Its guard holds its PID as crstream sees it.
pub fn spawn(vpid: i32, flags: u64) -> Result<StubGuard, RestoreError> {
    let pid = match crate::sys::process::fork_traced_stub(vpid, flags) {
        Ok(pid) => pid,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(RestoreError::pid_in_use(vpid));
        }
        Err(err) => return Err(RestoreError::Clone { pid: vpid, err }),
    };
    let guard = StubGuard {
        pid,
        tids: vec![pid],
        armed: true,
    };
    let (status, stop) = ptrace::wait(pid)?;
    // PID 1 of a new namespace stops on a breakpoint (see fork_traced_stub).
    if stop != Stop::Signal(libc::SIGSTOP) && stop != Stop::Signal(libc::SIGTRAP) {
        return Err(TaskError::UnexpectedStop {
            tid: pid,
            status,
            while_doing: "waiting for the new stub to stop",
        }
        .into());
    }
    ptrace::set_options(pid, STUB_OPTIONS)?;
    Ok(guard)
}

/// How crstream creates a process itself (the root, or a helper standing
/// in for the leader of the root's session), and what it knows of the
/// PIDs taken where the tree is created: crstream's PID namespace, or a new
/// one (`--pidns`).
pub(crate) struct Spawner<'a> {
    pub ns: Option<&'a mut crate::pidns::PidNamespace>,
    /// Where the stubs keep crstream's pidfd, in a new namespace.
    pub handoff_at: i32,
    pub pids: &'a crate::pidns::PidMap,
}

impl Spawner<'_> {
    /// A new stub with PID `vpid`, emptied (see [`prepare`]).
    pub fn spawn(
        &mut self,
        vpid: i32,
        image: &[VmArea],
        others: &[(u64, u64)],
    ) -> Result<(StubGuard, Stub), RestoreError> {
        let flags = self.ns.as_ref().map_or(0, |ns| ns.spawn_flags());
        let guard = spawn(vpid, flags)?;
        let handoff = self.ns.as_ref().map(|ns| (ns.handoff(), self.handoff_at));
        let stub = prepare(&guard, vpid, image, others, handoff)?;
        if let Some(ns) = self.ns.as_mut() {
            ns.spawned(&stub)?;
        }
        self.pids.note(vpid, guard.pid);
        Ok((guard, stub))
    }

    /// A stub another stub forked.
    pub fn forked(&self, stub: &Stub) {
        self.pids.note(stub.vpid, stub.pid);
    }

    /// Whether PID `vpid` is taken where the tree is created.
    pub fn taken(&self, vpid: i32) -> bool {
        match self.ns.as_ref() {
            Some(ns) => ns.taken(vpid, self.pids),
            None => crate::proc::pid_exists(vpid),
        }
    }
}

/// Lowest page-aligned address with `len` free bytes in both range sets.
pub fn free_gap(busy: &[(u64, u64)], len: u64, floor: u64) -> Option<u64> {
    let mut v: Vec<(u64, u64)> = busy.to_vec();
    v.sort_unstable();
    let mut at = floor;
    for (s, e) in v {
        if e <= at {
            continue;
        }
        if s >= at + len {
            return Some(at);
        }
        at = at.max(e);
    }
    (at + len <= TASK_SIZE).then_some(at)
}

fn own_vdso() -> Result<(u64, Vec<u8>), RestoreError> {
    let maps = proc::maps(std::process::id() as i32)
        .map_err(|e| RestoreError::Incompatible(e.to_string()))?;
    let v = maps
        .iter()
        .find(|m| m.path == b"[vdso]")
        .ok_or_else(|| RestoreError::Incompatible("crstream has no [vdso]".into()))?;
    let mut bytes = vec![0u8; v.len() as usize];
    let me = std::process::id() as i32;
    let n = crate::sys::mem::vm_readv(me, &[(v.start, bytes.len())], &mut bytes)
        .map_err(|e| RestoreError::Incompatible(format!("reading crstream's [vdso]: {e}")))?;
    if n != bytes.len() {
        return Err(RestoreError::Incompatible(
            "short read of crstream's [vdso]".into(),
        ));
    }
    Ok((v.start, bytes))
}

fn special(maps: &[MapEntry], name: &str) -> Option<(u64, u64)> {
    maps.iter()
        .find(|m| m.path == name.as_bytes())
        .map(|m| (m.start, m.end))
}

/// Creates the stub of a child process from its parent's stub with an
/// injected clone3 (a fork with set_tid): the child starts as a copy of the
/// parent (no fds; its trampoline, vDSO and whatever memory the parent has
/// been given so far), traced like it (PTRACE_O_TRACEFORK). It keeps the
/// areas in `keep` (pages it shares copy-on-write with the parent) and
/// loses the rest; its special mappings move to its own saved addresses.
///
/// `flags`: CLONE_FILES / CLONE_FS to share the parent's fd table or fs
/// state; CLONE_PARENT to make the child a sibling of `parent`, created
/// inside the session of a helper standing in for a leader that is gone
/// (it then inherits the helper's exit signal).
pub fn fork(
    parent: &Stub,
    pid: i32,
    exit_signal: u32,
    image: &[VmArea],
    flags: u64,
    keep: &[(u64, u64)],
) -> Result<(StubGuard, Stub), RestoreError> {
    let clone_parent = flags & libc::CLONE_PARENT as u64 != 0;
    let set_tid = parent.put(SCRATCH_DATA + 256, &pid.to_le_bytes())?;
    let args = CloneArgs {
        flags,
        // clone3 refuses an exit signal with CLONE_PARENT.
        exit_signal: if clone_parent { 0 } else { exit_signal as u64 },
        set_tid,
        set_tid_size: 1,
        ..Default::default()
    };
    let a = parent.put(SCRATCH_DATA, &args.to_bytes())?;
    let (ret, events) = parent.leader.raw(libc::SYS_clone3, &[a, CloneArgs::SIZE])?;
    if ret == -(libc::EEXIST as i64) {
        return Err(RestoreError::pid_in_use(pid));
    }
    if ret != pid as i64 {
        return Err(RestoreError::Clone {
            pid,
            err: std::io::Error::from_raw_os_error((-ret).clamp(1, 4095) as i32),
        });
    }
    // The parent sees `pid`; crstream, maybe outside its PID namespace,
    // learns its own name for the child from the fork event.
    let (vpid, pid) = (pid, host_pid_of_child(parent, events.child)?);
    let guard = StubGuard {
        pid,
        tids: vec![pid],
        armed: true,
    };
    let (status, stop) = ptrace::wait(pid)?;
    if !matches!(
        stop,
        Stop::Signal(libc::SIGSTOP) | Stop::Event(ptrace::PTRACE_EVENT_STOP)
    ) {
        return Err(TaskError::UnexpectedStop {
            tid: pid,
            status,
            while_doing: "waiting for a forked stub to stop",
        }
        .into());
    }
    let mut leader = Remote::new(pid, parent.tramp)?;
    leader.base.rsp = parent.leader.base.rsp;
    let stub = Stub {
        pid,
        vpid,
        handoff: parent.handoff,
        leader,
        mem: RemoteMem::open(pid, true)?,
        tramp: parent.tramp,
    };
    // A zombie-to-be has no image: it only exits. Other stubs start from
    // what the parent's memory holds now: all but `keep` goes.
    if !image.is_empty() {
        let maps = proc::maps(pid).map_err(|e| RestoreError::Io {
            pid,
            what: "reading the stub's maps".into(),
            err: std::io::Error::other(e.to_string()),
        })?;
        unmap_all_but(&stub, &maps, keep)?;
        place_specials(&stub, image, &[])?;
    }
    Ok((guard, stub))
}

/// The PID crstream knows a child by, from the fork or clone event of the
/// stub that created it (the stubs are traced with PTRACE_O_TRACEFORK and
/// PTRACE_O_TRACECLONE, so that event always comes).
pub(crate) fn host_pid_of_child(parent: &Stub, child: Option<i32>) -> Result<i32, RestoreError> {
    child.ok_or_else(|| RestoreError::Clone {
        pid: parent.vpid,
        err: std::io::Error::other("no fork event named the child it created"),
    })
}

/// Ends a forked stub the way the saved zombie ended, so that it stays a
/// zombie with that wait status until its parent reaps it: exit_group(code)
/// or death by the signal (without a core dump).
pub fn exit_as_zombie(stub: &Stub, status: i32, comm: &str) -> Result<(), RestoreError> {
    let pid = stub.pid;
    // `ps` shows a zombie by its name: the saved one, not crstream's.
    let mut name = comm.as_bytes()[..comm.len().min(15)].to_vec();
    name.push(0);
    let at = stub.put(SCRATCH_PATH, &name)?;
    stub.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, at],
    )?;
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let _ = crate::sys::process::set_rlimit(pid, libc::RLIMIT_CORE, 0, 0);
        // SIG_DFL: the stub came with crstream's handlers.
        let dfl = stub.put(SCRATCH_DATA, &[0u8; 32])?;
        stub.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig as u64, dfl, 0, 8],
        )?;
        ptrace::set_sigmask(pid, 0)?;
        crate::sys::process::kill(pid, sig).map_err(|err| RestoreError::Io {
            pid,
            what: format!("killing the zombie-to-be with signal {sig}"),
            err,
        })?;
        ptrace::cont(pid, 0)?;
    } else {
        let code = libc::WEXITSTATUS(status) as u64;
        let mut r = stub.leader.base;
        r.rip = stub.leader.syscall_ip;
        r.rax = libc::SYS_exit_group as u64;
        r.orig_rax = u64::MAX;
        r.rdi = code;
        ptrace::set_regs(pid, &r)?;
        ptrace::cont(pid, 0)?;
    }
    loop {
        match ptrace::wait(pid)? {
            (_, Stop::Gone) => return Ok(()),
            (_, Stop::Signal(sig)) => ptrace::cont(pid, sig)?,
            _ => ptrace::cont(pid, 0)?,
        }
    }
}

/// Empties the stub: blocks its signals, drops its rseq registration and
/// fds, maps the trampoline, unmaps everything else and moves its
/// vDSO/vvar to the image's addresses. The trampoline also avoids
/// `others` (the areas of the other processes of the tree, which are
/// forked from this stub and keep its trampoline). `handoff`: (crstream's
/// fd of a pidfd of itself, the fd number at which the stub keeps it).
pub fn prepare(
    guard: &StubGuard,
    vpid: i32,
    image: &[VmArea],
    others: &[(u64, u64)],
    handoff: Option<(i32, i32)>,
) -> Result<Stub, RestoreError> {
    let pid = guard.pid;
    let (vdso_base, vdso) = own_vdso()?;
    let insn = find_syscall_insn(&vdso, vdso_base).ok_or(TaskError::NoSyscallInsn { pid })?;
    let mut leader = Remote::new(pid, insn)?;
    // All signals blocked while we rebuild; the saved mask is set last.
    ptrace::set_sigmask(pid, !0)?;
    // The stub inherited crstream's rseq registration, whose area we are
    // about to unmap: the kernel would SIGSEGV the stub on its next update.
    let rseq = ptrace::rseq_config(pid)?;
    if rseq.rseq_abi_pointer != 0 {
        leader.call(
            "rseq(unregister)",
            libc::SYS_rseq,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                1,
                rseq.signature as u64,
            ],
        )?;
    }
    let stub_maps = proc::maps(pid).map_err(|e| RestoreError::Io {
        pid,
        what: "reading the stub's maps".into(),
        err: std::io::Error::other(e.to_string()),
    })?;
    let mut busy: Vec<(u64, u64)> = stub_maps.iter().map(|m| (m.start, m.end)).collect();
    busy.extend(image.iter().map(|a| (a.start, a.end)));
    busy.extend_from_slice(others);
    let floor = 1 << 20;
    let tramp = free_gap(&busy, TRAMP_LEN, floor)
        .ok_or_else(|| RestoreError::Incompatible("no free address for the trampoline".into()))?;
    busy.push((tramp, tramp + TRAMP_LEN));
    let got = leader.call(
        "mmap(trampoline)",
        libc::SYS_mmap,
        &[
            tramp,
            TRAMP_LEN,
            (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )? as u64;
    if got != tramp {
        return Err(RestoreError::Incompatible(format!(
            "trampoline mapped at {got:#x}, wanted {tramp:#x}"
        )));
    }
    let mem = RemoteMem::open(pid, true)?;
    mem.write(tramp, &[0x0f, 0x05, 0xcc])?;
    leader.syscall_ip = tramp;
    // Nothing of crstream's stack is needed any more; keep rsp in scratch.
    leader.base.rsp = tramp + TRAMP_LEN - 64;
    let stub = Stub {
        pid,
        vpid,
        handoff: handoff.map(|(_, at)| at),
        leader,
        mem,
        tramp,
    };
    let close_range = |from: i32, to: u32| {
        stub.call(
            "close_range",
            libc::SYS_close_range,
            &[from as u64, to as u64, 0],
        )
    };
    match handoff {
        None => close_range(0, u32::MAX)?,
        Some((from, at)) => {
            if from != at {
                stub.call(
                    "dup3(crstream's pidfd)",
                    libc::SYS_dup3,
                    &[from as u64, at as u64, libc::O_CLOEXEC as u64],
                )
                .map_err(|e| {
                    RestoreError::Incompatible(format!(
                        "keeping a pidfd of crstream at fd {at} of the new process: {e}"
                    ))
                })?;
            }
            close_range(0, at as u32 - 1)?;
            close_range(at + 1, u32::MAX)?
        }
    };

    unmap_all_but(&stub, &stub_maps, &[])?;

    // A helper (no image) keeps crstream's: its children move their own.
    if !image.is_empty() {
        place_specials(&stub, image, &busy)?;
    }
    Ok(stub)
}

/// Unmaps all but the trampoline, the kernel's special mappings and `keep`.
fn unmap_all_but(stub: &Stub, maps: &[MapEntry], keep: &[(u64, u64)]) -> Result<(), RestoreError> {
    let names = ["[vvar]", "[vvar_vclock]", "[vdso]"];
    let mut keep: Vec<(u64, u64)> = keep.to_vec();
    keep.push((stub.tramp, stub.tramp + TRAMP_LEN));
    keep.extend(names.iter().filter_map(|n| special(maps, n)));
    keep.sort_unstable();
    let mut at = 0u64;
    for &(s, e) in keep.iter().chain(std::iter::once(&(TASK_SIZE, TASK_SIZE))) {
        if s > at {
            stub.call("munmap", libc::SYS_munmap, &[at, s - at])?;
        }
        at = at.max(e);
    }
    Ok(())
}

/// Moves vvar/vvar_vclock/vdso of the stub to the image's addresses, through
/// a temporary place so that no move lands on a mapping not moved yet.
/// `busy`: ranges to keep clear besides the stub's maps and the image.
fn place_specials(stub: &Stub, image: &[VmArea], busy: &[(u64, u64)]) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let names = ["[vvar]", "[vvar_vclock]", "[vdso]"];
    let stub_maps = proc::maps(pid).map_err(|e| RestoreError::Io {
        pid,
        what: "reading the stub's maps".into(),
        err: std::io::Error::other(e.to_string()),
    })?;
    let mut busy = busy.to_vec();
    busy.extend(stub_maps.iter().map(|m| (m.start, m.end)));
    busy.extend(image.iter().map(|a| (a.start, a.end)));
    let floor = 1 << 20;
    let kinds = [AreaKind::Vvar, AreaKind::VvarVclock, AreaKind::Vdso];
    let mut moves = Vec::new();
    for (name, kind) in names.iter().zip(kinds) {
        let ours = special(&stub_maps, name);
        let theirs = image
            .iter()
            .find(|a| a.kind() == kind)
            .map(|a| (a.start, a.end));
        match (ours, theirs) {
            (None, None) => {}
            (Some(o), Some(t)) if o.1 - o.0 == t.1 - t.0 => moves.push((o, t)),
            // The process had unmapped it: so does its stub.
            (Some(o), None) => {
                stub.call("munmap", libc::SYS_munmap, &[o.0, o.1 - o.0])?;
            }
            (o, t) => {
                return Err(RestoreError::Incompatible(format!(
                    "{name}: this kernel has {:?} bytes, the image {:?} (different kernel?)",
                    o.map(|o| o.1 - o.0),
                    t.map(|t| t.1 - t.0)
                )));
            }
        }
    }
    let total: u64 = moves.iter().map(|(o, _)| o.1 - o.0).sum();
    if total > 0 {
        let tmp = free_gap(&busy, total, floor).ok_or_else(|| {
            RestoreError::Incompatible("no free address to move the vDSO through".into())
        })?;
        let mut t = tmp;
        let remap = |from: u64, len: u64, to: u64| {
            stub.call(
                "mremap(vdso)",
                libc::SYS_mremap,
                &[
                    from,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    to,
                ],
            )
        };
        let mut staged = Vec::new();
        for &((os, oe), target) in &moves {
            remap(os, oe - os, t)?;
            staged.push((t, oe - os, target.0));
            t += oe - os;
        }
        for (from, len, to) in staged {
            remap(from, len, to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps() {
        assert_eq!(free_gap(&[(0x1000, 0x5000)], 0x1000, 0x1000), Some(0x5000));
        assert_eq!(free_gap(&[(0x3000, 0x5000)], 0x1000, 0x1000), Some(0x1000));
        assert_eq!(
            free_gap(
                &[(0x1000, 0x3000), (0x3000, 0x4000), (0x6000, 0x7000)],
                0x2000,
                0x1000
            ),
            Some(0x4000)
        );
        assert_eq!(
            free_gap(&[(0x1000, 0x3000), (0x2000, 0x8000)], 0x1000, 0x1000),
            Some(0x8000)
        );
    }
}
