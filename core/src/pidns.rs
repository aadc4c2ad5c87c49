//! A new PID namespace for the restored tree (`restore --pidns`): every
//! process gets its saved PID inside it, whatever PIDs are taken outside,
//! so that any number of copies of one image run side by side.
//!
//! crstream stays outside. It creates children in the namespace from the
//! restoring thread (setns(CLONE_NEWPID) changes only where that thread's
//! children go) and knows each process by its outer PID: clone3's result,
//! or the fork event of the stub that forked it ([`PidMap`]). Injected
//! calls, made by the processes themselves, use the saved PIDs.
//!
//! The first process crstream creates also gets a mount namespace, in
//! which /proc is mounted again for the new PID namespace, so that the
//! tree sees itself there; every other mount is a private copy of the
//! restorer's.
//!
//! PID 1 is the tree's root when it had PID 1 (a tree dumped from its own
//! namespace). Otherwise crstream starts an init of its own first: it
//! reaps the orphans of the namespace and exits when the root does, which
//! ends the namespace with the tree (as the root's exit would if it were
//! PID 1).

use crate::error::RestoreError;
use crate::stub::{SCRATCH_DATA, Stub};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The PID (or TID) crstream knows each process and thread restore created
/// by, from the one it sees itself by (its saved PID). Without a new PID
/// namespace both are the same.
#[derive(Default)]
pub(crate) struct PidMap(RefCell<HashMap<i32, i32>>);

impl PidMap {
    pub(crate) fn note(&self, vpid: i32, pid: i32) {
        self.0.borrow_mut().insert(vpid, pid);
    }

    /// How crstream names `vpid`: itself when not noted (a process outside
    /// the tree, which keeps its PID).
    pub(crate) fn host(&self, vpid: i32) -> i32 {
        self.0.borrow().get(&vpid).copied().unwrap_or(vpid)
    }

    /// Whether restore created a process or thread with saved PID `vpid`.
    pub(crate) fn created(&self, vpid: i32) -> bool {
        self.0.borrow().contains_key(&vpid)
    }
}

fn io_err(what: &str, err: std::io::Error) -> RestoreError {
    RestoreError::Incompatible(format!("--pidns: {what}: {err}"))
}

/// The new namespace while the tree is being created in it.
pub(crate) struct PidNamespace {
    /// crstream's own namespace, to create children in again afterwards.
    own: OwnedFd,
    /// A pidfd of crstream, which the first stub keeps (see
    /// [`Self::handoff`]): from inside the namespace crstream has no PID.
    crstream: OwnedFd,
    init: Option<Init>,
    /// The restoring thread creates its children in the namespace.
    entered: bool,
    /// The first process (with the mount namespace) exists.
    first_done: bool,
    /// The root has PID 1 and creates the namespace.
    root_is_init: bool,
}

/// crstream's init of the namespace, and the pipe that tells it the
/// root's PID (or, closed unwritten, that the restore failed).
struct Init {
    pid: i32,
    tell: Option<OwnedFd>,
}

