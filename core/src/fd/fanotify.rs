//! fanotify: the group's init flags and event-file flags, and every mark —
//! on an inode (found back by its file handle, also a deleted one held by
//! the tree), a mount, or a whole file system — with its mask, ignore mask
//! and flags. Events queued and not yet read are not saved (the restored
//! group starts with an empty queue), like inotify's; a permission event
//! pending at dump time was allowed when the dumped group went away.

use super::handles::{self, Handle};
use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::paths::{path, show};
use crstream_proto::{FanotifyFile, FanotifyMark, FanotifyMarkKind, FileKind, OpenFile};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const FAN_CLOEXEC: u32 = 0x1;
/// FAN_CLASS_CONTENT | FAN_CLASS_PRE_CONTENT.
const FAN_CLASS_MASK: u32 = 0xc;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

pub(super) struct Fanotify;

impl FdKind for Fanotify {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[fanotify]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let mut file = FanotifyFile::default();
        let mut got_group = false;
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("fanotify ") else {
                continue;
            };
            let bad = || d.bad_fdinfo(format!("fanotify line {line:?}"));
            if rest.starts_with("flags:") {
                let fields = fields(rest).ok_or_else(bad)?;
                file.init_flags = field(&fields, "flags").ok_or_else(bad)? as u32;
                file.event_flags = field(&fields, "event-flags").ok_or_else(bad)? as u32;
                // Permission events: files restore opens (and dump reads)
                // under such a mark wait for an answer only the frozen
                // listener could give.
                if file.init_flags & FAN_CLASS_MASK != 0 {
                    return Err(d.refuse(
                        "a fanotify group of the content or pre-content class \
                         (permission events): not supported",
                    ));
                }
                got_group = true;
                continue;
            }
            if !got_group {
                return Err(bad());
            }
            let mut mark = parse_mark(rest).ok_or_else(bad)?;
            self.locate(d, &mut mark.0, &mark.1)?;
            file.marks.push(mark.0);
        }
        if !got_group {
            return Err(d.bad_fdinfo("no \"fanotify flags:\" line".into()));
        }
        f.kind = FileKind::Fanotify as i32;
        f.path = d.link.to_vec();
        f.fanotify = Some(file);
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Fanotify)
    }

    /// Every path a mark names must still be there, on the same device (a
    /// mount or file-system mark on another would watch something else).
    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        let marks = f.fanotify.iter().flat_map(|g| g.marks.iter());
        for m in marks.filter(|m| m.unlinked == 0) {
            let err = |why: String| {
                super::file_error(pid, f, format!("fanotify mark on {}: {why}", show(&m.path)))
            };
            let md = std::fs::symlink_metadata(path(&m.path)).map_err(|e| err(e.to_string()))?;
            if m.dev != 0 && md.dev() != m.dev {
                return Err(err(format!(
                    "on device {:#x} now, {:#x} at the dump",
                    md.dev(),
                    m.dev
                )));
            }
            if m.kind() == FanotifyMarkKind::Inode && m.inode != 0 && md.ino() != m.inode {
                tracing::warn!(pid, fd = f.fd, path = %show(&m.path), "fanotify mark: the path names another file than at the dump");
            }
        }
        Ok(())
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |reason: String| super::file_error(pid, f, reason);
        let g = super::part(pid, f, f.fanotify.as_ref(), "fanotify")?;
        // The saved flags exactly (they show in fdinfo); crstream's copy
        // of the fd is made close-on-exec right after.
        let flags = g.init_flags;
        let fd = crate::sys::fanotify::init(flags, g.event_flags).map_err(|e| {
            ferr(format!(
                "fanotify_init({flags:#x}, {:#x}): {e}",
                g.event_flags
            ))
        })?;
        if flags & FAN_CLOEXEC == 0 {
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
                .map_err(|e| ferr(format!("F_SETFD: {e}")))?;
        }
        for m in &g.marks {
            let at = if m.unlinked != 0 {
                objects
                    .unlinked
                    .proc_path(m.unlinked, &crate::unlinked::ANY_KIND)?
                    .into_bytes()
            } else {
                m.path.clone()
            };
            add_mark(&fd, m, &at).map_err(|e| {
                ferr(format!(
                    "fanotify mark ({:?}) on {}: {e}",
                    m.kind(),
                    show(&m.path)
                ))
            })?;
        }
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr(format!("F_SETFL: {e}")))?;
        Ok(Reopen::Created(fd))
    }
}

