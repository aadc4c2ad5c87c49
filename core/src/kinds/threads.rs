//! Threads: registers, FPU/xstate, signal mask, altstack, rseq, robust
//! list, clear_child_tid, name, memory policy, speculation controls, and
//! what the thread is trapped or killed on (machine checks, RDTSC, CPUID),
//! one `ThreadCore` record per thread (in
//! the thread's stream). Restore creates each thread with its TID and sets
//! its state from inside it; registers are set last, by the orchestrator,
//! with [`set_registers`].

use crate::error::{DumpError, RestoreError, TaskError};
use crate::inject::{Remote, Resume, adjust_restart};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::stub::{SCRATCH_DATA, Stub};
use crate::sys::process::CloneArgs;
use crate::sys::ptrace::{self, Regs, Stop};
use crstream_proto::{Arch, MemPolicy, Rseq, ThreadCore};

pub(crate) struct Threads;

impl Kind for Threads {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn phase(&self) -> Phase {
        Phase::Threads
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        for i in 0..p.threads.len() {
            let remote = p.thread_remote(i)?;
            let (regs, mask) = (p.threads[i].regs, p.threads[i].mask);
            let mut core = dump_thread(p, &remote, &regs, mask)?;
            core.restarting = p.threads[i]
                .restarting
                .filter(|_| in_restart_syscall(&regs));
            core.mempolicy = mempolicy(p, &remote)?;
            let status = &p.thread_status[i];
            (core.spec_store_bypass, core.spec_indirect_branch) = (
                speculation(&status.speculation_store_bypass, "thread"),
                speculation(&status.speculation_indirect_branch, "conditional"),
            );
            p.thread_records[i].push(core);
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let stub = p.stub;
        for t in &p.image.threads[1..] {
            let r = create(stub, t.tid as i32)?;
            p.guard.tids.push(r.tid);
            p.objects.pids.note(t.tid as i32, r.tid);
            restore_state(stub, &r, t)?;
        }
        restore_state(stub, &stub.leader, p.image.threads[0])
    }
}

/// Reads everything about one frozen thread; `remote` injects into it.
fn dump_thread(
    p: &DumpProcess<'_>,
    remote: &Remote,
    regs: &Regs,
    mask: u64,
) -> Result<ThreadCore, DumpError> {
    let (tid, mem, scratch) = (remote.tid, &p.injector().mem, p.injector().scratch);
    let (xstate, fpregs) = match ptrace::get_xstate(tid) {
        Ok(x) => (x, Vec::new()),
        Err(e) => {
            tracing::debug!(tid, "no xstate ({e}); using FXSAVE registers");
            (Vec::new(), ptrace::get_fpregs(tid)?)
        }
    };
    let pending = ptrace::peek_siginfo(tid, false)?;
    // Read already where the escape frame was placed.
    let ss = match remote.altstack() {
        Some(ss) => ss,
        None => {
            remote.call("sigaltstack", libc::SYS_sigaltstack, &[0, scratch])?;
            let mut ss = [0u8; 24];
            mem.read(scratch, &mut ss)?;
            ss
        }
    };
    remote.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, scratch],
    )?;
    let clear_child_tid = mem.read_u64(scratch)?;
    let rseq = ptrace::rseq_config(tid)?;
    let (robust_list, robust_list_len) =
        crate::sys::process::robust_list(tid).map_err(|e| TaskError::Syscall {
            tid,
            name: "get_robust_list",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
    let comm =
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", p.pid)).unwrap_or_default();
    let traps = traps(remote, scratch, mem)?;
    let word = |i: usize| u64::from_le_bytes(ss[i..i + 8].try_into().expect("8 bytes"));
    Ok(ThreadCore {
        tid: tid as u32,
        arch: Arch::X8664 as i32,
        gp_regs: ptrace::regs_to_bytes(regs),
        xstate,
        fpregs,
        blocked_signals: mask,
        pending_signals: pending,
        altstack_sp: word(0),
        altstack_flags: u32::from_le_bytes(ss[8..12].try_into().expect("4 bytes")),
        altstack_size: word(16),
        rseq: (rseq.rseq_abi_pointer != 0).then_some(Rseq {
            addr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        }),
        robust_list,
        robust_list_len,
        clear_child_tid,
        comm: comm.trim_end_matches('\n').to_string(),
        in_syscall: regs.orig_rax as i64,
        restarting: None,
        mempolicy: None,
        spec_store_bypass: 0,
        spec_indirect_branch: 0,
        fs_base: regs.fs_base,
        gs_base: regs.gs_base,
        machine_check_kill: traps.machine_check_kill,
        tsc_faults: traps.tsc_faults,
        cpuid_faults: traps.cpuid_faults,
    })
}

/// PR_MCE_KILL_GET answers (include/uapi/linux/prctl.h).
const PR_MCE_KILL_LATE: i64 = 0;
const PR_MCE_KILL_EARLY: i64 = 1;
const PR_MCE_KILL_DEFAULT: i64 = 2;
const PR_MCE_KILL_CLEAR: u64 = 0;
const PR_MCE_KILL_SET: u64 = 1;
const PR_TSC_SIGSEGV: u32 = 2;
const ARCH_GET_CPUID: u64 = 0x1011;
const ARCH_SET_CPUID: u64 = 0x1012;

/// What a thread asked to be trapped or killed on, each inherited by the
/// threads it creates: its machine-check kill policy, and whether RDTSC
/// and CPUID fault in it (a sandbox, a deterministic replayer, a VMM's
/// vCPU threads set them).
struct Traps {
    machine_check_kill: u32,
    tsc_faults: bool,
    cpuid_faults: bool,
}

fn traps(
    remote: &Remote,
    scratch: u64,
    mem: &crate::inject::RemoteMem,
) -> Result<Traps, DumpError> {
    let machine_check_kill = match remote.call(
        "prctl(PR_MCE_KILL_GET)",
        libc::SYS_prctl,
        &[libc::PR_MCE_KILL_GET as u64],
    )? {
        PR_MCE_KILL_LATE => 1,
        PR_MCE_KILL_EARLY => 2,
        _ => 0,
    };
    remote.call(
        "prctl(PR_GET_TSC)",
        libc::SYS_prctl,
        &[libc::PR_GET_TSC as u64, scratch],
    )?;
    let mut mode = [0u8; 4];
    mem.read(scratch, &mut mode)?;
    let tsc_faults = u32::from_le_bytes(mode) == PR_TSC_SIGSEGV;
    // 1: CPUID runs; 0: it faults. Asked only where it can fault.
    let cpuid_faults = cpuid_faulting_here()
        && remote.call(
            "arch_prctl(ARCH_GET_CPUID)",
            libc::SYS_arch_prctl,
            &[ARCH_GET_CPUID, 0],
        )? == 0;
    Ok(Traps {
        machine_check_kill,
        tsc_faults,
        cpuid_faults,
    })
}

/// crstream's own machine-check kill policy, which the threads it makes
/// inherit (RDTSC and CPUID run in crstream: it reads clocks).
fn own_machine_check_kill() -> i64 {
    // SAFETY: prctl with integer arguments, changing nothing.
    unsafe { libc::prctl(libc::PR_MCE_KILL_GET, 0, 0, 0, 0) as i64 }
}

/// Whether this CPU can make CPUID fault: asking crstream's own thread to
/// let CPUID run (as it does) fails with ENODEV where it cannot.
fn cpuid_faulting_here() -> bool {
    static HERE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: arch_prctl with integer arguments, changing nothing.
    *HERE.get_or_init(|| unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1) } == 0)
}