impl PidNamespace {
    /// Prepares a namespace for a tree whose root has saved PID `root`:
    /// with PID 1, the root creates it; otherwise crstream's init does,
    /// now, and this thread creates its children there from now on.
    pub(crate) fn new(root: i32) -> Result<Self, RestoreError> {
        let own = std::fs::File::open("/proc/thread-self/ns/pid")
            .map_err(|e| io_err("opening crstream's PID namespace", e))?
            .into();
        let me = rustix::process::getpid();
        let crstream = rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty())
            .map_err(|e| io_err("a pidfd of crstream", e.into()))?;
        let mut ns = Self {
            own,
            crstream,
            init: None,
            entered: false,
            first_done: false,
            root_is_init: root == 1,
        };
        if !ns.root_is_init {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| io_err("a pipe to its init", e.into()))?;
            let pid = spawn_init(read.as_raw_fd()).map_err(|e| io_err("starting its init", e))?;
            drop(read);
            ns.init = Some(Init {
                pid,
                tell: Some(write),
            });
            ns.enter(pid)?;
        }
        Ok(ns)
    }

    /// This thread creates its children in the namespace of `pid`.
    fn enter(&mut self, pid: i32) -> Result<(), RestoreError> {
        let target = rustix::process::Pid::from_raw(pid).expect("a PID is positive");
        let pidfd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())
            .map_err(|e| io_err("a pidfd of the namespace's init", e.into()))?;
        setns(pidfd.as_raw_fd()).map_err(|e| io_err("entering the namespace", e))?;
        self.entered = true;
        Ok(())
    }

    /// This thread creates its children in crstream's namespace again.
    pub(crate) fn leave(&mut self) {
        if self.entered {
            if let Err(e) = setns(self.own.as_raw_fd()) {
                tracing::error!("leaving the new PID namespace: {e}");
            }
            self.entered = false;
        }
    }

    /// More clone flags for the next process crstream creates itself: the
    /// first gets the mount namespace (and the PID namespace, as PID 1).
    pub(crate) fn spawn_flags(&self) -> u64 {
        match (self.first_done, self.root_is_init) {
            (true, _) => 0,
            (false, true) => (libc::CLONE_NEWNS | libc::CLONE_NEWPID) as u64,
            (false, false) => libc::CLONE_NEWNS as u64,
        }
    }

    /// After crstream created a process itself (with [`Self::spawn_flags`])
    /// and emptied it: the first mounts the namespace's /proc, and (as
    /// PID 1) has this thread create its next children in its namespace.
    pub(crate) fn spawned(&mut self, stub: &Stub) -> Result<(), RestoreError> {
        if self.first_done {
            return Ok(());
        }
        mount_proc(stub)?;
        if self.root_is_init {
            self.enter(stub.pid)?;
        }
        self.first_done = true;
        Ok(())
    }

    /// Whether PID `vpid` is taken in the namespace: it is new, so only by
    /// what restore created (`pids`) and its init.
    pub(crate) fn taken(&self, vpid: i32, pids: &PidMap) -> bool {
        (vpid == 1 && self.init.is_some()) || pids.created(vpid)
    }

    /// crstream's fd of a pidfd of itself, for the first stub to keep.
    pub(crate) fn handoff(&self) -> RawFd {
        self.crstream.as_raw_fd()
    }

    /// The tree runs: the init learns the root's PID and ends with it.
    /// Returns the init's PID (crstream's child, to reap), if any.
    pub(crate) fn started(mut self, root: i32) -> Option<i32> {
        self.leave();
        let init = self.init.take()?;
        let tell = init.tell.as_ref().expect("told once");
        if let Err(e) = rustix::io::write(tell, &root.to_ne_bytes()) {
            // It exits on the closed pipe and takes the tree with it: the
            // restore "succeeded" but nothing runs; say so loudly.
            tracing::error!("telling the namespace's init the root's PID: {e}");
        }
        Some(init.pid)
    }
}

impl Drop for PidNamespace {
    fn drop(&mut self) {
        self.leave();
        if let Some(mut init) = self.init.take() {
            // Restore failed: the init ends, and the namespace with it.
            init.tell = None;
            let _ = crate::sys::process::kill(init.pid, libc::SIGKILL);
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(init.pid),
                rustix::process::WaitOptions::empty(),
            );
        }
    }
}

fn setns(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns with an fd we own and a namespace type.
    crate::sys::cvt(unsafe { libc::setns(fd, libc::CLONE_NEWPID) }).map(drop)
}

