//! Workload: a thread that runs on a small stack of its own, right above
//! memory the process keeps data in (as Go runs goroutines on 2 KiB stacks
//! in its heap, taking signals on an alternate stack). The thread sleeps in
//! a loop of raw nanosleep calls with its stack pointer 64 bytes above that
//! data; the main thread checks the data every 100 ms. Whatever a dump
//! writes below a thread's stack pointer must be put back. Reports "pid
//! counter STATUS". With `leader`, the main thread is the one on the small
//! stack, and another thread checks.
//!
//! Usage: wl_small_stack REPORT [leader]

use std::time::Duration;

mod wl_common;
use wl_common::report;

const DATA: usize = 16384;
const STACK: usize = 4096;

#[repr(C, align(64))]
struct Area {
    data: [u8; DATA],
    stack: [u8; STACK],
}

static mut AREA: Area = Area {
    data: [0; DATA],
    stack: [0; STACK],
};

static SLEEP: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 50_000_000,
};

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 7)) as u8
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args()
        .nth(1)
        .expect("usage: wl_small_stack REPORT");
    // SAFETY: written before the thread starts; only read afterwards.
    let area = unsafe { &mut *std::ptr::addr_of_mut!(AREA) };
    for (i, b) in area.data.iter_mut().enumerate() {
        *b = pattern(i);
    }
    let sp = area.stack.as_ptr() as u64 + 64;
    let sleep_on_small_stack = move || -> ! {
        // SAFETY: the thread never returns from here: it only makes
        // nanosleep calls, on a stack nothing else uses.
        unsafe {
            std::arch::asm!(
                "mov rsp, r13",
                "2:",
                "mov rdi, r12",
                "xor esi, esi",
                "mov eax, 35",
                "syscall",
                "jmp 2b",
                in("r12") &SLEEP as *const libc::timespec as u64,
                in("r13") sp,
                options(noreturn),
            )
        }
    };
    if std::env::args().nth(2).as_deref() == Some("leader") {
        std::thread::spawn(move || check(&path));
        sleep_on_small_stack();
    }
    std::thread::spawn(move || sleep_on_small_stack());
    check(&path)
}

/// Reports every 100 ms whether the data below the small stack is intact.
fn check(path: &str) -> ! {
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        // SAFETY: read-only after the start (see above).
        let data = unsafe { &(*std::ptr::addr_of!(AREA)).data };
        let status = match (0..DATA).find(|&i| data[i] != pattern(i)) {
            None => "OK".to_string(),
            Some(i) => format!("CORRUPT-at-{}-below-the-stack", DATA - i),
        };
        report(path, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
