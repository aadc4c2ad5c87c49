//! Workload: seccomp as sandboxed programs use it. With no_new_privs set:
//! - a filter the main thread and a second thread share: uname(2) fails
//!   with EPERM;
//!
//! Without `strict`, the shared filter is installed once both threads
//! exist, with SECCOMP_FILTER_FLAG_TSYNC, and the main thread installs it
//! again with TSYNC every 100 ms (which fails unless every thread still
//! shares its filters). With `strict`, a third thread is in strict mode
//! (it may only read and write: it echoes each byte the main thread sends
//! it through a pipe), the second thread inherits the shared filter (TSYNC
//! is impossible beside a strict thread) and adds two of its own that
//! both deny getcwd(2), with EACCES, then with EROFS: it fails with EROFS
//! there (on a tie the newest filter decides, so their order shows).
//!
//! Every 20 ms each filtering thread checks what its filters do. Reports
//! "pid counter STATUS" every 100 ms.
//!
//! Usage: wl_seccomp REPORT [strict]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::{Status, report};

static COUNTER: AtomicU64 = AtomicU64::new(0);
static STATUS: Status = Status::new();
static SECOND_FILTER: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// A filter: syscall `nr` fails with `errno`, every other is allowed.
fn deny(nr: i64, errno: u32) -> [SockFilter; 4] {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    [
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        SockFilter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: nr as u32,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | errno,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ]
}

fn install(prog: &[SockFilter], flags: u64) {
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: seccomp reads the program `fprog` points to.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1, flags, &fprog as *const SockFprog) };
    assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
}

/// errno of a raw syscall, 0 if it succeeded.
fn errno_of(r: libc::c_long) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// The shared filter once more, with TSYNC: the kernel accepts it only
/// while every thread's filters descend from the main thread's.
fn tsync_again(prog: &[SockFilter]) {
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: seccomp reads the program `fprog` points to.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1, 1, &fprog as *const SockFprog) };
    if r != 0 {
        STATUS.fail(format!("tsync-returned-{r}"));
    }
}

fn check_filters(who: &str, getcwd_errno: i32) {
    // SAFETY: uname and getcwd write into local buffers of the right size.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        let e = errno_of(libc::syscall(libc::SYS_uname, &mut u));
        if e != libc::EPERM {
            STATUS.fail(format!("{who}-uname-errno-{e}"));
        }
        let mut buf = [0u8; 4096];
        let e = errno_of(libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()));
        if e != getcwd_errno {
            STATUS.fail(format!("{who}-getcwd-errno-{e}"));
        }
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_seccomp REPORT");
    let pid = std::process::id();
    let (mut to_strict, mut from_strict) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two fds into each array.
    unsafe {
        assert_eq!(libc::pipe(to_strict.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(from_strict.as_mut_ptr()), 0);
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    }
    let strict = std::env::args().nth(2).as_deref() == Some("strict");
    let (strict_in, strict_out) = (to_strict[0], from_strict[1]);
    if strict {
        // Only read, write, exit and sigreturn from here on.
        std::thread::spawn(move || {
            // SAFETY: after PR_SET_SECCOMP strict, only raw read and write.
            unsafe {
                libc::prctl(libc::PR_SET_SECCOMP, 1);
                let mut b = 0u8;
                loop {
                    if libc::syscall(libc::SYS_read, strict_in, &mut b as *mut u8, 1) == 1 {
                        b = b.wrapping_add(1);
                        libc::syscall(libc::SYS_write, strict_out, &b as *const u8, 1);
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        install(&deny(libc::SYS_uname, libc::EPERM as u32), 0);
    }
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let second = ready.clone();
    std::thread::spawn(move || {
        second.wait();
        // A filter of its own would keep the main thread's TSYNC from
        // succeeding: only beside the strict thread.
        let own = if strict { libc::EROFS } else { 0 };
        if strict {
            install(&deny(libc::SYS_getcwd, libc::EACCES as u32), 0);
            install(&deny(libc::SYS_getcwd, libc::EROFS as u32), 0);
        }
        SECOND_FILTER.store(true, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            check_filters("second", own);
        }
    });
    let shared = deny(libc::SYS_uname, libc::EPERM as u32);
    const TSYNC: u64 = 1;
    if !strict {
        install(&shared, TSYNC);
    }
    ready.wait();
    while !SECOND_FILTER.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut byte = 0u8;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        check_filters("main", 0);
        if strict {
            // SAFETY: one byte through our own pipes.
            unsafe {
                libc::write(to_strict[1], &byte as *const u8 as *const libc::c_void, 1);
                let mut back = 0u8;
                libc::read(from_strict[0], &mut back as *mut u8 as *mut libc::c_void, 1);
                if back != byte.wrapping_add(1) {
                    STATUS.fail(format!("strict-echo-{back}-for-{byte}"));
                }
            }
            byte = byte.wrapping_add(1);
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        if n % 5 == 0 {
            if !strict {
                tsync_again(&shared);
            }
            let status = STATUS.shown();
            report(&path, &format!("{pid} {n} {status}\n"));
        }
    }
}
