//! Pipes and FIFOs, with the bytes queued in them. Both ends, in every
//! process, name a pipe by its inode; restore creates one pipe per inode
//! (a FIFO is opened again by its path) and hands its ends out.
//!
//! The queued bytes are read without consuming them: tee() copies them
//! into a scratch pipe of ours, which we read. A pipe in packet mode
//! (O_DIRECT) keeps its packets: each read of the copy returns one, and
//! restore writes them one by one.

use super::{DumpFd, FdKind, Reopen, dup, reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpTree, RestoreObjects};
use crstream_proto::{FileKind, OpenFile, PipeFile};
use rustix::fs::{Mode, OFlags};
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

#[derive(Default)]
pub(super) struct Pipes {
    /// Dump: pipe inodes whose queued bytes are saved already (on an
    /// earlier fd).
    saved: HashSet<u64>,
    /// Restore: pipe/FIFO inode (at dump) -> our copy of it.
    created: HashMap<u64, PipeObj>,
}

struct PipeObj {
    /// Anonymous pipe: [read, write]; FIFO: [O_RDWR keeper, same].
    ends: [OwnedFd; 2],
    /// Read/write ends already handed out once (later ones are reopened to
    /// get their own open file description).
    handed: [bool; 2],
    filled: bool,
}

/// `INODE` of "prefix:[INODE]".
pub(super) fn bracket_inode(link: &[u8], prefix: &str) -> Option<u64> {
    std::str::from_utf8(link.strip_prefix(prefix.as_bytes())?)
        .ok()?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl FdKind for Pipes {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let (kind, inode) = if let Some(ino) = bracket_inode(d.link, "pipe:") {
            (FileKind::Pipe, ino)
        } else if let Some(md) =
            d.md.filter(|m| m.file_type().is_fifo() && d.link.starts_with(b"/"))
        {
            if crate::paths::is_deleted(d.link) {
                if md.nlink() != 0 {
                    return Err(d.refuse(
                        "a FIFO whose name was removed but that has another: not supported",
                    ));
                }
                // A "ghost" FIFO: made again (and removed) at restore; its
                // bytes are saved below like those of any pipe.
                let source = format!("/proc/{}/fd/{}", d.pid, d.fd);
                f.unlinked_file = d
                    .objects
                    .unlinked
                    .note(d.pid, &source, d.link)
                    .map_err(|reason| d.refuse(reason))?;
                f.deleted = true;
            }
            f.dev = md.dev();
            f.mode = md.mode();
            (FileKind::Fifo, md.ino())
        } else {
            return Ok(false);
        };
        let dup = d.take()?;
        let capacity = rustix::pipe::fcntl_getpipe_size(&dup)
            .map_err(|e| d.error("F_GETPIPE_SZ", e.into()))?;
        let (queued, mut packets) = if self.saved.contains(&inode) {
            (Vec::new(), Vec::new())
        } else {
            let q =
                peek(d.pid, d.fd, capacity).map_err(|e| d.error("reading the queued bytes", e))?;
            self.saved.insert(inode);
            q
        };
        // One run of bytes is one packet where this end is in packet mode.
        if packets.len() == 1 && f.open_flags as i32 & libc::O_DIRECT == 0 {
            packets.clear();
        }
        f.kind = kind as i32;
        f.path = crate::paths::undeleted(d.link).to_vec();
        f.inode = inode;
        f.pipe = Some(PipeFile {
            inode,
            write_end: f.open_flags as i32 & libc::O_ACCMODE == libc::O_WRONLY,
            capacity: capacity as u32,
            queued,
            external: kind == FileKind::Pipe && d.external_pipes.contains(&inode),
            packets,
        });
        Ok(true)
    }

    /// A pipe the tree holds one end of, whose other end a process outside
    /// the tree holds (the reader of `app | tee log`), would come back
    /// with nobody at that end: the next write fails with EPIPE (SIGPIPE)
    /// and the next read sees the end of the stream. Refused, naming who
    /// holds it, when the tree's end is a stdin, stdout or stderr (which
    /// nearly every program uses); any other such fd (one inherited and
    /// most likely never used: shells and CI runners leak them) is saved
    /// with a warning. A pipe whose other end nobody holds any more comes
    /// back as broken as it is.
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        // Pipe inode -> [read end, write end] held by the tree, and the fd
        // to name (a stdio one if any).
        let mut held: HashMap<u64, ([bool; 2], (i32, u32))> = HashMap::new();
        // Said to be outside (--external): restore takes them handed in.
        let mut external = HashSet::new();
        for p in t.processes.iter() {
            let Some(table) = p.records.get::<crstream_proto::FileTable>() else {
                continue;
            };
            for f in table.files.iter().filter(|f| f.kind() == FileKind::Pipe) {
                let Some(pipe) = &f.pipe else { continue };
                if pipe.external {
                    external.insert(pipe.inode);
                }
                let e = held
                    .entry(pipe.inode)
                    .or_insert(([false; 2], (p.pid, f.fd)));
                e.0[pipe.write_end as usize] = true;
                if f.fd <= 2 && e.1.1 > 2 {
                    e.1 = (p.pid, f.fd);
                }
            }
        }
        // Both ends inside, or one said to be outside: nothing to look for.
        held.retain(|inode, (ends, _)| !(ends[0] && ends[1] || external.contains(inode)));
        if held.is_empty() {
            return Ok(());
        }
        for (pid, fd, inode, write_end) in pipe_ends_outside(&super::ours(t, &[]), &held) {
            let (ends, (in_pid, in_fd)) = held[&inode];
            if ends[write_end as usize] {
                continue; // the same end as the tree's: no one is missing
            }
            let comm = crate::proc::read_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let what = format!(
                "pipe:[{inode}], whose {} end pid {pid} ({}) holds at its fd {fd}, outside the \
                 tree: restored, it would have nobody at that end",
                if write_end { "write" } else { "read" },
                comm.trim()
            );
            if in_fd > 2 {
                tracing::warn!(pid = in_pid, fd = in_fd, "{what}");
                continue;
            }
            return Err(DumpError::UnsupportedFile {
                pid: in_pid,
                fd: in_fd as i32,
                what: format!(
                    "{what} (dump that process with it, give this one a file, or dump with \
                     --external pipe:[{inode}] and restore with --inherit-fd \
                     fd[N]:pipe:[{inode}])"
                ),
            });
        }
        Ok(())
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Pipe | FileKind::Fifo)
    }

    /// An end of a pipe whose other end was outside the tree comes back
    /// only as the pipe handed in for it (files handed in are not
    /// checked): with a pipe of our own nobody would be at the other end.
    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        match &f.pipe {
            Some(p) if p.external => Err(super::file_error(
                pid,
                f,
                format!(
                    "an end of pipe:[{}], whose other end was outside the tree (dump \
                     --external): hand a pipe in for it with --inherit-fd fd[N]:pipe:[{}]",
                    p.inode, p.inode
                ),
            )),
            _ => Ok(()),
        }
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |what: &str, e: io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let p = super::part(pid, f, f.pipe.as_ref(), "pipe")?;
        // A removed FIFO: through the one made again in crstream.
        let fifo_path = if f.deleted {
            objects
                .unlinked
                .proc_path(f.unlinked_file, &[crstream_proto::UnlinkedKind::Fifo])?
                .into_bytes()
        } else {
            f.path.clone()
        };
        let fd = self
            .open_pipe(f, p, &fifo_path)
            .map_err(|e| ferr("recreating the pipe", e))?;
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
        Ok(Reopen::Created(fd))
    }
}

