//! The processes of the tree, created before any state but memory is
//! restored: the root as crstream's child, every other process forked from
//! its parent's stub once the parent has its memory (so inheritance, pages
//! shared copy-on-write included, is recreated by the kernel as it first
//! happened), each with its saved PID, in its session and process group. Helpers
//! stand in for session and group leaders that are gone, and end before
//! the tree runs. Zombies exit right away with their saved status.

use crate::error::RestoreError;
use crate::session::{self, Helpers};
use crate::stub::{self, Spawner, Stub, StubGuard};
use crstream_proto::{ProcessEntry, ProcessState, VmArea};
use std::collections::HashMap;

/// The tree of an image, checked: parents before children.
pub(crate) struct Plan<'a> {
    pub entries: &'a [ProcessEntry],
    /// Index of each process's parent in `entries` (root: none).
    pub parent_of: Vec<usize>,
    index: HashMap<u32, usize>,
}

impl<'a> Plan<'a> {
    pub(crate) fn new(entries: &'a [ProcessEntry]) -> Result<Self, RestoreError> {
        let root = entries.first().ok_or(RestoreError::MissingRecord {
            what: "ProcessEntry",
            owner: "the process tree".into(),
        })?;
        if root.state() != ProcessState::Alive {
            return Err(RestoreError::Image("the root process is not alive".into()));
        }
        // Parents come before their children: each is forked from its parent.
        let mut index: HashMap<u32, usize> = HashMap::new();
        let mut parent_of = vec![usize::MAX; entries.len()];
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                match index.get(&e.ppid) {
                    Some(&p) if entries[p].state() == ProcessState::Alive => parent_of[i] = p,
                    _ => {
                        return Err(RestoreError::Image(format!(
                            "process {}: its parent {} is not a live process listed before it",
                            e.pid, e.ppid
                        )));
                    }
                }
            }
            if index.insert(e.pid, i).is_some() {
                return Err(RestoreError::Image(format!(
                    "process {} listed twice",
                    e.pid
                )));
            }
            match e.state() {
                ProcessState::Alive | ProcessState::Zombie => {}
                other => {
                    return Err(RestoreError::Image(format!(
                        "process {} in state {other:?}",
                        e.pid
                    )));
                }
            }
        }
        Ok(Self {
            entries,
            parent_of,
            index,
        })
    }

    fn in_tree(&self, pid: u32) -> bool {
        self.index.contains_key(&pid)
    }

    /// Where process `pid` is in `entries`.
    pub(crate) fn index_of(&self, pid: u32) -> Option<usize> {
        self.index.get(&pid).copied()
    }
}

/// What restore does with a process as soon as it exists, before its
/// children are forked from it (they inherit its memory): `(index, stubs so
/// far, its guard, the areas it kept from its fork)`.
pub(crate) type Created<'a> =
    dyn FnMut(usize, &[Stub], &mut StubGuard, &[(u64, u64)]) -> Result<(), RestoreError> + 'a;

