//! System V semaphore units a process holds through SEM_UNDO (the
//! `SysvSemaphores` record). The kernel keeps, per process, what to give
//! back when it exits (semadj), and no interface reads it; the dump's kill
//! gives those units back. So dump saves every semaphore of crstream's IPC
//! namespace (value, last operator, its set's key and change time), and
//! restore, for each that the dumped process's exit changed (the kernel
//! then names that process as the semaphore's last operator), takes the
//! difference again from inside the restored process, with SEM_UNDO: the
//! semaphore has the value it had, and the process the adjustment it had.
//! The semaphores themselves live in the IPC namespace, not in the
//! process: restore finds them there, the same sets (key and change time;
//! a semctl that changed a set also cleared its adjustments).
//!
//! Units of one semaphore held by several processes of the tree come back
//! held by the last of them to exit: the kernel names only that one.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::stub::SCRATCH_DATA;
use crstream_proto::{SysvSemaphore, SysvSemaphores};
use std::collections::HashMap;

const SEM_UNDO: i16 = 0x1000;

#[derive(Default)]
pub(crate) struct SysvSemaphoresKind {
    /// The semaphores, read once for every process of the frozen tree.
    read: Option<Vec<SysvSemaphore>>,
}

impl Kind for SysvSemaphoresKind {
    fn name(&self) -> &'static str {
        "System V semaphore adjustments"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/ipc")).ok();
        if ns(&p.pid.to_string()) != ns("self") {
            // Its semaphores are not the ones crstream sees.
            return Ok(());
        }
        let semaphores = self.read.get_or_insert_with(all_semaphores);
        if !semaphores.is_empty() {
            p.records.push(SysvSemaphores {
                pid: p.pid,
                semaphores: semaphores.clone(),
            });
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let Some(saved) = p.image.get::<SysvSemaphores>() else {
            return Ok(());
        };
        // The process dumped is gone, or the last operator named below may
        // be it, running on (a copy restored in a PID namespace of its own).
        if saved.pid != p.pid() && std::path::Path::new(&format!("/proc/{}", saved.pid)).exists() {
            tracing::warn!(
                pid = p.vpid(),
                "pid {} exists: units of System V semaphores held with SEM_UNDO are not taken \
                 again",
                saved.pid
            );
            return Ok(());
        }
        let now: HashMap<i32, Set> = sets().into_iter().map(|s| (s.id, s)).collect();
        for sem in &saved.semaphores {
            if now
                .get(&sem.id)
                .is_none_or(|s| (s.key, s.ctime) != (sem.key, sem.ctime))
            {
                continue; // removed or set since: no adjustment left
            }
            let Some((last_pid, value)) = last_operator_and_value(sem.id, sem.num) else {
                continue;
            };
            let delta = sem.value - value;
            if delta == 0 {
                continue;
            }
            if last_pid != saved.pid {
                if sem.last_pid == saved.pid {
                    tracing::warn!(
                        pid = p.vpid(),
                        "semaphore {} of set {} changed since the dump ({} then, {value} now, \
                         last by pid {last_pid}): units the process held with SEM_UNDO, if any, \
                         are not taken again",
                        sem.num,
                        sem.id,
                        sem.value
                    );
                }
                continue;
            }
            take_again(p, sem, delta).map_err(|reason| RestoreError::Unsupported {
                pid: p.vpid(),
                what: "System V semaphore",
                reason: format!(
                    "semaphore {} of set {}: {} again the {} units its SEM_UNDO operations \
                     {} ({value} now, {} at the dump): {reason}",
                    sem.num,
                    sem.id,
                    if delta < 0 { "taking" } else { "adding" },
                    delta.abs(),
                    if delta < 0 { "held" } else { "added" },
                    sem.value
                ),
            })?;
        }
        Ok(())
    }
}

/// A semaphore set, as /proc/sysvipc/sem lists it.
struct Set {
    key: i32,
    id: i32,
    nsems: u32,
    ctime: i64,
}

/// The semaphore sets of crstream's IPC namespace ("key semid perms nsems
/// uid gid cuid cgid otime ctime"); a line not read so is left out.
fn sets() -> Vec<Set> {
    let Ok(text) = std::fs::read_to_string("/proc/sysvipc/sem") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let set = Set {
                key: f.first()?.parse().ok()?,
                id: f.get(1)?.parse().ok()?,
                nsems: f.get(3)?.parse().ok()?,
                ctime: f.get(9)?.parse().ok()?,
            };
            Some(set)
        })
        .collect()
}

/// Every semaphore of crstream's IPC namespace, with its value, last
/// operator and set.
fn all_semaphores() -> Vec<SysvSemaphore> {
    sets()
        .into_iter()
        .flat_map(|set| {
            (0..set.nsems).filter_map(move |num| {
                let (last_pid, value) = last_operator_and_value(set.id, num)?;
                Some(SysvSemaphore {
                    id: set.id,
                    num,
                    value,
                    last_pid,
                    key: set.key,
                    ctime: set.ctime,
                })
            })
        })
        .collect()
}

/// The PID of a semaphore's last operator (as crstream sees PIDs) and its
/// value; None if it is gone.
fn last_operator_and_value(id: i32, num: u32) -> Option<(i32, i32)> {
    // SAFETY: semctl GETPID and GETVAL take no fourth argument.
    let (pid, value) = unsafe {
        (
            libc::semctl(id, num as i32, libc::GETPID),
            libc::semctl(id, num as i32, libc::GETVAL),
        )
    };
    (pid >= 0 && value >= 0).then_some((pid, value))
}

/// semop from inside the restored process, with SEM_UNDO and without
/// waiting: `delta` added to the semaphore (units taken if negative), so
/// that its exit gives back what the dumped process's exit gave back.
fn take_again(p: &RestoreProcess<'_>, sem: &SysvSemaphore, delta: i32) -> Result<(), String> {
    let op = i16::try_from(delta).map_err(|_| format!("{delta} units at once"))?;
    let num = u16::try_from(sem.num).map_err(|_| "semaphore number".to_string())?;
    let mut sembuf = Vec::with_capacity(6);
    sembuf.extend_from_slice(&num.to_ne_bytes());
    sembuf.extend_from_slice(&op.to_ne_bytes());
    sembuf.extend_from_slice(&(SEM_UNDO | libc::IPC_NOWAIT as i16).to_ne_bytes());
    let at = p
        .stub
        .put(SCRATCH_DATA, &sembuf)
        .map_err(|e| e.to_string())?;
    p.stub
        .call("semop", libc::SYS_semop, &[sem.id as u64, at, 1])
        .map_err(|e| e.to_string())?;
    Ok(())
}
