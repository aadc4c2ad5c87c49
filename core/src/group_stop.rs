//! Leaving and entering the group stop of a traced process (SIGSTOP or a
//! job-control signal), without letting it run any of its own code.
//!
//! A thread seized in a group stop re-traps at once if resumed (the stop
//! is sticky under PTRACE_SEIZE), so no syscall can be injected into it:
//! dump continues the process first, as CRIU does. The SIGCONT wakes every
//! thread into a ptrace trap (JOBCTL_TRAP_NOTIFY) before it takes any
//! signal; each thread is then walked through the signals it would take,
//! each time with PTRACE_INTERRUPT pending so that it traps again before
//! returning to its code: SIGCONT (ours) is suppressed, a signal it
//! handles is delivered (its handler frame is set up, to run once the
//! process continues, as it would have).
//!
//! To stop it again (dump with --leave-running, a failed dump, restore), a
//! SIGSTOP is sent and, at its delivery stop, replaced with the signal that
//! had stopped it (if that one stops it: a job-control signal the process
//! handles, or that the kernel drops in an orphaned process group, does
//! not: then SIGSTOP); every thread then traps in the group stop, and stays
//! there once detached. The parent is notified of both (SIGCHLD with
//! CLD_CONTINUED, then CLD_STOPPED).

use crate::error::TaskError;
use crate::sys::ptrace::{self, Stop};

/// Signals `tid` would take now: pending (its own or the process's) and
/// not blocked.
fn deliverable(tid: i32) -> u64 {
    crate::proc::status(tid).map_or(0, |s| (s.sig_pnd | s.shd_pnd) & !s.sig_blk)
}

/// Waits for the next stop of `tid`; an exit is an error.
fn next_stop(tid: i32, while_doing: &'static str) -> Result<(i32, Stop), TaskError> {
    let (status, stop) = ptrace::wait(tid)?;
    match stop {
        Stop::Gone => Err(TaskError::Gone { tid, status }),
        Stop::Syscall => Err(TaskError::UnexpectedStop {
            tid,
            status,
            while_doing,
        }),
        _ => Ok((status, stop)),
    }
}

/// Continues process `pid`, whose threads `tids` (leader first) are
/// seized and trapped in its group stop; each ends in a ptrace trap with
/// nothing left to take but signals it blocks.
pub(crate) fn leave(pid: i32, tids: &[i32]) -> Result<(), TaskError> {
    const DOING: &str = "continuing a stopped process under ptrace";
    crate::sys::process::kill(pid, libc::SIGCONT).map_err(|e| TaskError::Syscall {
        tid: pid,
        name: "kill(SIGCONT)",
        errno: e.raw_os_error().unwrap_or(0),
    })?;
    for &tid in tids {
        // The wake-up trap comes before any signal.
        ptrace::cont(tid, 0)?;
        next_stop(tid, DOING)?;
        while deliverable(tid) != 0 {
            ptrace::cont(tid, 0)?;
            match next_stop(tid, DOING)? {
                (_, Stop::Signal(sig)) => {
                    ptrace::interrupt(tid)?;
                    let deliver = if sig == libc::SIGCONT { 0 } else { sig };
                    ptrace::cont(tid, deliver)?;
                    loop {
                        match next_stop(tid, DOING)? {
                            (_, Stop::Event(ptrace::PTRACE_EVENT_STOP)) => break,
                            // A signal its handler frame raised at once
                            // (none does): deliver it too.
                            (_, Stop::Signal(s)) => ptrace::cont(tid, s)?,
                            (status, _) => {
                                return Err(TaskError::UnexpectedStop {
                                    tid,
                                    status,
                                    while_doing: DOING,
                                });
                            }
                        }
                    }
                }
                (_, Stop::Event(_)) => {}
                (status, _) => {
                    return Err(TaskError::UnexpectedStop {
                        tid,
                        status,
                        while_doing: DOING,
                    });
                }
            }
        }
    }
    Ok(())
}

