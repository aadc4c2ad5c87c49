//! mm_struct fields (code/data/brk/stack/args/env bounds, auxv, exe file)
//! restored with prctl(PR_SET_MM, PR_SET_MM_MAP), which needs only
//! CAP_CHECKPOINT_RESTORE (the per-field variants need CAP_SYS_RESOURCE).

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::{SCRATCH_DATA, Stub};
use crstream_proto::MmFields;

const PR_SET_MM: u64 = libc::PR_SET_MM as u64;
const PR_SET_MM_MAP: u64 = libc::PR_SET_MM_MAP as u64;
const PR_GET_DUMPABLE: u64 = libc::PR_GET_DUMPABLE as u64;
const PR_SET_DUMPABLE: u64 = libc::PR_SET_DUMPABLE as u64;
const PR_GET_THP_DISABLE: u64 = libc::PR_GET_THP_DISABLE as u64;
const PR_SET_THP_DISABLE: u64 = libc::PR_SET_THP_DISABLE as u64;

pub(crate) struct Mm;

impl Kind for Mm {
    fn name(&self) -> &'static str {
        "mm fields"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let fields = dump(p)?;
        p.records.push(fields);
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need::<MmFields>().map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        restore(p.stub, p.image.need()?, p.objects.unlinked)
    }
}

fn dump(p: &mut DumpProcess<'_>) -> Result<MmFields, DumpError> {
    let (pid, stat, leader) = (p.pid, p.stat, &p.injector().leader);
    let proc_err = |err| DumpError::Proc { pid, err };
    let auxv = crate::proc::read_bytes(format!("/proc/{pid}/auxv")).map_err(proc_err)?;
    let exe_path = crate::proc::read_link(format!("/proc/{pid}/exe")).map_err(proc_err)?;
    // A deleted executable, or a memfd run with execveat: the same file
    // as its mappings, saved once with them.
    let exe_unlinked = if crate::paths::is_deleted(&exe_path) {
        p.objects
            .unlinked
            .note(pid, &format!("/proc/{pid}/exe"), &exe_path)
            .map_err(|reason| DumpError::Unsupported {
                pid,
                what: "executable",
                reason: format!("{}: {reason}", crate::paths::show(&exe_path)),
            })?
    } else {
        0
    };
    // The current brk is not in /proc; brk(0) returns it.
    let brk = leader.call("brk", libc::SYS_brk, &[0])? as u64;
    let dumpable = leader.call(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        &[PR_GET_DUMPABLE],
    )? as u32;
    let thp = leader.call(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        &[PR_GET_THP_DISABLE],
    )? as u64;
    Ok(MmFields {
        start_code: stat.field(26),
        end_code: stat.field(27),
        start_stack: stat.field(28),
        start_data: stat.field(45),
        end_data: stat.field(46),
        start_brk: stat.field(47),
        brk,
        arg_start: stat.field(48),
        arg_end: stat.field(49),
        env_start: stat.field(50),
        env_end: stat.field(51),
        auxv,
        exe_path,
        dumpable,
        thp_disabled: thp,
        exe_unlinked,
    })
}

/// struct prctl_mm_map (linux/prctl.h), 104 bytes.
fn prctl_mm_map(m: &MmFields, auxv_addr: u64, exe_fd: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(104);
    for v in [
        m.start_code,
        m.end_code,
        m.start_data,
        m.end_data,
        m.start_brk,
        m.brk,
        m.start_stack,
        m.arg_start,
        m.arg_end,
        m.env_start,
        m.env_end,
        auxv_addr,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(m.auxv.len() as u32).to_le_bytes());
    b.extend_from_slice(&exe_fd.to_le_bytes());
    b
}

fn restore(
    stub: &Stub,
    m: &MmFields,
    unlinked: &crate::unlinked::Recreator,
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let exe_path = if m.exe_unlinked != 0 {
        unlinked
            .proc_path(m.exe_unlinked, &crate::unlinked::FILE_KINDS)?
            .into_bytes()
    } else {
        m.exe_path.clone()
    };
    let exe = stub
        .open(&exe_path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| RestoreError::File {
            pid,
            fd: u32::MAX,
            path: crate::paths::show(&m.exe_path).into_owned(),
            reason: format!("opening the executable: {e}"),
        })?;
    let auxv = stub.put(SCRATCH_DATA + 2048, &m.auxv)?;
    let map = stub.put(SCRATCH_DATA, &prctl_mm_map(m, auxv, exe as u32))?;
    let r = stub.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, map, 104, 0],
    );
    stub.call("close", libc::SYS_close, &[exe as u64])?;
    r?;
    if m.dumpable <= 1 {
        stub.call(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            &[PR_SET_DUMPABLE, m.dumpable as u64],
        )?;
    }
    if m.thp_disabled != 0 {
        stub.call(
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            &[PR_SET_THP_DISABLE, 1, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_map_layout() {
        let m = MmFields {
            start_code: 1,
            env_end: 11,
            auxv: vec![0; 48],
            ..Default::default()
        };
        let b = prctl_mm_map(&m, 0x5000, 7);
        assert_eq!(b.len(), 104);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(b[80..88].try_into().unwrap()), 11);
        assert_eq!(u64::from_le_bytes(b[88..96].try_into().unwrap()), 0x5000);
        assert_eq!(u32::from_le_bytes(b[96..100].try_into().unwrap()), 48);
        assert_eq!(u32::from_le_bytes(b[100..104].try_into().unwrap()), 7);
    }
}