/// Every fd of a process not in `skip` that is an end of one of the pipes
/// `inodes` names: (pid, fd, inode, is the write end).
fn pipe_ends_outside<T>(
    skip: &HashSet<i32>,
    inodes: &HashMap<u64, T>,
) -> Vec<(i32, i32, u64, bool)> {
    super::held_outside(skip, "pipe:", |i| inodes.contains_key(&i))
        .into_iter()
        .map(|(pid, fd, inode)| {
            // The end: from the access mode of the description.
            let write_end = crate::proc::read_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .ok()
                .and_then(|info| {
                    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                    u32::from_str_radix(flags.trim(), 8).ok()
                })
                .is_some_and(|flags| flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32);
            (pid, fd, inode, write_end)
        })
        .collect()
}

impl Pipes {
    fn open_pipe(&mut self, f: &OpenFile, p: &PipeFile, fifo_path: &[u8]) -> io::Result<OwnedFd> {
        let fifo = f.kind() == FileKind::Fifo;
        let obj = match self.created.entry(p.inode) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let ends = if fifo {
                    let md = std::fs::metadata(crate::paths::path(fifo_path))?;
                    if !md.file_type().is_fifo() {
                        return Err(io::Error::other("the path is no longer a FIFO"));
                    }
                    // O_RDWR|O_NONBLOCK never blocks waiting for the other side.
                    let keep = rustix::fs::open(
                        crate::paths::path(fifo_path),
                        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    let keep2 = dup(&keep)?;
                    [keep, keep2]
                } else {
                    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
                    [r, w]
                };
                if p.capacity != 0 {
                    let cur = rustix::pipe::fcntl_getpipe_size(&ends[1])?;
                    if cur as u32 != p.capacity {
                        rustix::pipe::fcntl_setpipe_size(&ends[1], p.capacity as usize)?;
                    }
                }
                v.insert(PipeObj {
                    ends,
                    handed: [false; 2],
                    filled: false,
                })
            }
        };
        if !p.queued.is_empty() {
            if obj.filled {
                tracing::debug!(
                    inode = p.inode,
                    "queued bytes saved twice for one pipe: ignored"
                );
            } else {
                // Non-blocking so that a pipe that cannot hold them fails
                // instead of hanging the restore.
                if p.packets.is_empty() {
                    let w = reopen(&obj.ends[1], libc::O_WRONLY)?;
                    write_all(&w, &p.queued)?;
                } else {
                    write_packets(&obj.ends[1], &p.queued, &p.packets)?;
                }
                obj.filled = true;
            }
        }
        let access = f.open_flags as i32 & libc::O_ACCMODE;
        if fifo || access == libc::O_RDWR {
            // FIFO: every open is its own description, as at dump.
            return reopen(&obj.ends[0], access);
        }
        let i = usize::from(p.write_end);
        if obj.handed[i] {
            // Another description of the same end: reopen, so its status
            // flags are its own.
            return reopen(&obj.ends[i], access);
        }
        obj.handed[i] = true;
        dup(&obj.ends[i])
    }
}

