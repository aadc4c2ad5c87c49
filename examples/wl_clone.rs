//! Workload for processes that share kernel tables without being threads.
//!
//! `wl_clone REPORT files-fs`: clones a child with CLONE_FILES | CLONE_FS
//! (no CLONE_VM: a fork that keeps one fd table and one cwd/umask). Every
//! 60 ms the parent opens a file at a new fd number (100 + round) and the
//! child checks that the fd exists in its table too (a copy of the table
//! taken earlier would lack it). Report: "PARENT N STATUS\nCHILD"
//! (STATUS: OK or BAD-what). Whether fs state is shared is for the test to
//! check (kcmp).
//!
//! `wl_clone REPORT vm`: clones a child with CLONE_VM but not CLONE_THREAD
//! (like vfork without the wait), which dump must refuse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

/// Marks, in the child's answer, an fd it did not find.
const MISSING: u64 = 1 << 32;

/// One shared anonymous page: [parent fd to look for, the child's answer:
/// the fd it checked, | MISSING if absent].
fn shared() -> &'static [AtomicU64; 2] {
    // SAFETY: a fresh shared page, inherited by the child.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*(p as *const [AtomicU64; 2])
    }
}

fn child(s: &[AtomicU64; 2]) -> ! {
    loop {
        let fd = s[0].load(Ordering::SeqCst);
        // SAFETY: fcntl on an fd number.
        let seen = unsafe { libc::fcntl(fd as i32, libc::F_GETFD) } >= 0;
        s[1].store(if seen { fd } else { fd | MISSING }, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: wl_clone REPORT files-fs|vm");
    let mode = args.next().unwrap_or_default();
    let s = shared();
    let pid = match mode.as_str() {
        "files-fs" => {
            // SAFETY: raw clone without CLONE_VM is a fork; the child runs
            // only `child`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_FILES | libc::CLONE_FS | libc::SIGCHLD) as u64,
                    0u64,
                    0u64,
                    0u64,
                    0u64,
                )
            };
            if r == 0 {
                child(s);
            }
            r as i32
        }
        "vm" => {
            extern "C" fn spin(_: *mut libc::c_void) -> i32 {
                loop {
                    // SAFETY: a raw syscall, no libc state.
                    unsafe { libc::syscall(libc::SYS_pause) };
                }
            }
            let stack = Box::leak(vec![0u8; 64 * 1024].into_boxed_slice());
            // SAFETY: the child runs `spin` on its own stack, sharing memory.
            unsafe {
                libc::clone(
                    spin,
                    stack.as_mut_ptr().add(stack.len()).cast(),
                    libc::CLONE_VM | libc::SIGCHLD,
                    std::ptr::null_mut(),
                )
            }
        }
        _ => panic!("usage: wl_clone REPORT files-fs|vm"),
    };
    assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
    let me = std::process::id();
    let mut n = 0u64;
    let devnull = std::fs::File::open("/dev/null").expect("open");
    loop {
        n += 1;
        let mut status = "OK".to_string();
        if mode == "files-fs" {
            // The fd opened last round, still open, must be in the child's
            // table too.
            let want = s[0].load(Ordering::SeqCst);
            if want != 0 && s[1].load(Ordering::SeqCst) == want | MISSING {
                status = format!("BAD-child-lacks-fd-{want}");
            }
            if n < 800 {
                // SAFETY: dup of our own fd at the lowest free number >= 100 + n.
                let fd = unsafe {
                    libc::fcntl(
                        std::os::fd::AsRawFd::as_raw_fd(&devnull),
                        libc::F_DUPFD,
                        100 + n as i32,
                    )
                };
                assert!(fd >= 0, "F_DUPFD");
                s[0].store(fd as u64, Ordering::SeqCst);
            }
        }
        report(&path, &format!("{me} {n} {status}\n{pid}\n"));
        std::thread::sleep(Duration::from_millis(60));
    }
}
