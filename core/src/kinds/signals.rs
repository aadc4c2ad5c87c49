//! Signals: the actions of every signal (read and set with injected
//! rt_sigaction) and the signals pending for the process (its
//! `SignalState` record) and for each thread (in `ThreadCore`), read with
//! PTRACE_PEEKSIGINFO and queued again from inside the restored process
//! once nothing else is injected. Two kinds, one per phase.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::kind::{DumpProcess, Injector, Kind, Phase, RestoreProcess};
use crate::records::Records;
use crate::stub::{SCRATCH_DATA, Stub};
use crate::sys::ptrace::SIGINFO_SIZE;
use crstream_proto::{PosixTimers, SigAction, SignalState};

/// Signal actions, and the signals pending for the whole process.
pub(crate) struct SignalActions;

impl Kind for SignalActions {
    fn name(&self) -> &'static str {
        "signal actions"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        // A live dump reads the actions in the snapshot, which a fork gave
        // the same ones, once the process runs again (see `read_actions`):
        // 62 injected calls, ~4 ms of the freeze.
        let actions = match p.snapshot_planned {
            true => Vec::new(),
            false => read_actions(p.injector())?,
        };
        let mut shared_pending = crate::sys::ptrace::peek_siginfo(p.pid, true)?;
        // The SIGCONT with which dump continued a stopped process (see
        // `group_stop::leave`) stays pending where the process blocks it.
        // It is ours, not the process's (a stop signal discards pending
        // SIGCONTs): queued again, it would continue the restored process.
        let ours = std::process::id() as i32;
        shared_pending.retain(|si| !is_kill(si, libc::SIGCONT, ours));
        p.records.push(SignalState {
            pid: p.pid as u32,
            actions,
            shared_pending,
        });
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let none = SignalState::default();
        restore_actions(p.stub, p.image.records.get().unwrap_or(&none))
    }
}

/// The action of every signal but SIGKILL and SIGSTOP that is not the
/// default with no flags, read with injected rt_sigaction calls.
pub(crate) fn read_actions(injector: &Injector) -> Result<Vec<SigAction>, TaskError> {
    let mut actions = Vec::new();
    for sig in settable() {
        let b = injector.call_reading::<32>(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig as u64, 0, injector.scratch, 8],
        )?;
        let a = decode(sig, &b);
        if a.handler != 0 || a.flags != 0 || a.mask != 0 {
            actions.push(a);
        }
    }
    Ok(actions)
}

/// Fills in the actions a live dump left out of the process's
/// `SignalState` (see `SignalActions::dump`).
pub(crate) fn fill_actions(records: &mut Records, injector: &Injector) -> Result<(), DumpError> {
    let actions = read_actions(injector)?;
    if let Some(state) = records.get_mut::<SignalState>() {
        state.actions = actions;
    }
    Ok(())
}

/// Signals pending at dump time, queued again.
pub(crate) struct PendingSignals;

impl Kind for PendingSignals {
    fn name(&self) -> &'static str {
        "pending signals"
    }

    fn phase(&self) -> Phase {
        Phase::Signals
    }

    fn dump(&mut self, _p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        // Read with the rest of each record: SignalActions (process-wide)
        // and Threads (per thread).
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let no_timers = PosixTimers::default();
        let timers = &p.image.records.get().unwrap_or(&no_timers).timers;
        let raised_again = |si: &[u8]| crate::kinds::posix_timers::raised_again(timers, si);
        for (i, t) in p.image.threads.iter().enumerate() {
            let mut pending = t.pending_signals.iter().filter(|si| !raised_again(si));
            let Some(first) = pending.next() else {
                continue;
            };
            // From that thread itself: the kernel lets a thread queue
            // siginfo of the kernel's or of kill()'s kind to itself only.
            let thread = match i {
                0 => None,
                _ => Some(
                    p.stub
                        .thread(p.host_tid(i))
                        .map_err(|e| RestoreError::Thread {
                            pid: p.stub.vpid,
                            tid: t.tid as i32,
                            reason: format!("reaching the thread: {e}"),
                        })?,
                ),
            };
            let by = thread.as_ref().unwrap_or(&p.stub.leader);
            for si in std::iter::once(first).chain(pending) {
                queue(p.stub, by, Some(t.tid as i32), si)?;
            }
        }
        if let Some(s) = p.image.records.get::<SignalState>() {
            for si in s.shared_pending.iter().filter(|si| !raised_again(si)) {
                queue(p.stub, &p.stub.leader, None, si)?;
            }
        }
        Ok(())
    }
}

