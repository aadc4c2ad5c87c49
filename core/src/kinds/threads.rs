//! Threads: registers, FPU/xstate, signal mask, altstack, rseq, robust list,
//! clear_child_tid, name; and the restart of interrupted syscalls.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::ptrace::{self, Regs, Stop};
use crate::stub::{CloneArgs, SCRATCH_DATA, Stub};
use crate::syscall::{Remote, RemoteMem};
use crstream_proto::{Arch, Rseq, ThreadCore};

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

const PR_GET_TID_ADDRESS: u64 = 40;

/// Where the registers of a thread stopped inside a syscall go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The same task continues (dump failed or --leave-running): the
    /// kernel's restart_block is intact, so RESTART_RESTARTBLOCK restarts
    /// through restart_syscall.
    SameTask,
    /// A restored task: no restart_block, so those syscalls return EINTR
    /// (callers such as nanosleep loops retry with the remaining time the
    /// kernel already wrote out).
    Restored,
}

/// Turns the registers of a thread stopped inside a syscall into registers
/// that restart it (or report EINTR) when the thread resumes with no
/// further kernel restart processing (orig_rax = -1).
pub fn adjust_restart(regs: &mut Regs, mode: Resume) {
    if (regs.orig_rax as i64) >= 0 {
        match -(regs.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                regs.rax = regs.orig_rax;
                regs.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => match mode {
                Resume::SameTask => {
                    regs.rax = libc::SYS_restart_syscall as u64;
                    regs.rip -= 2;
                }
                Resume::Restored => regs.rax = (-libc::EINTR) as i64 as u64,
            },
            _ => {}
        }
    }
    regs.orig_rax = u64::MAX;
}

pub fn regs_to_bytes(r: &Regs) -> Vec<u8> {
    // SAFETY: user_regs_struct is 27 plain u64s.
    let words: &[u64; 27] = unsafe { &*(r as *const Regs as *const [u64; 27]) };
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub fn regs_from_bytes(b: &[u8]) -> Option<Regs> {
    if b.len() != 27 * 8 {
        return None;
    }
    let mut words = [0u64; 27];
    for (w, c) in words.iter_mut().zip(b.chunks_exact(8)) {
        *w = u64::from_le_bytes(c.try_into().unwrap());
    }
    // SAFETY: same layout, see regs_to_bytes.
    Some(unsafe { std::mem::transmute::<[u64; 27], Regs>(words) })
}

/// Reads everything about one frozen thread. `remote` injects into that
/// thread; `scratch` is writable memory in the target.
pub fn dump(
    pid: i32,
    tid: i32,
    regs: &Regs,
    mask: u64,
    remote: &Remote,
    mem: &RemoteMem,
    scratch: u64,
) -> Result<ThreadCore, DumpError> {
    let (xstate, fpregs) = match ptrace::get_xstate(tid) {
        Ok(x) => (x, Vec::new()),
        Err(e) => {
            tracing::debug!(tid, "no xstate ({e}); using FXSAVE registers");
            (Vec::new(), ptrace::get_fpregs(tid)?)
        }
    };
    let pending = ptrace::peek_siginfo(tid, false)?;
    remote.call("sigaltstack", libc::SYS_sigaltstack, &[0, scratch])?;
    let mut ss = [0u8; 24];
    mem.read(scratch, &mut ss)?;
    remote.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        &[PR_GET_TID_ADDRESS, scratch],
    )?;
    let clear_child_tid = mem.read_u64(scratch)?;
    let rseq = ptrace::rseq_config(tid)?;
    let (mut head, mut len) = (0u64, 0usize);
    // SAFETY: get_robust_list writes a pointer and a size_t.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) };
    if r != 0 {
        return Err(TaskError::Syscall {
            tid,
            name: "get_robust_list",
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        }
        .into());
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
    Ok(ThreadCore {
        tid: tid as u32,
        arch: Arch::X8664 as i32,
        gp_regs: regs_to_bytes(regs),
        xstate,
        fpregs,
        blocked_signals: mask,
        pending_signals: pending,
        altstack_sp: u64::from_le_bytes(ss[0..8].try_into().unwrap()),
        altstack_flags: u32::from_le_bytes(ss[8..12].try_into().unwrap()),
        altstack_size: u64::from_le_bytes(ss[16..24].try_into().unwrap()),
        rseq: (rseq.rseq_abi_pointer != 0).then_some(Rseq {
            addr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        }),
        robust_list: head,
        robust_list_len: len as u64,
        clear_child_tid,
        comm: comm.trim_end_matches('\n').to_string(),
        in_syscall: regs.orig_rax as i64,
        fs_base: regs.fs_base,
        gs_base: regs.gs_base,
    })
}

// ---------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------

fn thread_err(pid: i32, tid: i32, reason: String) -> RestoreError {
    RestoreError::Thread { pid, tid, reason }
}

/// Creates thread `tid` in the stub with an injected clone3 (set_tid). The
/// new thread is auto-attached (PTRACE_O_TRACECLONE) and stops before
/// running any user code.
pub fn create(stub: &Stub, tid: i32) -> Result<Remote, RestoreError> {
    let set_tid = stub.put(SCRATCH_DATA + 256, &tid.to_le_bytes())?;
    let args = CloneArgs {
        flags: (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64,
        set_tid,
        set_tid_size: 1,
        ..Default::default()
    };
    let a = stub.put(SCRATCH_DATA, &args.to_bytes())?;
    let (ret, _) = stub.leader.raw(
        libc::SYS_clone3,
        &[a, std::mem::size_of::<CloneArgs>() as u64],
    )?;
    if ret == -(libc::EEXIST as i64) {
        return Err(RestoreError::TidInUse { pid: stub.pid, tid });
    }
    if ret != tid as i64 {
        return Err(thread_err(stub.pid, tid, format!("clone3 returned {ret}")));
    }
    let (status, stop) = ptrace::wait(tid)?;
    match stop {
        Stop::Signal(libc::SIGSTOP) | Stop::Event(ptrace::PTRACE_EVENT_STOP) => {}
        _ => {
            return Err(TaskError::UnexpectedStop {
                tid,
                status,
                while_doing: "waiting for a new thread to stop",
            }
            .into());
        }
    }
    let mut r = Remote::new(tid, stub.tramp)?;
    r.base.rsp = stub.leader.base.rsp;
    Ok(r)
}

/// Per-thread kernel state set from inside the thread.
pub fn restore_state(stub: &Stub, remote: &Remote, t: &ThreadCore) -> Result<(), RestoreError> {
    let (pid, tid) = (stub.pid, remote.tid);
    if let Some(rs) = &t.rseq {
        remote
            .call(
                "rseq",
                libc::SYS_rseq,
                &[rs.addr, rs.len as u64, 0, rs.signature as u64],
            )
            .map_err(|e| thread_err(pid, tid, format!("rseq at {:#x}: {e}", rs.addr)))?;
    }
    remote.call(
        "set_robust_list",
        libc::SYS_set_robust_list,
        &[t.robust_list, t.robust_list_len.max(24)],
    )?;
    remote.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[t.clear_child_tid],
    )?;
    let mut ss = Vec::with_capacity(24);
    let (sp, flags, size) = if t.altstack_flags & libc::SS_DISABLE as u32 != 0 {
        (0, libc::SS_DISABLE as u32, 0)
    } else {
        // SS_ONSTACK is a report, not a request.
        (
            t.altstack_sp,
            t.altstack_flags & !(libc::SS_ONSTACK as u32),
            t.altstack_size,
        )
    };
    ss.extend_from_slice(&sp.to_le_bytes());
    ss.extend_from_slice(&flags.to_le_bytes());
    ss.extend_from_slice(&0u32.to_le_bytes());
    ss.extend_from_slice(&size.to_le_bytes());
    let a = stub.put(SCRATCH_DATA + 512, &ss)?;
    remote
        .call("sigaltstack", libc::SYS_sigaltstack, &[a, 0])
        .map_err(|e| thread_err(pid, tid, format!("sigaltstack {sp:#x}+{size}: {e}")))?;
    if !t.comm.is_empty() {
        // /proc/PID/task/TID/comm is writable only from inside the process.
        let mut name: Vec<u8> = t.comm.bytes().take(15).collect();
        name.push(0);
        let a = stub.put(SCRATCH_DATA + 768, &name)?;
        remote.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            &[libc::PR_SET_NAME as u64, a],
        )?;
    }
    Ok(())
}

