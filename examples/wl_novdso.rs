//! Workload: a process without a vDSO (it unmaps [vdso], [vvar] and
//! [vvar_vclock], as sandboxes and some runtimes do): crstream must inject
//! its syscalls elsewhere. It then only makes plain syscalls (nanosleep,
//! file writes; clock_gettime would need the vDSO) and checks every 100 ms
//! that the three mappings are still gone and a 1 MiB pattern is intact.
//! Reports "pid counter STATUS".
//!
//! Usage: wl_novdso REPORT

mod wl_common;
use wl_common::report;

const SPECIAL: [&str; 3] = ["[vdso]", "[vvar]", "[vvar_vclock]"];

fn specials() -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| SPECIAL.iter().any(|s| l.ends_with(s)))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_novdso REPORT");
    let pattern: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sum = |v: &[u8]| v.iter().fold(0u64, |a, &b| a.rotate_left(5) ^ b as u64);
    let want = sum(&pattern);
    for (start, end) in specials() {
        // SAFETY: unmapping the kernel's special mappings, which nothing
        // of this program uses from here on.
        assert_eq!(
            unsafe { libc::munmap(start as *mut _, (end - start) as usize) },
            0
        );
    }
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        let left = specials();
        let status = if !left.is_empty() {
            format!("BAD-special-mappings-{left:x?}")
        } else if sum(&pattern) != want {
            "BAD-pattern".into()
        } else {
            "OK".into()
        };
        report(&path, &format!("{pid} {counter} {status}\n"));
        let t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        // SAFETY: nanosleep with a local timespec.
        unsafe { libc::nanosleep(&t, std::ptr::null_mut()) };
    }
}
