//! inotify: every watch with its wd, mask and the path of its inode.
//! Events queued and not yet read are not saved (the restored instance
//! starts with an empty queue).

use super::handles::{self, Handle};
use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::paths::{path, show};
use crstream_proto::{FileKind, InotifyFile, InotifyWatch, OpenFile};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// inotify_add_watch flags restore reapplies: the event bits
/// (IN_ALL_EVENTS) and the two flags the kernel keeps with a watch.
const IN_WATCH_MASK: u32 = libc::IN_ALL_EVENTS | libc::IN_EXCL_UNLINK | libc::IN_ONESHOT;
/// Most filler watches one inotify fd may need to reach its saved wds.
const MAX_FILLERS: u64 = 1 << 20;

pub(super) struct Inotify;

impl FdKind for Inotify {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:inotify" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let mut watches = Vec::new();
        for line in info.lines().filter(|l| l.starts_with("inotify ")) {
            let w =
                parse_line(line).ok_or_else(|| d.bad_fdinfo(format!("inotify line {line:?}")))?;
            let (path, dev, unlinked) =
                handles::locate(d.pid, &w.inode, &mut d.objects.unlinked)
                    .map_err(|reason| d.refuse(format!("watch wd {}: {reason}", w.wd)))?;
            watches.push(InotifyWatch {
                wd: w.wd,
                mask: w.mask & IN_WATCH_MASK,
                path,
                inode: w.inode.ino,
                dev,
                unlinked,
            });
        }
        watches.sort_by_key(|w| w.wd);
        // Events the process has not read cannot be put back in a queue:
        // a read takes them, and nothing writes one.
        let queued = d
            .take()
            .ok()
            .and_then(|fd| crate::sys::socket::ioctl_int(&fd, libc::FIONREAD).ok())
            .unwrap_or(0);
        if queued > 0 {
            tracing::warn!(
                pid = d.pid,
                fd = d.fd,
                "{queued} bytes of inotify events the process has not read yet are lost: they \
                 are not restored"
            );
        }
        f.kind = FileKind::Inotify as i32;
        f.path = d.link.to_vec();
        f.inotify = Some(InotifyFile { watches });
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Inotify)
    }

    /// Every path an inotify fd of the image watches must exist.
    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        let by_path = f
            .inotify
            .iter()
            .flat_map(|i| i.watches.iter())
            .filter(|w| w.unlinked == 0);
        for w in by_path {
            match std::fs::symlink_metadata(path(&w.path)) {
                Err(e) => {
                    return Err(super::file_error(
                        pid,
                        f,
                        format!("inotify watch wd {} on {}: {e}", w.wd, show(&w.path)),
                    ));
                }
                // Same machine, other file: watched by path all the same.
                Ok(md) if w.inode != 0 && (md.ino(), md.dev()) != (w.inode, w.dev) => {
                    tracing::warn!(pid, fd = f.fd, path = %show(&w.path), "inotify watch: the path names another file than at the dump");
                }
                Ok(_) => {}
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
        let i = super::part(pid, f, f.inotify.as_ref(), "inotify")?;
        let fd = create(pid, f, i, objects.unlinked)?;
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr(format!("F_SETFL: {e}")))?;
        Ok(Reopen::Created(fd))
    }
}

/// One "inotify wd:.. ino:.. sdev:.. mask:.. ignored_mask:..
/// fhandle-bytes:.. fhandle-type:.. f_handle:.." line of an fdinfo
/// (numbers in hex).
#[derive(Debug, Default, PartialEq)]
struct Line {
    wd: i32,
    mask: u32,
    inode: Handle,
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = line.strip_prefix("inotify ")?;
    let mut w = Line::default();
    let mut wd = None;
    for tok in rest.split_whitespace() {
        let (k, v) = tok.split_once(':')?;
        if w.inode.parse_token(k, v)? {
            continue;
        }
        let hex = || u64::from_str_radix(v, 16).ok();
        match k {
            "wd" => wd = Some(hex()? as i32),
            "mask" => w.mask = hex()? as u32,
            _ => {}
        }
    }
    w.wd = wd?;
    Some(w)
}