/// Mounts /proc again, for the PID namespace, in the mount namespace the
/// stub was created with; its mounts first become private, so that
/// nothing propagates back to the restorer's.
fn mount_proc(stub: &Stub) -> Result<(), RestoreError> {
    let fail = |what: &str, e: crate::error::TaskError| {
        RestoreError::Incompatible(format!("--pidns: {what} in the new namespace: {e}"))
    };
    let root = stub.put(SCRATCH_DATA, b"/\0")?;
    stub.call(
        "mount(MS_PRIVATE)",
        libc::SYS_mount,
        &[0, root, 0, libc::MS_REC | libc::MS_PRIVATE, 0],
    )
    .map_err(|e| fail("making the mounts private", e))?;
    let proc = stub.put(SCRATCH_DATA + 16, b"proc\0")?;
    let target = stub.put(SCRATCH_DATA + 32, b"/proc\0")?;
    stub.call(
        "mount(proc)",
        libc::SYS_mount,
        &[
            proc,
            target,
            proc,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            0,
        ],
    )
    .map_err(|e| fail("mounting /proc", e))?;
    Ok(())
}

/// Starts the namespace's init: crstream's child, PID 1 of a new PID
/// namespace, reading the root's PID from `tell` (its read end).
fn spawn_init(tell: RawFd) -> std::io::Result<i32> {
    let args = crate::sys::process::CloneArgs {
        flags: libc::CLONE_NEWPID as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child runs only
    // `init_main`, raw syscalls on its copy of this stack.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const crate::sys::process::CloneArgs,
            std::mem::size_of::<crate::sys::process::CloneArgs>(),
        )
    };
    if r == 0 {
        init_main(tell);
    }
    crate::sys::cvt_long(r).map(|p| p as i32)
}

/// The init: raw syscalls only, no allocation (it is a copy of a
/// multi-threaded process). It keeps no fd of crstream's but the pipe,
/// blocks every signal (SIGCHLD comes through a signalfd), waits for the
/// root's PID, then reaps orphans until the root has exited.
fn init_main(tell: RawFd) -> ! {
    // SAFETY: raw syscalls on local buffers; the process only exits.
    unsafe {
        let exit = |code: i64| -> ! {
            libc::syscall(libc::SYS_exit_group, code);
            unreachable!("exit_group returned")
        };
        if tell != 0 && libc::syscall(libc::SYS_dup3, tell, 0, 0) != 0 {
            exit(1);
        }
        libc::syscall(libc::SYS_close_range, 1, u32::MAX, 0);
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0,
            8,
        );
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_NAME,
            c"crstream-init".as_ptr(),
        );
        let mut root: i32 = 0;
        if libc::syscall(libc::SYS_read, 0, &mut root as *mut i32, 4) != 4 {
            exit(0);
        }
        libc::syscall(libc::SYS_close, 0);
        let pidfd = libc::syscall(libc::SYS_pidfd_open, root, 0);
        if pidfd < 0 {
            exit(0);
        }
        let chld: u64 = 1 << (libc::SIGCHLD - 1);
        let sfd = libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &chld as *const u64,
            8,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        );
        loop {
            while libc::syscall(libc::SYS_wait4, -1, 0, libc::WNOHANG | libc::__WALL, 0) > 0 {}
            let mut fds = [
                libc::pollfd {
                    fd: pidfd as i32,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd as i32,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let n = if sfd >= 0 { 2 } else { 1 };
            // Without a signalfd, reap at least every 100 ms.
            let timeout = if sfd >= 0 { -1 } else { 100 };
            libc::syscall(libc::SYS_poll, fds.as_mut_ptr(), n, timeout);
            if fds[0].revents != 0 {
                exit(0);
            }
            let mut buf = [0u8; 128];
            while sfd >= 0 && libc::syscall(libc::SYS_read, sfd, buf.as_mut_ptr(), 128) > 0 {}
        }
    }
}

/// An fd number of crstream's pidfd in the stubs: above every fd of the
/// image, so that none replaces it before the last is in place.
pub(crate) fn handoff_fd<'a>(tables: impl Iterator<Item = &'a crstream_proto::FileTable>) -> i32 {
    tables
        .flat_map(|t| t.files.iter().map(|f| f.fd as i32))
        .max()
        .map_or(3, |m| (m + 1).max(3))
}