impl Fanotify {
    /// Fills in where mark `m` is: the path of its inode (or the tree's
    /// copy of a deleted one), of its mount, or of a mount of its file
    /// system.
    fn locate(
        &mut self,
        d: &mut DumpFd<'_>,
        m: &mut FanotifyMark,
        at: &Where,
    ) -> Result<(), DumpError> {
        let pid = d.pid;
        let refuse = |reason: String| d.refuse(format!("fanotify mark: {reason}"));
        match at {
            Where::Inode(h) => {
                let (path, dev, unlinked) = handles::locate(pid, h, &mut d.objects.unlinked)
                    .map_err(|reason| d.refuse(format!("fanotify mark: {reason}")))?;
                (m.path, m.dev, m.unlinked) = (path, dev, unlinked);
            }
            Where::Mount(id) => {
                let mnt = handles::mount_point(pid, *id).map_err(refuse)?;
                m.path = seen_from_here(pid, &mnt).map_err(refuse)?;
                m.dev = std::fs::metadata(path(&m.path))
                    .map_err(|e| refuse(format!("{}: {e}", show(&m.path))))?
                    .dev();
            }
            Where::FileSystem(h) => {
                let (major, minor, dev) = h.device();
                let mounts = handles::mounts_of_device(pid, major, minor).map_err(refuse)?;
                let mnt = mounts.first().ok_or_else(|| {
                    refuse(format!(
                        "device {major}:{minor} is not mounted in its mount table"
                    ))
                })?;
                m.path = seen_from_here(pid, mnt).map_err(refuse)?;
                m.dev = dev;
            }
        }
        Ok(())
    }
}

/// The path, as crstream sees it, of `p` as process `pid` sees it (its
/// root may be another directory).
fn seen_from_here(pid: i32, p: &str) -> Result<Vec<u8>, String> {
    let there = format!("/proc/{pid}/root{p}");
    std::fs::canonicalize(&there)
        .map(|p| p.into_os_string().into_encoded_bytes())
        .map_err(|e| format!("{there}: {e}"))
}

/// What a mark is on, as fdinfo names it.
enum Where {
    Inode(Handle),
    Mount(u64),
    FileSystem(Handle),
}

/// key:value tokens of an fdinfo line.
fn fields(rest: &str) -> Option<Vec<(&str, &str)>> {
    rest.split_whitespace().map(|t| t.split_once(':')).collect()
}

fn field(fields: &[(&str, &str)], key: &str) -> Option<u64> {
    let v = fields.iter().find(|(k, _)| *k == key)?.1;
    u64::from_str_radix(v, 16).ok()
}

/// One "fanotify ino:.. sdev:.. mflags:.. mask:.. ignored_mask:.. f_handle..",
/// "fanotify mnt_id:.. mflags:.. ..." or "fanotify sdev:.. mflags:.. ..."
/// line (after "fanotify ").
fn parse_mark(rest: &str) -> Option<(FanotifyMark, Where)> {
    let fields = fields(rest)?;
    let mut m = FanotifyMark {
        mflags: field(&fields, "mflags")? as u32,
        mask: field(&fields, "mask")? as u32,
        ignored_mask: field(&fields, "ignored_mask")? as u32,
        ..Default::default()
    };
    let at = if let Some(id) = field(&fields, "mnt_id") {
        m.kind = FanotifyMarkKind::Mount as i32;
        Where::Mount(id)
    } else {
        let mut h = Handle::default();
        for (k, v) in &fields {
            h.parse_token(k, v)?;
        }
        if fields.iter().any(|(k, _)| *k == "ino") {
            m.kind = FanotifyMarkKind::Inode as i32;
            m.inode = h.ino;
            Where::Inode(h)
        } else {
            m.kind = FanotifyMarkKind::FileSystem as i32;
            Where::FileSystem(h)
        }
    };
    Some((m, at))
}

