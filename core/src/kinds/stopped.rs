//! A process that was stopped (SIGSTOP or a job-control signal: a group
//! stop, `ProcessEntry.stop_signal`) comes back stopped, by the same
//! signal, and runs on at SIGCONT.
//!
//! Dump reads the stop from the interrupt stop of its threads (see
//! `freeze.rs`); a stopped process stays stopped when released.
//!
//! Restore puts the process in its group stop once its threads exist and
//! before its pending signals are queued again (a stopped process handles
//! none until it is continued), the way `group_stop.rs` describes; the
//! threads go back to it when restore detaches. The parent is notified of
//! the stop again (SIGCHLD, CLD_STOPPED), as it was when the process
//! stopped.

use crate::error::RestoreError;
use crate::group_stop::OtherSignals;
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::sys::ptrace;
use crstream_proto::SignalState;

pub(crate) struct Stopped;

impl Kind for Stopped {
    fn name(&self) -> &'static str {
        "stopped"
    }

    fn phase(&self) -> Phase {
        Phase::Threads
    }

    /// The tree entry carries it (see `freeze.rs`).
    fn dump(&mut self, _p: &mut DumpProcess<'_>) -> Result<(), crate::error::DumpError> {
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let sig = p.entry().stop_signal as i32;
        if sig == 0 {
            return Ok(());
        }
        let pid = p.pid();
        // The saved signal stops the process only with its default action
        // (an action saved as SIG_DFL, as one set back to it, is that).
        let handled = p.image.records.get::<SignalState>().is_some_and(|s| {
            s.actions
                .iter()
                .any(|a| a.signal as i32 == sig && a.handler != libc::SIG_DFL as u64)
        });
        let tids: Vec<i32> = (0..p.image.threads.len()).map(|i| p.host_tid(i)).collect();
        let err = |e: crate::error::TaskError| RestoreError::Thread {
            pid,
            tid: pid,
            reason: format!("stopping it again (signal {sig}): {e}"),
        };
        // The stub blocks every signal until its own mask is set, last:
        // the saved signal, blocked, would be queued back instead of
        // stopping it (and SIGSTOP would stop it in its place).
        let leader = tids[0];
        let mask = ptrace::get_sigmask(leader).map_err(err)?;
        ptrace::set_sigmask(leader, mask & !(1u64 << (sig - 1))).map_err(err)?;
        crate::group_stop::enter(pid, &tids, sig, handled, OtherSignals::Drop, false).map_err(err)
    }
}
