//! The way back for a task when crstream dies during one of its injected
//! syscalls (SIGKILL of the worker, the OOM killer), so that the task runs
//! on unharmed rather than on crstream's registers and signal mask.
//!
//! Before the first call, a signal frame is written below the task's
//! stack (where a signal handler's frame would go): the registers the task
//! resumes with, its signal mask, its FPU/vector state. The first call
//! reads the task's alternate signal stack; if it has one it is not on,
//! the frame moves to its top, where the kernel writes the frames of
//! handlers that take signals there, and what it overwrote below the stack
//! pointer is put back at once: a runtime that runs threads on small stacks
//! of its own (Go) may keep another stack there. Each call then
//! enters the kernel at a `syscall` (the vDSO's, or one in the process's
//! code) that is followed only by register clears and `ret`, with the
//! stack pointer at that frame, whose first word
//! is the address of a `mov $15, %rax; syscall` (rt_sigreturn) in the
//! task's own code (libc's `__restore_rt`). While crstream lives, it stops
//! the task at the syscall's exit and puts its registers back itself: the
//! `ret` never runs. If crstream is gone, the task returns from the call,
//! `ret`s into rt_sigreturn, and the kernel loads the frame: its own
//! registers, mask and FPU state, as after a signal handler. Nothing is
//! mapped and no code is written.
//!
//! Without both pieces of code (a vDSO of another shape, a static binary
//! without a sigreturn trampoline) or with a user shadow stack (where the
//! `ret` would fault), calls go through a plain `syscall` as before, and
//! that short window stays.

use crate::inject::{RemoteMem, search_code};
use crate::sys::ptrace::{self, Regs};

/// `syscall`, then only register clears, then `ret`: what a vDSO fallback
/// path ends with. Returns the address of the `syscall`.
pub(crate) fn find_syscall_ret(code: &[u8], base: u64) -> Option<u64> {
    (0..code.len().saturating_sub(2))
        .filter(|&i| code[i..].starts_with(&[0x0f, 0x05]))
        .find(|&i| ends_in_ret(&code[i + 2..]))
        .map(|i| base + i as u64)
}

/// Whether `code` is a run of register-direct `xor` (32- or 64-bit, into
/// any register but the stack pointer) followed by `ret`.
fn ends_in_ret(mut code: &[u8]) -> bool {
    loop {
        match code {
            [0xc3, ..] => return true,
            [0x31, modrm, rest @ ..] if clears_register(false, *modrm) => code = rest,
            [rex @ 0x40..=0x4f, 0x31, modrm, rest @ ..]
                if clears_register(rex & 1 != 0, *modrm) =>
            {
                code = rest
            }
            _ => return false,
        }
    }
}

/// `xor` (opcode 31) with this ModRM writes only a register (register-direct)
/// and not %rsp (rm 4 without REX.B).
fn clears_register(rex_b: bool, modrm: u8) -> bool {
    modrm >> 6 == 3 && (rex_b || modrm & 7 != 4)
}

/// `mov $15, %rax; syscall` (rt_sigreturn), as glibc, musl and Go spell it.
const SIGRETURN: [&[u8]; 2] = [
    &[0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05],
    &[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05],
];

pub(crate) fn find_sigreturn(code: &[u8], base: u64) -> Option<u64> {
    SIGRETURN.iter().find_map(|pat| {
        code.windows(pat.len())
            .position(|w| w == *pat)
            .map(|i| base + i as u64)
    })
}

/// The two pieces of code, found once per process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gadgets {
    pub syscall_ret: u64,
    pub sigreturn: u64,
}

impl Gadgets {
    /// Looks in the vDSO and the executable mappings of `pid` (libc first:
    /// most processes have `__restore_rt` there). None, logged, if either
    /// is missing.
    pub(crate) fn find(pid: i32, mem: &RemoteMem) -> Option<Self> {
        let maps = crate::proc::maps(pid).ok()?;
        // The vDSO first, then libc, then the rest of its code.
        let code = crate::inject::code_mappings(&maps);
        let Some(syscall_ret) = code
            .iter()
            .find_map(|m| search_code(mem, m, find_syscall_ret))
        else {
            tracing::debug!(pid, "no syscall-then-ret in its code: no escape frame");
            return None;
        };
        let sigreturn = code
            .iter()
            .filter(|m| m.path.starts_with(b"/"))
            .find_map(|m| search_code(mem, m, find_sigreturn));
        let Some(sigreturn) = sigreturn else {
            tracing::debug!(
                pid,
                "no rt_sigreturn trampoline in its code: no escape frame"
            );
            return None;
        };
        Some(Self {
            syscall_ret,
            sigreturn,
        })
    }
}