/// Adds mark `m` to group `fd`, on the object at `at`: its mask, then its
/// ignore mask.
fn add_mark(fd: &OwnedFd, m: &FanotifyMark, at: &[u8]) -> std::io::Result<()> {
    let on = match m.kind() {
        FanotifyMarkKind::Mount => FAN_MARK_MOUNT,
        FanotifyMarkKind::FileSystem => FAN_MARK_FILESYSTEM,
        _ => 0,
    };
    // The saved path names the object itself; through /proc (a deleted
    // inode) the magic link must be followed to it.
    let follow = if m.unlinked != 0 {
        0
    } else {
        FAN_MARK_DONT_FOLLOW
    };
    let base = FAN_MARK_ADD | on | follow | (m.mflags & FAN_MARK_EVICTABLE);
    let p = std::ffi::CString::new(at).map_err(std::io::Error::other)?;
    let mark =
        |flags: u32, mask: u32| crate::sys::fanotify::mark(fd.as_fd(), flags, mask as u64, &p);
    if m.mask != 0 {
        mark(base, m.mask)?;
    }
    if m.ignored_mask != 0 {
        let ignore = if m.mflags & FAN_MARK_IGNORE != 0 {
            FAN_MARK_IGNORE
        } else {
            FAN_MARK_IGNORED_MASK
        };
        mark(
            base | ignore | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY),
            m.ignored_mask,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use std::os::fd::AsRawFd;

    fn fdinfo_marks(fd: &OwnedFd) -> Vec<String> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        let mut v: Vec<String> = info
            .lines()
            .filter(|l| l.starts_with("fanotify "))
            .map(|l| {
                // Mount IDs, inode numbers and handles stay the same here
                // (same machine, same files): the whole line must match.
                l.to_string()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn group_flags_and_marks_of_every_kind_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let g = crate::sys::fanotify::init(FAN_CLOEXEC | 0x2 /* FAN_NONBLOCK */, 0).unwrap();
        let mark = |flags: u32, mask: u64, p: &std::path::Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            crate::sys::fanotify::mark(g.as_fd(), FAN_MARK_ADD | flags, mask, &c).unwrap();
        };
        mark(0, libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE, &file);
        mark(
            FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
            libc::FAN_OPEN,
            &file,
        );
        mark(
            0,
            libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD | libc::FAN_ONDIR,
            dir.path(),
        );
        mark(
            FAN_MARK_MOUNT,
            libc::FAN_CLOSE_WRITE,
            std::path::Path::new("/"),
        );
        let f = dump_own(g.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Fanotify);
        let saved = f.fanotify.as_ref().unwrap();
        assert_eq!(saved.marks.len(), 3, "{saved:?}");
        let n = created(&mut Fanotify, &f);
        assert_eq!(fdinfo_marks(&n), fdinfo_marks(&g));
        let flags = |fd: &OwnedFd| {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
            info.lines()
                .find(|l| l.starts_with("fanotify flags:"))
                .unwrap()
                .to_string()
        };
        assert_eq!(flags(&n), flags(&g));
    }

    #[test]
    fn a_group_of_permission_events_is_refused() {
        let g = crate::sys::fanotify::init(FAN_CLOEXEC | 0x4 /* FAN_CLASS_CONTENT */, 0).unwrap();
        let err = dump_own(g.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains("permission events"), "{err}");
    }
}
