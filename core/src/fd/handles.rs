//! Inodes named by the kernel as (device, inode number, file handle), as
//! inotify watches and fanotify marks are in fdinfo: back to a path (or,
//! for a deleted inode, an fd of it) through open_by_handle_at
//! (CAP_DAC_READ_SEARCH) on a mount of the device in the process's mount
//! table; and mounts named by ID, back to their mount point.

use crate::paths::{path, show};
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// An inode as fdinfo names it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Handle {
    pub ino: u64,
    /// The kernel's dev_t (major << 20 | minor).
    pub sdev: u32,
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

impl Handle {
    /// Takes one "key:value" token of an fdinfo line (hex numbers) that
    /// names the inode; false if the key is not one of its.
    pub(super) fn parse_token(&mut self, key: &str, value: &str) -> Option<bool> {
        let hex = || u64::from_str_radix(value, 16).ok();
        match key {
            "ino" => self.ino = hex()?,
            "sdev" => self.sdev = hex()? as u32,
            "fhandle-type" => self.handle_type = hex()? as i32,
            "f_handle" => {
                self.handle = (0..value.len() / 2)
                    .map(|i| u8::from_str_radix(value.get(i * 2..i * 2 + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
            }
            _ => return Some(false),
        }
        Some(true)
    }

    /// Inode `ino` of the device whose st_dev is `dev`, with a handle.
    pub(super) fn of_inode(dev: u64, ino: u64, handle: &crstream_proto::FileHandle) -> Self {
        Self {
            ino,
            sdev: (libc::major(dev) << 20) | libc::minor(dev),
            handle_type: handle.handle_type,
            handle: handle.handle.clone(),
        }
    }

    /// (major, minor) and st_dev of its device.
    pub(super) fn device(&self) -> (u32, u32, u64) {
        let (major, minor) = (self.sdev >> 20, self.sdev & 0xf_ffff);
        (major, minor, libc::makedev(major, minor))
    }
}

/// What a handle names.
enum Named {
    /// An inode reachable by this path (and its st_dev).
    Path(Vec<u8>, u64),
    /// A deleted inode: an O_PATH fd of it, its "PATH (deleted)" link, and
    /// its st_dev.
    Deleted(OwnedFd, Vec<u8>, u64),
}

/// Undoes the octal escapes (\040 ...) of a /proc/PID/mountinfo field.
pub(super) fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(c) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(c);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountinfo(pid: i32) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("reading /proc/{pid}/mountinfo: {e}"))
}

/// The mount points of device `major:minor` in the mount table of `pid`,
/// those of the root of the file system first (a bind mount of a
/// subdirectory may not reach every inode).
pub(super) fn mounts_of_device(pid: i32, major: u32, minor: u32) -> Result<Vec<String>, String> {
    let want = format!("{major}:{minor}");
    let mut mounts: Vec<(bool, String)> = mountinfo(pid)?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[2] == want).then(|| (f[3] != "/", unescape_mount_field(f[4])))
        })
        .collect();
    mounts.sort();
    Ok(mounts.into_iter().map(|(_, m)| m).collect())
}

/// The mount point of mount `mnt_id` in the mount table of `pid`.
pub(super) fn mount_point(pid: i32, mnt_id: u64) -> Result<String, String> {
    mountinfo(pid)?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[0].parse::<u64>().ok() == Some(mnt_id))
                .then(|| unescape_mount_field(f[4]))
        })
        .ok_or_else(|| format!("mount {mnt_id} is not in its mount table"))
}

/// Where the inode `h` names is: (path, st_dev, `UnlinkedFile` id or 0).
/// A deleted inode, which a watch or mark keeps alive after its last
/// unlink, is saved with the tree's unlinked files (the same one as an fd
/// or mapping of it) and given with its old path. Err: why not.
pub(super) fn locate(
    pid: i32,
    h: &Handle,
    unlinked: &mut crate::unlinked::Collector,
) -> Result<(Vec<u8>, u64, u64), String> {
    match resolve(pid, h)? {
        Named::Path(path, dev) => Ok((path, dev, 0)),
        Named::Deleted(fd, link, dev) => {
            let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let id = unlinked
                .note(pid, &source, &link)
                .map_err(|reason| format!("on a deleted inode: {reason}"))?;
            Ok((crate::paths::undeleted(&link).to_vec(), dev, id))
        }
    }
}

