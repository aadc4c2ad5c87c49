//! Workload: anonymous areas, each given one kind of advice or lock that
//! shows in smaps' VmFlags: MADV_DONTFORK, DONTDUMP, WIPEONFORK, HUGEPAGE,
//! NOHUGEPAGE, MERGEABLE, SEQUENTIAL, RANDOM, mlock and mlock2 with
//! MLOCK_ONFAULT; and areas whose VmFlags say what mprotect may do with
//! them: sealed with mseal ("sl"), a memfd mapped shared and read-only
//! through a writable fd ("sh mw": it may be made writable), a System V
//! segment attached with SHM_RDONLY (neither: it may not); and an area
//! with a guard region (MADV_GUARD_INSTALL) over pages GUARD_PAGES of its
//! zero half. Each area holds a pattern, checked every 100 ms. The process also denies itself
//! write-and-execute mappings (PR_SET_MDWE), checked likewise, and dumps
//! all its memory in a core (coredump_filter 0x3f, as the JVM sets it).
//! Reports "pid counter STATUS" then, on the next line, the start address
//! of every area (hex), in that order.
//!
//! Usage: wl_advice REPORT [AREAS]
//! AREAS: which areas, comma-separated, in this order (default: all):
//! dontfork, dontdump, wipeonfork, hugepage, nohugepage, mergeable,
//! sequential, random, mlock, onfault, sealed, roshared, shmro, guard.

use std::time::Duration;

mod wl_common;
use wl_common::report;

const PAGE: usize = 4096;
const PAGES: usize = 16;

const PR_SET_MDWE: i32 = 65;
const PR_GET_MDWE: i32 = 66;
const MDWE_REFUSE_EXEC_GAIN: i32 = 1;
const SEALED: i32 = -3;
const RO_SHARED: i32 = -4;
const SHM_RO: i32 = -5;
const GUARD: i32 = -6;
const MADV_GUARD_INSTALL: i32 = 102;
/// The pages of the guard area that are a guard region (a fault there is
/// SIGSEGV): not read by the check.
const GUARD_PAGES: std::ops::Range<usize> = 12..14;

