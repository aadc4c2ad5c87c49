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
        let limits: Vec<Rlimit> = RESOURCES
            .filter_map(|resource| {
                let (cur, max) = get_rlimit(p.pid, resource).ok()?;
                Some(Rlimit { resource, cur, max })
            })
            .collect();
        // The restored process starts with crstream's limits: a hard limit
        // can be raised above them only with CAP_SYS_RESOURCE.
        if !crate::proc::own_capability(crate::proc::CAP_SYS_RESOURCE) {
            let me = std::process::id() as i32;
            for l in &limits {
                if let Ok((_, mine)) = get_rlimit(me, l.resource)
                    && l.max > mine
                {
                    return Err(DumpError::Unsupported {
                        pid: p.pid,
                        what: "resource limit",
                        reason: format!(
                            "its hard limit {} of resource {} is above crstream's ({mine}), \
                             which restore cannot raise without CAP_SYS_RESOURCE",
                            l.max, l.resource
                        ),
                    });
                }
            }
        }
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
            set_rlimit(pid, l.resource, l.cur, l.max).map_err(|err| RestoreError::Io {
                pid,
                what: format!(
                    "setting resource limit {} to {}/{}",
                    l.resource, l.cur, l.max
                ),
                err,
            })?;
        }
        Ok(())
    }
}