/// Whether siginfo `si` is signal `sig` sent with kill() by process `pid`.
fn is_kill(si: &[u8], sig: i32, pid: i32) -> bool {
    // si_signo, si_code, then si_pid at 16 in the union (x86_64).
    let word = |at| siginfo_word(si, at);
    word(0) == Some(sig) && word(8) == Some(libc::SI_USER) && word(16) == Some(pid)
}

/// Signals whose action can be read and set (all but SIGKILL and SIGSTOP).
fn settable() -> impl Iterator<Item = u32> {
    (1..=64u32).filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
}

/// struct kernel_sigaction on x86_64: handler, flags, restorer, mask.
fn decode(sig: u32, b: &[u8; 32]) -> SigAction {
    let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    SigAction {
        signal: sig,
        handler: w(0),
        flags: w(1),
        restorer: w(2),
        mask: w(3),
    }
}

fn encode(a: &SigAction) -> Vec<u8> {
    [a.handler, a.flags, a.restorer, a.mask]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Sets every signal's action: the saved one, or SIG_DFL (the stub came
/// with crstream's handlers).
fn restore_actions(stub: &Stub, st: &SignalState) -> Result<(), RestoreError> {
    for sig in settable() {
        let a = st
            .actions
            .iter()
            .find(|a| a.signal == sig)
            .cloned()
            .unwrap_or(SigAction {
                signal: sig,
                ..Default::default()
            });
        let addr = stub.put(SCRATCH_DATA, &encode(&a))?;
        stub.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig as u64, addr, 0, 8],
        )
        .map_err(|e| RestoreError::Thread {
            pid: stub.pid,
            tid: stub.pid,
            reason: format!("signal {sig} action: {e}"),
        })?;
    }
    Ok(())
}

/// Takes back the SIGCHLD a restored zombie's exit just queued to its
/// parent (a SIGCHLD pending at dump time is queued again later).
pub(crate) fn discard_child_signal(parent: &Stub) -> Result<(), RestoreError> {
    let set = 1u64 << (libc::SIGCHLD - 1);
    let set_addr = parent.put(SCRATCH_DATA, &set.to_le_bytes())?;
    let zero = parent.put(SCRATCH_DATA + 16, &[0u8; 16])?;
    let (r, _) = parent
        .leader
        .raw(libc::SYS_rt_sigtimedwait, &[set_addr, 0, zero, 8])?;
    if r != libc::SIGCHLD as i64 && r != -(libc::EAGAIN as i64) {
        tracing::warn!(
            pid = parent.pid,
            r,
            "discarding SIGCHLD of a restored zombie"
        );
    }
    Ok(())
}

/// The signal number of a saved siginfo (si_signo, its first field); 0
/// for one too short to hold it.
pub(crate) fn signo(siginfo: &[u8]) -> i32 {
    siginfo_word(siginfo, 0).unwrap_or(0)
}

/// The 32-bit field at byte `at` of a saved siginfo (x86_64 layout), if
/// it is that long.
pub(crate) fn siginfo_word(siginfo: &[u8], at: usize) -> Option<i32> {
    siginfo
        .get(at..at + 4)
        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// Queues a saved pending signal again, through `by`: the thread it is
/// pending on, or the thread-group leader for one pending process-wide
/// (`tid` None): the kernel lets a task queue siginfo that claims to come
/// from the kernel, kill() or tkill() only to itself.
fn queue(
    stub: &Stub,
    by: &crate::inject::Remote,
    tid: Option<i32>,
    siginfo: &[u8],
) -> Result<(), RestoreError> {
    if siginfo.len() != SIGINFO_SIZE {
        return Err(RestoreError::Image(format!(
            "pending siginfo of {} bytes",
            siginfo.len()
        )));
    }
    let sig = signo(siginfo);
    if sig == libc::SIGKILL || sig == libc::SIGSTOP || !(1..=64).contains(&sig) {
        tracing::warn!(pid = stub.pid, sig, "not queueing pending signal");
        return Ok(());
    }
    let info = stub.put(SCRATCH_DATA + 1024, siginfo)?;
    let r = match tid {
        Some(t) => by.call(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            &[stub.vpid as u64, t as u64, sig as u64, info],
        ),
        None => by.call(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            &[stub.vpid as u64, sig as u64, info],
        ),
    };
    r.map_err(|e: TaskError| RestoreError::Thread {
        pid: stub.vpid,
        tid: tid.unwrap_or(stub.vpid),
        reason: format!("queueing pending signal {sig}: {e}"),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigaction_layout() {
        let a = SigAction {
            signal: 10,
            handler: 1,
            flags: 2,
            restorer: 3,
            mask: 4,
        };
        let b: [u8; 32] = encode(&a).try_into().unwrap();
        assert_eq!(decode(10, &b), a);
        assert_eq!(settable().count(), 62);
    }
}
