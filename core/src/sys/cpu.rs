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

/// The "flags" of /proc/cpuinfo (what the image records, what restore
/// compares); empty if it cannot be read.
pub(crate) fn flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

/// (offset, size) of XSAVE state component `i` in the standard (user)
/// layout, from CPUID leaf 0xD; None if the CPU lacks it.
pub(crate) fn xstate_component(i: u32) -> Option<(u32, u32)> {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return None;
    }
    let r = std::arch::x86_64::__cpuid_count(0xd, i);
    (r.eax != 0).then_some((r.ebx, r.eax))
}
