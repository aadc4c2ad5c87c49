//! Resource limits (the `Rlimits` record), read and set from crstream with
//! prlimit.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::sys::process::{get_rlimit, set_rlimit};
use crstream_proto::{Rlimit, Rlimits as Record};

/// RLIMIT_CPU (0) .. RLIMIT_RTTIME (15).
const RESOURCES: std::ops::Range<u32> = 0..16;

pub(crate) struct Rlimits;

impl Kind for Rlimits {
    fn name(&self) -> &'static str {
        "resource limits"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let limits = RESOURCES
            .filter_map(|resource| {
                let (cur, max) = get_rlimit(p.pid, resource).ok()?;
                Some(Rlimit { resource, cur, max })
            })
            .collect();
        p.records.push(Record { limits });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need::<Record>().map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let r: &Record = p.image.need()?;
        for l in &r.limits {
            if let Err(e) = set_rlimit(pid, l.resource, l.cur, l.max) {
                tracing::warn!(pid, resource = l.resource, "setting rlimit: {e}");
            }
        }
        Ok(())
    }
}
