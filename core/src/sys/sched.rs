//! Scheduling attributes of a thread, read and set from outside it:
//! sched_getattr/sched_setattr and ioprio_get/ioprio_set, which libc does
//! not wrap.

use std::io;

/// struct sched_attr (include/uapi/linux/sched/types.h), size VER1.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

const SCHED_ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;

pub(crate) fn sched_getattr(tid: i32) -> io::Result<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: the kernel writes at most SCHED_ATTR_SIZE bytes into `a`.
    super::cvt_long(unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut a as *mut SchedAttr,
            SCHED_ATTR_SIZE,
            0,
        )
    })?;
    Ok(a)
}

pub(crate) fn sched_setattr(tid: i32, attr: &SchedAttr) -> io::Result<()> {
    let mut a = *attr;
    a.size = SCHED_ATTR_SIZE;
    // SAFETY: the kernel reads `a.size` bytes of `a`.
    super::cvt_long(unsafe {
        libc::syscall(libc::SYS_sched_setattr, tid, &a as *const SchedAttr, 0)
    })?;
    Ok(())
}

/// IOPRIO_WHO_PROCESS: `who` is a thread ID.
const IOPRIO_WHO_PROCESS: i32 = 1;

pub(crate) fn ioprio_get(tid: i32) -> io::Result<u32> {
    // SAFETY: plain integer arguments.
    let r =
        super::cvt_long(unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) })?;
    Ok(r as u32)
}

pub(crate) fn ioprio_set(tid: i32, prio: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    super::cvt_long(unsafe {
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, prio as i32)
    })?;
    Ok(())
}

/// The calling thread, held on the CPU it runs on until dropped (then
/// allowed its former CPUs again). Tasks it creates inherit the pin.
///
/// Why: a restore stops and resumes its stubs under ptrace hundreds of
/// times. With tracer and tracee on different CPUs, each of those wakeups
/// crosses CPUs, which costs tens of microseconds on a virtual machine;
/// on one CPU an injected syscall takes a few.
pub(crate) struct PinnedThread {
    before: nix::sched::CpuSet,
}

impl PinnedThread {
    /// None where the thread's CPUs cannot be read or set (it then runs
    /// unpinned, only slower).
    pub(crate) fn here() -> Option<Self> {
        use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
        use nix::unistd::Pid;
        let before = sched_getaffinity(Pid::from_raw(0)).ok()?;
        // SAFETY: no arguments; returns the CPU or -1.
        let cpu = unsafe { libc::sched_getcpu() };
        let mut one = CpuSet::new();
        one.set(usize::try_from(cpu).ok()?).ok()?;
        sched_setaffinity(Pid::from_raw(0), &one).ok()?;
        Some(Self { before })
    }

    /// The CPUs the thread had before: what a task it started would have
    /// been allowed, had it not been pinned.
    pub(crate) fn before(&self) -> &nix::sched::CpuSet {
        &self.before
    }
}

impl Drop for PinnedThread {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.before);
    }
}
