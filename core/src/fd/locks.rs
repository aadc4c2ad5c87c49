//! File locks (the `FileLocks` record of a process): flock locks, POSIX
//! record locks, OFD locks and leases, read from the `lock:` lines of
//! /proc/PID/fdinfo/FD and taken again from inside the restored process,
//! once its fd table is in place, without waiting: a lock another process
//! took meanwhile is an error naming it, never a lock silently lost.
//!
//! Who owns what decides who takes it again: a flock lock, an OFD lock or
//! a lease belongs to the open file description (taken once, through the
//! process that restores the description); a POSIX lock belongs to the fd
//! table (taken by the process its lock line names, or the first of the
//! processes sharing the table). Locks waited for (`->` lines) are not
//! held: the waiting fcntl or flock starts again after restore. A flock
//! lock whose description only a mapping holds (a JVM's hsperfdata file)
//! shows in /proc/locks alone: it is taken on the file restore maps there.
//! (A POSIX lock goes with the last fd; an OFD lock of a mapping alone,
//! shown without its owner, is not told from one held outside the tree.)
//!
//! A lease being broken is taken again, then broken again to the same type
//! by an open from crstream (O_NONBLOCK: it starts the break and returns)
//! once the fd owners are set ([`LeaseBreaks`]): its holder is told again
//! (SIGIO or its F_SETSIG signal) and has the whole lease-break-time again.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::kind::{DumpProcess, DumpTree, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::{SCRATCH_DATA, Stub};
use crstream_proto::{FileLock, FileLockKind, FileLocks, FileTable, OpenFile};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;

/// Records version since which every process has the record.
const SINCE: u32 = 3;

/// Dump: besides the locks of the fds, the flock locks a process holds
/// only through a mapping's file (it closed its fds of it): a flock
/// belongs to the open file description, which the mapping keeps alive.
#[derive(Default)]
pub(crate) struct Locks {
    /// Inodes with a flock lock seen through an fd of some process.
    flocks_of_fds: HashSet<FileId>,
    /// Per process, its flock locks on files it maps, none of its fds
    /// showing them; kept once no fd of the tree shows them either.
    of_mappings: HashMap<i32, Vec<(FileId, FileLock)>>,
    /// /proc/locks, read once for the tree when needed: reading it takes
    /// the kernel's file-lock rwsem for writing, ~15 ms here.
    all_locks: Option<String>,
}

/// A file as /proc/locks names it: device major, minor, inode.
type FileId = (u32, u32, u64);

/// One `lock:` line of an fdinfo text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockLine {
    class: String,
    mode: String,
    write: bool,
    /// The type shown is F_UNLCK (where a lease being broken goes).
    unlock: bool,
    pid: i32,
    /// The device (major, minor) of the file.
    dev: (u32, u32),
    inode: u64,
    start: u64,
    /// None: to the end of the file.
    end: Option<u64>,
}

fn parse_lock_line(line: &str) -> Option<LockLine> {
    let rest = line.strip_prefix("lock:")?.trim();
    let (_, rest) = rest.split_once(':')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"->") {
        return None;
    }
    let [class, mode, kind, pid, dev_ino, start, end] = f[..] else {
        return None;
    };
    Some(LockLine {
        class: class.to_string(),
        mode: mode.to_string(),
        write: kind == "WRITE",
        unlock: kind == "UNLCK",
        pid: pid.parse().ok()?,
        dev: {
            let mut parts = dev_ino.split(':');
            let major = u32::from_str_radix(parts.next()?, 16).ok()?;
            let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
            (major, minor)
        },
        inode: dev_ino.rsplit(':').next()?.parse().ok()?,
        start: start.parse().ok()?,
        end: match end {
            "EOF" => None,
            n => Some(n.parse().ok()?),
        },
    })
}

