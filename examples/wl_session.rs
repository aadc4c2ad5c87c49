//! Workload: with MODE "setsid" it makes itself a session leader at start;
//! with "keep" it stays in the session and process group it was started in
//! (start it with `process_group(0)` to make it a group leader). Every
//! 100 ms it increments a counter and reports "pid counter pgid sid", the
//! last two from getpgid(0)/getsid(0) as it sees them now.
//!
//! Usage: wl_session REPORT setsid|keep

use std::time::Duration;

mod wl_common;
use wl_common::report;

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: wl_session REPORT setsid|keep")
        .clone();
    match args.get(2).map(String::as_str) {
        Some("setsid") => {
            // SAFETY: setsid has no preconditions.
            if unsafe { libc::setsid() } < 0 {
                panic!("setsid: {}", std::io::Error::last_os_error());
            }
        }
        Some("keep") => {}
        other => panic!("unknown mode {other:?}"),
    }
    let pid = std::process::id();
    let mut counter: u64 = 0;
    loop {
        counter += 1;
        // SAFETY: plain queries of our own ids.
        let (pgid, sid) = unsafe { (libc::getpgid(0), libc::getsid(0)) };
        report(&path, &format!("{pid} {counter} {pgid} {sid}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
