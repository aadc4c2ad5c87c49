//! Session and process group of the process.
//!
//! Dump: the pgid and sid of /proc/PID/stat, recorded in the process tree
//! entry. Restore: the stub starts as a child of the restorer, in the
//! restorer's session and process group; it becomes a session leader again
//! (setsid) or a process-group leader again (setpgid(0, 0)) if it was one,
//! or joins its saved group when that group still exists in the restorer's
//! session. Otherwise it stays in the restorer's group, with a warning.

use crate::error::RestoreError;
use crate::proc::Stat;
use crate::stub::Stub;
use crstream_proto::ProcessEntry;

/// (pgid, sid) of a process from its /proc/PID/stat.
pub fn dump(stat: &Stat) -> (u32, u32) {
    (stat.field(5) as u32, stat.field(6) as u32)
}

/// What restore does about the session and group of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// It led its session: setsid().
    NewSession,
    /// It led its process group: setpgid(0, 0).
    NewGroup,
    /// It is in the restorer's group already.
    Stay,
    /// Join the saved group, which should exist in the restorer's session.
    Join(i32),
    /// Its session is not the restorer's: it stays in the restorer's group.
    Foreign,
}

/// Decides from the saved ids and the restorer's own (pgid, sid).
pub fn plan(pid: i32, pgid: i32, sid: i32, ours: (i32, i32)) -> Plan {
    if sid == pid {
        Plan::NewSession
    } else if pgid == pid {
        Plan::NewGroup
    } else if (pgid, sid) == ours {
        Plan::Stay
    } else if sid == ours.1 {
        Plan::Join(pgid)
    } else {
        Plan::Foreign
    }
}

fn ours() -> (i32, i32) {
    // SAFETY: getpgrp and getsid(0) have no preconditions.
    unsafe { (libc::getpgrp(), libc::getsid(0)) }
}

/// Puts the stub in its saved session/group. Call it early, before anything
/// that depends on the session (a controlling terminal, job control).
/// `shell_job`: moving to the restorer's session is expected, not warned.
pub fn restore(stub: &Stub, entry: &ProcessEntry, shell_job: bool) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let (pgid, sid) = (entry.pgid as i32, entry.sid as i32);
    let ours = ours();
    let err = |reason: String| RestoreError::Session { pid, reason };
    match plan(pid, pgid, sid, ours) {
        Plan::NewSession => {
            // The stub is not a group leader (it is in the restorer's group),
            // so setsid fails only if a process group with ID PID is left.
            stub.call("setsid", libc::SYS_setsid, &[]).map_err(|e| {
                err(format!(
                    "it was a session leader, cannot make it one again ({e}): \
                     is process group {pid} still in use?"
                ))
            })?;
            tracing::debug!(pid, "restored as a session leader");
        }
        Plan::NewGroup => {
            stub.call("setpgid", libc::SYS_setpgid, &[0, 0])
                .map_err(|e| {
                    err(format!(
                        "it was a process-group leader, cannot make it one again ({e})"
                    ))
                })?;
            if sid != ours.1 && !shell_job {
                tracing::warn!(
                    pid,
                    "it led process group {pgid} in session {sid}; restored as the leader of \
                     group {pid} in the restorer's session {}",
                    ours.1
                );
            }
        }
        Plan::Stay => {}
        Plan::Join(g) => {
            if let Err(e) = stub.call("setpgid", libc::SYS_setpgid, &[0, g as u64]) {
                tracing::warn!(
                    pid,
                    "process group {g} (session {sid}) is gone or not joinable ({e}); \
                     the process stays in the restorer's group {}",
                    ours.0
                );
            }
        }
        Plan::Foreign => {
            tracing::warn!(
                pid,
                "it was in process group {pgid} of session {sid}, which is not the restorer's \
                 session {}: it stays in the restorer's group {}",
                ours.1,
                ours.0
            );
        }
    }
    Ok(())
}

/// Puts every process of the tree but the root (see [`restore`]) in its
/// saved process group: group leaders first, then the members. Each stub
/// was forked from its parent's, so it is already in the right session.
/// A group is joinable when its leader is in the tree, or when it is the
/// root's group (which the root took over from the restorer, or kept).
pub fn restore_groups(stubs: &[Stub], entries: &[ProcessEntry]) -> Result<(), RestoreError> {
    let (Some(root), Some(root_stub)) = (entries.first(), stubs.first()) else {
        return Ok(());
    };
    // SAFETY: getpgid has no preconditions.
    let root_group = unsafe { libc::getpgid(root_stub.pid) };
    for leaders in [true, false] {
        for (e, stub) in entries.iter().zip(stubs).skip(1) {
            let pid = e.pid as i32;
            if e.sid == e.pid || (e.pgid == e.pid) != leaders {
                continue;
            }
            let target = if leaders {
                0
            } else if entries.iter().any(|x| x.pid == e.pgid) {
                e.pgid as i32
            } else if e.pgid == root.pgid {
                root_group
            } else {
                return Err(RestoreError::Session {
                    pid,
                    reason: format!(
                        "its process group {} has no leader in the tree: not supported",
                        e.pgid
                    ),
                });
            };
            // SAFETY: getpgid has no preconditions.
            if target != 0 && unsafe { libc::getpgid(pid) } == target {
                continue;
            }
            stub.call("setpgid", libc::SYS_setpgid, &[0, target as u64])
                .map_err(|err| RestoreError::Session {
                    pid,
                    reason: format!("joining process group {}: {err}", e.pgid),
                })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let ours = (100, 50);
        assert_eq!(plan(7, 7, 7, ours), Plan::NewSession);
        assert_eq!(plan(7, 7, 50, ours), Plan::NewGroup);
        assert_eq!(plan(7, 7, 3, ours), Plan::NewGroup);
        assert_eq!(plan(7, 100, 50, ours), Plan::Stay);
        assert_eq!(plan(7, 9, 50, ours), Plan::Join(9));
        assert_eq!(plan(7, 9, 3, ours), Plan::Foreign);
        assert_eq!(plan(7, 100, 3, ours), Plan::Foreign);
    }
}
