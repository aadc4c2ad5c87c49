//! What CLONE_FS shares: working directory, root and umask (the
//! `FsContext` record). A process that shares them with its parent gets
//! them from the parent at restore.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::paths::show;
use crate::records::ProcessImage;
use crstream_proto::FsContext as Record;
use crstream_proto::UnlinkedKind;
use std::os::unix::fs::MetadataExt;

pub(crate) struct FsContext;

impl Kind for FsContext {
    fn name(&self) -> &'static str {
        "cwd, root and umask"
    }

    /// Late: once chrooted, the process no longer sees the paths restore
    /// opens in it (its executable, /proc/self). Before credentials, which
    /// may drop CAP_SYS_CHROOT.
    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let link = |what: &str| {
            crate::proc::read_link(format!("/proc/{pid}/{what}"))
                .map_err(|err| DumpError::Proc { pid, err })
        };
        let cwd = link("cwd")?;
        let root = link("root")?;
        let refuse = |reason: String| DumpError::Unsupported {
            pid,
            what: "working and root directory",
            reason,
        };
        // A removed directory has no links left, not even "." in it, and
        // /proc marks it so (some file systems count no links for any
        // directory).
        let removed = |what: &str, link: &[u8]| {
            crate::paths::is_deleted(link)
                && std::fs::metadata(format!("/proc/{pid}/{what}")).is_ok_and(|m| m.nlink() == 0)
        };
        if removed("root", &root) {
            return Err(refuse(format!(
                "the root directory {} was removed: no way to make it again",
                show(&root)
            )));
        }
        let cwd_unlinked = if removed("cwd", &cwd) {
            p.objects
                .unlinked
                .note(pid, &format!("/proc/{pid}/cwd"), &cwd)
                .map_err(|reason| {
                    refuse(format!(
                        "the removed working directory {}: {reason}",
                        show(&cwd)
                    ))
                })?
        } else {
            0
        };
        p.records.push(Record {
            cwd,
            root,
            umask: p.status.umask,
            cwd_unlinked,
        });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need::<Record>().map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        if p.entry().shares_fs_with_parent {
            return Ok(()); // set in the parent (CLONE_FS)
        }
        let (stub, pid) = (p.stub, p.pid());
        let r: &Record = p.image.need()?;
        let io = |what: String| {
            move |e: TaskError| RestoreError::Io {
                pid,
                what,
                err: std::io::Error::other(e.to_string()),
            }
        };
        // A removed working directory: the one made again in crstream.
        let cwd = if r.cwd_unlinked != 0 {
            p.objects
                .unlinked
                .proc_path(r.cwd_unlinked, &[UnlinkedKind::Directory])?
                .into_bytes()
        } else {
            r.cwd.clone()
        };
        let (cwd, taken) = stub.reachable(&cwd)?;
        let path = stub.put_path(&cwd)?;
        let changed = stub.call("chdir", libc::SYS_chdir, &[path]);
        stub.close_taken(taken)?;
        changed.map_err(io(format!("chdir to {}", show(&r.cwd))))?;
        if r.root != b"/" {
            let path = stub.put_path(&r.root)?;
            stub.call("chroot", libc::SYS_chroot, &[path])
                .map_err(io(format!("chroot to {}", show(&r.root))))?;
        }
        stub.call("umask", libc::SYS_umask, &[r.umask as u64])?;
        Ok(())
    }
}
