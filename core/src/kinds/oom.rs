//! The OOM killer's adjustment of a process (the `OomScoreAdj` record):
//! /proc/PID/oom_score_adj, read and written from crstream. Lowering it
//! below what the restored process inherits from crstream takes
//! CAP_SYS_RESOURCE: without it, dump refuses such a process.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crstream_proto::OomScoreAdj;

/// Records version since which every process has the record.
const SINCE: u32 = 3;

pub(crate) struct Oom;

fn read(pid: i32) -> std::io::Result<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}")))
}

impl Kind for Oom {
    fn name(&self) -> &'static str {
        "oom_score_adj"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let value = read(pid).map_err(|e| DumpError::Unsupported {
            pid,
            what: "oom_score_adj",
            reason: e.to_string(),
        })?;
        let mine = read(std::process::id() as i32).unwrap_or(0);
        if value < mine && !crate::proc::own_capability(crate::proc::CAP_SYS_RESOURCE) {
            return Err(DumpError::Unsupported {
                pid,
                what: "oom_score_adj",
                reason: format!(
                    "it is {value}, lower than crstream's {mine}, which restore cannot set \
                     without CAP_SYS_RESOURCE"
                ),
            });
        }
        p.records.push(OomScoreAdj { value });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need_since::<OomScoreAdj>(SINCE).map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let Some(r) = p.image.need_since::<OomScoreAdj>(SINCE)? else {
            return Ok(());
        };
        if read(pid).ok() != Some(r.value) {
            std::fs::write(format!("/proc/{pid}/oom_score_adj"), r.value.to_string()).map_err(
                |err| RestoreError::Io {
                    pid,
                    what: format!("setting oom_score_adj to {}", r.value),
                    err,
                },
            )?;
        }
        Ok(())
    }
}
