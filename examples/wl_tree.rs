//! Workload for the process-tree tests: a root with children and
//! grandchildren in several process groups and sessions, one zombie, and a
//! shared anonymous page through which they all report.
//!
//! Tree (slot = its counter in the shared page):
//! - root (slot 0), which never reaps Z;
//!   - A (slot 1) in the root's group, with grandchild A1 (slot 2);
//!   - B (slot 3) leading its own group, with grandchild B1 (slot 4) in it;
//!   - C (slot 5) leading its own session, with grandchild C1 (slot 6);
//!   - Z, which exits at once with status 42 and stays a zombie.
//!
//! Every process increments its slot every 50 ms after checking that its
//! parent is still the one it had (else it writes u64::MAX). Every 100 ms
//! the root checks the groups and sessions of all, that Z is still a zombie
//! with status 42 (waitid WNOWAIT), and reports:
//!   line 0: "ROOTPID COUNTER STATUS" (STATUS: OK or BAD-what)
//!   line 1: the seven slot counters
//!   line 2: the pids of A A1 B B1 C C1 Z
//!
//! Usage: wl_tree REPORT

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

const SLOTS: usize = 7;

fn slots() -> &'static [AtomicU64; SLOTS] {
    // SAFETY: one shared anonymous page, inherited by every fork; atomics
    // make the cross-process updates well defined.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        &*(p as *const [AtomicU64; SLOTS])
    }
}

/// The loop of every non-root process: count in `slot` while the parent is
/// the one it started with.
fn count(slots: &[AtomicU64; SLOTS], slot: usize) -> ! {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    loop {
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            slots[slot].store(u64::MAX, Ordering::SeqCst);
        } else {
            slots[slot].fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Forks a child that runs `f` and exits; returns its pid.
fn spawn(f: impl FnOnce()) -> i32 {
    // SAFETY: the child runs only `f`, then exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        f();
        // SAFETY: ends the child without running the parent's exit code.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_tree REPORT");
    let s = slots();
    // Grandchildren report their pids through the shared page too.
    let pids: &[AtomicU64; SLOTS] = slots();
    let a = spawn(|| {
        let a1 = spawn(|| count(s, 2));
        pids[1].store(a1 as u64, Ordering::SeqCst);
        count(s, 1)
    });
    let b = spawn(|| {
        // SAFETY: plain syscalls.
        unsafe { libc::setpgid(0, 0) };
        let b1 = spawn(|| count(s, 4));
        pids[3].store(b1 as u64, Ordering::SeqCst);
        count(s, 3)
    });
    let c = spawn(|| {
        // SAFETY: plain syscalls.
        unsafe { libc::setsid() };
        let c1 = spawn(|| count(s, 6));
        pids[5].store(c1 as u64, Ordering::SeqCst);
        count(s, 5)
    });
    // SAFETY: the child only exits.
    let z = spawn(|| unsafe { libc::_exit(42) });
    while pids[1].load(Ordering::SeqCst) == 0
        || pids[3].load(Ordering::SeqCst) == 0
        || pids[5].load(Ordering::SeqCst) == 0
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (a1, b1, c1) = (
        pids[1].load(Ordering::SeqCst) as i32,
        pids[3].load(Ordering::SeqCst) as i32,
        pids[5].load(Ordering::SeqCst) as i32,
    );
    let me = std::process::id() as i32;
    // SAFETY: plain syscalls.
    let (my_group, my_session) = unsafe { (libc::getpgid(0), libc::getsid(0)) };
    let mut counter = 0u64;
    loop {
        s[0].fetch_add(1, Ordering::SeqCst);
        let status = check((my_group, my_session), [a, a1, b, b1, c, c1], z, s);
        counter += 1;
        let values: Vec<String> = s
            .iter()
            .map(|v| v.load(Ordering::SeqCst).to_string())
            .collect();
        report(
            &path,
            &format!(
                "{me} {counter} {status}\n{}\n{a} {a1} {b} {b1} {c} {c1} {z}\n",
                values.join(" ")
            ),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check(root: (i32, i32), p: [i32; 6], z: i32, s: &[AtomicU64; SLOTS]) -> String {
    let [a, a1, b, b1, c, c1] = p;
    // SAFETY: plain syscalls on pids of our tree.
    let ids = |pid: i32| unsafe { (libc::getpgid(pid), libc::getsid(pid)) };
    let want = [
        (a, root),
        (a1, root),
        (b, (b, root.1)),
        (b1, (b, root.1)),
        (c, (c, c)),
        (c1, (c, c)),
    ];
    for (pid, expect) in want {
        let got = ids(pid);
        if got != expect {
            return format!("BAD-ids-of-{pid}:{got:?}-want-{expect:?}");
        }
    }
    if let Some(i) = s.iter().position(|v| v.load(Ordering::SeqCst) == u64::MAX) {
        return format!("BAD-parent-of-slot-{i}");
    }
    // SAFETY: waitid into a local siginfo; WNOWAIT leaves the zombie.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            z as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: reading the fields waitid filled in.
    let (got_pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if r != 0 || got_pid != z || code != libc::CLD_EXITED || status != 42 {
        return format!("BAD-zombie-{z}:r={r},pid={got_pid},code={code},status={status}");
    }
    "OK".into()
}