/// Sets what [`traps`] read, last: nothing restore runs in the thread
/// afterwards executes RDTSC or CPUID.
fn restore_traps(remote: &Remote, t: &ThreadCore) -> Result<(), String> {
    // The thread has crstream's: only a different one is set.
    let set = match t.machine_check_kill {
        0 if own_machine_check_kill() == PR_MCE_KILL_DEFAULT => None,
        0 => Some([libc::PR_MCE_KILL as u64, PR_MCE_KILL_CLEAR, 0]),
        1 => Some([
            libc::PR_MCE_KILL as u64,
            PR_MCE_KILL_SET,
            PR_MCE_KILL_LATE as u64,
        ]),
        2 => Some([
            libc::PR_MCE_KILL as u64,
            PR_MCE_KILL_SET,
            PR_MCE_KILL_EARLY as u64,
        ]),
        other => return Err(format!("bad image: machine-check kill policy {other}")),
    };
    if let Some(args) = set {
        remote
            .call("prctl(PR_MCE_KILL)", libc::SYS_prctl, &args)
            .map_err(|e| format!("machine-check kill policy: {e}"))?;
    }
    if t.tsc_faults {
        remote
            .call(
                "prctl(PR_SET_TSC)",
                libc::SYS_prctl,
                &[libc::PR_SET_TSC as u64, PR_TSC_SIGSEGV as u64],
            )
            .map_err(|e| format!("RDTSC faulting: {e}"))?;
    }
    if t.cpuid_faults {
        remote
            .call(
                "arch_prctl(ARCH_SET_CPUID)",
                libc::SYS_arch_prctl,
                &[ARCH_SET_CPUID, 0],
            )
            .map_err(|e| format!("CPUID faulting (which this CPU or hypervisor may lack): {e}"))?;
    }
    Ok(())
}