/// A tree dumped from a PID namespace of its own, one level inside
/// crstream's (`unshare --pid --fork`, a container): its records name
/// processes, threads, groups and sessions as they see them there, so that
/// a restore recreates the namespace and they find the same PIDs.
pub(crate) struct TreeNamespace {
    /// Every process and thread of the tree: crstream's PID → the inner one.
    pids: HashMap<i32, i32>,
    /// Process groups and sessions of the tree: crstream's ID → the inner
    /// one (0: led from outside the namespace).
    groups: HashMap<i32, i32>,
}

impl TreeNamespace {
    /// None when the tree is in crstream's PID namespace. A tree whose
    /// processes are not all in the root's namespace (one that made a
    /// namespace of its own for some children) is refused.
    pub(crate) fn of(
        entries: &[crstream_proto::ProcessEntry],
    ) -> Result<Option<Self>, crate::error::DumpError> {
        use crate::error::DumpError;
        let Some(root) = entries.first() else {
            return Ok(None);
        };
        let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let ours = std::fs::read_link("/proc/self/ns/pid").ok();
        let root_ns = ns_of(root.pid);
        if root_ns.is_none() || root_ns == ours {
            return Ok(None);
        }
        let mut ns = Self {
            pids: HashMap::new(),
            groups: HashMap::new(),
        };
        for e in entries {
            let pid = e.pid as i32;
            let refuse = |reason: String| DumpError::Unsupported {
                pid,
                what: "PID namespace",
                reason,
            };
            if ns_of(e.pid) != root_ns {
                return Err(refuse(format!(
                    "it is not in the PID namespace of the tree's root {} (it has a namespace \
                     of its own, inside)",
                    root.pid
                )));
            }
            let status = crate::proc::status(pid).map_err(|err| DumpError::Proc { pid, err })?;
            let inner = |ids: &[i32]| ids.last().copied().unwrap_or(0);
            ns.pids.insert(pid, inner(&status.nspid));
            ns.groups.insert(e.pgid as i32, inner(&status.nspgid));
            ns.groups.insert(e.sid as i32, inner(&status.nssid));
            for &tid in &e.threads[1..] {
                let t =
                    crate::proc::status(tid as i32).map_err(|err| DumpError::Proc { pid, err })?;
                ns.pids.insert(tid as i32, inner(&t.nspid));
            }
        }
        Ok(Some(ns))
    }

    /// The inner PID of a process or thread of the tree.
    pub(crate) fn pid(&self, pid: i32) -> Option<i32> {
        self.pids.get(&pid).copied()
    }

    fn group(&self, id: i32) -> i32 {
        self.groups.get(&id).copied().unwrap_or(0)
    }

    /// The tree entry with inner IDs. The root's parent is outside: 0.
    pub(crate) fn entry(&self, e: &crstream_proto::ProcessEntry) -> crstream_proto::ProcessEntry {
        let mut e = e.clone();
        let pid = |p: u32| self.pid(p as i32).unwrap_or(0) as u32;
        e.ppid = pid(e.ppid);
        e.pid = pid(e.pid);
        e.pgid = self.group(e.pgid as i32) as u32;
        e.sid = self.group(e.sid as i32) as u32;
        e.threads = e.threads.iter().map(|&t| pid(t)).collect();
        e
    }