/// Where an escaping call starts: `rip` at the vDSO `syscall`, `rsp` at
/// the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Escape {
    pub rip: u64,
    pub rsp: u64,
}

/// Writes the frame of thread `tid` (which resumes with `resume`, signal
/// mask `mask`) below address `below` of its memory, and not under
/// `floor`. None, logged, when the thread has a shadow stack or the frame
/// does not fit or cannot be written.
pub(crate) fn prepare(
    tid: i32,
    gadgets: &Gadgets,
    mem: &RemoteMem,
    resume: &Regs,
    mask: u64,
    below: u64,
    floor: u64,
) -> Option<Escape> {
    if has_shadow_stack(tid) {
        tracing::debug!(tid, "shadow stack: no escape frame");
        return None;
    }
    let xstate = match ptrace::get_xstate(tid) {
        Ok(x) if x.len() >= XSAVE_MIN => x,
        _ => return None,
    };
    let xstate_size = xstate_size(&xstate, crate::sys::cpu::xstate_component);
    // The frame with its alignments takes at most this much below `below`.
    let most = (FRAME_LEN + xstate.len() + 4 + 64 + 16) as u64;
    if below.checked_sub(most)? < floor {
        return None;
    }
    let (at, frame) = frame(below, resume, mask, &xstate, xstate_size, gadgets.sigreturn);
    if let Err(e) = mem.write(at, &frame) {
        tracing::debug!(tid, "writing the escape frame: {e}");
        return None;
    }
    Some(Escape {
        rip: gadgets.syscall_ret,
        rsp: at,
    })
}

fn has_shadow_stack(tid: i32) -> bool {
    crate::proc::read_string(format!("/proc/{tid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk"))
        })
        .unwrap_or(false)
}

/// Legacy area and XSAVE header.
const XSAVE_MIN: usize = 512 + 64;
/// The kernel's markers of a full XSAVE area in a signal frame
/// (uapi asm/sigcontext.h).
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// uc_flags: the frame has XSAVE state; its ss is to be restored as is.
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// Offsets in the kernel's x86-64 rt_sigframe: return address, then
/// struct ucontext (flags, link, stack_t, sigcontext, sigset), siginfo.
const UC: usize = 8;
const UC_STACK: usize = UC + 16;
const MCONTEXT: usize = UC + 40;
const SIGMASK: usize = MCONTEXT + 256;
const FRAME_LEN: usize = SIGMASK + 8 + 128;

/// Bytes of `xstate` (an NT_X86_XSTATE area) the kernel is to restore:
/// up to the end of the last component in use (its XSTATE_BV), which
/// never exceeds what the task may use (a task without AMX permission
/// restores no AMX state).
fn xstate_size(xstate: &[u8], component: impl Fn(u32) -> Option<(u32, u32)>) -> usize {
    let in_use = u64::from_le_bytes(xstate[512..520].try_into().expect("8 bytes"));
    let end = (2..64)
        .filter(|i| in_use & (1 << i) != 0)
        .filter_map(|i| component(i).map(|(off, size)| (off + size) as usize))
        .max()
        .unwrap_or(0);
    end.clamp(XSAVE_MIN, xstate.len())
}