/// A new inotify instance with every saved watch at its saved wd.
///
/// The kernel allocates wds cyclically per instance (idr_alloc_cyclic from
/// 1): each new watch gets the number after the last one handed out, even
/// when lower ones are free again. So the watches are added in wd order,
/// and a filler watch (on a memfd of ours, which no saved watch names) is
/// added and removed until the counter reaches the next saved wd.
/// Removing a filler queues an IN_IGNORED event: the queue is emptied once
/// every watch is in place, before the restored process gets the fd. Events
/// of the saved watches that happen during the restore go with them, like
/// the events queued but not read at dump time, which the image does not
/// hold.
fn create(
    pid: i32,
    f: &OpenFile,
    i: &InotifyFile,
    unlinked: &crate::unlinked::Recreator,
) -> Result<OwnedFd, RestoreError> {
    let ferr = |reason: String| super::file_error(pid, f, reason);
    let ino = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
        .map_err(|e| ferr(format!("inotify_init1: {e}")))?;
    let add = |at: &[u8], mask: u32| -> io::Result<i32> {
        Ok(inotify::add_watch(
            &ino,
            path(at),
            WatchFlags::from_bits_retain(mask),
        )?)
    };
    let mut watches: Vec<&InotifyWatch> = i.watches.iter().collect();
    watches.sort_by_key(|w| w.wd);
    let mut filler: Option<(OwnedFd, String)> = None;
    let mut next = 1i32;
    let mut fillers = 0u64;
    for w in watches {
        if w.wd < next {
            return Err(ferr(format!(
                "bad image: inotify watch wd {} listed twice or out of range",
                w.wd
            )));
        }
        // Each filler is two syscalls: a wd far beyond any real one is a
        // damaged image, not a loop to run for hours.
        if (w.wd - next) as u64 + fillers > MAX_FILLERS {
            return Err(ferr(format!(
                "bad image: inotify wd {} would take more than {MAX_FILLERS} filler watches",
                w.wd
            )));
        }
        while next < w.wd {
            if filler.is_none() {
                let m = rustix::fs::memfd_create(
                    "crstream-inotify-filler",
                    rustix::fs::MemfdFlags::CLOEXEC,
                )
                .map_err(|e| ferr(format!("memfd_create: {e}")))?;
                let p = format!("/proc/self/fd/{}", m.as_raw_fd());
                filler = Some((m, p));
            }
            let p = &filler.as_ref().expect("filler").1;
            let got = add(p.as_bytes(), libc::IN_ATTRIB | libc::IN_MASK_CREATE)
                .map_err(|e| ferr(format!("filler watch to reach wd {}: {e}", w.wd)))?;
            inotify::remove_watch(&ino, got)
                .map_err(|e| ferr(format!("removing filler watch {got}: {e}")))?;
            if got >= w.wd {
                return Err(ferr(format!(
                    "the kernel gave wd {got} while reaching wd {}",
                    w.wd
                )));
            }
            next = got.saturating_add(1);
            fillers += 1;
            if fillers.is_multiple_of(4096) {
                drain(&ino);
            }
        }
        // IN_DONT_FOLLOW: the saved path names the watched inode itself
        // (through /proc, a deleted one is at the end of the magic link);
        // IN_MASK_CREATE: two saved watches must not merge into one.
        let (at, follow) = if w.unlinked != 0 {
            (
                unlinked
                    .proc_path(w.unlinked, &crate::unlinked::ANY_KIND)?
                    .into_bytes(),
                0,
            )
        } else {
            (w.path.clone(), libc::IN_DONT_FOLLOW)
        };
        let got = add(&at, w.mask | follow | libc::IN_MASK_CREATE).map_err(|e| {
            ferr(format!(
                "inotify watch wd {} on {}: {e}",
                w.wd,
                show(&w.path)
            ))
        })?;
        if got != w.wd {
            return Err(ferr(format!(
                "inotify watch on {} got wd {got} instead of {}",
                show(&w.path),
                w.wd
            )));
        }
        next = got.saturating_add(1);
    }
    drain(&ino);
    if fillers > 0 {
        tracing::debug!(pid, fd = f.fd, fillers, "inotify wds reached with fillers");
    }
    Ok(ino)
}

