//! How each thread is scheduled (the `Scheduling` record, one per thread):
//! policy, nice or real-time priority, deadline parameters, utilization
//! clamps and SCHED_FLAG_RESET_ON_FORK (sched_getattr), I/O priority, CPU
//! affinity and timer slack. All read and set from crstream, per thread.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::sys::sched::{self, SchedAttr};
use crstream_proto::Scheduling;
use nix::sched::CpuSet;
use nix::unistd::Pid;

/// Records version since which every thread has a `Scheduling` record.
const SINCE: u32 = 3;

/// sched_setattr flags that are part of the saved state; the others ask
/// it to keep or leave parts of it alone.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
const SCHED_FLAG_RECLAIM: u64 = 0x02;
const SCHED_FLAG_DL_OVERRUN: u64 = 0x04;
const SCHED_FLAG_UTIL_CLAMP_MIN: u64 = 0x20;
const SCHED_FLAG_UTIL_CLAMP_MAX: u64 = 0x40;
/// Utilization clamps of a thread that never set any.
const UTIL_MAX: u32 = 1024;
/// ioprio class NONE: the I/O priority follows the nice value.
const IOPRIO_CLASS_SHIFT: u32 = 13;

pub(crate) struct Sched;

impl Kind for Sched {
    fn name(&self) -> &'static str {
        "scheduling"
    }

    fn phase(&self) -> Phase {
        // Every thread exists by then.
        Phase::Final
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let online = online_cpus();
        for i in 0..p.threads.len() {
            let tid = p.threads[i].tid;
            let err = |what: &str, e: std::io::Error| DumpError::Unsupported {
                pid: p.pid,
                what: "scheduling",
                reason: format!("{what} of tid {tid}: {e}"),
            };
            let a = sched::sched_getattr(tid).map_err(|e| err("sched_getattr", e))?;
            let ioprio = sched::ioprio_get(tid).map_err(|e| err("ioprio_get", e))?;
            let mask = nix::sched::sched_getaffinity(Pid::from_raw(tid))
                .map_err(|e| err("sched_getaffinity", e.into()))?;
            let affinity = mask_bytes(&mask);
            let slack = crate::proc::read_string(format!("/proc/{tid}/timerslack_ns"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let record = Scheduling {
                policy: a.policy,
                flags: a.flags
                    & (SCHED_FLAG_RESET_ON_FORK | SCHED_FLAG_RECLAIM | SCHED_FLAG_DL_OVERRUN),
                nice: a.nice,
                priority: a.priority,
                runtime: a.runtime,
                deadline: a.deadline,
                period: a.period,
                util_min: a.util_min,
                util_max: a.util_max,
                ioprio,
                affinity_all: online.as_ref().is_some_and(|o| *o == affinity),
                affinity,
                timer_slack_ns: slack,
            };
            p.thread_records[i].push(record);
        }
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        let online = online_cpus();
        for (i, t) in p.threads.iter().enumerate() {
            let Some(s) = p.thread_need_since::<Scheduling>(i, SINCE)? else {
                continue;
            };
            if let Some(online) = &online
                && !s.affinity_all
                && !s.affinity.iter().zip(online).any(|(a, o)| a & o != 0)
            {
                return Err(RestoreError::Thread {
                    pid: p.pid,
                    tid: t.tid as i32,
                    reason: format!(
                        "it may run only on CPUs {}, none of which is online here",
                        cpu_list(&s.affinity)
                    ),
                });
            }
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        for (i, t) in p.image.threads.iter().enumerate() {
            let err = |what: String, e: std::io::Error| RestoreError::Thread {
                pid,
                tid: t.tid as i32,
                reason: format!("{what}: {e}"),
            };
            let tid = p.host_tid(i);
            let saved = p.image.thread_need_since::<Scheduling>(i, SINCE)?;
            // A thread that may run anywhere gets what a task the restorer
            // started would have had, not the restorer's pin; before its
            // policy (SCHED_DEADLINE is refused to a thread pinned to less
            // than all the CPUs of its root domain).
            if saved.is_none_or(|s| s.affinity_all)
                && let Some(cpus) = p.objects.unpinned_cpus
            {
                nix::sched::sched_setaffinity(Pid::from_raw(tid), cpus).map_err(|e| {
                    err("sched_setaffinity to the restorer's CPUs".into(), e.into())
                })?;
            }
            if let Some(s) = saved {
                set(tid, s).map_err(|(what, e)| err(what, e))?;
            }
        }
        Ok(())
    }
}

/// Sets everything `s` saved on thread `tid`; the error names the step.
fn set(tid: i32, s: &Scheduling) -> Result<(), (String, std::io::Error)> {
    let mut flags = s.flags;
    // Clamps only if the thread had set some: setting the defaults would
    // mark them as its own choice (a kernel without them reports 0, 0).
    if s.util_min != 0 || (s.util_max != UTIL_MAX && s.util_max != 0) {
        flags |= SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX;
    }
    let attr = SchedAttr {
        policy: s.policy,
        flags,
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: s.util_min,
        util_max: s.util_max,
        ..Default::default()
    };
    sched::sched_setattr(tid, &attr).map_err(|e| {
        (
            format!(
                "sched_setattr (policy {}, nice {}, priority {})",
                s.policy, s.nice, s.priority
            ),
            e,
        )
    })?;
    // sched_setattr sets a nice value for SCHED_OTHER and SCHED_BATCH only.
    if s.policy == libc::SCHED_IDLE as u32 && s.nice != 0 {
        // SAFETY: setpriority has no memory arguments.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, s.nice) } != 0 {
            return Err((
                format!("setpriority {} (SCHED_IDLE)", s.nice),
                std::io::Error::last_os_error(),
            ));
        }
    }
    if s.ioprio >> IOPRIO_CLASS_SHIFT != 0 {
        sched::ioprio_set(tid, s.ioprio).map_err(|e| (format!("ioprio_set {:#x}", s.ioprio), e))?;
    }
    if !s.affinity_all {
        let mut mask = CpuSet::new();
        for cpu in cpus(&s.affinity).filter(|&c| c < CpuSet::count()) {
            mask.set(cpu).expect("below CpuSet::count");
        }
        nix::sched::sched_setaffinity(Pid::from_raw(tid), &mask).map_err(|e| {
            (
                format!("sched_setaffinity to CPUs {}", cpu_list(&s.affinity)),
                e.into(),
            )
        })?;
    }
    if s.timer_slack_ns != 0 {
        std::fs::write(
            format!("/proc/{tid}/timerslack_ns"),
            s.timer_slack_ns.to_string(),
        )
        .map_err(|e| (format!("timer slack {} ns", s.timer_slack_ns), e))?;
    }
    Ok(())
}

fn mask_bytes(mask: &CpuSet) -> Vec<u8> {
    let mut b = vec![0u8; CpuSet::count().div_ceil(8)];
    for cpu in 0..CpuSet::count() {
        if mask.is_set(cpu).unwrap_or(false) {
            b[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    while b.last() == Some(&0) {
        b.pop();
    }
    b
}

fn cpus(mask: &[u8]) -> impl Iterator<Item = usize> + '_ {
    (0..mask.len() * 8).filter(|&c| mask[c / 8] & (1 << (c % 8)) != 0)
}

/// "0,2,5" for a mask, for messages.
fn cpu_list(mask: &[u8]) -> String {
    cpus(mask)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The online CPUs as a mask (from /sys/devices/system/cpu/online,
/// "0-3,6"); None if unreadable.
fn online_cpus() -> Option<Vec<u8>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    parse_cpu_ranges(text.trim())
}

fn parse_cpu_ranges(text: &str) -> Option<Vec<u8>> {
    let mut b: Vec<u8> = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, z)) => (a.parse::<usize>().ok()?, z.parse::<usize>().ok()?),
            None => {
                let c = part.parse::<usize>().ok()?;
                (c, c)
            }
        };
        for cpu in lo..=hi {
            if b.len() <= cpu / 8 {
                b.resize(cpu / 8 + 1, 0);
            }
            b[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ranges() {
        assert_eq!(parse_cpu_ranges("0-1"), Some(vec![0b11]));
        assert_eq!(
            parse_cpu_ranges("0-3,6,9-10"),
            Some(vec![0b0100_1111, 0b110])
        );
        assert_eq!(parse_cpu_ranges("x"), None);
        assert_eq!(cpu_list(&[0b0100_1111, 0b110]), "0,1,2,3,6,9,10");
    }

    /// This thread's own settings survive a round trip through the record.
    #[test]
    fn round_trip_on_a_thread_of_ours() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        let s = Scheduling {
            policy: libc::SCHED_BATCH as u32,
            flags: SCHED_FLAG_RESET_ON_FORK,
            nice: 7,
            ioprio: (2 << IOPRIO_CLASS_SHIFT) | 5,
            affinity: vec![0b1],
            affinity_all: false,
            timer_slack_ns: 123_456,
            util_max: UTIL_MAX,
            ..Default::default()
        };
        set(tid, &s).map_err(|(w, e)| format!("{w}: {e}")).unwrap();
        let a = sched::sched_getattr(tid).unwrap();
        assert_eq!((a.policy, a.nice), (libc::SCHED_BATCH as u32, 7));
        assert_ne!(a.flags & SCHED_FLAG_RESET_ON_FORK, 0);
        assert_eq!(sched::ioprio_get(tid).unwrap(), s.ioprio);
        let mask = nix::sched::sched_getaffinity(Pid::from_raw(tid)).unwrap();
        assert_eq!(mask_bytes(&mask), vec![0b1]);
        let slack = std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns")).unwrap();
        assert_eq!(slack.trim(), "123456");
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