fn thread_err(pid: i32, tid: i32, reason: String) -> RestoreError {
    RestoreError::Thread { pid, tid, reason }
}

/// Creates thread `tid` (as the process sees it) in the stub with an
/// injected clone3 (set_tid). The new thread is auto-attached
/// (PTRACE_O_TRACECLONE) and stops before running any user code; the
/// injector returned names it as crstream sees it.
fn create(stub: &Stub, tid: i32) -> Result<Remote, RestoreError> {
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
    let (ret, events) = stub.leader.raw(libc::SYS_clone3, &[a, CloneArgs::SIZE])?;
    if ret == -(libc::EEXIST as i64) {
        return Err(RestoreError::TidInUse {
            pid: stub.vpid,
            tid,
        });
    }
    if ret != tid as i64 {
        return Err(thread_err(stub.vpid, tid, format!("clone3 returned {ret}")));
    }
    let tid = crate::stub::host_pid_of_child(stub, events.child)?;
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
    Ok(stub.thread(tid)?)
}

/// Per-thread kernel state set from inside the thread.
fn restore_state(stub: &Stub, remote: &Remote, t: &ThreadCore) -> Result<(), RestoreError> {
    let (pid, tid) = (stub.vpid, t.tid as i32);
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
    if let Some(policy) = &t.mempolicy {
        let nodes = match policy.nodes.iter().any(|&b| b != 0) {
            true => stub.put(SCRATCH_DATA + 1024, &policy.nodes)?,
            false => 0,
        };
        let max_node = policy.nodes.len() as u64 * 8 + 1;
        remote
            .call(
                "set_mempolicy",
                libc::SYS_set_mempolicy,
                &[policy.mode as u32 as u64, nodes, max_node],
            )
            .map_err(|e| thread_err(pid, tid, format!("memory policy {}: {e}", policy.mode)))?;
    }
    for (which, control) in [(0u64, t.spec_store_bypass), (1, t.spec_indirect_branch)] {
        if control != 0 {
            remote
                .call(
                    "prctl(PR_SET_SPECULATION_CTRL)",
                    libc::SYS_prctl,
                    &[libc::PR_SET_SPECULATION_CTRL as u64, which, control as u64],
                )
                .map_err(|e| thread_err(pid, tid, format!("speculation control: {e}")))?;
        }
    }
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
    restore_traps(remote, t).map_err(|reason| thread_err(pid, tid, reason))
}

/// Room for a node mask of this many nodes (the kernel refuses a
/// get_mempolicy with room for fewer than it may have).
const MAX_NODES: u64 = 1024;
const MPOL_DEFAULT: i32 = 0;

