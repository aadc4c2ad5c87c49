//! pidfds: a handle on a process (or one thread, PIDFD_THREAD), read from
//! fdinfo ("Pid:", -1 once the process is gone).
//!
//! Restore opens a pidfd of the same PID in crstream and hands it over: of
//! a process of the tree (which has its PID again, zombies included), of
//! a process outside it (which must still be the same: same start time),
//! or of a dead process (a pidfd of a child crstream forks, which exits
//! and is reaped at once). A pidfd of one thread of the tree other than a
//! leader (PIDFD_THREAD) can only be opened once the threads exist: the
//! files phase puts a stand-in at its number, and `ThreadPidfds` (threads
//! phase) replaces it.

use super::{DumpFd, FdKind, Reopen, fdinfo_field};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, DumpTree, Kind, Phase, RestoreObjects, RestoreProcess};
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

    /// Notes which pidfds name a process or thread of the tree. A pidfd
    /// of a thread of the tree that an epoll instance watches is refused:
    /// the registration would be made on its stand-in.
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
            let watched: Vec<u32> = table
                .files
                .iter()
                .filter_map(|f| f.epoll.as_ref())
                .flat_map(|e| e.targets.iter().map(|t| t.file_fd.unwrap_or(t.fd)))
                .collect();
            for f in &mut table.files {
                let fd = f.fd;
                let Some(pf) = &mut f.pidfd else {
                    continue;
                };
                let of_thread = threads.contains(&pf.pid);
                pf.in_tree = of_thread || leaders.contains(&pf.pid);
                // Any pidfd that gets a stand-in first (of a thread, also a
                // leader's PIDFD_THREAD one).
                if of_thread_of_tree(pf) && watched.contains(&fd) {
                    return Err(DumpError::UnsupportedFile {
                        pid,
                        fd: fd as i32,
                        what: format!(
                            "a pidfd of thread {} of the tree, watched by an epoll instance \
                             (not supported)",
                            pf.pid
                        ),
                    });
                }
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
        objects: &RestoreObjects<'_>,
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
        // A thread of the tree does not exist yet: a stand-in until
        // `ThreadPidfds` (a pidfd, so that dups and sharing copy its kind).
        let fd = if pf.pid <= 0 || of_thread_of_tree(pf) {
            crate::sys::pidfd::of_dead_process(flags)
                .map_err(|e| ferr("a pidfd of an exited process".into(), e))?
        } else {
            let target =
                rustix::process::Pid::from_raw(objects.pids.host(pf.pid)).ok_or_else(|| {
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

/// Whether `pf` names a thread of the tree other than a leader.
fn of_thread_of_tree(pf: &PidFdFile) -> bool {
    pf.thread && pf.in_tree
}

/// Pidfds of threads of the tree (PIDFD_THREAD), in place of the stand-ins
/// the files phase made, once the threads exist: each fd gets a pidfd of
/// its thread; a dup, or a description shared with an earlier process of
/// the tree, gets that one again.
pub(crate) struct ThreadPidfds;

impl Kind for ThreadPidfds {
    fn name(&self) -> &'static str {
        "pidfds of threads"
    }

    fn phase(&self) -> Phase {
        Phase::Threads
    }

    fn dump(&mut self, _p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        Ok(()) // saved with the fd table
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let (pid, pids) = (p.vpid(), p.objects.pids);
        super::install_late(
            p,
            |f| f.pidfd.as_ref().is_some_and(of_thread_of_tree),
            |stub, f| {
                let pf = f.pidfd.as_ref().expect("selected");
                let ferr = |what: String| super::file_error(pid, f, what);
                let mut flags = PidfdFlags::from_bits_retain(PIDFD_THREAD);
                if f.open_flags & libc::O_NONBLOCK as u32 != 0 {
                    flags |= PidfdFlags::NONBLOCK;
                }
                let tid = rustix::process::Pid::from_raw(pids.host(pf.pid))
                    .ok_or_else(|| ferr(format!("bad image: thread {}", pf.pid)))?;
                let own = rustix::process::pidfd_open(tid, flags)
                    .map_err(|e| ferr(format!("pidfd_open({}, PIDFD_THREAD): {e}", pf.pid)))?;
                super::install(stub, f, super::Source::Created(own))
            },
        )
    }
}