/// The mounts of `h`'s device in the mount table of `pid`, each with a
/// directory fd of its mount point. Err: why none.
fn mounts_open(pid: i32, h: &Handle) -> Result<Vec<(String, OwnedFd)>, String> {
    let (major, minor, _) = h.device();
    if h.handle.is_empty() {
        return Err(format!(
            "device {major}:{minor} gives no file handle for inode {}",
            h.ino
        ));
    }
    let mounts = mounts_of_device(pid, major, minor)?;
    if mounts.is_empty() {
        return Err(format!(
            "device {major}:{minor} of inode {} is not mounted in its mount table",
            h.ino
        ));
    }
    let mut open = Vec::new();
    let mut last_err = String::new();
    for mnt in mounts {
        let mnt_path = format!("/proc/{pid}/root{mnt}");
        match rustix::fs::open(
            mnt_path.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => open.push((mnt, fd)),
            Err(e) => last_err = format!("opening {mnt_path}: {e}"),
        }
    }
    if open.is_empty() {
        return Err(last_err);
    }
    Ok(open)
}

/// Opens the regular file `h` names with `flags`, through a mount of its
/// device in crstream's mount table (the tree's: restore refuses others),
/// checked by fstat to be inode `h.ino` still linked somewhere: a file the
/// tree had open by a name since removed, while it kept another link.
pub(super) fn open_linked_elsewhere(h: &Handle, flags: i32) -> Result<OwnedFd, String> {
    let (_, _, dev) = h.device();
    let mut last_err = String::new();
    for (mnt, mfd) in mounts_open(std::process::id() as i32, h)? {
        let fd = match crate::sys::fds::open_by_handle(&mfd, h.handle_type, &h.handle, flags) {
            Ok(fd) => fd,
            Err(e) => {
                last_err = format!("open_by_handle_at through {mnt}: {e}");
                continue;
            }
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| format!("fstat: {e}"))?;
        if st.st_ino != h.ino || st.st_dev != dev {
            last_err = format!("its handle opens inode {} here, not {}", st.st_ino, h.ino);
            continue;
        }
        if st.st_nlink == 0 {
            return Err("it has no link left".into());
        }
        return Ok(fd);
    }
    Err(last_err)
}

/// The inode `h` names, found through a mount of its device in the mount
/// table of `pid` and checked by stat. Err: why not.
fn resolve(pid: i32, h: &Handle) -> Result<Named, String> {
    let (_, _, dev) = h.device();
    let mut last_err = String::new();
    for (mnt, mfd) in mounts_open(pid, h)? {
        let fd = match crate::sys::fds::open_by_handle(
            &mfd,
            h.handle_type,
            &h.handle,
            libc::O_PATH | libc::O_CLOEXEC,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                last_err = format!("open_by_handle_at through {mnt}: {e}");
                continue;
            }
        };
        let link = crate::proc::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| format!("resolving inode {}: {e}", h.ino))?;
        if crate::paths::is_deleted(&link) {
            // Removed under the name it was reached by, but linked under
            // another: no name to give it back, no copy to stand in.
            if rustix::fs::fstat(&fd)
                .map_err(|e| format!("fstat: {e}"))?
                .st_nlink
                != 0
            {
                return Err(format!(
                    "inode {} lost the name {} but has another link: not supported",
                    h.ino,
                    show(&link)
                ));
            }
            return Ok(Named::Deleted(fd, link, dev));
        }
        let shown = show(&link);
        match std::fs::symlink_metadata(path(&link)) {
            Ok(md) if md.ino() == h.ino && md.dev() == dev => return Ok(Named::Path(link, dev)),
            Ok(_) => last_err = format!("inode {} resolves to {shown}, another inode here", h.ino),
            Err(e) => last_err = format!("inode {} resolves to {shown}: {e}", h.ino),
        }
    }
    Err(last_err)
}
