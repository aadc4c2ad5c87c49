//! Before anything is created: can this machine's CPU run what the image
//! holds? The saved registers need every XSAVE state component the dumping
//! CPU had enabled (AVX, AVX-512, AMX, PKRU), and code that chose its
//! instructions at start-up (glibc's ifuncs, JITs) may use any instruction
//! set the dumping CPU announced. `--skip-validation` lets an expert restore
//! anyway.

use crate::error::RestoreError;
use crstream_proto::Inventory;

/// XSAVE state components (XCR0 bits) by name, for messages.
const XFEATURES: &[(u32, &str)] = &[
    (1, "SSE"),
    (2, "AVX"),
    (3, "MPX bounds"),
    (4, "MPX status"),
    (5, "AVX-512 opmask"),
    (6, "AVX-512 upper ZMM"),
    (7, "AVX-512 high ZMM"),
    (9, "PKRU"),
    (17, "AMX tile config"),
    (18, "AMX tile data"),
    (19, "APX"),
];

/// /proc/cpuinfo flags of instructions user code may have chosen at start.
const USER_ISA: &[&str] = &[
    "sse3",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "popcnt",
    "aes",
    "pclmulqdq",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "abm",
    "adx",
    "movbe",
    "rdrand",
    "rdseed",
    "sha_ni",
    "vaes",
    "vpclmulqdq",
    "gfni",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "clflushopt",
    "clwb",
    "xsavec",
    "xsaves",
    "fsrm",
    "erms",
    "rtm",
    "hle",
];

/// What this CPU has: XCR0, and its /proc/cpuinfo flags.
pub(crate) struct Cpu {
    pub xcr0: u64,
    pub flags: Vec<String>,
}

impl Cpu {
    pub(crate) fn here() -> Self {
        Cpu {
            xcr0: crate::sys::cpu::xcr0(),
            flags: crate::sys::cpu::flags(),
        }
    }
}

/// Refuses an image whose saved state or chosen instructions this CPU
/// lacks, naming what is missing.
pub(crate) fn check_cpu(inv: &Inventory, here: &Cpu) -> Result<(), RestoreError> {
    let missing = inv.xfeatures_mask & !here.xcr0;
    if missing != 0 {
        let names: Vec<String> = (0..64)
            .filter(|b| missing & (1 << b) != 0)
            .map(|b| {
                XFEATURES
                    .iter()
                    .find(|(bit, _)| *bit == b)
                    .map_or(format!("XSAVE component {b}"), |(_, n)| (*n).to_string())
            })
            .collect();
        return Err(RestoreError::Incompatible(format!(
            "this CPU lacks the register state {} the image holds (dumped on {}); \
             --skip-validation restores anyway",
            names.join(", "),
            inv.hostname
        )));
    }
    // An image with no flags (an older one, or a dump without /proc)
    // says nothing.
    let lacking: Vec<&str> = USER_ISA
        .iter()
        .copied()
        .filter(|f| inv.cpu_flags.iter().any(|g| g == f))
        .filter(|f| !here.flags.iter().any(|g| g == f))
        .collect();
    if !lacking.is_empty() {
        return Err(RestoreError::Incompatible(format!(
            "this CPU lacks {} that the image's CPU had (code may have chosen them at start); \
             --skip-validation restores anyway",
            lacking.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(xcr0: u64, flags: &[&str]) -> Inventory {
        Inventory {
            xfeatures_mask: xcr0,
            cpu_flags: flags.iter().map(|s| s.to_string()).collect(),
            hostname: "there".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_cpu_must_have_what_the_image_used() {
        let here = Cpu {
            xcr0: 0b111,
            flags: vec!["sse4_2".into(), "avx".into(), "avx2".into()],
        };
        assert!(check_cpu(&inv(0b111, &["sse4_2", "avx2", "hypervisor"]), &here).is_ok());
        let e = check_cpu(&inv(0b1110_0111, &[]), &here)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("AVX-512 opmask") && e.contains("AVX-512 high ZMM"),
            "{e}"
        );
        let e = check_cpu(&inv(0b111, &["avx512f", "avx2", "sha_ni"]), &here)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sha_ni") && e.contains("avx512f") && !e.contains("avx2"),
            "{e}"
        );
        // Flags that are no instructions (hypervisor, ...) do not count.
        assert!(check_cpu(&inv(0b11, &["hypervisor", "constant_tsc"]), &here).is_ok());
    }
}
