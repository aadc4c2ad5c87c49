//! Process attributes set with prctl(2) and personality(2): personality,
//! parent-death signal, child subreaper, memory-deny-write-execute; and
//! the core dump filter, the nice value of the session's autogroup, the
//! protection keys allocated (`pkeys.rs`) and whether later mappings are
//! locked (mlockall MCL_FUTURE) (the `PrctlValues` record).

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crstream_proto::PrctlValues as Record;

pub(crate) struct Prctl;

impl Kind for Prctl {
    fn name(&self) -> &'static str {
        "prctl values"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let scratch = p.injector().scratch;
        let int = |name, opt: i32| -> Result<u32, DumpError> {
            let b =
                p.injector()
                    .call_reading::<4>(name, libc::SYS_prctl, &[opt as u64, scratch])?;
            Ok(u32::from_le_bytes(b))
        };
        let pdeath_signal = int("prctl(PR_GET_PDEATHSIG)", libc::PR_GET_PDEATHSIG)?;
        let subreaper = int(
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::PR_GET_CHILD_SUBREAPER,
        )?;
        let personality = crate::proc::read_string(format!("/proc/{}/personality", p.pid))
            .ok()
            .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        // EINVAL: a kernel without it (none set, then).
        let mdwe = p
            .injector()
            .call(
                "prctl(PR_GET_MDWE)",
                libc::SYS_prctl,
                &[PR_GET_MDWE, 0, 0, 0, 0],
            )
            .map_or(0, |v| v.max(0) as u32);
        let coredump_filter = crate::proc::read_string(format!("/proc/{}/coredump_filter", p.pid))
            .ok()
            .and_then(|s| u32::from_str_radix(s.trim(), 16).ok());
        p.records.push(Record {
            personality,
            pdeath_signal,
            child_subreaper: subreaper != 0,
            coredump_filter,
            mdwe,
            autogroup_nice: autogroup(p.pid).map(|(_, nice)| nice).filter(|&n| n != 0),
            pkeys: crate::kinds::pkeys::allocated(p.injector(), p.keyed_areas)?,
            mlockall: locks_future_mappings(p)?,
        });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need::<Record>().map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let stub = p.stub;
        let r: &Record = p.image.need()?;
        stub.call(
            "personality",
            libc::SYS_personality,
            &[r.personality as u64],
        )?;
        // The root of a detached restore: its parent, crstream, exits as
        // the restore returns (its parent at the dump is not in the tree).
        let parent_gone = p.objects.detached
            && p.objects
                .stubs
                .first()
                .is_some_and(|root| root.pid == stub.pid);
        if parent_gone && r.pdeath_signal != 0 {
            tracing::warn!(
                pid = stub.vpid,
                signal = r.pdeath_signal,
                "the parent-death signal of the root is not set again: its parent, crstream, \
                 exits as the detached restore returns"
            );
        } else if r.pdeath_signal != 0 {
            stub.call(
                "prctl(PR_SET_PDEATHSIG)",
                libc::SYS_prctl,
                &[libc::PR_SET_PDEATHSIG as u64, r.pdeath_signal as u64],
            )?;
        }
        if r.child_subreaper {
            stub.call(
                "prctl(PR_SET_CHILD_SUBREAPER)",
                libc::SYS_prctl,
                &[libc::PR_SET_CHILD_SUBREAPER as u64, 1],
            )?;
        }
        if let Some(filter) = r.coredump_filter {
            std::fs::write(
                format!("/proc/{}/coredump_filter", stub.pid),
                format!("{filter:#x}"),
            )
            .map_err(|err| RestoreError::Io {
                pid: stub.vpid,
                what: format!("setting the core dump filter {filter:#x}"),
                err,
            })?;
        }
        if let Some(nice) = r.autogroup_nice {
            set_autogroup_nice(stub.pid, nice).map_err(|err| RestoreError::Io {
                pid: stub.vpid,
                what: format!("setting its autogroup's nice value {nice}"),
                err,
            })?;
        }
        // Once every area is mapped and protected as it was (it refuses
        // later W+X mappings, which restore makes none of after memory).
        if r.mdwe != 0 {
            stub.call(
                "prctl(PR_SET_MDWE)",
                libc::SYS_prctl,
                &[PR_SET_MDWE, r.mdwe as u64, 0, 0, 0],
            )?;
        }
        Ok(())
    }
}

