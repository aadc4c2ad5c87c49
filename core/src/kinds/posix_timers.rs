//! POSIX timers (timer_create), the `PosixTimers` record.
//!
//! They are listed by /proc/PID/timers (ID, signal and sigev_value,
//! notification mode and target, clock) and their setting is read with an
//! injected timer_gettime. Restore recreates each one in the restored
//! process with the same ID: with prctl(PR_TIMER_CREATE_RESTORE_IDS) where
//! the kernel has it (6.17+: timer_create then takes the wanted ID from
//! `*created_timer_id`), otherwise by creating and deleting filler timers
//! until the kernel's cyclic per-process ID counter reaches it.
//!
//! A periodic timer whose signal was pending fires again at once, its
//! own signal pending in place of the saved one (see `arming`).
//!
//! Not kept: the overrun count of the last expiry (no interface sets it)
//! and the expiries a pending signal had counted before the dump (none
//! reads them),
//! TIMER_ABSTIME (the remaining time is re-armed as a relative time, so a
//! CLOCK_REALTIME timer no longer follows clock changes), and the counter
//! the kernel hands the next new timer ID from.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::{SCRATCH_DATA, Stub};
use crstream_proto::{PosixTimer, PosixTimers as Record};
use libc::{SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD, SIGEV_THREAD_ID};

pub(crate) struct PosixTimers;

impl Kind for PosixTimers {
    fn name(&self) -> &'static str {
        "POSIX timers"
    }

    /// After the threads: a SIGEV_THREAD_ID timer names one.
    fn phase(&self) -> Phase {
        Phase::Threads
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let timers = dump(p)?;
        p.records.push(Record { timers });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need::<Record>().map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let r: &Record = p.image.need()?;
        let shared = p.image.records.get::<crstream_proto::SignalState>();
        let pending: Vec<i32> = p
            .image
            .threads
            .iter()
            .flat_map(|t| &t.pending_signals)
            .chain(shared.into_iter().flat_map(|s| &s.shared_pending))
            .filter_map(|si| timer_of(si))
            .collect();
        restore(p.stub, &r.timers, &pending)
    }
}

/// prctl option and its arguments (include/uapi/linux/prctl.h, Linux 6.17).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_OFF: u64 = 0;
const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;
/// Most filler timers the fallback creates to reach one ID.
const MAX_FILLER_TIMERS: u32 = 1 << 16;

/// One timer as /proc/PID/timers lists it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Listed {
    id: i32,
    signal: i32,
    value: u64,
    notify: i32,
    target: i32,
    clock: i32,
}

/// Parses /proc/PID/timers: blocks of "ID: 0", "signal: 10/00000000deadbeef",
/// "notify: signal/tid.1234" (mode none, signal or thread; pid or tid) and
/// "ClockID: 1".
fn parse_timers(text: &str) -> Result<Vec<Listed>, String> {
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, val) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line:?}"))?;
        let val = val.trim();
        let bad = || format!("{key}: {val:?}");
        if key == "ID" {
            out.push(Listed {
                id: val.parse().map_err(|_| bad())?,
                ..Default::default()
            });
            continue;
        }
        let t = out
            .last_mut()
            .ok_or_else(|| format!("{key} before any ID"))?;
        match key {
            "signal" => {
                let (sig, v) = val.split_once('/').ok_or_else(bad)?;
                t.signal = sig.parse().map_err(|_| bad())?;
                t.value = u64::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|_| bad())?;
            }
            "notify" => {
                let (mode, target) = val.split_once('/').ok_or_else(bad)?;
                let (kind, n) = target.split_once('.').ok_or_else(bad)?;
                t.notify = match mode {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                match kind {
                    "tid" => t.notify |= SIGEV_THREAD_ID,
                    "pid" => {}
                    _ => return Err(bad()),
                }
                t.target = n.parse().map_err(|_| bad())?;
            }
            "ClockID" => t.clock = val.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(out)
}

