//! What CLONE_FS shares: working directory, root and umask (the
//! `FsContext` record). A process that shares them with its parent gets
//! them from the parent at restore.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::paths::show;
use crate::records::ProcessImage;
use crstream_proto::FsContext as Record;

pub(crate) struct FsContext;

impl Kind for FsContext {
    fn name(&self) -> &'static str {
        "cwd, root and umask"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let link = |what: &str| {
            crate::proc::read_link(format!("/proc/{pid}/{what}"))
                .map_err(|err| DumpError::Proc { pid, err })
        };
        p.records.push(Record {
            cwd: link("cwd")?,
            root: link("root")?,
            umask: p.status.umask,
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
        let path = stub.put_path(&r.cwd)?;
        stub.call("chdir", libc::SYS_chdir, &[path])
            .map_err(io(format!("chdir to {}", show(&r.cwd))))?;
        if r.root != b"/" {
            let path = stub.put_path(&r.root)?;
            stub.call("chroot", libc::SYS_chroot, &[path])
                .map_err(io(format!("chroot to {}", show(&r.root))))?;
        }
        stub.call("umask", libc::SYS_umask, &[r.umask as u64])?;
        Ok(())
    }
}
