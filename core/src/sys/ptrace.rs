//! Thin, typed wrappers over the ptrace requests the engine uses, and waiting
//! for ptrace stops. Everything here must run on the tracer thread.

use crate::error::TaskError;
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

pub type Regs = libc::user_regs_struct;

pub const PTRACE_SEIZE: u32 = 0x4206;
pub const PTRACE_INTERRUPT: u32 = 0x4207;
pub const PTRACE_PEEKSIGINFO: u32 = 0x4209;
pub const PTRACE_GETSIGMASK: u32 = 0x420a;
pub const PTRACE_SETSIGMASK: u32 = 0x420b;
pub const PTRACE_GETSIGINFO: u32 = 0x4202;
pub const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
pub const PTRACE_SECCOMP_GET_METADATA: u32 = 0x420d;
pub const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

pub const PTRACE_O_TRACESYSGOOD: u64 = 1;
pub const PTRACE_O_TRACEFORK: u64 = 1 << 1;
pub const PTRACE_O_TRACECLONE: u64 = 1 << 3;
pub const PTRACE_O_EXITKILL: u64 = 1 << 20;
/// Seccomp filters do not apply to the tracee while it is traced with
/// this option (needs CAP_SYS_ADMIN): injected syscalls are not filtered.
pub const PTRACE_O_SUSPEND_SECCOMP: u64 = 1 << 21;

pub const PTRACE_EVENT_FORK: i32 = 1;
pub const PTRACE_EVENT_CLONE: i32 = 3;
pub const PTRACE_EVENT_STOP: i32 = 128;

const NT_PRFPREG: usize = 2;
const NT_X86_XSTATE: usize = 0x202;

/// Size of a kernel siginfo_t.
pub const SIGINFO_SIZE: usize = 128;

fn raw(req: u32, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: ptrace with explicit arguments; pointers passed in addr/data
    // point to live buffers of the size the request expects.
    let r = unsafe { libc::ptrace(req as _, tid, addr, data) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(0) {
            return Err(e);
        }
    }
    Ok(r)
}

fn req(
    tid: i32,
    op: &'static str,
    r: u32,
    addr: usize,
    data: usize,
) -> Result<libc::c_long, TaskError> {
    raw(r, tid, addr, data).map_err(TaskError::ptrace(tid, op))
}

pub fn seize(tid: i32, options: u64) -> io::Result<()> {
    raw(PTRACE_SEIZE, tid, 0, options as usize).map(|_| ())
}

/// The message of the event `tid` is stopped at: for a clone or fork
/// event, the new task's PID in the tracer's namespace.
pub fn event_msg(tid: i32) -> Result<u64, TaskError> {
    let mut msg: libc::c_ulong = 0;
    req(
        tid,
        "GETEVENTMSG",
        libc::PTRACE_GETEVENTMSG,
        0,
        &mut msg as *mut libc::c_ulong as usize,
    )?;
    Ok(msg)
}

pub fn interrupt(tid: i32) -> Result<(), TaskError> {
    req(tid, "INTERRUPT", PTRACE_INTERRUPT, 0, 0).map(|_| ())
}

pub fn set_options(tid: i32, options: u64) -> Result<(), TaskError> {
    req(
        tid,
        "SETOPTIONS",
        libc::PTRACE_SETOPTIONS,
        0,
        options as usize,
    )
    .map(|_| ())
}

pub fn detach(tid: i32, sig: i32) -> Result<(), TaskError> {
    req(tid, "DETACH", libc::PTRACE_DETACH, 0, sig as usize).map(|_| ())
}

pub fn cont(tid: i32, sig: i32) -> Result<(), TaskError> {
    req(tid, "CONT", libc::PTRACE_CONT, 0, sig as usize).map(|_| ())
}

pub fn syscall(tid: i32, sig: i32) -> Result<(), TaskError> {
    req(tid, "SYSCALL", libc::PTRACE_SYSCALL, 0, sig as usize).map(|_| ())
}

