//! System V shared memory segments attached by the tree.
//!
//! Dump records each segment once (id, key, permissions, size, whether it
//! was already removed); its pages are saved like other shared memory,
//! with the first process that attaches it. Restore recreates the segment
//! with the same id (by writing `kernel.shm_next_id` just before shmget)
//! and key, and every process attaches it at its address with shmat, so
//! shmctl, shmdt and nattch behave as before. A segment that still exists
//! with the same id, key and size (it was not removed, so it outlived the
//! dumped processes) is attached again and gets the image's contents.

use crate::error::RestoreError;
use crate::proc::MapEntry;
use crate::stub::Stub;
use crate::sys::shm::{self, SHM_DEST};
use crstream_proto::SysvShm;
use crstream_streamer::PAGE_SIZE;
use std::collections::BTreeMap;

const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

/// The segment a /proc/PID/maps entry attaches, if it is one: the kernel
/// names the file "SYSV" + the key in hex and numbers its inode with the id.
pub(crate) fn segment_of(m: &MapEntry) -> Option<u32> {
    if m.dev_major != 0 || !crate::paths::is_deleted(&m.path) {
        return None;
    }
    let key = m.path.strip_prefix(b"/SYSV")?.get(..8)?;
    u32::from_str_radix(std::str::from_utf8(key).ok()?, 16).ok()?;
    u32::try_from(m.inode).ok()
}

/// One line of /proc/sysvipc/shm.
fn read_segment(id: u32) -> Result<SysvShm, String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")
        .map_err(|e| format!("reading /proc/sysvipc/shm: {e}"))?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || f[1].parse::<u32>().ok() != Some(id) {
            continue;
        }
        let num = |i: usize| f[i].parse::<u64>().map_err(|e| format!("{line}: {e}"));
        let mode = u32::from_str_radix(f[2], 8).map_err(|e| format!("{line}: {e}"))?;
        return Ok(SysvShm {
            id,
            key: f[0].parse().map_err(|e| format!("{line}: {e}"))?,
            mode: mode & 0o777,
            size: num(3)?,
            uid: num(7)? as u32,
            gid: num(8)? as u32,
            removed: mode & SHM_DEST != 0,
        });
    }
    Err(format!(
        "segment {id} is not in /proc/sysvipc/shm (another IPC namespace?)"
    ))
}

/// The segments of the tree being dumped.
#[derive(Default)]
pub(crate) struct Collector {
    segments: BTreeMap<u32, SysvShm>,
}

impl Collector {
    /// Notes the segment attached by `m`; Err: why it cannot be restored.
    pub(crate) fn note(&mut self, pid: i32, id: u32, m: &MapEntry) -> Result<(), String> {
        // /proc/sysvipc describes crstream's IPC namespace only.
        let ns = |p: String| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        if ns(format!("/proc/{pid}/ns/ipc")).ok() != ns("/proc/self/ns/ipc".into()).ok() {
            return Err(
                "the process is in another IPC namespace than crstream: not supported".into(),
            );
        }
        if m.has_flag("ht") {
            return Err("huge-page (SHM_HUGETLB) segments are not supported".into());
        }
        let seg = match self.segments.entry(id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(read_segment(id)?),
        };
        // shmat maps the whole segment: a part of it (split by mprotect or
        // a partial munmap) could not be rebuilt that way.
        if m.pgoff != 0 || m.len() != seg.size.next_multiple_of(PAGE_SIZE as u64) {
            return Err(format!(
                "only part of System V segment {id} ({} bytes) is attached here; \
                 partial attachments are not supported",
                seg.size
            ));
        }
        Ok(())
    }

    pub(crate) fn into_records(self) -> impl Iterator<Item = SysvShm> {
        self.segments.into_values()
    }
}

// ---------------------------------------------------------------- restore

fn shm_err(s: &SysvShm, reason: String) -> RestoreError {
    RestoreError::Recreate {
        what: format!("System V shared memory segment {} (key {:#x})", s.id, s.key),
        reason,
    }
}

/// Holds an exclusive lock on a file for as long as it lives: restores of
/// this machine take turns at `kernel.shm_next_id`, which is global.
struct NextIdLock {
    _file: std::fs::File,
}

impl NextIdLock {
    fn take() -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/crstream-shm-next-id.lock")
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open("/tmp/crstream-shm-next-id.lock")
            })?;
        // Released when the file is closed.
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(NextIdLock { _file: f })
    }
}

