//! Signal-driven I/O (the `FileOwners` record): the owner an open file
//! description sends its signals to (F_SETOWN/F_SETOWN_EX: a thread, a
//! process or a process group), the signal (F_SETSIG), and O_ASYNC.
//!
//! Read in crstream through a duplicate of each description (the owner is
//! the description's, not the fd's). Set again from inside the process
//! once every thread exists (an owner may be a thread) and its
//! credentials are its own (F_SETOWN records them, and the kernel checks
//! them when it sends the signal); O_ASYNC is turned on from inside too,
//! so that the signal names the process's own fd (si_fd). Owners outside
//! the tree are refused: their PIDs mean nothing after restore.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, DumpTree, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::SCRATCH_DATA;
use crate::sys::fds::{F_SETOWN_EX, F_SETSIG};
use crstream_proto::{FileOwner, FileOwners, FileTable, OpenFile};

/// Records version since which every process has the record.
const SINCE: u32 = 3;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PGRP: i32 = 2;

pub(crate) struct Owners;

/// A description this process restores (not a dup, not one an earlier
/// process of the tree restores).
fn restored_here(pid: i32, f: &OpenFile) -> bool {
    f.dup_of_fd.is_none() && (f.shared_id == 0 || (f.shared_id >> 32) as i32 == pid)
}

impl Kind for Owners {
    fn name(&self) -> &'static str {
        "file owners"
    }

    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let table = p.records.get::<FileTable>().cloned().unwrap_or_default();
        let mut owners = Vec::new();
        let pidfd = crate::sys::pidfd::open(pid).map_err(|e| DumpError::Unsupported {
            pid,
            what: "file owners",
            reason: format!("pidfd_open: {e}"),
        })?;
        // O_PATH fds have no owner (fcntl refuses them).
        let owned =
            |f: &&OpenFile| f.dup_of_fd.is_none() && f.open_flags as i32 & libc::O_PATH == 0;
        for f in table.files.iter().filter(owned) {
            let err = |e: std::io::Error| DumpError::File {
                pid,
                fd: f.fd as i32,
                path: crate::paths::show(&f.path).into_owned(),
                err: std::io::Error::new(e.kind(), format!("reading its owner: {e}")),
            };
            let fd = crate::sys::pidfd::getfd(&pidfd, f.fd as i32).map_err(err)?;
            let (owner_type, owner, signal) = crate::sys::fds::owner(&fd).map_err(err)?;
            if owner != 0 || signal != 0 {
                owners.push(FileOwner {
                    fd: f.fd,
                    owner_type,
                    owner,
                    signal,
                });
            }
        }
        p.records.push(FileOwners { owners });
        Ok(())
    }

    /// Owners must be threads, processes or groups of the tree.
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        for p in t.processes.iter() {
            let Some(owners) = p.records.get::<FileOwners>() else {
                continue;
            };
            for o in owners.owners.iter().filter(|o| o.owner != 0) {
                let known = t.entries.iter().any(|e| match o.owner_type {
                    F_OWNER_TID => e.threads.contains(&(o.owner as u32)),
                    F_OWNER_PGRP => e.pgid == o.owner as u32,
                    _ => e.pid == o.owner as u32,
                });
                if !known {
                    return Err(DumpError::UnsupportedFile {
                        pid: p.pid,
                        fd: o.fd as i32,
                        what: format!(
                            "its signals go to {} {}, outside the tree (F_SETOWN)",
                            match o.owner_type {
                                F_OWNER_TID => "thread",
                                F_OWNER_PGRP => "process group",
                                _ => "process",
                            },
                            o.owner
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need_since::<FileOwners>(SINCE).map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let stub = p.stub;
        let Some(table) = p.image.records.get::<FileTable>() else {
            return Ok(());
        };
        let owners = p.image.need_since::<FileOwners>(SINCE)?;
        for f in table.files.iter().filter(|f| restored_here(p.vpid(), f)) {
            let ferr = |what: &str, e: &dyn std::fmt::Display| RestoreError::File {
                pid,
                fd: f.fd,
                path: crate::paths::show(&f.path).into_owned(),
                reason: format!("{what}: {e}"),
            };
            let fd = f.fd as u64;
            if let Some(o) = owners.and_then(|o| o.owners.iter().find(|o| o.fd == f.fd)) {
                let ex: Vec<u8> = [o.owner_type, o.owner]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let at = stub
                    .put(SCRATCH_DATA, &ex)
                    .map_err(|e| ferr("F_SETOWN_EX", &e))?;
                stub.call(
                    "fcntl(F_SETOWN_EX)",
                    libc::SYS_fcntl,
                    &[fd, F_SETOWN_EX as u64, at],
                )
                .map_err(|e| ferr("setting its owner", &e))?;
                stub.call(
                    "fcntl(F_SETSIG)",
                    libc::SYS_fcntl,
                    &[fd, F_SETSIG as u64, o.signal as u64],
                )
                .map_err(|e| ferr("setting its signal", &e))?;
            }
            if f.open_flags & libc::O_ASYNC as u32 != 0 {
                // Off, then on from here: the kernel notes this fd number.
                let flags = f.open_flags as u64 & !(libc::O_ASYNC as u64);
                for flags in [flags, flags | libc::O_ASYNC as u64] {
                    stub.call(
                        "fcntl(F_SETFL)",
                        libc::SYS_fcntl,
                        &[fd, libc::F_SETFL as u64, flags],
                    )
                    .map_err(|e| ferr("turning O_ASYNC on", &e))?;
                }
            }
        }
        Ok(())
    }
}