pub fn get_regs(tid: i32) -> Result<Regs, TaskError> {
    let mut regs: Regs = super::zeroed();
    req(
        tid,
        "GETREGS",
        libc::PTRACE_GETREGS,
        0,
        &mut regs as *mut _ as usize,
    )?;
    Ok(regs)
}

pub fn set_regs(tid: i32, regs: &Regs) -> Result<(), TaskError> {
    req(
        tid,
        "SETREGS",
        libc::PTRACE_SETREGS,
        0,
        regs as *const _ as usize,
    )
    .map(|_| ())
}

fn get_regset(tid: i32, op: &'static str, nt: usize, max: usize) -> Result<Vec<u8>, TaskError> {
    let mut buf = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        tid,
        op,
        libc::PTRACE_GETREGSET,
        nt,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

fn set_regset(tid: i32, op: &'static str, nt: usize, data: &[u8]) -> Result<(), TaskError> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    req(
        tid,
        op,
        libc::PTRACE_SETREGSET,
        nt,
        &mut iov as *mut _ as usize,
    )
    .map(|_| ())
}

/// The XSAVE area (NT_X86_XSTATE); the kernel trims the buffer to its size.
pub fn get_xstate(tid: i32) -> Result<Vec<u8>, TaskError> {
    get_regset(tid, "GETREGSET NT_X86_XSTATE", NT_X86_XSTATE, 64 << 10)
}

pub fn set_xstate(tid: i32, data: &[u8]) -> Result<(), TaskError> {
    set_regset(tid, "SETREGSET NT_X86_XSTATE", NT_X86_XSTATE, data)
}

pub fn get_fpregs(tid: i32) -> Result<Vec<u8>, TaskError> {
    get_regset(tid, "GETREGSET NT_PRFPREG", NT_PRFPREG, 512)
}

pub fn set_fpregs(tid: i32, data: &[u8]) -> Result<(), TaskError> {
    set_regset(tid, "SETREGSET NT_PRFPREG", NT_PRFPREG, data)
}

pub fn get_sigmask(tid: i32) -> Result<u64, TaskError> {
    let mut mask = 0u64;
    req(
        tid,
        "GETSIGMASK",
        PTRACE_GETSIGMASK,
        8,
        &mut mask as *mut _ as usize,
    )?;
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), TaskError> {
    req(
        tid,
        "SETSIGMASK",
        PTRACE_SETSIGMASK,
        8,
        &mask as *const _ as usize,
    )
    .map(|_| ())
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Pending signals (siginfo_t, 128 bytes each) of the thread, or of the
/// whole process with `shared`.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<Vec<u8>>, TaskError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; SIGINFO_SIZE * 32];
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: 32,
        };
        let n = req(
            tid,
            "PEEKSIGINFO",
            PTRACE_PEEKSIGINFO,
            &args as *const _ as usize,
            buf.as_mut_ptr() as usize,
        )?;
        if n <= 0 {
            return Ok(out);
        }
        for i in 0..n as usize {
            out.push(buf[i * SIGINFO_SIZE..(i + 1) * SIGINFO_SIZE].to_vec());
        }
    }
}

/// Whether a stop of a tracee attached without PTRACE_SEIZE that looks
/// like a signal-delivery stop is a group stop (PTRACE_GETSIGINFO then
/// fails with EINVAL).
pub fn in_group_stop(tid: i32) -> bool {
    let mut info = [0u8; SIGINFO_SIZE];
    matches!(
        raw(PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL)
    )
}

/// Seccomp filter `index` of `tid` (0: the last installed) as BPF
/// instructions (8 bytes each), and its flags (SECCOMP_FILTER_FLAG_*);
/// None past the oldest.
pub fn seccomp_filter(tid: i32, index: u64) -> Result<Option<(Vec<u8>, u64)>, TaskError> {
    let n = match raw(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, 0) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(TaskError::ptrace(tid, "SECCOMP_GET_FILTER")(e)),
    };
    let mut prog = vec![0u8; n * 8];
    req(
        tid,
        "SECCOMP_GET_FILTER",
        PTRACE_SECCOMP_GET_FILTER,
        index as usize,
        prog.as_mut_ptr() as usize,
    )?;
    // struct seccomp_metadata { filter_off, flags }
    let mut meta = [index, 0u64];
    req(
        tid,
        "SECCOMP_GET_METADATA",
        PTRACE_SECCOMP_GET_METADATA,
        std::mem::size_of_val(&meta),
        meta.as_mut_ptr() as usize,
    )?;
    Ok(Some((prog, meta[1])))
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