/// Whether restore can recreate a timer on `clock` inside the restored
/// process (same PID and TIDs): the fixed clocks, and CPU clocks of the
/// process itself or of one of its threads. Err: why not.
fn check_clock(pid: i32, clock: i32, tids: &[i32]) -> Result<(), String> {
    match clock {
        libc::CLOCK_REALTIME
        | libc::CLOCK_MONOTONIC
        | libc::CLOCK_BOOTTIME
        | libc::CLOCK_REALTIME_ALARM
        | libc::CLOCK_BOOTTIME_ALARM
        | libc::CLOCK_TAI => Ok(()),
        // CPU clocks: (~pid << 3) | per-thread bit (4) | type (0..2); pid 0
        // is the creator (CLOCK_PROCESS_CPUTIME_ID is held as -6,
        // CLOCK_THREAD_CPUTIME_ID as -2).
        c if c < 0 && c & 3 != 3 => {
            let owner = !(c >> 3);
            if c & 4 != 0 {
                if owner == 0 && tids.len() == 1 {
                    Ok(())
                } else if owner == 0 {
                    Err(format!(
                        "its clock {c} is the CPU clock of the thread that created it, which \\
                         /proc does not name (the process has {} threads)",
                        tids.len()
                    ))
                } else if tids.contains(&owner) {
                    Ok(())
                } else {
                    Err(format!(
                        "its clock {c} is the CPU clock of thread {owner} of another process"
                    ))
                }
            } else if owner == 0 || owner == pid {
                Ok(())
            } else {
                Err(format!(
                    "its clock {c} is the CPU clock of another process ({owner})"
                ))
            }
        }
        c => Err(format!("clock {c} is not supported")),
    }
}

fn ns(sec: i64, nsec: i64) -> u64 {
    (sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(nsec.max(0) as u64)
}

/// Every POSIX timer of the process, with its setting read by injected
/// timer_gettime calls. Refuses timers restore could not recreate, naming
/// them.
fn dump(p: &DumpProcess<'_>) -> Result<Vec<PosixTimer>, DumpError> {
    let pid = p.pid;
    let tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    let tids = &tids[..];
    let path = format!("/proc/{pid}/timers");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // Kernels without CONFIG_CHECKPOINT_RESTORE have no such file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(pid, "{path} is missing: assuming no POSIX timers");
            return Ok(Vec::new());
        }
        Err(err) => {
            return Err(DumpError::Proc {
                pid,
                err: crate::error::ProcError::Io { path, err },
            });
        }
    };
    let listed = parse_timers(&text).map_err(|detail| DumpError::Proc {
        pid,
        err: crate::error::ProcError::Parse {
            path: path.clone(),
            detail,
        },
    })?;
    let mut out = Vec::new();
    for t in listed {
        let refuse = |reason: String| DumpError::Unsupported {
            pid,
            what: "POSIX timer",
            reason: format!("timer {}: {reason}", t.id),
        };
        check_clock(pid, t.clock, tids).map_err(refuse)?;
        if t.notify & SIGEV_THREAD_ID != 0 && !tids.contains(&t.target) {
            return Err(refuse(format!(
                "it signals thread {}, which is not a thread of the process",
                t.target
            )));
        }
        let b = p.injector().call_reading::<32>(
            "timer_gettime",
            libc::SYS_timer_gettime,
            &[t.id as u64, p.injector().scratch],
        )?;
        let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let overrun = p.injector().call(
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            &[t.id as u64],
        )? as i32;
        out.push(PosixTimer {
            id: t.id,
            clockid: t.clock,
            signal: t.signal,
            sigev_value: t.value,
            notify: t.notify,
            target_tid: if t.notify & SIGEV_THREAD_ID != 0 {
                t.target as u32
            } else {
                0
            },
            interval_ns: ns(w(0), w(1)),
            value_ns: ns(w(2), w(3)),
            overrun,
        });
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Recreates the POSIX timers of a restored process with their IDs.
/// `pending`: the timers whose signal was pending.
fn restore(stub: &Stub, timers: &[PosixTimer], pending: &[i32]) -> Result<(), RestoreError> {
    if timers.is_empty() {
        return Ok(());
    }
    let pid = stub.pid;
    let mut sorted: Vec<&PosixTimer> = timers.iter().collect();
    sorted.sort_by_key(|t| t.id);
    let forced_linear = crate::failpoint::armed("posix-timer-prctl");
    let by_id = !forced_linear
        && stub
            .leader
            .raw(
                libc::SYS_prctl,
                &[
                    PR_TIMER_CREATE_RESTORE_IDS,
                    PR_TIMER_CREATE_RESTORE_IDS_ON,
                    0,
                    0,
                    0,
                ],
            )?
            .0
            == 0;
    if !by_id {
        tracing::debug!(
            pid,
            "no PR_TIMER_CREATE_RESTORE_IDS: reaching timer IDs with filler timers"
        );
    }
    let r = (|| {
        for t in &sorted {
            create_timer(stub, t, by_id, pending.contains(&t.id))?;
        }
        Ok(())
    })();
    if by_id {
        // Process-wide: the restored process must create timers normally.
        stub.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            libc::SYS_prctl,
            &[
                PR_TIMER_CREATE_RESTORE_IDS,
                PR_TIMER_CREATE_RESTORE_IDS_OFF,
                0,
                0,
                0,
            ],
        )?;
    }
    r
}

