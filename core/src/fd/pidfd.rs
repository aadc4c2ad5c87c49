//! pidfds: a handle on a process (or one thread, PIDFD_THREAD), read from
//! fdinfo ("Pid:", -1 once the process is gone).
//!
//! Restore opens a pidfd of the same PID in crstream and hands it over: of
//! a process of the tree (which has its PID again, zombies included), of
//! a process outside it (which must still be the same: same start time),
//! or of a dead process (a pidfd of a child crstream forks, which exits
//! and is reaped at once).

use super::{DumpFd, FdKind, Reopen, fdinfo_field};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpTree, RestoreObjects};
use crstream_proto::{FileKind, FileTable, OpenFile, PidFdFile};
use rustix::process::PidfdFlags;

/// PIDFD_THREAD, as fdinfo's flags show it (O_EXCL).
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

pub(super) struct PidFds;

/// Start time of process `pid` (clock ticks since boot, /proc/PID/stat).
fn start_time(pid: i32) -> Option<u64> {
    crate::proc::stat(pid).ok().map(|s| s.field(22))
}

impl FdKind for PidFds {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[pidfd]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let pid: i32 = fdinfo_field(&info, "Pid")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| d.bad_fdinfo("no Pid field".into()))?;
        f.kind = FileKind::Pidfd as i32;
        f.path = d.link.to_vec();
        f.pidfd = Some(PidFdFile {
            pid,
            thread: f.open_flags & PIDFD_THREAD != 0,
            in_tree: false,
            start_time: if pid > 0 {
                start_time(pid).unwrap_or(0)
            } else {
                0
            },
        });
        Ok(true)
    }

    /// Notes which pidfds name a process of the tree; a pidfd of a thread
    /// of the tree other than a leader is refused (threads are created
    /// after the fds are in place).
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        let leaders: Vec<i32> = t.entries.iter().map(|e| e.pid as i32).collect();
        let threads: Vec<i32> = t
            .entries
            .iter()
            .flat_map(|e| e.threads.iter().skip(1).map(|&t| t as i32))
            .collect();
        for p in t.processes.iter_mut() {
            let pid = p.pid;
            let Some(table) = p.records.get_mut::<FileTable>() else {
                continue;
            };
            for f in &mut table.files {
                let fd = f.fd;
                let Some(pf) = &mut f.pidfd else {
                    continue;
                };
                if threads.contains(&pf.pid) {
                    return Err(DumpError::UnsupportedFile {
                        pid,
                        fd: fd as i32,
                        what: format!(
                            "a pidfd of thread {} of the tree (not yet supported)",
                            pf.pid
                        ),
                    });
                }
                pf.in_tree = leaders.contains(&pf.pid);
            }
        }
        Ok(())
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Pidfd)
    }

    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        let Some(pf) = &f.pidfd else {
            return Ok(());
        };
        if pf.pid > 0 && !pf.in_tree && start_time(pf.pid) != Some(pf.start_time) {
            return Err(super::file_error(
                pid,
                f,
                format!(
                    "a pidfd of process {}, outside the tree, which is gone",
                    pf.pid
                ),
            ));
        }
        Ok(())
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr =
            |what: String, e: std::io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let pf = super::part(pid, f, f.pidfd.as_ref(), "pidfd")?;
        let mut flags = PidfdFlags::empty();
        if f.open_flags & libc::O_NONBLOCK as u32 != 0 {
            flags |= PidfdFlags::NONBLOCK;
        }
        if pf.thread {
            flags |= PidfdFlags::from_bits_retain(PIDFD_THREAD);
        }
        let fd = if pf.pid <= 0 {
            crate::sys::pidfd::of_dead_process(flags)
                .map_err(|e| ferr("a pidfd of an exited process".into(), e))?
        } else {
            let target = rustix::process::Pid::from_raw(pf.pid).ok_or_else(|| {
                ferr(
                    format!("pid {}", pf.pid),
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                )
            })?;
            rustix::process::pidfd_open(target, flags)
                .map_err(|e| ferr(format!("pidfd_open({})", pf.pid), e.into()))?
        };
        Ok(Reopen::Created(fd))
    }
}