/// Registers the restored thread starts with.
pub fn final_regs(pid: i32, t: &ThreadCore) -> Result<Regs, RestoreError> {
    let mut regs = regs_from_bytes(&t.gp_regs).ok_or_else(|| {
        RestoreError::Image(format!(
            "tid {} of pid {pid}: gp_regs of {} bytes",
            t.tid,
            t.gp_regs.len()
        ))
    })?;
    adjust_restart(&mut regs, Resume::Restored);
    Ok(regs)
}

/// Sets FPU/xstate and general registers (last) of a stopped thread.
pub fn set_registers(pid: i32, t: &ThreadCore) -> Result<(), RestoreError> {
    let tid = t.tid as i32;
    let regs = final_regs(pid, t)?;
    if !t.xstate.is_empty() {
        ptrace::set_xstate(tid, &t.xstate)?;
    } else if !t.fpregs.is_empty() {
        ptrace::set_fpregs(tid, &t.fpregs)?;
    }
    ptrace::set_regs(tid, &regs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig: i64, rax: i64) -> Regs {
        // SAFETY: plain integers.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = orig as u64;
        r.rax = rax as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restart_adjustment() {
        for code in [512, 513, 514] {
            let mut r = regs(202, -code);
            adjust_restart(&mut r, Resume::Restored);
            assert_eq!((r.rax, r.rip, r.orig_rax as i64), (202, 0x1000, -1));
        }
        let mut r = regs(230, -516);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax as i64, r.rip), (-(libc::EINTR as i64), 0x1002));
        let mut r = regs(230, -516);
        adjust_restart(&mut r, Resume::SameTask);
        assert_eq!((r.rax, r.rip), (libc::SYS_restart_syscall as u64, 0x1000));
        // Not in a syscall, or a finished one: untouched but for orig_rax.
        let mut r = regs(-1, -512);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax as i64, r.rip), (-512, 0x1002));
        let mut r = regs(0, 5);
        adjust_restart(&mut r, Resume::Restored);
        assert_eq!((r.rax, r.rip, r.orig_rax as i64), (5, 0x1002, -1));
    }

    #[test]
    fn regs_roundtrip() {
        let mut r = regs(3, 4);
        r.fs_base = 0xdead_beef;
        let b = regs_to_bytes(&r);
        assert_eq!(b.len(), 216);
        let back = regs_from_bytes(&b).unwrap();
        assert_eq!(
            (back.fs_base, back.orig_rax, back.rip),
            (0xdead_beef, 3, 0x1002)
        );
    }
}