/// Creates every process of the tree as a stub, stopped under ptrace, and
/// hands each to `created` once it exists. `areas[i]`: the memory areas of
/// process `i` (empty for a zombie). `shell_job`: the root joins crstream's
/// session and process group. `spawner`: where (which PID namespace).
pub(crate) fn build(
    plan: &Plan<'_>,
    areas: &[&[VmArea]],
    shell_job: bool,
    spawner: &mut Spawner<'_>,
    created: &mut Created<'_>,
) -> Result<(Vec<StubGuard>, Vec<Stub>), RestoreError> {
    let entries = plan.entries;
    let root = &entries[0];
    let all_areas: Vec<(u64, u64)> = areas
        .iter()
        .flat_map(|a| a.iter().map(|a| (a.start, a.end)))
        .collect();
    let mut guards: Vec<StubGuard> = Vec::new();
    let mut stubs: Vec<Stub> = Vec::new();
    let mut helpers = Helpers::default();
    // Seen from a new PID namespace, crstream's session is led from outside.
    let our_sid = match spawner.ns {
        Some(_) => 0,
        None => crate::sys::process::getsid(0) as u32,
    };
    // A shell job joins the restorer's session, whatever it was in.
    if !shell_job
        && session::needs_session_helper(root, our_sid, plan.in_tree(root.sid), |p| {
            spawner.taken(p)
        })
    {
        // Created inside a helper's session, as crstream's child.
        let h = helpers.new_session(None, root.sid as i32, &all_areas, spawner)?;
        let (g, s) = stub::fork(
            &h.stub,
            root.pid as i32,
            0,
            areas[0],
            libc::CLONE_PARENT as u64,
            &[],
        )?;
        spawner.forked(&s);
        guards.push(g);
        if root.pgid == root.pid {
            s.call("setpgid", libc::SYS_setpgid, &[0, 0])
                .map_err(|err| RestoreError::Session {
                    pid: root.pid as i32,
                    reason: format!("it led its process group, cannot again: {err}"),
                })?;
        }
        stubs.push(s);
    } else {
        let (guard, s) = spawner.spawn(root.pid as i32, areas[0], &all_areas)?;
        stubs.push(s);
        guards.push(guard);
        // First: everything after may depend on the session (e.g. a tty).
        session::restore(&stubs[0], root, shell_job)?;
    }
    created(0, &stubs, &mut guards[0], &[])?;
    for (i, e) in entries.iter().enumerate().skip(1) {
        let pid = e.pid as i32;
        let exit_signal = if e.state() == ProcessState::Alive {
            e.exit_signal
        } else {
            libc::SIGCHLD as u32
        };
        let parent = plan.parent_of[i];
        let parent_sid = entries[parent].sid;
        let mut share = 0;
        if e.shares_files_with_parent {
            share |= libc::CLONE_FILES as u64;
        }
        if e.shares_fs_with_parent {
            share |= libc::CLONE_FS as u64;
        }
        let mut kept = Vec::new();
        let helper_needed =
            session::needs_session_helper(e, parent_sid, plan.in_tree(e.sid), |p| spawner.taken(p));
        let (g, s) = if helper_needed {
            let h = match helpers.get(e.sid) {
                Some(h) if h.parent() == Some(parent) => h,
                Some(_) => {
                    return Err(RestoreError::Session {
                        pid,
                        reason: format!(
                            "its session {} (whose leader is gone) holds processes of \
                             different parents: not supported",
                            e.sid
                        ),
                    });
                }
                None => helpers.new_session(
                    Some((parent, &stubs[parent])),
                    e.sid as i32,
                    &[],
                    spawner,
                )?,
            };
            if exit_signal != libc::SIGCHLD as u32 {
                tracing::warn!(pid, exit_signal, "restored with SIGCHLD as its exit signal");
            }
            if share != 0 {
                return Err(RestoreError::Session {
                    pid,
                    reason: "it shares its fd table or fs state with its parent and is in a \
                             session whose leader is gone: not supported"
                        .into(),
                });
            }
            stub::fork(&h.stub, pid, 0, areas[i], libc::CLONE_PARENT as u64, &[])?
        } else {
            kept = crate::kinds::memory::kept_on_fork(areas[i], areas[parent]);
            stub::fork(&stubs[parent], pid, exit_signal, areas[i], share, &kept)?
        };
        spawner.forked(&s);
        guards.push(g);
        if e.sid == e.pid {
            s.call("setsid", libc::SYS_setsid, &[])
                .map_err(|err| RestoreError::Session {
                    pid,
                    reason: format!("it led its session, cannot make it one again: {err}"),
                })?;
        } else if e.sid != parent_sid && helpers.get(e.sid).is_none() {
            return Err(RestoreError::Session {
                pid,
                reason: format!(
                    "it is in session {} but its parent {} is in session {}, and it does not \
                     lead it; the session's leader is not in the tree and PID {} is taken, so \
                     no helper can lead the session again",
                    e.sid, e.ppid, parent_sid, e.sid
                ),
            });
        }
        stubs.push(s);
        created(i, &stubs, &mut guards[i], &kept)?;
    }
    session::restore_groups(&stubs, entries, &mut helpers, spawner)?;
    helpers.end(&stubs)?;
    // Zombies exit now, with their saved status; their parents keep no
    // trace of it but the zombie.
    for (i, e) in entries.iter().enumerate() {
        if e.state() == ProcessState::Zombie {
            stub::exit_as_zombie(&stubs[i], e.exit_code, &e.comm)?;
            guards[i].armed = false;
            crate::kinds::signals::discard_child_signal(&stubs[plan.parent_of[i]])?;
        }
    }
    Ok((guards, stubs))
}