fn create_timer(
    stub: &Stub,
    t: &PosixTimer,
    by_id: bool,
    signal_pending: bool,
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let err = |what: &str, detail: String| RestoreError::Io {
        pid,
        what: format!(
            "recreating POSIX timer {} (clock {}, signal {}): {what}",
            t.id, t.clockid, t.signal
        ),
        err: std::io::Error::other(detail),
    };
    // struct sigevent: sigev_value (8), sigev_signo (4), sigev_notify (4),
    // then a union whose first int is the target TID; 64 bytes in all.
    let mut ev = [0u8; 64];
    ev[0..8].copy_from_slice(&t.sigev_value.to_le_bytes());
    ev[8..12].copy_from_slice(&t.signal.to_le_bytes());
    ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
    ev[16..20].copy_from_slice(&(t.target_tid as i32).to_le_bytes());
    let ev_at = stub.put(SCRATCH_DATA, &ev)?;
    let id_at = ev_at + 64;
    let mut fillers = 0u32;
    loop {
        // With PR_TIMER_CREATE_RESTORE_IDS the kernel reads the wanted ID
        // from *created_timer_id.
        stub.put(SCRATCH_DATA + 64, &t.id.to_le_bytes())?;
        stub.call(
            "timer_create",
            libc::SYS_timer_create,
            &[t.clockid as i64 as u64, ev_at, id_at],
        )
        .map_err(|e| err("timer_create", e.to_string()))?;
        let mut b = [0u8; 4];
        stub.mem.read(id_at, &mut b)?;
        let got = i32::from_le_bytes(b);
        if got == t.id {
            break;
        }
        // The kernel hands IDs out in increasing order from a per-process
        // counter: a lower one is a filler to delete, a higher one means
        // the counter went past (or the kernel ignored the wanted ID).
        stub.call("timer_delete", libc::SYS_timer_delete, &[got as u64])?;
        fillers += 1;
        if by_id || got > t.id || fillers > MAX_FILLER_TIMERS {
            return Err(err(
                "timer_create",
                format!("the kernel gave ID {got} (after {fillers} filler timers)"),
            ));
        }
    }
    let (value, flags) = match arming(t, signal_pending) {
        Some(a) => a,
        None => return Ok(()), // disarmed, as created
    };
    let words = [
        t.interval_ns / 1_000_000_000,
        t.interval_ns % 1_000_000_000,
        value / 1_000_000_000,
        value % 1_000_000_000,
    ];
    let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let at = stub.put(SCRATCH_DATA + 128, &b)?;
    stub.call(
        "timer_settime",
        libc::SYS_timer_settime,
        &[t.id as u64, flags, at, 0],
    )
    .map_err(|e| err("timer_settime", e.to_string()))?;
    Ok(())
}

/// How timer `t` is armed again: (it_value in ns, timer_settime flags);
/// None: disarmed. A periodic timer whose signal was pending is not
/// re-armed by the kernel until that signal is delivered, and the kernel
/// keeps one signal pending per timer, counting further expiries as its
/// overrun: it fires at once (its own signal pending again, in place of
/// the saved one), its next expiry where it was (an absolute time one
/// period before it, which the delivery moves forward by periods).
fn arming(t: &PosixTimer, signal_pending: bool) -> Option<(u64, u64)> {
    const TIMER_ABSTIME: u64 = 1;
    if signal_pending && t.interval_ns != 0 {
        // Clocks the same here as in the dumped process (no time
        // namespace); a CPU-time clock starts again: at once.
        let at = now_on(t.clockid).map(|now| now + t.value_ns as i128 - t.interval_ns as i128);
        return Some(match at {
            Some(at) if at > 0 => (at as u64, TIMER_ABSTIME),
            _ => (1, 0),
        });
    }
    match t.value_ns {
        0 if t.interval_ns != 0 => Some((1, 0)),
        0 => None,
        v => Some((v, 0)),
    }
}