pub fn rseq_config(tid: i32) -> Result<RseqConfig, TaskError> {
    let mut c = RseqConfig::default();
    req(
        tid,
        "GET_RSEQ_CONFIGURATION",
        PTRACE_GET_RSEQ_CONFIGURATION,
        std::mem::size_of::<RseqConfig>(),
        &mut c as *mut _ as usize,
    )?;
    Ok(c)
}

/// What a waitpid status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Syscall entry or exit stop (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// PTRACE_EVENT_* stop.
    Event(i32),
    /// Signal-delivery-stop (or group-stop of a non-seized tracee).
    Signal(i32),
    /// Exited or killed.
    Gone,
}

pub fn classify(status: i32) -> Stop {
    if !libc::WIFSTOPPED(status) {
        return Stop::Gone;
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if sig == libc::SIGTRAP | 0x80 {
        Stop::Syscall
    } else if event != 0 {
        Stop::Event(event)
    } else {
        Stop::Signal(sig)
    }
}

/// A child of ours whose exit the waits here see but do not collect (see
/// [`KeepExit`]); 0: none.
static KEEP_EXIT_OF: AtomicI32 = AtomicI32::new(0);

/// While alive, the exit of `pid`, our own child that we trace, is left
/// for its parent's wait (ours, or whoever's it becomes once we exit): a
/// ptrace wait on a child both traced and ours would collect its exit
/// status for good.
pub struct KeepExit(());

impl KeepExit {
    pub fn of(pid: i32) -> Self {
        KEEP_EXIT_OF.store(pid, Ordering::Relaxed);
        KeepExit(())
    }
}

impl Drop for KeepExit {
    fn drop(&mut self) {
        KEEP_EXIT_OF.store(0, Ordering::Relaxed);
    }
}

fn keeps_exit(tid: i32) -> bool {
    tid != 0 && KEEP_EXIT_OF.load(Ordering::Relaxed) == tid
}

/// waitid on `tid` with `flags` (and __WALL): the wait status of the
/// state change it reports, None if none (WNOHANG).
fn wait_id(tid: i32, flags: i32) -> io::Result<Option<i32>> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on a specific tid into a local siginfo.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                tid as libc::id_t,
                &mut info,
                flags | libc::__WALL,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid filled the SIGCHLD fields (or left zeros).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_KILLED => status & 0x7f,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            // A stop: the signal and event bits as waitpid gives them.
            _ => (status << 8) | 0x7f,
        }));
    }
}

/// For the child whose exit is kept: its next state change, an exit only
/// seen (WNOWAIT), a stop consumed by a wait that cannot collect an exit
/// (no WEXITED). None: nothing yet (`block`: false).
fn wait_keeping_exit(tid: i32, block: bool) -> Result<Option<(i32, Stop)>, TaskError> {
    let err = |err| TaskError::Wait { tid, err };
    let nohang = if block { 0 } else { libc::WNOHANG };
    loop {
        let seen = wait_id(tid, libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | nohang);
        let Some(status) = seen.map_err(err)? else {
            return Ok(None);
        };
        if !libc::WIFSTOPPED(status) {
            return Ok(Some((status, Stop::Gone)));
        }
        // The stop seen, unless an exit (SIGKILL) took its place since
        // (seen by the next peek; this wait may then find nothing to wait
        // for: ECHILD).
        match wait_id(tid, libc::WSTOPPED | libc::WNOHANG) {
            Ok(Some(status)) => return Ok(Some((status, classify(status)))),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
            Err(e) => return Err(err(e)),
        }
    }
}

