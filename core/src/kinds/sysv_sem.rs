//! System V semaphore units a process holds through SEM_UNDO (the
//! `SysvSemaphores` record). The kernel keeps, per process, what to give
//! back when it exits (semadj), and no interface reads it; the dump's kill
//! gives those units back. So dump saves the value of every semaphore of
//! crstream's IPC namespace, and restore, for each that the dumped
//! process's exit changed (the kernel then names that process as the
//! semaphore's last operator), takes the difference again from inside the
//! restored process, with SEM_UNDO: the semaphore has the value it had,
//! and the process the adjustment it had. The semaphores themselves live in
//! the IPC namespace, not in the process: restore finds them there.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::stub::SCRATCH_DATA;
use crstream_proto::{SysvSemaphore, SysvSemaphores};

const SEM_UNDO: i16 = 0x1000;

pub(crate) struct SysvSemaphoresKind;

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
        let semaphores = all_semaphores().map_err(|reason| DumpError::Unsupported {
            pid: p.pid,
            what: "System V semaphores",
            reason,
        })?;
        if !semaphores.is_empty() {
            p.records.push(SysvSemaphores {
                pid: p.pid,
                semaphores,
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
                "pid {} exists: SEM_UNDO adjustments of System V semaphores are not taken again",
                saved.pid
            );
            return Ok(());
        }
        for sem in &saved.semaphores {
            let Some((last_pid, value)) = last_operator_and_value(sem) else {
                continue; // removed since
            };
            let delta = sem.value - value;
            if last_pid != saved.pid || delta == 0 {
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

/// Every semaphore of crstream's IPC namespace with its value, from
/// /proc/sysvipc/sem ("key semid perms nsems ...") and semctl.
fn all_semaphores() -> Result<Vec<SysvSemaphore>, String> {
    let text = match std::fs::read_to_string("/proc/sysvipc/sem") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading /proc/sysvipc/sem: {e}")),
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(Ok(id)), Some(Ok(nsems))) = (
            f.get(1).map(|v| v.parse::<i32>()),
            f.get(3).map(|v| v.parse::<u32>()),
        ) else {
            return Err(format!("/proc/sysvipc/sem: {line:?}"));
        };
        for num in 0..nsems {
            // SAFETY: semctl GETVAL takes no fourth argument.
            let value = unsafe { libc::semctl(id, num as i32, libc::GETVAL) };
            if value >= 0 {
                out.push(SysvSemaphore { id, num, value });
            }
            // A set removed meanwhile: nothing to keep.
        }
    }
    Ok(out)
}

/// The PID of the semaphore's last operator (as crstream sees PIDs) and its
/// value; None if it is gone.
fn last_operator_and_value(sem: &SysvSemaphore) -> Option<(i32, i32)> {
    // SAFETY: semctl GETPID and GETVAL take no fourth argument.
    let (pid, value) = unsafe {
        (
            libc::semctl(sem.id, sem.num as i32, libc::GETPID),
            libc::semctl(sem.id, sem.num as i32, libc::GETVAL),
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