impl Kind for Locks {
    fn name(&self) -> &'static str {
        "file locks"
    }

    fn phase(&self) -> Phase {
        // After the whole fd table (placing an fd closes a temporary one,
        // which would drop the POSIX locks of the file).
        Phase::Files
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let table = p.records.get::<FileTable>().cloned().unwrap_or_default();
        let mut locks: Vec<FileLock> = Vec::new();
        let mut posix_seen: Vec<LockLine> = Vec::new();
        for f in table.files.iter().filter(|f| f.dup_of_fd.is_none()) {
            let text = crate::proc::read_string(format!("/proc/{pid}/fdinfo/{}", f.fd))
                .map_err(|err| DumpError::Proc { pid, err })?;
            for l in text.lines().filter_map(parse_lock_line) {
                let refuse = |why: &str| DumpError::UnsupportedFile {
                    pid,
                    fd: f.fd as i32,
                    what: format!("{} ({why})", crate::paths::show(&f.path)),
                };
                let kind = match l.class.as_str() {
                    "FLOCK" => FileLockKind::FileLockFlock,
                    "OFDLCK" => FileLockKind::FileLockOfd,
                    "POSIX" => FileLockKind::FileLockPosix,
                    "LEASE" if matches!(l.mode.as_str(), "ACTIVE" | "BREAKING") => {
                        FileLockKind::FileLockLease
                    }
                    other => return Err(refuse(&format!("a {other} lock"))),
                };
                if kind == FileLockKind::FileLockPosix {
                    // Seen through every fd of the file.
                    if posix_seen.contains(&l) {
                        continue;
                    }
                    posix_seen.push(l.clone());
                }
                // Breaking to read: only a write lease does.
                let breaking_to = (l.mode == "BREAKING").then_some(if l.unlock {
                    libc::F_UNLCK
                } else {
                    libc::F_RDLCK
                });
                if kind == FileLockKind::FileLockFlock {
                    self.flocks_of_fds.insert((l.dev.0, l.dev.1, l.inode));
                }
                locks.push(FileLock {
                    fd: f.fd,
                    kind: kind as i32,
                    write: l.write || breaking_to == Some(libc::F_RDLCK),
                    start: l.start,
                    len: l.end.map_or(0, |e| e - l.start + 1),
                    owner_pid: l.pid,
                    breaking_to,
                    mapping: None,
                });
            }
        }
        self.note_flocks_of_mappings(pid)?;
        p.records.push(FileLocks { locks });
        Ok(())
    }

    /// A POSIX lock of an fd table several processes share shows in each
    /// of them: the process that took it keeps it.
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        let pids: Vec<i32> = t.processes.iter().map(|p| p.pid).collect();
        for p in t.processes.iter_mut() {
            let pid = p.pid;
            let of_mappings = self.of_mappings.remove(&pid).unwrap_or_default();
            if let Some(locks) = p.records.get_mut::<FileLocks>() {
                locks.locks.extend(
                    of_mappings
                        .into_iter()
                        .filter(|(file, _)| !self.flocks_of_fds.contains(file))
                        .map(|(_, l)| l),
                );
                locks.locks.retain(|l| {
                    l.kind() != FileLockKind::FileLockPosix
                        || l.owner_pid == pid
                        || !pids.contains(&l.owner_pid)
                });
            }
        }
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need_since::<FileLocks>(SINCE).map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let Some(locks) = p.image.need_since::<FileLocks>(SINCE)? else {
            return Ok(());
        };
        let table = p.image.records.get::<FileTable>();
        // Those of mappings are taken as the memory is mapped.
        for l in locks.locks.iter().filter(|l| l.mapping.is_none()) {
            let file = table.and_then(|t| t.files.iter().find(|f| f.fd == l.fd));
            let kind = l.kind();
            // A description restored by another process of the tree has
            // its description-owned locks taken there.
            if kind != FileLockKind::FileLockPosix && file.is_some_and(|f| not_ours(p.vpid(), f)) {
                continue;
            }
            take(p.stub, l, l.fd as u64).map_err(|e| RestoreError::File {
                pid,
                fd: l.fd,
                path: file
                    .map(|f| crate::paths::show(&f.path).into_owned())
                    .unwrap_or_default(),
                reason: format!("taking its {} again: {e}", describe(l)),
            })?;
        }
        Ok(())
    }
}