/// The segments of an image being restored. Those this restore created
/// are removed again if it fails (dropped before `commit`).
#[derive(Default)]
pub(crate) struct Recreator {
    segments: Vec<SysvShm>,
    created: Vec<u32>,
    committed: bool,
}

impl Recreator {
    /// Creates segment `s` with its id and key, or finds it still there.
    pub(crate) fn add(&mut self, s: SysvShm) -> Result<(), RestoreError> {
        if let Some(seg) = shm::stat(s.id) {
            let (key, size, mode) = (seg.key, seg.size, seg.mode);
            // The very segment the tree used, outliving it: same key, size,
            // owner and permissions, and not removed.
            if key == s.key
                && size == s.size
                && (seg.uid, seg.gid, mode & 0o777) == (s.uid, s.gid, s.mode)
                && mode & SHM_DEST == 0
                && !s.removed
            {
                tracing::info!(
                    id = s.id,
                    "System V segment still exists; attaching it again"
                );
                self.segments.push(s);
                return Ok(());
            }
            return Err(shm_err(
                &s,
                format!(
                    "id {} is taken by another segment (key {key:#x}, {size} bytes)",
                    s.id
                ),
            ));
        }
        let _lock = NextIdLock::take().map_err(|e| shm_err(&s, format!("locking: {e}")))?;
        let before = std::fs::read_to_string(SHM_NEXT_ID).unwrap_or_else(|_| "-1".into());
        std::fs::write(SHM_NEXT_ID, s.id.to_string())
            .map_err(|e| shm_err(&s, format!("writing {SHM_NEXT_ID}: {e}")))?;
        let key = if s.removed { libc::IPC_PRIVATE } else { s.key };
        let got = shm::get(
            key,
            s.size,
            libc::IPC_CREAT | libc::IPC_EXCL | (s.mode & 0o777) as i32,
        );
        // shmget resets it only when it allocates; put back what was there.
        let _ = std::fs::write(SHM_NEXT_ID, before.trim());
        let got = got.map_err(|err| shm_err(&s, format!("shmget: {err}")))?;
        self.created.push(got);
        if got != s.id {
            return Err(shm_err(
                &s,
                format!("shmget gave id {got}: another program set kernel.shm_next_id meanwhile"),
            ));
        }
        shm::set_owner(got, s.uid, s.gid)
            .map_err(|e| shm_err(&s, format!("setting owner {}:{}: {e}", s.uid, s.gid)))?;
        self.segments.push(s);
        Ok(())
    }

    /// Attaches segment `id` in the stub at `start` (replacing what the
    /// stub has there), read-only (SHM_RDONLY: it can never be made
    /// writable) or not, executable or not.
    pub(crate) fn attach(
        &self,
        stub: &Stub,
        id: u32,
        start: u64,
        read_only: bool,
        exec: bool,
    ) -> Result<(), RestoreError> {
        if !self.segments.iter().any(|s| s.id == id) {
            return Err(RestoreError::Image(format!(
                "no SysvShm record for segment {id}"
            )));
        }
        attach_at(stub, id, start, read_only, exec)
    }

    /// Once the tree runs: segments removed at dump time are removed again
    /// (they go with the last detach, as before); the others stay.
    pub(crate) fn commit(&mut self) {
        self.committed = true;
        for s in self.segments.iter().filter(|s| s.removed) {
            if let Err(e) = shm::remove(s.id) {
                tracing::warn!(
                    id = s.id,
                    "System V segment removed at dump time stays visible: IPC_RMID: {e}"
                );
            }
        }
    }
}

/// shmat of segment `id` at `start`, replacing what is there.
pub(crate) fn attach_at(
    stub: &Stub,
    id: u32,
    start: u64,
    read_only: bool,
    exec: bool,
) -> Result<(), RestoreError> {
    let mut flags = libc::SHM_REMAP;
    if read_only {
        flags |= libc::SHM_RDONLY;
    }
    if exec {
        flags |= libc::SHM_EXEC;
    }
    let got = stub.call("shmat", libc::SYS_shmat, &[id as u64, start, flags as u64])?;
    if got as u64 != start {
        return Err(RestoreError::Image(format!(
            "shmat of segment {id} returned {got:#x}, not {start:#x}"
        )));
    }
    Ok(())
}

impl Drop for Recreator {
    fn drop(&mut self) {
        if !self.committed {
            for &id in &self.created {
                let _ = shm::remove(id);
            }
        }
    }
}
