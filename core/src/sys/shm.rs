//! System V shared memory segments, seen from crstream.

use std::io;

/// `shm_perm.mode` bit of a segment marked for removal (IPC_RMID done).
pub(crate) const SHM_DEST: u32 = 0o1000;

/// What IPC_STAT says of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub key: i32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits and SHM_DEST.
    pub mode: u32,
}

fn ipc_stat(id: i32) -> io::Result<libc::shmid_ds> {
    let mut ds: libc::shmid_ds = super::zeroed();
    // SAFETY: shmctl fills a local struct.
    super::cvt(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ds)
}

/// Segment `id`, if it exists (and we may see it).
pub(crate) fn stat(id: u32) -> Option<Segment> {
    let ds = ipc_stat(id as i32).ok()?;
    Some(Segment {
        key: ds.shm_perm.__key,
        size: ds.shm_segsz as u64,
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        mode: ds.shm_perm.mode as u32,
    })
}

/// shmget(key, size, flags): the id of a new or existing segment.
pub(crate) fn get(key: i32, size: u64, flags: i32) -> io::Result<u32> {
    // SAFETY: shmget with integer arguments.
    super::cvt(unsafe { libc::shmget(key, size as usize, flags) }).map(|id| id as u32)
}

/// Makes `uid`:`gid` the owner of segment `id`.
pub(crate) fn set_owner(id: u32, uid: u32, gid: u32) -> io::Result<()> {
    let mut ds = ipc_stat(id as i32)?;
    if (ds.shm_perm.uid, ds.shm_perm.gid) == (uid, gid) {
        return Ok(());
    }
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    // SAFETY: shmctl reads a local struct.
    super::cvt(unsafe { libc::shmctl(id as i32, libc::IPC_SET, &mut ds) }).map(drop)
}

/// Marks segment `id` for removal (it goes with its last detach).
pub(crate) fn remove(id: u32) -> io::Result<()> {
    // SAFETY: shmctl IPC_RMID takes no buffer.
    super::cvt(unsafe { libc::shmctl(id as i32, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}
