//! The audit login UID of a process (the `LoginUid` record). Only the
//! process itself may write /proc/self/loginuid, so restore writes it
//! from inside the stub, when it differs from the one the stub inherited
//! from crstream (which takes CAP_AUDIT_CONTROL).

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::stub::SCRATCH_DATA;
use crstream_proto::LoginUid;

pub(crate) struct LoginUidKind;

fn read(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/loginuid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Kind for LoginUidKind {
    fn name(&self) -> &'static str {
        "login uid"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        // A kernel without audit has no loginuid: nothing to keep.
        let Some(uid) = read(p.pid) else {
            return Ok(());
        };
        if read(std::process::id() as i32) != Some(uid)
            && !crate::proc::own_capability(crate::proc::CAP_AUDIT_CONTROL)
        {
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: "login uid",
                reason: format!(
                    "it is {uid}, not crstream's, and restore cannot set it without \
                     CAP_AUDIT_CONTROL"
                ),
            });
        }
        p.records.push(LoginUid { uid });
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let Some(r) = p.image.records.get::<LoginUid>() else {
            return Ok(());
        };
        if read(pid) == Some(r.uid) {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| RestoreError::Unsupported {
            pid,
            what: "login uid",
            reason: format!("writing {} to /proc/self/loginuid: {e}", r.uid),
        };
        let stub = p.stub;
        let fd = stub
            .open(b"/proc/self/loginuid", libc::O_WRONLY | libc::O_CLOEXEC, 0)
            .map_err(|e| err(&e))?;
        let text = r.uid.to_string();
        let a = stub
            .put(SCRATCH_DATA, text.as_bytes())
            .map_err(|e| err(&e))?;
        let written = stub.call("write", libc::SYS_write, &[fd as u64, a, text.len() as u64]);
        stub.call("close", libc::SYS_close, &[fd as u64])
            .map_err(|e| err(&e))?;
        written.map_err(|e| err(&e))?;
        Ok(())
    }
}
