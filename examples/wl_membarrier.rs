//! Workload: registers for private expedited membarriers (as JITs do) and
//! global expedited ones, then issues a private expedited barrier every
//! 100 ms, which fails with EPERM without the registration. Reports "pid
//! counter STATUS".
//!
//! Usage: wl_membarrier REPORT

use std::time::Duration;

mod wl_common;
use wl_common::report;

const GLOBAL_EXPEDITED: i32 = 1 << 1;
const REGISTER_GLOBAL_EXPEDITED: i32 = 1 << 2;
const PRIVATE_EXPEDITED: i32 = 1 << 3;
const REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;

fn membarrier(cmd: i32) -> i64 {
    // SAFETY: membarrier with integer arguments.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args()
        .nth(1)
        .expect("usage: wl_membarrier REPORT");
    assert_eq!(
        membarrier(REGISTER_PRIVATE_EXPEDITED),
        0,
        "register private"
    );
    assert_eq!(membarrier(REGISTER_GLOBAL_EXPEDITED), 0, "register global");
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut status = String::from("OK");
    loop {
        counter += 1;
        if membarrier(PRIVATE_EXPEDITED) != 0 {
            status = format!("private-barrier-{}", std::io::Error::last_os_error());
        } else if membarrier(GLOBAL_EXPEDITED) != 0 {
            status = format!("global-barrier-{}", std::io::Error::last_os_error());
        }
        report(
            &path,
            &format!("{pid} {counter} {}\n", status.replace(' ', "-")),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