/// Now on a timer's clock, in ns, for the clocks that read the same in
/// crstream (not the CPU-time ones).
fn now_on(clockid: i32) -> Option<i128> {
    let same_here = [
        libc::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME,
        libc::CLOCK_REALTIME_ALARM,
        libc::CLOCK_BOOTTIME_ALARM,
        libc::CLOCK_TAI,
    ];
    if !same_here.contains(&clockid) {
        return None;
    }
    crate::sys::clock_now_ns(clockid).ok().map(i128::from)
}

/// The timer ID of a saved pending signal sent by a POSIX timer.
fn timer_of(siginfo: &[u8]) -> Option<i32> {
    const SI_TIMER: i32 = -2;
    // siginfo_t on x86_64: si_code at 8; for SI_TIMER the timer ID at 16.
    let word = |at| crate::kinds::signals::siginfo_word(siginfo, at);
    (word(8)? == SI_TIMER).then(|| word(16)).flatten()
}

/// Whether a saved pending signal is the one of a periodic POSIX timer,
/// which `restore` arms to fire at once (see `arming`): the timer raises
/// it again, so queueing the saved one too would deliver it twice.
pub(crate) fn raised_again(timers: &[PosixTimer], siginfo: &[u8]) -> bool {
    timer_of(siginfo).is_some_and(|id| timers.iter().any(|t| t.id == id && t.interval_ns != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_are_parsed() {
        let text = "ID: 2\nsignal: 14/0000000000000002\nnotify: signal/pid.23597\nClockID: -6\n\
                    ID: 1\nsignal: 12/0000000000000007\nnotify: none/pid.23597\nClockID: 0\n\
                    ID: 0\nsignal: 10/0000000000001234\nnotify: signal/tid.23598\nClockID: 1\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            Listed {
                id: 2,
                signal: 14,
                value: 2,
                notify: SIGEV_SIGNAL,
                target: 23597,
                clock: -6
            }
        );
        assert_eq!(t[1].notify, SIGEV_NONE);
        assert_eq!(t[2].notify, SIGEV_THREAD_ID);
        assert_eq!((t[2].target, t[2].value), (23598, 0x1234));
        assert!(parse_timers("signal: 1/0\n").is_err());
    }

    #[test]
    fn clocks() {
        let tids = [100, 101];
        for c in [0, 1, 7, 8, 9, 11] {
            assert!(check_clock(100, c, &tids).is_ok());
        }
        assert!(check_clock(100, -6, &tids).is_ok(), "process CPU clock");
        assert!(check_clock(100, -2, &tids).is_err(), "creator thread clock");
        assert!(check_clock(100, -2, &[100]).is_ok(), "single thread");
        let thread = |tid: i32| (!tid << 3) | 4 | 2;
        let process = |p: i32| (!p << 3) | 2;
        assert!(check_clock(100, thread(101), &tids).is_ok());
        assert!(check_clock(100, thread(555), &tids).is_err());
        assert!(check_clock(100, process(100), &tids).is_ok());
        assert!(check_clock(100, process(555), &tids).is_err());
        assert!(check_clock(100, 4, &tids).is_err(), "MONOTONIC_RAW");
    }

    #[test]
    fn a_periodic_timers_pending_signal_is_raised_again_not_queued() {
        let timer = |id, value_ns, interval_ns| crstream_proto::PosixTimer {
            id,
            value_ns,
            interval_ns,
            ..Default::default()
        };
        let timers = [timer(3, 0, 1_000_000), timer(4, 0, 0), timer(5, 500, 1_000)];
        let siginfo = |code: i32, id: i32| {
            let mut b = vec![0u8; 128];
            b[8..12].copy_from_slice(&code.to_le_bytes());
            b[16..20].copy_from_slice(&id.to_le_bytes());
            b
        };
        assert!(raised_again(&timers, &siginfo(-2, 3)), "periodic, fired");
        assert!(!raised_again(&timers, &siginfo(-2, 4)), "one-shot: queued");
        // The kernel reads a pending periodic timer as moved on a period.
        assert!(
            raised_again(&timers, &siginfo(-2, 5)),
            "periodic, read ahead"
        );
        assert!(!raised_again(&timers, &siginfo(0, 3)), "not SI_TIMER");
        assert!(!raised_again(&timers, &[0u8; 10]), "short siginfo");
    }
}