    /// Rewrites the PIDs a record of process `pid` holds. A PID of a
    /// process outside the tree has no inner name the restored tree could
    /// use: refused where the record needs it.
    pub(crate) fn record(
        &self,
        pid: i32,
        body: &mut crstream_proto::record::Body,
    ) -> Result<(), crate::error::DumpError> {
        use crate::error::DumpError;
        use crstream_proto::record::Body;
        let inner = |p: i32| self.pid(p).unwrap_or(0);
        let outside = |fd: u32, what: String| DumpError::UnsupportedFile {
            pid,
            fd: fd as i32,
            what: format!("{what}, outside the tree and its PID namespace"),
        };
        match body {
            Body::FileTable(t) => {
                t.pid = inner(t.pid as i32) as u32;
                for f in &mut t.files {
                    if f.shared_id != 0 {
                        let owner = inner((f.shared_id >> 32) as i32) as u64;
                        f.shared_id = owner << 32 | (f.shared_id & 0xffff_ffff);
                    }
                    if let Some(pf) = f.pidfd.as_mut().filter(|pf| pf.pid > 0) {
                        pf.pid = self.pid(pf.pid).ok_or_else(|| {
                            outside(f.fd, format!("a pidfd of process {}", pf.pid))
                        })?;
                    }
                    if let Some(s) = f.socket.as_mut() {
                        if let Some(peer) = s.peer_ids.as_mut() {
                            peer.pid = inner(peer.pid);
                        }
                        for c in &mut s.queued_creds {
                            c.pid = inner(c.pid);
                        }
                        for pf in s.passed.iter_mut().flat_map(|m| m.files.iter_mut()) {
                            if pf.held_by_pid != 0 {
                                pf.held_by_pid = inner(pf.held_by_pid);
                            }
                            let sock = pf.file.as_mut().and_then(|f| f.socket.as_mut());
                            for c in sock.into_iter().flat_map(|s| s.queued_creds.iter_mut()) {
                                c.pid = inner(c.pid);
                            }
                        }
                    }
                }
            }
            Body::SignalState(s) => s.pid = inner(s.pid as i32) as u32,
            Body::ThreadCore(t) => t.tid = inner(t.tid as i32) as u32,
            Body::MemoryMap(m) => m.pid = inner(m.pid as i32) as u32,
            Body::PosixTimers(t) => {
                for timer in &mut t.timers {
                    if timer.target_tid != 0 {
                        timer.target_tid = inner(timer.target_tid as i32) as u32;
                    }
                }
            }
            Body::FileLocks(l) => {
                for lock in &mut l.locks {
                    if lock.owner_pid > 0 {
                        lock.owner_pid = inner(lock.owner_pid);
                    }
                }
            }
            Body::FileOwners(o) => {
                for owner in o.owners.iter_mut().filter(|o| o.owner != 0) {
                    // F_OWNER_PGRP (2): a group; otherwise a thread or process.
                    let to = if owner.owner_type == 2 {
                        Some(self.group(owner.owner)).filter(|&g| g != 0)
                    } else {
                        self.pid(owner.owner)
                    };
                    owner.owner = to.ok_or_else(|| {
                        outside(owner.fd, format!("its signals go to {}", owner.owner))
                    })?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// `cmd` started in a new PID namespace, as its PID 2 (an init of
/// crstream's is PID 1 and ends the namespace when `cmd` ends), in a mount
/// namespace of its own whose /proc shows that namespace, and in a session
/// of its own: as `crstream run` starts a service, so that its image comes
/// back the same way (`restore` recreates such a namespace) and never
/// collides with the PIDs of the machine it is restored on. The child is
/// crstream's; stdio as `cmd` says, and no other fd of crstream's.
pub fn start_in_new_pid_namespace(
    cmd: &mut std::process::Command,
) -> std::io::Result<(std::process::Child, i32)> {
    use std::os::unix::process::CommandExt;
    let ns = PidNamespace::new(2).map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: the closure runs in the forked child before exec and makes
    // raw syscalls only, with static strings.
    unsafe {
        cmd.pre_exec(|| {
            let check = |r: libc::c_int| match r {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            libc::setsid();
            libc::syscall(
                libc::SYS_close_range,
                3,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    // The namespace ends with its PID 2 from here on (or now, on failure,
    // when `ns` is dropped).
    let child = cmd.spawn()?;
    let init = ns
        .started(2)
        .expect("a namespace made for PID 2 has an init");
    Ok((child, init))
}
