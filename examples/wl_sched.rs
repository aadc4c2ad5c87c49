//! Workload: threads that each set how they are scheduled, then keep
//! checking it: policy and nice (also of a SCHED_IDLE thread, which
//! sched_setattr does not set) or real-time priority or deadline
//! parameters, SCHED_FLAG_RESET_ON_FORK,
//! I/O priority, CPU affinity and timer slack; the process sets its
//! oom_score_adj. Every 20 ms each thread compares what the kernel says
//! with what it set. Reports "pid counter STATUS" every 100 ms, STATUS
//! naming the first difference seen.
//!
//! Usage: wl_sched REPORT

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::{Status, report};

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const RESET_ON_FORK: u64 = 1;
const SCHED_DEADLINE: i32 = 6;
const OOM_SCORE_ADJ: &str = "345";

/// What one thread sets and expects.
#[derive(Clone, Copy)]
struct Want {
    policy: i32,
    nice: i32,
    priority: u32,
    flags: u64,
    /// SCHED_DEADLINE's runtime, deadline and period, in ns.
    deadline: [u64; 3],
    /// class << 13 | level, or 0 to leave it.
    ioprio: u32,
    /// One CPU to run on, or None for any.
    cpu: Option<usize>,
    slack_ns: u64,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// CPUs the process may run on at start: what a thread that sets no
/// affinity of its own keeps (a restore must not leave it pinned).
static CPUS: AtomicU64 = AtomicU64::new(0);
static STATUS: Status = Status::new();

fn getattr() -> SchedAttr {
    let mut a = SchedAttr::default();
    // SAFETY: the kernel writes at most size_of::<SchedAttr>() bytes.
    unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0,
        )
    };
    a
}

fn set(w: &Want) {
    let a = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: w.policy as u32,
        flags: w.flags,
        nice: w.nice,
        priority: w.priority,
        runtime: w.deadline[0],
        deadline: w.deadline[1],
        period: w.deadline[2],
        ..Default::default()
    };
    // SAFETY: plain syscalls on the calling thread with valid arguments.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_sched_setattr, 0, &a as *const SchedAttr, 0),
            0,
            "sched_setattr: {}",
            std::io::Error::last_os_error()
        );
        // sched_setattr sets a nice value for SCHED_OTHER and BATCH only.
        if w.policy == libc::SCHED_IDLE {
            assert_eq!(libc::setpriority(libc::PRIO_PROCESS, 0, w.nice), 0);
        }
        if w.ioprio != 0 {
            assert_eq!(libc::syscall(libc::SYS_ioprio_set, 1, 0, w.ioprio), 0);
        }
        if let Some(cpu) = w.cpu {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        assert_eq!(libc::prctl(libc::PR_SET_TIMERSLACK, w.slack_ns), 0);
    }
}

fn verify(i: usize, w: &Want) {
    let a = getattr();
    let nice = if w.policy == libc::SCHED_FIFO || w.policy == libc::SCHED_RR {
        a.nice
    } else {
        w.nice
    };
    if (a.policy as i32, a.nice, a.priority, a.flags & RESET_ON_FORK)
        != (w.policy, nice, w.priority, w.flags)
        || (w.policy == SCHED_DEADLINE && [a.runtime, a.deadline, a.period] != w.deadline)
    {
        STATUS.fail(format!(
            "thread-{i}-sched-policy-{}-nice-{}-prio-{}-flags-{}",
            a.policy, a.nice, a.priority, a.flags
        ));
    }
    // SAFETY: plain syscalls about the calling thread.
    unsafe {
        if w.ioprio != 0 {
            let p = libc::syscall(libc::SYS_ioprio_get, 1, 0) as u32;
            if p != w.ioprio {
                STATUS.fail(format!("thread-{i}-ioprio-{p:#x}"));
            }
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        let count = libc::CPU_COUNT(&set) as u64;
        let right = match w.cpu {
            Some(cpu) => count == 1 && libc::CPU_ISSET(cpu, &set),
            None => count == CPUS.load(Ordering::Relaxed),
        };
        if !right {
            STATUS.fail(format!("thread-{i}-affinity-{count}"));
        }
        // Real-time and deadline threads have none (the kernel keeps it
        // at 0).
        let rt = matches!(w.policy, libc::SCHED_FIFO | libc::SCHED_RR | SCHED_DEADLINE);
        let want = if rt { 0 } else { w.slack_ns };
        let slack = libc::prctl(libc::PR_GET_TIMERSLACK) as u64;
        if slack != want {
            STATUS.fail(format!("thread-{i}-timerslack-{slack}"));
        }
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_sched REPORT");
    std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ).expect("oom_score_adj");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    CPUS.store(cpus as u64, Ordering::Relaxed);
    let class = |c: u32, level: u32| (c << 13) | level;
    let wants = [
        Want {
            policy: libc::SCHED_OTHER,
            nice: 5,
            priority: 0,
            flags: 0,
            deadline: [0; 3],
            ioprio: class(2, 6),
            cpu: None,
            slack_ns: 200_000,
        },
        Want {
            policy: libc::SCHED_BATCH,
            nice: 3,
            priority: 0,
            flags: RESET_ON_FORK,
            deadline: [0; 3],
            ioprio: 0,
            cpu: Some(0),
            slack_ns: 50_000,
        },
        Want {
            policy: libc::SCHED_IDLE,
            nice: 7,
            priority: 0,
            flags: 0,
            deadline: [0; 3],
            ioprio: class(3, 0),
            cpu: None,
            slack_ns: 1_000_000,
        },
        Want {
            policy: libc::SCHED_RR,
            nice: 0,
            priority: 5,
            flags: 0,
            deadline: [0; 3],
            ioprio: class(1, 2),
            cpu: Some(cpus - 1),
            slack_ns: 50_000,
        },
        Want {
            policy: libc::SCHED_FIFO,
            nice: 0,
            priority: 2,
            flags: RESET_ON_FORK,
            deadline: [0; 3],
            ioprio: 0,
            cpu: None,
            slack_ns: 70_000,
        },
        Want {
            policy: SCHED_DEADLINE,
            nice: 0,
            priority: 0,
            flags: 0,
            // 1 ms every 100 ms, done within 50 ms.
            deadline: [1_000_000, 50_000_000, 100_000_000],
            ioprio: 0,
            // A deadline thread may run on every CPU (the kernel refuses
            // it otherwise).
            cpu: None,
            slack_ns: 90_000,
        },
    ];
    for (i, w) in wants.iter().enumerate().skip(1) {
        let w = *w;
        std::thread::spawn(move || {
            set(&w);
            loop {
                std::thread::sleep(Duration::from_millis(20));
                verify(i, &w);
            }
        });
    }
    set(&wants[0]);
    let pid = std::process::id();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        verify(0, &wants[0]);
        let oom = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
        if oom.trim() != OOM_SCORE_ADJ {
            STATUS.fail(format!("oom_score_adj-{}", oom.trim()));
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        if n % 5 == 0 {
            let status = STATUS.shown();
            report(&path, &format!("{pid} {n} {status}\n"));
        }
    }
}