/// How long [`wait`] polls before it sleeps.
const SPIN_FOR: Duration = Duration::from_micros(200);

/// Waits for the next state change of `tid`.
pub fn wait(tid: i32) -> Result<(i32, Stop), TaskError> {
    if keeps_exit(tid) {
        return wait_keeping_exit(tid, true)?.ok_or(TaskError::Wait {
            tid,
            err: io::Error::other("waitid reported no change"),
        });
    }
    let mut status = 0;
    // Most stops come within microseconds (an injected syscall): polling
    // for a moment first spares the wake-up of a sleeping waiter, which
    // costs ~30 µs a stop here (two per injected call, while the target is
    // frozen). Longer waits sleep.
    let spin_until = Instant::now() + SPIN_FOR;
    loop {
        // SAFETY: plain non-blocking waitpid on a specific tid.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            return Ok((status, classify(status)));
        }
        if r != 0 || Instant::now() > spin_until {
            break; // an error (reported below) or a long wait
        }
        std::hint::spin_loop();
    }
    loop {
        // SAFETY: plain waitpid on a specific tid.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == tid {
            return Ok((status, classify(status)));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(TaskError::Wait { tid, err: e });
        }
    }
}

/// [`wait`] until `until` at the latest: None if no stop came by then.
pub fn wait_until(tid: i32, until: Instant) -> Result<Option<(i32, Stop)>, TaskError> {
    loop {
        if keeps_exit(tid) {
            match wait_keeping_exit(tid, false)? {
                Some(change) => return Ok(Some(change)),
                None if Instant::now() >= until => return Ok(None),
                None => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
        }
        let mut status = 0;
        // SAFETY: plain non-blocking waitpid on a specific tid.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            return Ok(Some((status, classify(status))));
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(TaskError::Wait { tid, err: e });
            }
        } else if Instant::now() >= until {
            return Ok(None);
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Sends SIGKILL to the thread group and reaps it (used to throw away a
/// half-restored process or a dumped one).
pub fn kill_and_reap(pid: i32) {
    let _ = super::process::kill(pid, libc::SIGKILL);
    // Threads we trace stay zombies until we collect them, and the leader
    // cannot be collected before them.
    for tid in crate::proc::tasks(pid).unwrap_or_default() {
        if tid != pid {
            reap(tid);
        }
    }
    reap(pid);
}

/// Collects the exit of `tid` (a traced thread or our child), if any:
/// ECHILD when it is not ours, which is fine. A kept exit stays.
pub fn reap(tid: i32) {
    if keeps_exit(tid) {
        return;
    }
    let mut status = 0;
    // SAFETY: waitpid on a specific tid into a local.
    unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
}

/// Registers as bytes, as the image keeps them (27 u64, little-endian).
pub fn regs_to_bytes(r: &Regs) -> Vec<u8> {
    super::bytes_of(r).to_vec()
}

/// Registers from their bytes in the image; None if the length is wrong.
pub fn regs_from_bytes(b: &[u8]) -> Option<Regs> {
    let mut regs: Regs = super::zeroed();
    let out = super::bytes_of_mut(&mut regs);
    if b.len() != out.len() {
        return None;
    }
    out.copy_from_slice(b);
    Some(regs)
}

/// All registers zero (a placeholder until the real ones are read).
pub fn zero_regs() -> Regs {
    super::zeroed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_roundtrip() {
        let mut r = zero_regs();
        (r.orig_rax, r.rax, r.rip, r.fs_base) = (3, 4, 0x1002, 0xdead_beef);
        let b = regs_to_bytes(&r);
        assert_eq!(b.len(), 216);
        assert_eq!(
            u64::from_le_bytes(b[8 * 21..8 * 22].try_into().unwrap()),
            0xdead_beef
        );
        let back = regs_from_bytes(&b).unwrap();
        assert_eq!(
            (back.fs_base, back.orig_rax, back.rip),
            (0xdead_beef, 3, 0x1002)
        );
        assert!(regs_from_bytes(&b[1..]).is_none());
    }
}
