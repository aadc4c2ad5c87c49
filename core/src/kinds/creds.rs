//! Credentials (the `Credentials` record): saved from /proc/PID/status and
//! an injected prctl(PR_GET_SECUREBITS); restore checks that they match
//! the restorer's own (setting them is not supported yet) and sets
//! no_new_privs.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::proc::Status;
use crate::records::ProcessImage;
use crstream_proto::Credentials;

pub(crate) struct Creds;

impl Kind for Creds {
    fn name(&self) -> &'static str {
        "credentials"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let securebits = p.injector().call(
            "prctl(PR_GET_SECUREBITS)",
            libc::SYS_prctl,
            &[libc::PR_GET_SECUREBITS as u64],
        )? as u32;
        p.records.push(from_status(p.status, securebits));
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        check(p.pid, p.need()?)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let c: &Credentials = p.image.need()?;
        if c.no_new_privs {
            p.stub.call(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            )?;
        }
        Ok(())
    }
}

fn from_status(s: &Status, securebits: u32) -> Credentials {
    Credentials {
        uid: s.uids[0],
        euid: s.uids[1],
        suid: s.uids[2],
        fsuid: s.uids[3],
        gid: s.gids[0],
        egid: s.gids[1],
        sgid: s.gids[2],
        fsgid: s.gids[3],
        groups: s.groups.clone(),
        cap_inheritable: s.cap_inh,
        cap_permitted: s.cap_prm,
        cap_effective: s.cap_eff,
        cap_bounding: s.cap_bnd,
        cap_ambient: s.cap_amb,
        securebits,
        no_new_privs: s.no_new_privs,
    }
}

/// Fails unless the saved credentials equal the restorer's (the stub
/// inherits the restorer's). no_new_privs is set separately.
fn check(pid: i32, saved: &Credentials) -> Result<(), RestoreError> {
    let me =
        crate::proc::status(std::process::id() as i32).map_err(|e| RestoreError::Credentials {
            pid,
            reason: e.to_string(),
        })?;
    let mine = from_status(&me, saved.securebits);
    let mut diffs = Vec::new();
    if (saved.uid, saved.euid, saved.suid, saved.fsuid)
        != (mine.uid, mine.euid, mine.suid, mine.fsuid)
    {
        diffs.push(format!(
            "uids {:?} vs {:?}",
            [saved.uid, saved.euid, saved.suid, saved.fsuid],
            me.uids
        ));
    }
    if (saved.gid, saved.egid, saved.sgid, saved.fsgid)
        != (mine.gid, mine.egid, mine.sgid, mine.fsgid)
    {
        diffs.push(format!(
            "gids {:?} vs {:?}",
            [saved.gid, saved.egid, saved.sgid, saved.fsgid],
            me.gids
        ));
    }
    let (mut a, mut b) = (saved.groups.clone(), mine.groups.clone());
    a.sort_unstable();
    b.sort_unstable();
    if a != b {
        diffs.push(format!("groups {a:?} vs {b:?}"));
    }
    if (
        saved.cap_permitted,
        saved.cap_effective,
        saved.cap_inheritable,
        saved.cap_bounding,
        saved.cap_ambient,
    ) != (
        mine.cap_permitted,
        mine.cap_effective,
        mine.cap_inheritable,
        mine.cap_bounding,
        mine.cap_ambient,
    ) {
        diffs.push(format!(
            "capabilities prm/eff/inh/bnd/amb {:x}/{:x}/{:x}/{:x}/{:x} vs {:x}/{:x}/{:x}/{:x}/{:x}",
            saved.cap_permitted,
            saved.cap_effective,
            saved.cap_inheritable,
            saved.cap_bounding,
            saved.cap_ambient,
            mine.cap_permitted,
            mine.cap_effective,
            mine.cap_inheritable,
            mine.cap_bounding,
            mine.cap_ambient
        ));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(RestoreError::Credentials {
            pid,
            reason: diffs.join("; "),
        })
    }
}
