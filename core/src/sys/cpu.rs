//! What the CPU offers user code.

/// XCR0: the state components XSAVE manages on this CPU (0 without XSAVE).
pub(crate) fn xcr0() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is available when XSAVE is (checked above).
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}
