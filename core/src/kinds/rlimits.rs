//! Resource limits (the `Rlimits` record): read from /proc/PID/limits
//! (prlimit on another process's limits, even to read them, needs its uid
//! or CAP_SYS_RESOURCE: a daemon that dropped root kept crstream's limits),
//! set with prlimit on the new process while it is still crstream's.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::sys::process::{get_rlimit, set_rlimit};
use crstream_proto::{Rlimit, Rlimits as Record};
use std::io;

/// RLIMIT_CPU (0) .. RLIMIT_RTTIME (15).
const RESOURCES: std::ops::Range<u32> = 0..16;

pub(crate) struct Rlimits;

impl Kind for Rlimits {
    fn name(&self) -> &'static str {
        "resource limits"
    }

    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let limits = read_limits(p.pid).map_err(|err| DumpError::Unsupported {
            pid: p.pid,
            what: "resource limits",
            reason: format!("reading /proc/{}/limits: {err}", p.pid),
        })?;
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

/// Every limit of `pid`, from /proc/PID/limits: a line per resource in
/// resource order after a header, soft and hard limits in the columns
/// "%-25s %-20s %-20s" puts them in ("unlimited": RLIM_INFINITY).
fn read_limits(pid: i32) -> io::Result<Vec<Rlimit>> {
    parse_limits(&std::fs::read_to_string(format!("/proc/{pid}/limits"))?)
}

fn parse_limits(text: &str) -> io::Result<Vec<Rlimit>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let value = |line: &str, cols: std::ops::Range<usize>| -> io::Result<u64> {
        let v = line.get(cols).unwrap_or_default().trim();
        match v {
            "unlimited" => Ok(u64::MAX),
            _ => v
                .parse()
                .map_err(|_| bad(format!("limit {v:?} in {line:?}"))),
        }
    };
    let lines: Vec<&str> = text.lines().skip(1).collect();
    RESOURCES
        .map(|resource| {
            let line = lines
                .get(resource as usize)
                .ok_or_else(|| bad(format!("no line for resource {resource}")))?;
            Ok(Rlimit {
                resource,
                cur: value(line, 26..46)?,
                max: value(line, 47..67)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own limits read both ways agree.
    #[test]
    fn limits_file_reads_as_prlimit_does() {
        let me = std::process::id() as i32;
        for l in read_limits(me).unwrap() {
            assert_eq!((l.cur, l.max), get_rlimit(me, l.resource).unwrap(), "{l:?}");
        }
        assert!(parse_limits("Limit\nMax cpu time  x").is_err());
    }
}