/// Writes all of `data` to an fd known to have room; EAGAIN is an error
/// (the object cannot hold what it held).
pub(super) fn write_all(fd: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `queued` into a pipe (`end`: its write end) in packet mode, one
/// write for each of `packets` (their lengths), so that each read of the
/// pipe returns one again.
fn write_packets(end: &OwnedFd, queued: &[u8], packets: &[u32]) -> io::Result<()> {
    if packets.iter().map(|&n| n as usize).sum::<usize>() != queued.len() {
        return Err(io::Error::other(
            "bad image: packets of a pipe that add up to another length",
        ));
    }
    // (An open with O_DIRECT refuses a pipe; F_SETFL sets it.)
    let w = reopen(end, libc::O_WRONLY)?;
    let flags = rustix::fs::fcntl_getfl(&w)? | OFlags::DIRECT;
    rustix::fs::fcntl_setfl(&w, flags)?;
    let mut at = 0;
    for &n in packets {
        let packet = &queued[at..at + n as usize];
        if rustix::io::write(&w, packet)? != packet.len() {
            return Err(io::Error::other("a packet was cut short"));
        }
        at += n as usize;
    }
    Ok(())
}

/// The bytes queued in the pipe of fd `fd` of `pid`, left in place, and
/// the length of each run a read returns of them: each packet of a pipe
/// in packet mode (O_DIRECT), else all of them at once.
fn peek(pid: i32, fd: i32, capacity: usize) -> io::Result<(Vec<u8>, Vec<u32>)> {
    // A read end of our own on the same pipe: works when the process only
    // holds the write end, and O_NONBLOCK keeps a FIFO open from blocking.
    let rd = rustix::fs::open(
        format!("/proc/{pid}/fd/{fd}"),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let avail = rustix::io::ioctl_fionread(&rd)? as usize;
    if avail == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    // A scratch pipe with as many slots as the source, so tee() can
    // duplicate every buffer in one call (it always starts at the head of
    // the source, so it cannot be resumed).
    let (sr, sw) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    rustix::pipe::fcntl_setpipe_size(&sw, capacity)?;
    let n = rustix::pipe::tee(&rd, &sw, avail, SpliceFlags::NONBLOCK)?;
    if n != avail {
        return Err(io::Error::other(format!(
            "tee copied {n} of the {avail} queued bytes"
        )));
    }
    // tee keeps each buffer's packet mark: a read stops after a packet.
    let mut out = vec![0u8; avail];
    let (mut got, mut runs) = (0, Vec::new());
    while got < out.len() {
        match rustix::io::read(&sr, &mut out[got..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => {
                got += n;
                runs.push(n as u32);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((out, runs))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own, read_avail};
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn pipe_queued_bytes_survive_and_are_not_consumed() {
        let (r, w) = pipe();
        let data: Vec<u8> = (0..3072u32).map(|i| (i * 7) as u8).collect();
        let mut wf = std::fs::File::from(w.try_clone().unwrap());
        wf.write_all(&data).unwrap();
        // The write end first: it alone carries the queued bytes.
        let mut kind = Pipes::default();
        let fw = super::super::testing::dump_with(&mut kind, w.as_raw_fd()).unwrap();
        let fr = super::super::testing::dump_with(&mut kind, r.as_raw_fd()).unwrap();
        assert_eq!(fw.kind(), FileKind::Pipe);
        let pw = fw.pipe.as_ref().unwrap();
        let pr = fr.pipe.as_ref().unwrap();
        assert!(pw.write_end && !pr.write_end);
        assert_eq!(pw.inode, pr.inode);
        assert_eq!(pw.queued, data);
        assert!(pr.queued.is_empty());
        assert_eq!(fw.path, format!("pipe:[{}]", pw.inode).into_bytes());
        // Nothing consumed.
        assert_eq!(rustix::io::ioctl_fionread(&r).unwrap(), 3072);

        let mut kind = Pipes::default();
        let nr = created(&mut kind, &fr);
        let nw = created(&mut kind, &fw);
        let mode = |fd: &OwnedFd| rustix::fs::fcntl_getfl(fd).unwrap().bits() as i32;
        assert_eq!(mode(&nr) & libc::O_ACCMODE, libc::O_RDONLY);
        assert_eq!(mode(&nw) & libc::O_ACCMODE, libc::O_WRONLY);
        let cap = rustix::pipe::fcntl_getpipe_size(&nr).unwrap();
        assert_eq!(cap as u32, pw.capacity);
        rustix::fs::fcntl_setfl(&nr, OFlags::NONBLOCK).unwrap();
        assert_eq!(read_avail(&nr), data);
        // The original still holds its bytes.
        let mut orig = vec![0u8; 3072];
        std::fs::File::from(r).read_exact(&mut orig).unwrap();
        assert_eq!(orig, data);
    }

    /// A packet-mode pipe (O_DIRECT) keeps its packets: each read returns
    /// one (they came back as one run of bytes).
    #[test]
    fn packets_of_a_packet_mode_pipe_come_back_one_by_one() {
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::DIRECT).unwrap();
        for packet in [&b"abc"[..], b"defghi", b"j"] {
            assert_eq!(rustix::io::write(&w, packet).unwrap(), packet.len());
        }
        let mut kind = Pipes::default();
        let fr = super::super::testing::dump_with(&mut kind, r.as_raw_fd()).unwrap();
        let fw = super::super::testing::dump_with(&mut kind, w.as_raw_fd()).unwrap();
        assert_eq!(fr.pipe.as_ref().unwrap().packets, [3, 6, 1]);
        drop((r, w));
        let mut kind = Pipes::default();
        let nr = created(&mut kind, &fr);
        let _nw = created(&mut kind, &fw);
        rustix::fs::fcntl_setfl(&nr, OFlags::NONBLOCK).unwrap();
        let mut buf = [0u8; 64];
        for want in [&b"abc"[..], b"defghi", b"j"] {
            let n = rustix::io::read(&nr, &mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }

    #[test]
    fn fifo_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let orig = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        write_all(&orig, b"fifo data").unwrap();
        let f = dump_own(orig.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Fifo);
        assert_eq!(f.path, path.to_str().unwrap().as_bytes());
        assert_eq!(f.pipe.as_ref().unwrap().queued, b"fifo data");
        assert_eq!(read_avail(&orig), b"fifo data");
        drop(orig);
        let mut kind = Pipes::default();
        let n = created(&mut kind, &f);
        let flags = rustix::fs::fcntl_getfl(&n).unwrap().bits() as i32;
        assert_eq!(
            flags & (libc::O_ACCMODE | libc::O_NONBLOCK),
            libc::O_RDWR | libc::O_NONBLOCK
        );
        assert_eq!(read_avail(&n), b"fifo data");
    }
}
