//! Workload: the main thread spins in user code with state that lives only
//! in registers: a 256-bit pattern in %ymm8 (AVX), round-toward-zero in
//! MXCSR, a constant in %r12, and a signal mask blocking SIGUSR1. Every
//! iteration checks all of them and counts; a lost upper half of %ymm8, a
//! reset MXCSR or a changed %r12 ends the spin with a status naming it.
//! Another thread reports "pid counter STATUS" every 100 ms.
//!
//! Usage: wl_fpu REPORT

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

/// Why the spin ended: 0 while it runs.
static BROKEN: AtomicU64 = AtomicU64::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);

const PATTERN: [u64; 4] = [
    0x0123_4567_89ab_cdef,
    0xfedc_ba98_7654_3210,
    0x0f1e_2d3c_4b5a_6978,
    0x8796_a5b4_c3d2_e1f0,
];
/// Default MXCSR (0x1f80) with rounding toward zero (bits 13-14).
const MXCSR_RZ: u32 = 0x7f80;
const R12: u64 = 0x5eed_cafe_f00d_beef;

/// Spins until a register is found changed; returns which (1: %ymm8,
/// 2: MXCSR, 3: %r12).
fn spin() -> u64 {
    let pattern = PATTERN;
    let mxcsr = MXCSR_RZ;
    let mut scratch = 0u32;
    let why: u64;
    // SAFETY: reads `pattern` and `mxcsr`, writes `scratch` and the
    // counter; every register it changes is declared clobbered, and MXCSR
    // is put back to its default before it returns.
    unsafe {
        std::arch::asm!(
            "ldmxcsr [{mx}]",
            "vmovdqu ymm8, [{pat}]",
            "mov r12, {r12}",
            "2:",
            "inc qword ptr [{ctr}]",
            "vpcmpeqq ymm10, ymm8, [{pat}]",
            "vpmovmskb eax, ymm10",
            "cmp eax, -1",
            "mov {why}, 1",
            "jne 3f",
            "stmxcsr [{tmp}]",
            "mov eax, [{tmp}]",
            "and eax, 0xffc0",
            "cmp eax, [{mx}]",
            "mov {why}, 2",
            "jne 3f",
            "mov rax, {r12}",
            "cmp r12, rax",
            "mov {why}, 3",
            "jne 3f",
            "jmp 2b",
            "3:",
            "mov dword ptr [{tmp}], 0x1f80",
            "ldmxcsr [{tmp}]",
            "vzeroupper",
            mx = in(reg) &mxcsr,
            pat = in(reg) pattern.as_ptr(),
            ctr = in(reg) COUNTER.as_ptr(),
            tmp = in(reg) &mut scratch,
            r12 = const R12,
            why = out(reg) why,
            out("rax") _,
            out("r12") _,
            out("ymm8") _,
            out("ymm10") _,
        );
    }
    why
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_fpu REPORT");
    assert!(is_x86_feature_detected!("avx2"), "wl_fpu needs AVX2");
    let pid = std::process::id();
    std::thread::spawn(move || {
        loop {
            let status = match BROKEN.load(Ordering::Relaxed) {
                0 => "OK",
                1 => "CORRUPT-ymm8",
                2 => "CORRUPT-mxcsr",
                _ => "CORRUPT-r12",
            };
            let n = COUNTER.load(Ordering::Relaxed);
            report(&path, &format!("{pid} {n} {status}\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // The main thread's own mask: SIGUSR1 blocked.
    // SAFETY: a plain sigset manipulation of this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    BROKEN.store(spin(), Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
