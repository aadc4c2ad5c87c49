//! membarrier(2) registrations of a process (the `Membarrier` record):
//! what it registered for (private or global expedited barriers, sync-core,
//! rseq), read with an injected MEMBARRIER_CMD_GET_REGISTRATIONS and
//! registered again from inside the restored process. A process that uses
//! expedited barriers without its registration gets EPERM.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crstream_proto::Membarrier;

/// Records version since which every process has the record.
const SINCE: u32 = 3;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The MEMBARRIER_CMD_REGISTER_* commands, in the order they are made.
const REGISTER: [u64; 4] = [
    1 << 2, // GLOBAL_EXPEDITED
    1 << 4, // PRIVATE_EXPEDITED
    1 << 6, // PRIVATE_EXPEDITED_SYNC_CORE
    1 << 8, // PRIVATE_EXPEDITED_RSEQ
];

pub(crate) struct MembarrierKind;

impl Kind for MembarrierKind {
    fn name(&self) -> &'static str {
        "membarrier"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let (ret, _) = p.injector().leader.raw(
            libc::SYS_membarrier,
            &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0],
        )?;
        // A kernel without the command (before 6.3) or without membarrier:
        // nothing registered that could be known.
        let registrations = if ret < 0 { 0 } else { ret as u32 };
        if ret < 0 {
            tracing::debug!(pid = p.pid, ret, "membarrier registrations unknown");
        }
        p.records.push(Membarrier { registrations });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need_since::<Membarrier>(SINCE).map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let Some(m) = p.image.need_since::<Membarrier>(SINCE)? else {
            return Ok(());
        };
        for cmd in REGISTER
            .into_iter()
            .filter(|c| m.registrations as u64 & c != 0)
        {
            p.stub
                .call("membarrier(REGISTER)", libc::SYS_membarrier, &[cmd, 0, 0])
                .map_err(|e| RestoreError::Unsupported {
                    pid: p.pid(),
                    what: "membarrier registration",
                    reason: format!("command {cmd:#x}: {e}"),
                })?;
        }
        Ok(())
    }
}
