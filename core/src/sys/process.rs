//! Processes: creating the restore stub with a chosen PID, resource limits
//! of another process, signals, robust futex lists.

use std::io;

/// struct clone_args (include/uapi/linux/sched.h), as clone3 reads it.
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

impl CloneArgs {
    /// The structure as clone3 reads it, to write into another process.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        [
            self.flags,
            self.pidfd,
            self.child_tid,
            self.parent_tid,
            self.exit_signal,
            self.stack,
            self.stack_size,
            self.tls,
            self.set_tid,
            self.set_tid_size,
            self.cgroup,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }

    pub(crate) const SIZE: u64 = std::mem::size_of::<CloneArgs>() as u64;
}

/// Forks a child with PID `pid` (clone3 with set_tid: at the innermost
/// level, in the PID namespace the calling thread creates children in, or
/// in a new one with CLONE_NEWPID in `flags`) that asks to be traced by the
/// calling thread and stops itself; it then waits forever, to be rebuilt
/// by the tracer. `flags`: more clone flags (CLONE_NEWPID, CLONE_NEWNS).
/// Returns its PID as the caller sees it.
pub(crate) fn fork_traced_stub(pid: i32, flags: u64) -> io::Result<i32> {
    let set_tid = [pid];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; `args` and `set_tid` live
    // across the call. The child runs only `stub_child`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        stub_child();
    }
    super::cvt_long(r).map(|p| p as i32)
}

/// The body of the stub right after clone3: raw syscalls only, no
/// allocation (it is a copy of a multi-threaded process).
fn stub_child() -> ! {
    // SAFETY: raw syscalls with integer arguments; int3 only traps.
    unsafe {
        if libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
            libc::syscall(libc::SYS_exit_group, 127);
        }
        let me = libc::syscall(libc::SYS_getpid);
        if me == 1 {
            // PID 1 of a namespace ignores the signals it sends itself;
            // a breakpoint's SIGTRAP is forced on it.
            std::arch::asm!("int3");
        } else {
            libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        }
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

/// Resource limit `resource` (RLIMIT_*) of process `pid`: (soft, hard).
pub(crate) fn get_rlimit(pid: i32, resource: u32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 writes the old limit into a local struct.
    super::cvt(unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) })?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets resource limit `resource` of process `pid`.
pub(crate) fn set_rlimit(pid: i32, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit64 reads the new limit from a local struct.
    super::cvt(unsafe { libc::prlimit64(pid, resource as _, &new, std::ptr::null_mut()) }).map(drop)
}

/// Sends `sig` to process `pid`.
pub(crate) fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill with integer arguments.
    super::cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// The robust futex list of thread `tid`: (head, length).
pub(crate) fn robust_list(tid: i32) -> io::Result<(u64, u64)> {
    let (mut head, mut len) = (0u64, 0usize);
    // SAFETY: get_robust_list writes a pointer and a size_t into locals.
    super::cvt_long(unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) })?;
    Ok((head, len as u64))
}

/// The clear_child_tid address of the calling thread (PR_GET_TID_ADDRESS,
/// which exists only with CONFIG_CHECKPOINT_RESTORE).
pub(crate) fn own_tid_address() -> io::Result<u64> {
    let mut addr = 0u64;
    // SAFETY: the kernel writes one pointer into a local.
    super::cvt(unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut addr as *mut u64) })?;
    Ok(addr)
}

/// Session of `pid` (0: the caller), or -1 if it is gone. 0 when the
/// session is led from outside the caller's PID namespace (as under a CI
/// runner started by the namespace's init), which rustix's `Pid` cannot
/// hold.
pub(crate) fn getsid(pid: i32) -> i32 {
    // SAFETY: getsid takes a plain integer and touches no memory.
    let r = unsafe { libc::getsid(pid) };
    r.max(-1)
}

/// Session whose controlling terminal `fd` is, or -1 if it is none.
pub(crate) fn tcgetsid(fd: std::os::fd::BorrowedFd<'_>) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcgetsid takes a plain descriptor and touches no memory.
    let r = unsafe { libc::tcgetsid(fd.as_raw_fd()) };
    r.max(-1)
}