/// A memfd holding `pattern`, mapped shared and read-only through its
/// writable fd (closed then).
fn read_only_shared_memfd(pattern: &[u8]) -> *mut u8 {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    // SAFETY: memfd_create with a valid name; the fd is owned by the File.
    let f = unsafe {
        let fd = libc::memfd_create(c"wl_advice".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "memfd_create");
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    f.write_all_at(pattern, 0).unwrap();
    // SAFETY: a fresh shared mapping of our own file, never unmapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pattern.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

/// A private System V segment holding `pattern`, attached with
/// SHM_RDONLY (and removed: it goes with the process).
fn read_only_attach(pattern: &[u8]) -> *mut u8 {
    // SAFETY: a fresh private segment, written through a first attach,
    // then attached read-only for good.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, pattern.len(), libc::IPC_CREAT | 0o600);
        assert!(id >= 0, "shmget");
        let w = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(w as isize, -1, "shmat");
        std::ptr::copy_nonoverlapping(pattern.as_ptr(), w.cast(), pattern.len());
        assert_eq!(libc::shmdt(w), 0);
        let p = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
        assert_ne!(p as isize, -1, "shmat SHM_RDONLY");
        assert_eq!(libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()), 0);
        p.cast()
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args()
        .nth(1)
        .expect("usage: wl_advice REPORT [AREAS]");
    // Advice by name; "mlock" and "onfault" lock instead.
    let advice = [
        ("dontfork", libc::MADV_DONTFORK),
        ("dontdump", libc::MADV_DONTDUMP),
        ("wipeonfork", libc::MADV_WIPEONFORK),
        ("hugepage", libc::MADV_HUGEPAGE),
        ("nohugepage", libc::MADV_NOHUGEPAGE),
        ("mergeable", libc::MADV_MERGEABLE),
        ("sequential", libc::MADV_SEQUENTIAL),
        ("random", libc::MADV_RANDOM),
        ("mlock", -1),
        ("onfault", -2),
        ("sealed", SEALED),
        ("roshared", RO_SHARED),
        ("shmro", SHM_RO),
        ("guard", GUARD),
    ];
    let wanted: Vec<i32> = match std::env::args().nth(2) {
        None => advice.iter().map(|a| a.1).collect(),
        Some(list) => list
            .split(',')
            .map(|n| {
                advice
                    .iter()
                    .find(|a| a.0 == n)
                    .unwrap_or_else(|| panic!("unknown area {n}"))
                    .1
            })
            .collect(),
    };
    // SAFETY: prctl with integer arguments.
    let mdwe = || unsafe { libc::prctl(PR_GET_MDWE, 0, 0, 0, 0) };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::prctl(PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) },
        0
    );
    std::fs::write("/proc/self/coredump_filter", "0x3f").expect("coredump_filter");
    let len = PAGES * PAGE;
    let mut areas: Vec<*mut u8> = Vec::new();
    for (i, &advice) in wanted.iter().enumerate() {
        let pattern: Vec<u8> = (0..len)
            .map(|k| {
                if k < len / 2 {
                    (k as u8) ^ (i as u8)
                } else {
                    0
                }
            })
            .collect();
        match advice {
            RO_SHARED => {
                areas.push(read_only_shared_memfd(&pattern));
                continue;
            }
            SHM_RO => {
                areas.push(read_only_attach(&pattern));
                continue;
            }
            _ => {}
        }
        // SAFETY: a fresh private anonymous mapping, never unmapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p.cast(), libc::MAP_FAILED);
        // SAFETY: advice and locks on our own mapping; writes inside it.
        unsafe {
            match advice {
                -1 => assert_eq!(libc::mlock(p.cast(), len), 0, "mlock"),
                a if a >= 0 => assert_eq!(libc::madvise(p.cast(), len, a), 0, "madvise {a}"),
                SEALED | GUARD => {}
                _ => assert_eq!(
                    libc::syscall(libc::SYS_mlock2, p, len, 1 /* MLOCK_ONFAULT */),
                    0,
                    "mlock2"
                ),
            }
            std::ptr::copy_nonoverlapping(pattern.as_ptr(), p, len);
            if advice == SEALED {
                assert_eq!(libc::syscall(462 /* mseal */, p, len, 0), 0, "mseal");
            }
            if advice == GUARD {
                let at = p.add(GUARD_PAGES.start * PAGE);
                let r = libc::madvise(at.cast(), GUARD_PAGES.len() * PAGE, MADV_GUARD_INSTALL);
                assert_eq!(r, 0, "MADV_GUARD_INSTALL");
            }
        }
        areas.push(p);
    }
    let pid = std::process::id();
    let starts: Vec<String> = areas.iter().map(|p| format!("{:x}", *p as usize)).collect();
    let mut counter = 0u64;
    loop {
        counter += 1;
        let mut status = "OK".to_string();
        if mdwe() != MDWE_REFUSE_EXEC_GAIN {
            status = format!("mdwe-{}", mdwe());
        }
        for (i, p) in areas.iter().enumerate() {
            let guarded = |k: usize| wanted[i] == GUARD && GUARD_PAGES.contains(&(k / PAGE));
            // SAFETY: reading inside our own mapping, outside guard regions.
            let bad = (0..len).filter(|&k| !guarded(k)).find(|&k| {
                let want = if k < len / 2 {
                    (k as u8) ^ (i as u8)
                } else {
                    0
                };
                let got = unsafe { *p.add(k) };
                got != want
            });
            if let Some(k) = bad {
                status = format!("area-{i}-byte-{k}");
                break;
            }
        }
        report(
            &path,
            &format!("{pid} {counter} {status}\n{}\n", starts.join(" ")),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