/// Reads and discards every event queued on a non-blocking inotify fd.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while rustix::io::read(fd, &mut buf).is_ok_and(|n| n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own, me};
    use super::*;

    #[test]
    fn inotify_fdinfo_lines_are_parsed() {
        let l = "inotify wd:1f ino:98c0e6 sdev:fe00000 mask:300 ignored_mask:0 \
                 fhandle-bytes:8 fhandle-type:1 f_handle:e6c098000654d312";
        let w = parse_line(l).unwrap();
        assert_eq!(
            w,
            Line {
                wd: 31,
                mask: 0x300,
                inode: Handle {
                    ino: 0x98c0e6,
                    sdev: 0xfe00000,
                    handle_type: 1,
                    handle: vec![0xe6, 0xc0, 0x98, 0, 0x06, 0x54, 0xd3, 0x12],
                },
            }
        );
        assert!(parse_line("inotify ino:1").is_none(), "no wd");
        assert_eq!(handles::unescape_mount_field(r"/a\040b"), "/a b");
    }

    fn lines(fd: &OwnedFd) -> Vec<String> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        let mut v: Vec<String> = info
            .lines()
            .filter(|l| l.starts_with("inotify "))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn inotify_round_trip_keeps_wds_masks_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let ino = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).unwrap();
        let add = |p: &std::path::Path, mask: u32| {
            inotify::add_watch(&ino, p, WatchFlags::from_bits_retain(mask)).unwrap()
        };
        for _ in 0..5 {
            let wd = add(dir, libc::IN_ATTRIB);
            inotify::remove_watch(&ino, wd).unwrap();
        }
        let w_file = add(&dir.join("file"), libc::IN_MODIFY | libc::IN_ONESHOT);
        let w_sub = add(&dir.join("sub"), libc::IN_CREATE | libc::IN_EXCL_UNLINK);
        assert_eq!((w_file, w_sub), (6, 7));
        let f = dump_own(ino.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Inotify);
        let watches = &f.inotify.as_ref().unwrap().watches;
        assert_eq!(
            watches
                .iter()
                .map(|w| (w.wd, show(&w.path).into_owned()))
                .collect::<Vec<_>>(),
            [
                (6, dir.join("file").to_str().unwrap().to_string()),
                (7, dir.join("sub").to_str().unwrap().to_string())
            ]
        );
        let n = created(&mut Inotify, &f);
        assert_eq!(lines(&n), lines(&ino));
        let flags = rustix::fs::fcntl_getfl(&n).unwrap().bits() as i32;
        assert_eq!(
            flags & libc::O_NONBLOCK,
            libc::O_NONBLOCK,
            "O_NONBLOCK kept"
        );
        // The fillers left no event behind; new events carry the saved wd.
        let mut buf = [0u8; 4096];
        assert!(rustix::io::read(&n, &mut buf).is_err());
        std::fs::write(dir.join("sub").join("new"), b"").unwrap();
        let got = rustix::io::read(&n, &mut buf).unwrap();
        assert!(got >= 16);
        assert_eq!(i32::from_ne_bytes(buf[0..4].try_into().unwrap()), 7);
        // A watched path that is gone is refused before anything is created.
        std::fs::remove_file(dir.join("file")).unwrap();
        let e = Inotify.check(me(), &f).unwrap_err().to_string();
        assert!(e.contains(dir.join("file").to_str().unwrap()), "{e}");
    }
}