impl Locks {
    /// The flock locks /proc/locks shows `pid` took on a file it maps
    /// shared, that no fd of it shows: held through the mapping's file.
    /// Which mapping holds it is not shown; the first of that file is
    /// taken (one description usually backs them all).
    fn note_flocks_of_mappings(&mut self, pid: i32) -> Result<(), DumpError> {
        let proc_err = |err| DumpError::Proc { pid, err };
        // Only a shared mapping of a file is looked for (the JVM's): a
        // flock through a private one is not.
        let maps = crate::proc::maps(pid).map_err(proc_err)?;
        let shared: Vec<&crate::proc::MapEntry> = maps
            .iter()
            .filter(|m| m.shared && m.inode != 0 && m.path.starts_with(b"/"))
            .collect();
        if shared.is_empty() {
            return Ok(());
        }
        if self.all_locks.is_none() {
            self.all_locks = Some(crate::proc::read_string("/proc/locks").map_err(proc_err)?);
        }
        let all = self.all_locks.as_deref().unwrap_or_default();
        for l in all
            .lines()
            .filter_map(|l| parse_lock_line(&format!("lock:\t{l}")))
            .filter(|l| l.class == "FLOCK" && l.pid == pid)
        {
            let file = (l.dev.0, l.dev.1, l.inode);
            if self.flocks_of_fds.contains(&file) {
                continue;
            }
            let mapping = shared
                .iter()
                .find(|m| (m.dev_major, m.dev_minor, m.inode) == file);
            if let Some(m) = mapping {
                self.of_mappings.entry(pid).or_default().push((
                    file,
                    FileLock {
                        fd: 0,
                        kind: FileLockKind::FileLockFlock as i32,
                        write: l.write,
                        start: 0,
                        len: 0,
                        owner_pid: l.pid,
                        breaking_to: None,
                        mapping: Some(m.start),
                    },
                ));
            }
        }
        Ok(())
    }
}

/// Takes, through `fd` of the stub (the file just mapped at `start`), the
/// flock locks of `locks` held through that mapping.
pub(crate) fn take_mapping_flocks(
    stub: &Stub,
    locks: Option<&FileLocks>,
    start: u64,
    fd: i64,
) -> Result<(), TaskError> {
    locks
        .into_iter()
        .flat_map(|l| &l.locks)
        .filter(|l| l.mapping == Some(start) && l.kind() == FileLockKind::FileLockFlock)
        .try_for_each(|l| take(stub, l, fd as u64))
}

/// A description shared with an earlier process of the tree, which
/// restored it (see `Files::restore_table`).
fn not_ours(pid: i32, f: &OpenFile) -> bool {
    f.shared_id != 0 && (f.shared_id >> 32) as i32 != pid
}

fn describe(l: &FileLock) -> String {
    let rw = if l.write { "write" } else { "read" };
    let range = match l.len {
        0 => format!("{}..EOF", l.start),
        n => format!("{}..{}", l.start, l.start + n),
    };
    match l.kind() {
        FileLockKind::FileLockFlock => {
            format!("flock {}", if l.write { "LOCK_EX" } else { "LOCK_SH" })
        }
        FileLockKind::FileLockPosix => format!("POSIX {rw} lock on {range}"),
        FileLockKind::FileLockOfd => format!("OFD {rw} lock on {range}"),
        FileLockKind::FileLockLease => format!("{rw} lease"),
    }
}

