//! Credentials: saved from /proc/PID/status; restore checks that they match
//! the restorer's own (setting them is not supported yet).

use crate::error::RestoreError;
use crate::proc::Status;
use crstream_proto::Credentials;

pub fn from_status(s: &Status, securebits: u32) -> Credentials {
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
pub fn check(pid: i32, saved: &Credentials) -> Result<(), RestoreError> {
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