/// The mlockall flags that lock the mappings process `p` makes from now on
/// (MCL_FUTURE, MCL_ONFAULT), which nothing shows: a page mapped in it for
/// the moment counts in its VmLck if they are set, and is filled at once
/// unless MCL_ONFAULT is. Asked only of a process with locked memory:
/// MCL_FUTURE locks every mapping made after it, so only a process that
/// has made none since (or unmapped them all) and has no other locked
/// memory is not seen.
fn locks_future_mappings(p: &DumpProcess<'_>) -> Result<u32, DumpError> {
    if p.status.vm_lck_kb.is_none_or(|kb| kb == 0) {
        return Ok(0);
    }
    let inject = p.injector();
    let page = crstream_streamer::PAGE_SIZE as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let args = [0, page, libc::PROT_READ as u64, flags, u64::MAX, 0];
    let at = match inject.call("mmap", libc::SYS_mmap, &args) {
        Ok(at) => at as u64,
        // At its locked-memory limit: only a mapping to be locked is refused.
        Err(crate::error::TaskError::Syscall { errno, .. }) if errno == libc::EAGAIN => {
            return Ok(libc::MCL_FUTURE as u32);
        }
        Err(e) => return Err(e.into()),
    };
    let locked = crate::proc::status(p.pid)
        .map(|s| s.vm_lck_kb > p.status.vm_lck_kb)
        .map_err(|err| DumpError::Proc { pid: p.pid, err });
    let filled = crate::sys::mem::page_present(p.pid, at);
    inject.call("munmap", libc::SYS_munmap, &[at, page])?;
    Ok(match (locked?, filled) {
        (false, _) => 0,
        (true, Ok(true)) => libc::MCL_FUTURE as u32,
        (true, _) => (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32,
    })
}

/// The autogroup of process `pid` (/proc/PID/autogroup: "/autogroup-N
/// nice K"): its name and nice value; None without autogroups.
fn autogroup(pid: i32) -> Option<(String, i32)> {
    let s = crate::proc::read_string(format!("/proc/{pid}/autogroup")).ok()?;
    let mut f = s.split_whitespace();
    let name = f.next()?.to_string();
    (f.next()? == "nice").then_some(())?;
    Some((name, f.next()?.parse().ok()?))
}

/// Sets the nice value of the autogroup of restored process `pid` (made
/// with its session), unless it is crstream's own (a session outside the
/// tree, such as a shell job's) or the default autogroup (of every session
/// never made by setsid, which shows nothing and whose value cannot be
/// set): those are left alone, with a warning.
fn set_autogroup_nice(pid: i32, nice: i32) -> std::io::Result<()> {
    let leave = |why: &str| {
        tracing::warn!(
            pid,
            nice,
            "its session is {why}, whose nice value is left as it is"
        );
        Ok(())
    };
    if std::fs::read_to_string(format!("/proc/{pid}/autogroup"))?.is_empty() {
        return leave("in the default autogroup");
    }
    let ours = autogroup(std::process::id() as i32).map(|(name, _)| name);
    match autogroup(pid) {
        Some((_, now)) if now == nice => Ok(()),
        Some((name, _)) if Some(&name) == ours.as_ref() => leave("crstream's"),
        _ => std::fs::write(format!("/proc/{pid}/autogroup"), nice.to_string()),
    }
}

/// mlockall(MCL_FUTURE) of the `PrctlValues` record, set last (the final
/// phase): restore's own mappings (an AIO ring, ...) must not be locked.
pub(crate) struct FutureLocks;

impl Kind for FutureLocks {
    fn name(&self) -> &'static str {
        "mlockall"
    }

    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, _p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        Ok(()) // read with the other prctl values
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let r: &Record = p.image.need()?;
        if r.mlockall != 0 {
            p.stub
                .call("mlockall", libc::SYS_mlockall, &[r.mlockall as u64])?;
        }
        Ok(())
    }
}

const PR_SET_MDWE: u64 = 65;
const PR_GET_MDWE: u64 = 66;

/// Whether the record has what records version 12 added, which a reader of
/// 11 would drop: memory-deny-write-execute, a core dump filter of its own.
pub(crate) fn needs_records_12(r: &Record) -> bool {
    r.mdwe != 0
        || r.coredump_filter
            .is_some_and(|f| f != DEFAULT_COREDUMP_FILTER)
}

/// The kernel's default core dump filter (anonymous and ELF headers, private
/// and shared).
const DEFAULT_COREDUMP_FILTER: u32 = 0x33;