/// The frame, and the address it goes at: below `below`, the XSAVE area
/// 64-byte aligned (XRSTOR requires it), the frame under it.
fn frame(
    below: u64,
    r: &Regs,
    mask: u64,
    xstate: &[u8],
    xstate_size: usize,
    sigreturn: u64,
) -> (u64, Vec<u8>) {
    let fp = (below - xstate.len() as u64 - 4) & !63;
    let at = (fp - FRAME_LEN as u64) & !15;
    let mut b = vec![0u8; (fp - at) as usize + xstate.len() + 4];
    let mut put = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(0, sigreturn);
    put(UC, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    // An altstack mode the kernel rejects (neither 0, SS_ONSTACK nor
    // SS_DISABLE): rt_sigreturn then leaves the task's altstack as it is.
    put(UC_STACK + 8, 3);
    let gp = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put(MCONTEXT + 8 * i, *v);
    }
    // cs, gs, fs, ss: 16 bits each.
    put(MCONTEXT + 144, (r.cs & 0xffff) | ((r.ss & 0xffff) << 48));
    put(MCONTEXT + 184, fp);
    put(SIGMASK, mask);
    let x = (fp - at) as usize;
    b[x..x + xstate.len()].copy_from_slice(xstate);
    // The software bytes of the legacy area, as the kernel writes them
    // in a signal frame (ptrace puts XCR0 there instead).
    let xcr0 = u64::from_le_bytes(xstate[464..472].try_into().expect("8 bytes"));
    let sw = x + 464;
    b[sw..sw + 48].fill(0);
    b[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    b[sw + 4..sw + 8].copy_from_slice(&(xstate_size as u32 + 4).to_le_bytes());
    b[sw + 8..sw + 16].copy_from_slice(&xcr0.to_le_bytes());
    b[sw + 16..sw + 20].copy_from_slice(&(xstate_size as u32).to_le_bytes());
    // XCOMP_BV and the reserved header bytes must be zero (standard form).
    b[x + 520..x + 576].fill(0);
    b[x + xstate_size..x + xstate_size + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    (at, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_syscall_followed_by_clears_and_ret() {
        // The shape of this kernel's __vdso_clock_getres fallback, after a
        // `syscall; leave` that must not be taken.
        let code = [
            0x0f, 0x05, 0xc9, 0x31, 0xd2, 0xc3, // syscall; leave; ...
            0xb8, 0xe5, 0, 0, 0, // mov $229, %eax
            0x0f, 0x05, 0x31, 0xd2, 0x31, 0xc9, 0x45, 0x31, 0xdb, 0xc3,
        ];
        assert_eq!(find_syscall_ret(&code, 0x1000), Some(0x100b));
        // xor %esp, %esp is not harmless.
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0x31, 0xe4, 0xc3], 0), None);
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0xc3], 0x10), Some(0x10));
        assert_eq!(find_syscall_ret(&[0x0f, 0x05], 0), None);
    }

    #[test]
    fn finds_rt_sigreturn() {
        let glibc = [0x90, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x0f];
        assert_eq!(find_sigreturn(&glibc, 0x2000), Some(0x2001));
        assert_eq!(
            find_sigreturn(&[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05], 0),
            Some(0)
        );
        assert_eq!(find_sigreturn(&[0xb8, 0x0e, 0, 0, 0, 0x0f, 0x05], 0), None);
    }

    fn component(i: u32) -> Option<(u32, u32)> {
        // AVX, then PKRU, as on this kind of machine.
        match i {
            2 => Some((576, 256)),
            9 => Some((2688, 8)),
            18 => Some((2816, 8192)),
            _ => None,
        }
    }

    fn xstate(in_use: u64) -> Vec<u8> {
        let mut x = vec![0xaa; 11008];
        x[464..472].copy_from_slice(&0x600e7u64.to_le_bytes());
        x[512..520].copy_from_slice(&in_use.to_le_bytes());
        x
    }

    #[test]
    fn restores_up_to_the_last_component_in_use() {
        assert_eq!(xstate_size(&xstate(0x2), component), 576);
        assert_eq!(xstate_size(&xstate(0x6), component), 832);
        assert_eq!(xstate_size(&xstate(0x206), component), 2696);
        assert_eq!(xstate_size(&xstate(1 << 18 | 0x206), component), 11008);
    }

    #[test]
    fn frame_layout() {
        let mut r = ptrace::zero_regs();
        r.rip = 0x401000;
        r.rsp = 0x7ffd_0000_1000;
        r.rax = 7;
        r.r8 = 8;
        r.eflags = 0x246;
        r.cs = 0x33;
        r.ss = 0x2b;
        let x = xstate(0x206);
        let below = 0x7ffd_0000_0e00u64;
        let (at, b) = frame(below, &r, 0x4000, &x, 2696, 0x0007_f000_0003_c050);
        let word = |off: usize| u64::from_le_bytes(b[off..off + 8].try_into().unwrap());
        assert!(at + b.len() as u64 <= below && at % 16 == 0);
        assert_eq!(word(0), 0x0007_f000_0003_c050);
        assert_eq!(word(UC), 7);
        assert_eq!(word(MCONTEXT), 8);
        assert_eq!(word(MCONTEXT + 13 * 8), 7);
        assert_eq!(word(MCONTEXT + 15 * 8), 0x7ffd_0000_1000);
        assert_eq!(word(MCONTEXT + 16 * 8), 0x401000);
        assert_eq!(word(MCONTEXT + 17 * 8), 0x246);
        assert_eq!(word(MCONTEXT + 144), 0x002b_0000_0000_0033);
        assert_eq!(word(SIGMASK), 0x4000);
        let fp = word(MCONTEXT + 184);
        assert_eq!(fp % 64, 0);
        let x = (fp - at) as usize;
        let u32_at = |off: usize| u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        assert_eq!(u32_at(x + 464), FP_XSTATE_MAGIC1);
        assert_eq!(u32_at(x + 468), 2700);
        assert_eq!(word(x + 472), 0x600e7);
        assert_eq!(u32_at(x + 480), 2696);
        assert_eq!(u32_at(x + 2696), FP_XSTATE_MAGIC2);
        assert_eq!(word(x + 512), 0x206);
        assert_eq!(word(x + 520), 0);
        assert_eq!(b[x + 600], 0xaa);
    }
}
