//! Session and process group of the process.
//!
//! Dump: the pgid and sid of /proc/PID/stat, recorded in the process tree
//! entry. Restore: the stub starts as a child of the restorer, in the
//! restorer's session and process group; it becomes a session leader again
//! (setsid) or a process-group leader again (setpgid(0, 0)) if it was one,
//! or joins its saved group when that group still exists in the restorer's
//! session. Otherwise it stays in the restorer's group, with a warning.

use crate::error::RestoreError;
use crate::stub::{self, Spawner, Stub, StubGuard};
use crstream_proto::ProcessEntry;

/// A stand-in for a session or process-group leader that had exited by
/// the dump (a daemon's session after the classic double fork, a pipeline
/// whose first process is gone): a process with the leader's PID that
/// makes itself the leader, so that the processes of the tree can be
/// created in (session) or join (group) its session or group. It exits
/// before the tree runs; the session or group lives on with its members.
pub struct Helper {
    pub pid: i32,
    guard: StubGuard,
    pub stub: Stub,
    /// The stub (index in the tree) whose child it is and which reaps it;
    /// None: crstream's own child.
    reaper: Option<usize>,
}

#[derive(Default)]
pub struct Helpers(Vec<Helper>);

impl Helper {
    /// Whose child it is (index in the tree; None: crstream's).
    pub fn parent(&self) -> Option<usize> {
        self.reaper
    }
}

impl Helpers {
    pub fn get(&self, pid: u32) -> Option<&Helper> {
        self.0.iter().find(|h| h.pid == pid as i32)
    }

    /// A helper leading a new session `sid`, forked from `parent` (index
    /// and stub), or created by crstream (`spawner`) when `parent` is None.
    pub fn new_session(
        &mut self,
        parent: Option<(usize, &Stub)>,
        sid: i32,
        others: &[(u64, u64)],
        spawner: &mut Spawner<'_>,
    ) -> Result<&Helper, RestoreError> {
        let (guard, stub) = match parent {
            Some((_, p)) => {
                let (g, s) = stub::fork(p, sid, libc::SIGCHLD as u32, &[], 0, &[])?;
                spawner.forked(&s);
                (g, s)
            }
            None => spawner.spawn(sid, &[], others)?,
        };
        stub.call("setsid", libc::SYS_setsid, &[])
            .map_err(|e| RestoreError::Session {
                pid: sid,
                reason: format!("a helper standing in for the gone session leader: setsid: {e}"),
            })?;
        tracing::debug!(sid, "helper process leads the session again");
        self.0.push(Helper {
            pid: sid,
            guard,
            stub,
            reaper: parent.map(|p| p.0),
        });
        Ok(self.0.last().expect("just pushed"))
    }

    /// A helper leading process group `pgid` again, forked from `member`
    /// (index and stub), a process of the tree in that group's session.
    pub fn new_group(
        &mut self,
        member: (usize, &Stub),
        pgid: i32,
        spawner: &mut Spawner<'_>,
    ) -> Result<(), RestoreError> {
        let (guard, stub) = stub::fork(member.1, pgid, libc::SIGCHLD as u32, &[], 0, &[])?;
        spawner.forked(&stub);
        stub.call("setpgid", libc::SYS_setpgid, &[0, 0])
            .map_err(|e| RestoreError::Session {
                pid: pgid,
                reason: format!("a helper standing in for the gone group leader: setpgid: {e}"),
            })?;
        tracing::debug!(pgid, "helper process leads the group again");
        self.0.push(Helper {
            pid: pgid,
            guard,
            stub,
            reaper: Some(member.0),
        });
        Ok(())
    }

    /// Ends every helper once the tree is in its sessions and groups; each
    /// is reaped by its parent, which is left no SIGCHLD of it.
    pub fn end(self, stubs: &[Stub]) -> Result<(), RestoreError> {
        for mut h in self.0.into_iter().rev() {
            stub::exit_as_zombie(&h.stub, 0, "crstream-helper")?;
            h.guard.armed = false;
            if let Some(i) = h.reaper {
                let r = &stubs[i];
                r.call(
                    "wait4",
                    libc::SYS_wait4,
                    &[h.pid as u64, 0, libc::__WALL as u64, 0],
                )?;
                crate::kinds::signals::discard_child_signal(r)?;
            }
        }
        Ok(())
    }
}

/// Whether restore needs a helper for the session of `e`, whose parent
/// (or, for the root, the restorer) is in session `parent_sid`: it is in
/// another session it does not lead, whose leader is neither in the tree
/// nor alive (`taken` says whether a PID is, where the tree is created).
pub fn needs_session_helper(
    e: &ProcessEntry,
    parent_sid: u32,
    in_tree: bool,
    taken: impl Fn(i32) -> bool,
) -> bool {
    // Session 0 is led from outside our PID namespace: no helper can stand in.
    e.sid != 0 && e.sid != e.pid && e.sid != parent_sid && !in_tree && !taken(e.sid as i32)
}

/// Process group and session of the stub, as it sees them (in a new PID
/// namespace, the restorer's read as 0).
fn group_and_session(stub: &Stub) -> Result<(i32, i32), RestoreError> {
    let sid = stub.call("getsid", libc::SYS_getsid, &[0])?;
    Ok((group_of(stub)?, sid as i32))
}

/// Process group of the stub, as it sees it.
fn group_of(stub: &Stub) -> Result<i32, RestoreError> {
    Ok(stub.call("getpgid", libc::SYS_getpgid, &[0])? as i32)
}

