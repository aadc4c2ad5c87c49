//! Interval timers (getitimer/setitimer, injected). POSIX timers
//! (timer_create) are not supported: dump refuses a process that has any.

use crate::error::{DumpError, RestoreError};
use crate::stub::{SCRATCH_DATA, Stub};
use crate::syscall::{Remote, RemoteMem};
use crstream_proto::ItimerValue;

fn to_us(sec: u64, usec: u64) -> u64 {
    sec * 1_000_000 + usec
}

/// (real, virtual, prof)
pub fn dump(
    pid: i32,
    leader: &Remote,
    mem: &RemoteMem,
    scratch: u64,
) -> Result<[ItimerValue; 3], DumpError> {
    let timers = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    if !timers.trim().is_empty() {
        return Err(DumpError::Unsupported {
            pid,
            what: "POSIX timers",
            reason: format!(
                "the process has timers (timer_create): {}",
                timers.lines().next().unwrap_or("")
            ),
        });
    }
    let mut out: [ItimerValue; 3] = Default::default();
    for (which, slot) in out.iter_mut().enumerate() {
        leader.call("getitimer", libc::SYS_getitimer, &[which as u64, scratch])?;
        let mut b = [0u8; 32];
        mem.read(scratch, &mut b)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        *slot = ItimerValue {
            interval_us: to_us(w(0), w(1)),
            value_us: to_us(w(2), w(3)),
        };
    }
    Ok(out)
}

pub fn restore(stub: &Stub, timers: [&Option<ItimerValue>; 3]) -> Result<(), RestoreError> {
    for (which, t) in timers.iter().enumerate() {
        let mut t = (**t).unwrap_or_default();
        // A periodic ITIMER_REAL is re-armed only when its SIGALRM is
        // dequeued; one that fired while the dump held every signal blocked
        // reads as "no time left". Setting that would disarm it for good:
        // let it fire at once instead (its SIGALRM was pending anyway).
        if which == libc::ITIMER_REAL as usize && t.value_us == 0 && t.interval_us != 0 {
            t.value_us = 1;
        }
        let words = [
            t.interval_us / 1_000_000,
            t.interval_us % 1_000_000,
            t.value_us / 1_000_000,
            t.value_us % 1_000_000,
        ];
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let a = stub.put(SCRATCH_DATA, &b)?;
        stub.call("setitimer", libc::SYS_setitimer, &[which as u64, a, 0])?;
    }
    Ok(())
}