/// Takes lock `l` from inside the stub, through its `fd`, without waiting.
fn take(stub: &Stub, l: &FileLock, fd: u64) -> Result<(), TaskError> {
    match l.kind() {
        FileLockKind::FileLockFlock => {
            let op = if l.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            stub.call("flock", libc::SYS_flock, &[fd, (op | libc::LOCK_NB) as u64])?;
        }
        FileLockKind::FileLockPosix | FileLockKind::FileLockOfd => {
            // struct flock: l_type, l_whence (shorts), l_start, l_len, l_pid.
            let mut b = [0u8; 32];
            let kind = if l.write {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            } as i16;
            b[0..2].copy_from_slice(&kind.to_le_bytes());
            b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
            b[8..16].copy_from_slice(&l.start.to_le_bytes());
            b[16..24].copy_from_slice(&l.len.to_le_bytes());
            let at = stub.put(SCRATCH_DATA, &b)?;
            let cmd = if l.kind() == FileLockKind::FileLockOfd {
                libc::F_OFD_SETLK
            } else {
                libc::F_SETLK
            };
            stub.call("fcntl(F_SETLK)", libc::SYS_fcntl, &[fd, cmd as u64, at])?;
        }
        FileLockKind::FileLockLease => {
            let set = |kind: i32| {
                stub.call(
                    "fcntl(F_SETLEASE)",
                    libc::SYS_fcntl,
                    &[fd, libc::F_SETLEASE as u64, kind as u64],
                )
            };
            match (l.write, l.breaking_to) {
                (true, _) => set(libc::F_WRLCK)?,
                // Read or write: either breaks to F_UNLCK alike; a write
                // lease needs the file open nowhere else, a read lease
                // open nowhere for writing.
                (false, Some(_)) => set(libc::F_WRLCK).or_else(|_| set(libc::F_RDLCK))?,
                (false, None) => set(libc::F_RDLCK)?,
            };
        }
    }
    Ok(())
}

/// Leases that were being broken are broken again, from outside, once
/// every fd owner is set: the break signals the holder as the first did.
pub(crate) struct LeaseBreaks;

impl Kind for LeaseBreaks {
    fn name(&self) -> &'static str {
        "lease breaks"
    }

    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, _p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        Ok(()) // `Locks` saves them
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let Some(locks) = p.image.need_since::<FileLocks>(SINCE)? else {
            return Ok(());
        };
        let table = p.image.records.get::<FileTable>();
        for l in &locks.locks {
            let Some(to) = l.breaking_to else { continue };
            let file = table.and_then(|t| t.files.iter().find(|f| f.fd == l.fd));
            if file.is_some_and(|f| not_ours(p.vpid(), f)) {
                continue;
            }
            // Opening for writing breaks any lease to F_UNLCK; for reading,
            // a write lease to F_RDLCK.
            let mode = if to == libc::F_UNLCK {
                libc::O_WRONLY
            } else {
                libc::O_RDONLY
            };
            let opened = std::fs::OpenOptions::new()
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .read(mode == libc::O_RDONLY)
                .write(mode == libc::O_WRONLY)
                .open(format!("/proc/{pid}/fd/{}", l.fd));
            let reason = match opened {
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => continue,
                Err(e) => format!("breaking its lease again: {e}"),
                Ok(_) => "breaking its lease again: the open found no lease".into(),
            };
            return Err(RestoreError::File {
                pid,
                fd: l.fd,
                path: file
                    .map(|f| crate::paths::show(&f.path).into_owned())
                    .unwrap_or_default(),
                reason,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse_lock_line("lock:\t1: POSIX  ADVISORY  WRITE 1234 08:01:5678 10 19").unwrap();
        assert_eq!(
            l,
            LockLine {
                class: "POSIX".into(),
                mode: "ADVISORY".into(),
                write: true,
                unlock: false,
                pid: 1234,
                dev: (8, 1),
                inode: 5678,
                start: 10,
                end: Some(19),
            }
        );
        let l = parse_lock_line("lock:\t2: OFDLCK ADVISORY  READ  -1 00:1b:9 100 EOF").unwrap();
        assert_eq!(
            (l.class.as_str(), l.write, l.pid, l.end, l.dev),
            ("OFDLCK", false, -1, None, (0, 0x1b))
        );
        let l = parse_lock_line("lock:\t3: LEASE  BREAKING  UNLCK 77 00:1b:9 0 EOF").unwrap();
        assert_eq!(
            (l.class.as_str(), l.mode.as_str(), l.unlock),
            ("LEASE", "BREAKING", true)
        );
        assert_eq!(
            parse_lock_line("lock:\t4: -> FLOCK  ADVISORY  WRITE 5 00:1b:9 0 EOF"),
            None
        );
        assert_eq!(parse_lock_line("pos:\t0"), None);
    }
}