/// Whether PID `pid` is taken where the stub lives (its PID namespace).
fn exists_for(stub: &Stub, pid: i32) -> Result<bool, RestoreError> {
    let (r, _) = stub.leader.raw(libc::SYS_kill, &[pid as u64, 0])?;
    Ok(r != -(libc::ESRCH as i64))
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
    // Group 0 is led from outside our PID namespace: setpgid cannot name it.
    if pgid == 0 && sid != pid {
        return if ours.0 == 0 && sid == ours.1 {
            Plan::Stay
        } else {
            Plan::Foreign
        };
    }
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

/// Puts the stub in its saved session/group. Call it early, before anything
/// that depends on the session (a controlling terminal, job control).
/// `shell_job`: the job joins the restorer's session and process group.
pub fn restore(stub: &Stub, entry: &ProcessEntry, shell_job: bool) -> Result<(), RestoreError> {
    let pid = stub.vpid;
    let (pgid, sid) = (entry.pgid as i32, entry.sid as i32);
    // The stub is still in the restorer's group and session.
    let ours = group_and_session(stub)?;
    let err = |reason: String| RestoreError::Session { pid, reason };
    if shell_job && sid != pid {
        // A shell job joins the restorer's process group: the shell's job
        // control (foreground, Ctrl-Z, Ctrl-C) then covers it with crstream.
        tracing::debug!(pid, "shell job: stays in the restorer's group {}", ours.0);
        return Ok(());
    }
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
                if !exists_for(stub, g)? {
                    // `restore_groups` has a helper lead it again.
                    tracing::debug!(pid, "process group {g} is gone ({e})");
                    return Ok(());
                }
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
///
/// A group whose leader is gone (its PID free) gets a helper leader, forked
/// from its first member, while the others join; the root too, once it is
/// in its saved session.
pub fn restore_groups(
    stubs: &[Stub],
    entries: &[ProcessEntry],
    helpers: &mut Helpers,
    spawner: &mut Spawner<'_>,
) -> Result<(), RestoreError> {
    let (Some(root), Some(root_stub)) = (entries.first(), stubs.first()) else {
        return Ok(());
    };
    let in_tree = |g: u32| entries.iter().any(|x| x.pid == g);
    // Group 0: one whose leader lives outside our PID namespace (so does
    // the restorer's, then): never gone, never joined by number.
    let gone = |g: u32| -> Result<bool, RestoreError> {
        Ok(g != 0 && !in_tree(g) && !exists_for(root_stub, g as i32)?)
    };
    let (root_group, root_sid) = group_and_session(root_stub)?;
    if root.pgid != root.pid
        && root_group != root.pgid as i32
        && root_sid == root.sid as i32
        && gone(root.pgid)?
    {
        helpers.new_group((0, root_stub), root.pgid as i32, spawner)?;
        root_stub
            .call("setpgid", libc::SYS_setpgid, &[0, root.pgid as u64])
            .map_err(|err| RestoreError::Session {
                pid: root.pid as i32,
                reason: format!("joining process group {}: {err}", root.pgid),
            })?;
    }
    let root_group = group_of(root_stub)?;
    for leaders in [true, false] {
        for (e, stub) in entries.iter().zip(stubs).skip(1) {
            let pid = e.pid as i32;
            if e.sid == e.pid || (e.pgid == e.pid) != leaders {
                continue;
            }
            let target = if leaders {
                0
            } else if e.pgid == root.pgid {
                // Kept, taken over from the restorer, or (shell job) the
                // restorer's own.
                root_group
            } else if in_tree(e.pgid) || helpers.get(e.pgid).is_some() {
                e.pgid as i32
            } else if gone(e.pgid)? {
                let i = entries
                    .iter()
                    .position(|x| x.pid == e.pid)
                    .expect("in entries");
                helpers.new_group((i, stub), e.pgid as i32, spawner)?;
                e.pgid as i32
            } else {
                return Err(RestoreError::Session {
                    pid,
                    reason: format!(
                        "its process group {} has no leader in the tree, and PID {} is taken \
                         by another process: no helper can lead the group again",
                        e.pgid, e.pgid
                    ),
                });
            };
            if target == 0 && !leaders {
                // The group of the restorer, led from outside our PID
                // namespace: setpgid cannot name it, the fork kept it.
                if group_of(stub)? == 0 {
                    continue;
                }
                return Err(RestoreError::Session {
                    pid,
                    reason: "its process group is led from outside crstream's PID namespace: \
                             it cannot join it again"
                        .into(),
                });
            }
            if target != 0 && group_of(stub)? == target {
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
        // Group and session led from outside our PID namespace read as 0.
        assert_eq!(plan(7, 0, 0, (0, 0)), Plan::Stay);
        assert_eq!(plan(7, 0, 0, ours), Plan::Foreign);
        assert_eq!(plan(7, 0, 0, (50, 0)), Plan::Foreign);
    }

    #[test]
    fn no_helper_stands_in_for_a_session_outside_our_pid_namespace() {
        let e = |sid| ProcessEntry {
            pid: 7,
            pgid: 7,
            sid,
            ..Default::default()
        };
        assert!(!needs_session_helper(&e(0), 50, false, |_| false));
        assert!(needs_session_helper(&e(32767), 50, false, |_| false));
        assert!(!needs_session_helper(&e(32767), 50, false, |_| true));
        assert!(!needs_session_helper(&e(32767), 50, true, |_| false));
    }
}
