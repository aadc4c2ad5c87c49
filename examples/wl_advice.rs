//! Workload: anonymous areas, each given one kind of advice or lock that
//! shows in smaps' VmFlags: MADV_DONTFORK, DONTDUMP, WIPEONFORK, HUGEPAGE,
//! NOHUGEPAGE, MERGEABLE, SEQUENTIAL, RANDOM, mlock and mlock2 with
//! MLOCK_ONFAULT. Each area holds a pattern, checked every 100 ms.
//! Reports "pid counter STATUS" then, on the next line, the start address
//! of every area (hex), in that order.
//!
//! Usage: wl_advice REPORT [AREAS]
//! AREAS: which areas, comma-separated, in this order (default: all):
//! dontfork, dontdump, wipeonfork, hugepage, nohugepage, mergeable,
//! sequential, random, mlock, onfault.

use std::time::Duration;

mod wl_common;
use wl_common::report;

const PAGE: usize = 4096;
const PAGES: usize = 16;

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
    let len = PAGES * PAGE;
    let mut areas: Vec<*mut u8> = Vec::new();
    for (i, &advice) in wanted.iter().enumerate() {
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
                _ => assert_eq!(
                    libc::syscall(libc::SYS_mlock2, p, len, 1 /* MLOCK_ONFAULT */),
                    0,
                    "mlock2"
                ),
            }
            for k in 0..len / 2 {
                *p.add(k) = (k as u8) ^ (i as u8);
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
        for (i, p) in areas.iter().enumerate() {
            // SAFETY: reading inside our own mapping.
            let bad = (0..len).find(|&k| {
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