/// The NUMA memory policy of the thread `remote` injects into, when it
/// has one of its own (numactl --interleave gives one to every thread).
fn mempolicy(p: &DumpProcess<'_>, remote: &Remote) -> Result<Option<MemPolicy>, DumpError> {
    let (mem, scratch) = (&p.injector().mem, p.injector().scratch);
    let nodes_at = scratch + 8;
    remote.call(
        "get_mempolicy",
        libc::SYS_get_mempolicy,
        &[scratch, nodes_at, MAX_NODES, 0, 0],
    )?;
    let mode = mem.read_u64(scratch)? as i32;
    if mode == MPOL_DEFAULT {
        return Ok(None);
    }
    let mut nodes = vec![0u8; MAX_NODES as usize / 8];
    mem.read(nodes_at, &mut nodes)?;
    let used = nodes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    nodes.truncate(used.div_ceil(8) * 8);
    Ok(Some(MemPolicy { mode, nodes }))
}

/// The PR_SPEC_* control a thread asked for, from how /proc/TID/status
/// words one of its speculation mitigations ("thread force mitigated",
/// "conditional disabled", ...: `asked` is the word that starts a state
/// set by the thread itself); 0 for the system's default.
fn speculation(status: &str, asked: &str) -> u32 {
    const PR_SPEC_DISABLE: u32 = 1 << 2;
    const PR_SPEC_FORCE_DISABLE: u32 = 1 << 3;
    match status.strip_prefix(asked).map(str::trim) {
        Some("force mitigated" | "force disabled") => PR_SPEC_FORCE_DISABLE,
        Some("mitigated" | "disabled") => PR_SPEC_DISABLE,
        _ => 0,
    }
}

/// Registers the restored thread starts with. `shared_pending`: the
/// signals pending for its whole process.
fn final_regs(pid: i32, t: &ThreadCore, shared_pending: &[Vec<u8>]) -> Result<Regs, RestoreError> {
    let mut regs = ptrace::regs_from_bytes(&t.gp_regs).ok_or_else(|| {
        RestoreError::Image(format!(
            "tid {} of pid {pid}: gp_regs of {} bytes",
            t.tid,
            t.gp_regs.len()
        ))
    })?;
    if in_restart_syscall(&regs) {
        match t.restarting {
            // It makes that call again, as one the freeze interrupted.
            Some(call) => regs.orig_rax = call as u64,
            None => tracing::warn!(
                "tid {} of pid {pid} was in a system call the kernel had already restarted \
                 once (restart_syscall), which crstream could not tell: it returns EINTR",
                t.tid
            ),
        }
    }
    if waits_again(&regs, t, shared_pending) {
        crate::inject::call_again(&mut regs);
    }
    adjust_restart(&mut regs, Resume::Restored);
    Ok(regs)
}

/// Whether a thread was stopped as it left restart_syscall, to enter it
/// again (a stop interrupted a call, then the restarted call).
fn in_restart_syscall(regs: &Regs) -> bool {
    regs.orig_rax == libc::SYS_restart_syscall as u64
        && regs.rax as i64 == -crate::inject::ERESTART_RESTARTBLOCK
}

/// Whether a thread the dump froze in a wait the freeze alone ended with
/// EINTR waits again (see `inject::ended_by_the_freeze`): no signal it
/// would take is pending.
fn waits_again(regs: &Regs, t: &ThreadCore, shared_pending: &[Vec<u8>]) -> bool {
    let takes = |si: &Vec<u8>| {
        let sig = crate::kinds::signals::signo(si);
        (1..=64).contains(&sig) && t.blocked_signals & (1u64 << (sig - 1)) == 0
    };
    crate::inject::ended_by_the_freeze(regs)
        && !t.pending_signals.iter().chain(shared_pending).any(takes)
}

/// Sets FPU/xstate, general registers and the signal mask of stopped
/// thread `tid` (as crstream sees it): the last thing restore does to it
/// before it runs.
pub(crate) fn set_registers(
    pid: i32,
    tid: i32,
    t: &ThreadCore,
    shared_pending: &[Vec<u8>],
) -> Result<(), RestoreError> {
    let regs = final_regs(pid, t, shared_pending)?;
    if !t.xstate.is_empty() {
        ptrace::set_xstate(tid, &t.xstate)?;
    } else if !t.fpregs.is_empty() {
        ptrace::set_fpregs(tid, &t.fpregs)?;
    }
    ptrace::set_regs(tid, &regs)?;
    ptrace::set_sigmask(tid, t.blocked_signals)?;
    Ok(())
}