/// What `enter` does with a signal the leader takes before the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OtherSignals {
    /// Deliver it (its handler frame is set up, to run once continued):
    /// a signal sent to a frozen process meanwhile.
    Deliver,
    /// Drop it: a signal restore's own work raised (the saved pending
    /// signals are queued afterwards).
    Drop,
}

/// Puts process `pid`, whose threads `tids` (leader first) are in ptrace
/// stops with the registers they are to resume with, in a group stop by
/// `sig` (SIGSTOP if the process handles `sig`: `handled`). `seized`: the
/// threads were attached with PTRACE_SEIZE (dump's); restore's stubs were
/// not, and report their group stop as a signal stop.
pub(crate) fn enter(
    pid: i32,
    tids: &[i32],
    sig: i32,
    handled: bool,
    others: OtherSignals,
    seized: bool,
) -> Result<(), TaskError> {
    const DOING: &str = "stopping a process again under ptrace";
    let send_sigstop = || {
        crate::sys::process::kill(pid, libc::SIGSTOP).map_err(|e| TaskError::Syscall {
            tid: pid,
            name: "kill(SIGSTOP)",
            errno: e.raw_os_error().unwrap_or(0),
        })
    };
    let group_stopped = |tid: i32, status: i32, stop: Stop| match stop {
        Stop::Event(ptrace::PTRACE_EVENT_STOP) => libc::WSTOPSIG(status) != libc::SIGTRAP,
        Stop::Signal(_) => !seized && ptrace::in_group_stop(tid),
        _ => false,
    };
    let Some((&leader, others_tids)) = tids.split_first() else {
        return Ok(());
    };
    send_sigstop()?;
    let mut wanted = if handled { libc::SIGSTOP } else { sig };
    let mut sent_wanted = false;
    ptrace::cont(leader, 0)?;
    // A seized leader gets each signal with an interrupt pending, so that
    // it traps before its code if the signal stops nothing. A stub runs
    // into the int3 of its trampoline instead, and gets SIGSTOP for the
    // SIGTRAP.
    loop {
        let (status, stop) = next_stop(leader, DOING)?;
        if group_stopped(leader, status, stop) {
            break;
        }
        match stop {
            Stop::Event(_) => {
                if sent_wanted {
                    // Dropped (a job-control signal in an orphaned process
                    // group): SIGSTOP, which nothing drops.
                    wanted = libc::SIGSTOP;
                    sent_wanted = false;
                    send_sigstop()?;
                }
                ptrace::cont(leader, 0)?;
            }
            Stop::Signal(libc::SIGSTOP) if !sent_wanted => {
                if seized {
                    ptrace::interrupt(leader)?;
                }
                ptrace::cont(leader, wanted)?;
                sent_wanted = true;
            }
            Stop::Signal(libc::SIGTRAP) if !seized && sent_wanted => {
                ptrace::cont(leader, libc::SIGSTOP)?;
            }
            Stop::Signal(s) => {
                if seized {
                    ptrace::interrupt(leader)?;
                }
                let deliver = if others == OtherSignals::Deliver {
                    s
                } else {
                    0
                };
                ptrace::cont(leader, deliver)?;
            }
            _ => {
                return Err(TaskError::UnexpectedStop {
                    tid: leader,
                    status,
                    while_doing: DOING,
                });
            }
        }
    }
    // The others join the group stop before taking any signal.
    for &tid in others_tids {
        ptrace::cont(tid, 0)?;
        loop {
            let (status, stop) = next_stop(tid, DOING)?;
            if group_stopped(tid, status, stop) {
                break;
            }
            match stop {
                Stop::Event(_) => ptrace::cont(tid, 0)?,
                _ => {
                    return Err(TaskError::UnexpectedStop {
                        tid,
                        status,
                        while_doing: DOING,
                    });
                }
            }
        }
    }
    Ok(())
}
