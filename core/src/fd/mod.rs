//! Open files: the fd table of each process (the `FileTable` record), one
//! file per kind of open file.
//!
//! Dump reads each fd from /proc (its link, fdinfo and metadata) and asks
//! the fd kinds in turn which one it is; an fd no kind takes is refused by
//! name. Kinds that need the object itself inspect it from crstream's own
//! process through a duplicate taken with pidfd_getfd (same open file
//! description), so nothing is injected into the target and nothing is
//! consumed.
//!
//! Restore puts every fd back at its number in the stub: files are opened
//! again by path from inside the stub; kernel objects (pipes, sockets,
//! eventfd, ...) are created in crstream and handed over with pidfd_getfd.
//! An open file description several fds or processes share is created once
//! and shared again.

pub(crate) mod accept_queue;
mod epoll;
mod eventfd;
mod fanotify;
mod handles;
mod inet;
pub(crate) use inet::refuse_shared_outside;
mod inotify;
pub(crate) mod locks;
mod multicast;
mod netlink;
pub(crate) mod owner;
mod packet;
mod packets;
mod passed;
mod peer_ids;
pub(crate) mod pidfd;
mod pipe;
pub(crate) mod pty;
pub(crate) mod regular;
mod signalfd;
mod sock_diag;
mod socket;
pub(crate) mod tcp;
mod timerfd;
pub(crate) mod tty;
mod udp;
mod unix;
mod unix_file;

use crate::error::{DumpError, RestoreError, TaskError};
use crate::kind::{
    DumpObjects, DumpProcess, DumpTree, Kind, Phase, ProcessDump, RestoreObjects, RestoreProcess,
};
use crate::paths::show;
use crate::records::ProcessImage;
use crate::stub::Stub;
use crate::sys::kcmp;
use crstream_proto::{FileTable, OpenFile};
use passed::Passing;
use std::fs::Metadata;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The fd kinds, tried in this order on each fd at dump: those known by
/// their /proc link first, then those known by the file's type.
fn fd_kinds() -> Vec<Box<dyn FdKind>> {
    vec![
        Box::new(pipe::Pipes::default()),
        Box::new(unix::UnixSockets::default()),
        Box::new(inet::InetSockets::default()),
        Box::new(netlink::NetlinkSockets::default()),
        Box::new(packet::PacketSockets::default()),
        Box::new(socket::OtherSockets),
        Box::new(eventfd::EventFd),
        Box::new(timerfd::TimerFd),
        Box::new(signalfd::SignalFd),
        Box::new(epoll::Epoll),
        Box::new(inotify::Inotify),
        Box::new(fanotify::Fanotify),
        Box::new(pidfd::PidFds),
        // Before Terminals: a pseudo-terminal whose master the tree holds.
        Box::new(pty::Ptys::default()),
        Box::new(tty::Terminals),
        Box::new(regular::Regular),
    ]
}

/// One kind of open file.
trait FdKind {
    /// If the fd is of this kind: fills `f.kind`, `f.path` and the kind's
    /// sub-record, and returns Ok(true). Ok(false): not this kind. Err: this
    /// kind, but it cannot be saved (naming the fd and why).
    fn dump(&mut self, fd: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError>;
    /// Once every fd of the tree was read: refusals that need all of them.
    fn dump_tree(&mut self, _t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        Ok(())
    }
    /// Whether this kind restores the saved fd `f`.
    fn restores(&self, f: &OpenFile) -> bool;
    /// Before restore creates anything.
    fn check(&self, _pid: i32, _f: &OpenFile) -> Result<(), RestoreError> {
        Ok(())
    }
    /// How the open file description of `f` comes back in process `pid`.
    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError>;
    /// Once every fd of the process is in place (registrations that name
    /// other fds by number).
    fn after_table(&mut self, _stub: &Stub, _f: &OpenFile) -> Result<(), RestoreError> {
        Ok(())
    }
    /// Once the file handed in for `f` (--inherit-fd) is at its fd, before
    /// the next fds of the process are opened.
    fn handed_in(&mut self, _stub: &Stub, _f: &OpenFile) -> Result<(), RestoreError> {
        Ok(())
    }
    /// Dump, after each process: the files messages queued on its sockets
    /// carry (`passed.rs`).
    fn take_passed(&mut self) -> Vec<Passing> {
        Vec::new()
    }
    /// Restore, once every fd table is in place: the queues still to fill
    /// (`passed.rs`).
    fn take_fills(&mut self) -> Option<unix::Pending> {
        None
    }
}

/// One fd of a frozen process, as fd kinds read it.
struct DumpFd<'a> {
    pid: i32,
    fd: i32,
    /// Its /proc/PID/fd link ("/path", "pipe:[123]", "anon_inode:..."),
    /// as bytes (a path need not be UTF-8).
    link: &'a [u8],
    /// stat of the file (through /proc/PID/fd/N), if it has one.
    md: Option<&'a Metadata>,
    /// /proc/PID/stat of its process (its session, controlling terminal).
    stat: &'a crate::proc::Stat,
    shell_job: bool,
    /// What to do with established TCP connections.
    tcp: tcp::TcpMode,
    /// Unix sockets connected outside the tree are allowed.
    ext_unix: bool,
    /// Pipes whose other end may be outside the tree (--external).
    external_pipes: &'a [u64],
    /// Terminals outside the tree, (rdev, dev) (--external).
    external_ttys: &'a [(u64, u64)],
    /// Connections waiting in a listener's accept queue are dropped.
    skip_in_flight: bool,
    /// Device number of the tree's controlling terminal (root's tty_nr).
    job_tty: u64,
    objects: &'a mut DumpObjects,
    /// Syscalls injected into the (frozen) process: only to take the
    /// connections out of a listener's accept queue.
    inject: Option<&'a crate::kind::Injector>,
}

impl DumpFd<'_> {
    /// The fd's fdinfo text.
    fn fdinfo(&self) -> Result<String, DumpError> {
        crate::proc::read_string(format!("/proc/{}/fdinfo/{}", self.pid, self.fd))
            .map_err(|err| DumpError::Proc { pid: self.pid, err })
    }

    /// A duplicate of the fd in crstream: the same open file description.
    fn take(&self) -> Result<OwnedFd, DumpError> {
        crate::sys::pidfd::take_fd(self.pid, self.fd).map_err(|e| self.error("pidfd_getfd", e))
    }

    /// The error of a failed step (`what`) while saving this fd.
    fn error(&self, what: &str, e: io::Error) -> DumpError {
        DumpError::File {
            pid: self.pid,
            fd: self.fd,
            path: show(self.link).into_owned(),
            err: io::Error::new(e.kind(), format!("{what}: {e}")),
        }
    }

    /// A refusal of this fd: `why` it cannot be saved.
    fn refuse(&self, why: impl std::fmt::Display) -> DumpError {
        DumpError::UnsupportedFile {
            pid: self.pid,
            fd: self.fd,
            what: format!("{} ({why})", show(self.link)),
        }
    }

    /// A malformed fdinfo field.
    fn bad_fdinfo(&self, detail: String) -> DumpError {
        DumpError::Proc {
            pid: self.pid,
            err: crate::error::ProcError::Parse {
                path: format!("/proc/{}/fdinfo/{}", self.pid, self.fd),
                detail,
            },
        }
    }
}

/// Opens (with `flags`) inode `ino` of device `dev` by its saved file
/// handle, checked to be that inode with a link left. Err: why not.
pub(crate) fn open_by_saved_handle(
    dev: u64,
    ino: u64,
    handle: &crstream_proto::FileHandle,
    flags: i32,
) -> Result<OwnedFd, String> {
    handles::open_linked_elsewhere(&handles::Handle::of_inode(dev, ino, handle), flags)
}

/// The processes whose fds are the tree's: its own, crstream and `also`
/// (the tree's live-dump snapshots, which share its fds).
pub(super) fn ours(t: &DumpTree<'_>, also: &[i32]) -> std::collections::HashSet<i32> {
    t.entries
        .iter()
        .map(|e| e.pid as i32)
        .chain([std::process::id() as i32])
        .chain(also.iter().copied())
        .collect()
}

/// Every fd of a process not in `skip` whose link is PREFIX[INODE] (a
/// pipe, a socket) with an inode `wanted` says: (pid, fd, inode). Reads
/// every process's fd table: called only where the tree holds such files.
pub(super) fn held_outside(
    skip: &std::collections::HashSet<i32>,
    prefix: &str,
    wanted: impl Fn(u64) -> bool,
) -> Vec<(i32, i32, u64)> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| !skip.contains(p))
    {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in fds.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let Some(inode) = pipe::bracket_inode(link.as_os_str().as_encoded_bytes(), prefix)
                .filter(|&i| wanted(i))
            else {
                continue;
            };
            if let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                found.push((pid, fd, inode));
            }
        }
    }
    found
}

/// How an open file description comes back.
#[derive(Debug)]
enum Reopen {
    /// Opened again from inside the process by path, with these flags,
    /// then moved to `offset` (if not 0).
    Path {
        path: Vec<u8>,
        flags: i32,
        offset: u64,
    },
    /// Created in crstream (with its status flags), handed over.
    Created(OwnedFd),
}

/// The record of fd `fd` as its fdinfo shows it; its kind fills the rest.
fn open_file(fd: i32, info: &crate::proc::FdInfo) -> OpenFile {
    OpenFile {
        fd: fd as u32,
        open_flags: info.flags & !(libc::O_CLOEXEC as u32),
        cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
        offset: info.pos,
        ..Default::default()
    }
}

/// Asks the fd kinds in turn which one `d` is; Ok(false): none takes it.
fn dump_by_kind(
    kinds: &mut [Box<dyn FdKind>],
    d: &mut DumpFd<'_>,
    f: &mut OpenFile,
) -> Result<bool, DumpError> {
    for k in kinds.iter_mut() {
        if k.dump(d, f)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Value of `key:` in an fdinfo text.
pub(crate) fn fdinfo_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Status flags F_SETFL can change; the rest of `open_flags` is fixed by
/// how the object is created.
const SETFL_MASK: i32 =
    libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;

/// The error of restoring fd `f` of process `pid`: `reason`.
fn file_error(pid: i32, f: &OpenFile, reason: impl std::fmt::Display) -> RestoreError {
    RestoreError::File {
        pid,
        fd: f.fd,
        path: show(&f.path).into_owned(),
        reason: reason.to_string(),
    }
}

/// `part`, the sub-record of `f` its kind needs (`what`), or the error of
/// an image without it.
fn part<'a, T>(
    pid: i32,
    f: &OpenFile,
    part: Option<&'a T>,
    what: &str,
) -> Result<&'a T, RestoreError> {
    part.ok_or_else(|| file_error(pid, f, format_args!("bad image: {what} record missing")))
}

/// Gives an fd created in crstream the saved status flags.
fn set_status_flags(fd: &OwnedFd, open_flags: u32) -> io::Result<()> {
    use rustix::fs::OFlags;
    let cur = rustix::fs::fcntl_getfl(fd)?.bits() as i32;
    let want = (cur & !SETFL_MASK) | (open_flags as i32 & SETFL_MASK);
    if want != cur {
        rustix::fs::fcntl_setfl(fd, OFlags::from_bits_retain(want as u32))?;
    }
    Ok(())
}

/// A new fd for the open file description of `fd` (close-on-exec).
fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// A new open file description of the file `fd` opens, with `access` mode
/// (through /proc/self/fd; non-blocking so that a FIFO never waits for a
/// partner: the saved flags are set afterwards).
fn reopen(fd: &OwnedFd, access: i32) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::from_bits_retain((access | libc::O_NONBLOCK | libc::O_CLOEXEC) as u32),
        Mode::empty(),
    )?)
}

/// Open files.
#[derive(Default)]
pub(crate) struct Files {
    kinds: Vec<Box<dyn FdKind>>,
    /// Dump: device number of the tree's controlling terminal.
    job_tty: Option<u64>,
    /// Dump: files in flight in queued messages, until the tree is read.
    in_flight: Vec<passed::InFlight>,
    /// Dump: crstream's copies of them, open until the dump ends.
    held_open: Vec<OwnedFd>,
    /// Dump: what the dump was asked, for the files in flight.
    flags: Option<passed::DumpFlags>,
}

impl Files {
    pub(crate) fn new() -> Self {
        Self {
            kinds: fd_kinds(),
            ..Default::default()
        }
    }

    /// The kind that restores `f`, or the error of a bad image.
    fn restorer(&mut self, pid: i32, f: &OpenFile) -> Result<&mut Box<dyn FdKind>, RestoreError> {
        self.kinds
            .iter_mut()
            .find(|k| k.restores(f))
            .ok_or_else(|| {
                file_error(
                    pid,
                    f,
                    format!("bad image: no kind of open file restores {:?}", f.kind()),
                )
            })
    }
}

impl Kind for Files {
    fn name(&self) -> &'static str {
        "open files"
    }

    fn phase(&self) -> Phase {
        Phase::Files
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let proc_err = |err| DumpError::Proc { pid, err };
        // The tree's root comes first: its terminal is the job's.
        let job_tty = *self.job_tty.get_or_insert(p.stat.field(7));
        let mut files: Vec<OpenFile> = Vec::new();
        for fd in crate::proc::fds(pid).map_err(proc_err)? {
            let link = crate::proc::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(proc_err)?;
            let info = crate::proc::fdinfo(pid, fd).map_err(proc_err)?;
            let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"));
            let mut f = open_file(fd, &info);
            let mut dfd = DumpFd {
                pid,
                fd,
                link: &link,
                md: md.as_ref().ok(),
                stat: p.stat,
                shell_job: p.shell_job,
                tcp: p.tcp,
                ext_unix: p.ext_unix,
                external_pipes: p.external_pipes,
                external_ttys: p.external_ttys,
                skip_in_flight: p.skip_in_flight,
                job_tty,
                objects: p.objects,
                inject: p.inject,
            };
            if !dump_by_kind(&mut self.kinds, &mut dfd, &mut f)? {
                let name = show(&link).into_owned();
                return Err(match md {
                    Err(err) if link.starts_with(b"/") => DumpError::File {
                        pid,
                        fd,
                        path: name,
                        err,
                    },
                    _ => DumpError::UnsupportedFile {
                        pid,
                        fd,
                        what: name,
                    },
                });
            }
            // dev/inode let the tree-wide kcmp pass find shared descriptions.
            if let Ok(md) = &md {
                f.dev = md.dev();
                f.inode = md.ino();
            }
            mark_dup(pid, &files, &mut f);
            files.push(f);
        }
        p.records.push(FileTable {
            pid: pid as u32,
            files,
        });
        // The same for every process of one dump: kept from the first.
        self.flags.get_or_insert_with(|| passed::DumpFlags {
            shell_job: p.shell_job,
            tcp: p.tcp,
            ext_unix: p.ext_unix,
            external_pipes: p.external_pipes.to_vec(),
            external_ttys: p.external_ttys.to_vec(),
            skip_in_flight: p.skip_in_flight,
            job_tty,
        });
        self.read_in_flight(p);
        Ok(())
    }

    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        self.attach_in_flight(t)?;
        for k in self.kinds.iter_mut() {
            k.dump_tree(t)?;
        }
        mark_shared_files(t.processes);
        refuse_unrestorable_epoll_registrations(t.processes)
    }

    /// Refuses files that changed in a way that would corrupt the restored
    /// process, before anything is created.
    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        let Some(table) = p.records.get::<FileTable>() else {
            return Ok(());
        };
        // A file handed in stands for the saved one, whatever became of it.
        let handed_in = |f: &OpenFile| {
            let key = inherit_key(f);
            p.inherit.iter().any(|(_, k)| *k == key)
        };
        for f in table
            .files
            .iter()
            .filter(|f| f.dup_of_fd.is_none() && !handed_in(f))
        {
            if let Some(k) = self.kinds.iter().find(|k| k.restores(f)) {
                k.check(p.pid, f)?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        // A shared fd table was filled by the parent (earlier in order).
        if p.entry().shares_files_with_parent {
            return Ok(());
        }
        let Some(table) = p.image.records.get::<FileTable>() else {
            return Ok(());
        };
        self.restore_table(p.stub, table, p.objects)
    }

    /// The queues of unix sockets (`passed.rs`); then the objects created
    /// in crstream are closed: every process holds its own copies now.
    fn restore_done(&mut self, objects: &RestoreObjects<'_>) -> Result<(), RestoreError> {
        let filled = self.fill_queues(objects);
        self.kinds = fd_kinds();
        filled
    }
}

impl Files {
    /// Opens every saved fd at its number in the stub.
    fn restore_table(
        &mut self,
        stub: &Stub,
        table: &FileTable,
        objects: &RestoreObjects<'_>,
    ) -> Result<(), RestoreError> {
        // As the process sees itself: the image names processes so.
        let pid = stub.vpid;
        let mut files: Vec<&OpenFile> = table.files.iter().collect();
        files.sort_by_key(|f| f.fd);
        for f in files.iter().filter(|f| f.dup_of_fd.is_none()) {
            let ferr = |reason: String| file_error(pid, f, reason);
            if let Some(shared) = shared_from_earlier(pid, f) {
                // Restored already by an earlier process of the tree: share it.
                install(stub, f, shared)?;
                continue;
            }
            if let Some(own) = inherited(f, objects.inherit).map_err(|e| ferr(e.to_string()))? {
                install(stub, f, Source::Created(own))?;
                self.restorer(pid, f)?.handed_in(stub, f)?;
                continue;
            }
            match self.restorer(pid, f)?.open(pid, f, objects)? {
                Reopen::Created(own) => install(stub, f, Source::Created(own))?,
                Reopen::Path {
                    path,
                    flags,
                    offset,
                } => open_in(stub, f, &path, flags, offset)?,
            }
        }
        for f in files.iter() {
            if let Some(of) = f.dup_of_fd {
                install(stub, f, Source::Dup(of))?;
            }
        }
        // What names fds of this process by number, once all exist; for a
        // description shared with an earlier process, done there. But the
        // foreground of a session's terminal is set by its leader, whoever
        // restored the description it holds the terminal by.
        for f in files.iter().filter(|f| {
            let leads = f.pty.as_ref().is_some_and(|p| p.controls_session);
            f.dup_of_fd.is_none()
                && (f.shared_id == 0 || (f.shared_id >> 32) as i32 == pid || leads)
        }) {
            self.restorer(pid, f)?.after_table(stub, f)?;
        }
        Ok(())
    }
}

/// How --inherit-fd names the file of `f`: "socket:[INODE]",
/// "tty[RDEV:DEV]" for a terminal outside the tree (hex, as in CRIU), or
/// its path ("pipe:[INODE]" for a pipe).
pub(super) fn inherit_key(f: &OpenFile) -> String {
    match (f.socket.as_ref(), f.external_tty.is_some()) {
        (Some(s), _) => format!("socket:[{}]", s.inode),
        (None, true) => tty::external_key(f.rdev, f.dev),
        (None, false) => show(&f.path).into_owned(),
    }
}

/// Whether the image has what records version 7 added: a terminal outside
/// the tree, or pseudo-terminal input with lines ended by VEOF.
/// Whether a listener of the tree had connections in its accept queue
/// (records version 8).
pub(crate) fn has_accept_queues(procs: &[ProcessDump]) -> bool {
    procs
        .iter()
        .filter_map(|p| p.records.get::<FileTable>())
        .flat_map(|t| &t.files)
        .any(|f| {
            f.socket
                .as_ref()
                .is_some_and(|s| !s.accept_queue.is_empty())
        })
}

/// Whether a unix socket of the tree holds a peer in the tree, or other
/// ids than root's (records version 9: older readers would make crstream
/// its peer).
pub(crate) fn has_peer_ids(procs: &[ProcessDump]) -> bool {
    procs
        .iter()
        .filter_map(|p| p.records.get::<FileTable>())
        .flat_map(|t| &t.files)
        .filter_map(|f| f.socket.as_ref()?.peer_ids.as_ref())
        .any(|peer| peer.pid > 0 || peer.uid != 0 || peer.gid != 0 || !peer.groups.is_empty())
}

/// Whether the image has what records version 11 added: a file made with
/// O_TMPFILE, one reopened by a file handle, a socket not root's, or a
/// flock held through a mapping (older readers would make the first
/// impossible to link, fail on the second after the dump, make the third
/// root's, and take the last on fd 0).
pub(crate) fn needs_records_11(procs: &[ProcessDump]) -> bool {
    let files = procs
        .iter()
        .filter_map(|p| p.records.get::<FileTable>())
        .flat_map(|t| &t.files)
        .any(|f| {
            f.handle.is_some()
                || (f.deleted && regular::made_by_tmpfile(f.open_flags))
                || f.socket.as_ref().is_some_and(|s| s.owner_uid.is_some())
        });
    files
        || procs
            .iter()
            .filter_map(|p| p.records.get::<crstream_proto::FileLocks>())
            .flat_map(|l| &l.locks)
            .any(|l| l.mapping.is_some())
}

/// Whether a unix socket of the tree was bound to a path (records version
/// 10: older readers would leave its file where it was bound, as root's).
pub(crate) fn has_socket_files(procs: &[ProcessDump]) -> bool {
    procs
        .iter()
        .filter_map(|p| p.records.get::<FileTable>())
        .flat_map(|t| &t.files)
        .any(|f| f.socket.as_ref().is_some_and(|s| s.socket_file.is_some()))
}

pub(crate) fn needs_records_7(procs: &[ProcessDump]) -> bool {
    procs
        .iter()
        .filter_map(|p| p.records.get::<FileTable>())
        .flat_map(|t| &t.files)
        .any(|f| {
            f.external_tty.is_some() || f.pty.as_ref().is_some_and(|p| !p.input_eof.is_empty())
        })
}

/// The fd the restorer handed in for `f` (--inherit-fd), duplicated: one
/// named by its socket inode ("socket:[INODE]") or by its path.
fn inherited(f: &OpenFile, inherit: &[(i32, String)]) -> io::Result<Option<OwnedFd>> {
    let name = inherit_key(f);
    let Some(&(fd, _)) = inherit.iter().find(|(_, key)| *key == name) else {
        return Ok(None);
    };
    // SAFETY: the restorer said fd is open in crstream; it is duplicated,
    // never closed here.
    let given = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let err = |e: io::Error| io::Error::new(e.kind(), format!("--inherit-fd fd[{fd}]: {e}"));
    let own = given.try_clone_to_owned().map_err(err)?;
    // It stands for the saved file: its status flags (O_NONBLOCK, ...)
    // and, for a regular file, its offset.
    set_status_flags(&own, f.open_flags).map_err(err)?;
    if f.kind() == crstream_proto::FileKind::Regular {
        rustix::fs::seek(&own, rustix::fs::SeekFrom::Start(f.offset)).map_err(|e| err(e.into()))?;
    }
    Ok(Some(own))
}

/// Marks `f` as a dup of an earlier fd with the same open file description
/// (same offset and flags).
fn mark_dup(pid: i32, files: &[OpenFile], f: &mut OpenFile) {
    for prev in files {
        if prev.inode == f.inode
            && prev.dev == f.dev
            && prev.dup_of_fd.is_none()
            && kcmp::same_file(pid, prev.fd, pid, f.fd).unwrap_or(false)
        {
            f.dup_of_fd = Some(prev.fd);
            return;
        }
    }
}

/// An epoll instance is restored (its registrations added) by one process
/// of those that hold it: that process must hold every registered file.
fn refuse_unrestorable_epoll_registrations(procs: &[ProcessDump]) -> Result<(), DumpError> {
    for p in procs {
        let Some(t) = p.records.get::<FileTable>() else {
            continue;
        };
        let restorer = |f: &&OpenFile| {
            f.dup_of_fd.is_none() && (f.shared_id == 0 || (f.shared_id >> 32) as i32 == p.pid)
        };
        if let Some(f) = t
            .files
            .iter()
            .filter(restorer)
            .find(|f| epoll::needs_another_holder(f))
        {
            return Err(DumpError::UnsupportedFile {
                pid: p.pid,
                fd: f.fd as i32,
                what: format!(
                    "{} (watches a file whose registered fd was closed, and which no \
                     other fd of the process holds)",
                    show(&f.path)
                ),
            });
        }
    }
    Ok(())
}

/// Gives every open file description held by more than one process of the
/// tree one `shared_id`, so that restore opens it once and shares it.
fn mark_shared_files(procs: &mut [ProcessDump]) {
    fn table(p: &mut ProcessDump) -> &mut FileTable {
        p.records
            .get_mut::<FileTable>()
            .expect("every process has a FileTable")
    }
    let mut owners: Vec<(i32, u32, u64, u64)> = Vec::new(); // pid, fd, dev, inode
    for i in 0..procs.len() {
        let pid = procs[i].pid;
        for fi in 0..table(&mut procs[i]).files.len() {
            let f = &table(&mut procs[i]).files[fi];
            if f.dup_of_fd.is_some() {
                continue;
            }
            let (fd, dev, inode) = (f.fd, f.dev, f.inode);
            let found = owners.iter().find(|&&(op, ofd, odev, oino)| {
                op != pid
                    && odev == dev
                    && oino == inode
                    && kcmp::same_file(op, ofd, pid, fd).unwrap_or(false)
            });
            match found.copied() {
                Some((op, ofd, _, _)) => {
                    let id = ((op as u64) << 32) | ofd as u64;
                    table(&mut procs[i]).files[fi].shared_id = id;
                    let owner = procs.iter_mut().find(|p| p.pid == op).expect("owner");
                    if let Some(of) = table(owner).files.iter_mut().find(|x| x.fd == ofd) {
                        of.shared_id = id;
                    }
                }
                None => owners.push((pid, fd, dev, inode)),
            }
        }
    }
    // dups of a shared fd share it too
    for p in procs.iter_mut() {
        let t = table(p);
        let ids: Vec<(u32, u64)> = t.files.iter().map(|f| (f.fd, f.shared_id)).collect();
        for f in t.files.iter_mut() {
            if let Some(of) = f.dup_of_fd
                && let Some(&(_, id)) = ids.iter().find(|(fd, _)| *fd == of)
            {
                f.shared_id = id;
            }
        }
    }
}

/// Where the open file description of a restored fd comes from.
enum Source {
    /// Another fd of the same process (a dup).
    Dup(u32),
    /// Fd `fd` of `owner`, an earlier process of the tree that shares it.
    Shared { owner: i32, fd: u64 },
    /// Made in crstream.
    Created(OwnedFd),
}

/// Where fd `f` of process `pid` gets its description if an earlier
/// process of the tree restored it already.
fn shared_from_earlier(pid: i32, f: &OpenFile) -> Option<Source> {
    let owner = (f.shared_id >> 32) as i32;
    (f.shared_id != 0 && owner != pid).then(|| Source::Shared {
        owner,
        fd: f.shared_id as u32 as u64,
    })
}

/// Once the threads exist: puts each fd of `p` that `late` selects in
/// place of the stand-in the files phase made for it, in fd order: a dup,
/// a description shared with an earlier process of the tree, or else what
/// `open` installs (pidfds and /proc files of threads other than leaders).
fn install_late(
    p: &mut RestoreProcess<'_>,
    late: impl Fn(&OpenFile) -> bool,
    mut open: impl FnMut(&Stub, &OpenFile) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    if p.entry().shares_files_with_parent {
        return Ok(()); // the parent's table: done there
    }
    let Some(table) = p.image.records.get::<FileTable>() else {
        return Ok(());
    };
    let (stub, pid) = (p.stub, p.vpid());
    let mut files: Vec<&OpenFile> = table.files.iter().filter(|f| late(f)).collect();
    files.sort_by_key(|f| f.fd);
    for f in files {
        if let Some(of) = f.dup_of_fd {
            install(stub, f, Source::Dup(of))?;
        } else if let Some(shared) = shared_from_earlier(pid, f) {
            install(stub, f, shared)?;
        } else {
            open(stub, f)?;
        }
    }
    Ok(())
}

/// Puts the description `from` at number `f.fd` of the stub, with `f`'s
/// close-on-exec flag.
fn install(stub: &Stub, f: &OpenFile, from: Source) -> Result<(), RestoreError> {
    let ferr = |reason: String| file_error(stub.pid, f, reason);
    let tmp_fd = match from {
        Source::Dup(of) => {
            let cloexec = if f.cloexec { libc::O_CLOEXEC } else { 0 };
            stub.call(
                "dup3",
                libc::SYS_dup3,
                &[of as u64, f.fd as u64, cloexec as u64],
            )
            .map_err(|e| ferr(format!("dup3 of fd {of}: {e}")))?;
            return Ok(());
        }
        Source::Shared { owner, fd } => take_fd(stub, owner, fd)
            .map_err(|e| ferr(format!("taking fd {fd} of pid {owner}: {e}")))?,
        Source::Created(own) => take_from_crstream(stub, &own)
            .map_err(|e| ferr(format!("taking it from crstream: {e}")))?,
    };
    place_fd(stub, tmp_fd, f).map_err(|e| ferr(format!("placing the fd: {e}")))
}

/// Opens `path` from inside the stub (as the process sees paths) with
/// `flags`, as fd `f`, moved to `offset`.
fn open_in(
    stub: &Stub,
    f: &OpenFile,
    path: &[u8],
    flags: i32,
    offset: u64,
) -> Result<(), RestoreError> {
    let ferr = |reason: String| file_error(stub.vpid, f, reason);
    let tmp_fd = stub
        .open(path, flags | libc::O_CLOEXEC, 0)
        .map_err(|e| ferr(format!("open: {e}")))?;
    place_fd(stub, tmp_fd, f).map_err(|e| ferr(format!("placing the fd: {e}")))?;
    if offset != 0 {
        stub.call(
            "lseek",
            libc::SYS_lseek,
            &[f.fd as u64, offset, libc::SEEK_SET as u64],
        )
        .map_err(|e| ferr(format!("lseek to {offset}: {e}")))?;
    }
    Ok(())
}

/// Duplicates fd `fd` of process `owner` into the stub (pidfd_getfd, run
/// by the stub itself); the copy is close-on-exec.
/// The stub's copy of crstream's fd `own` (the lowest free number).
pub(super) fn take_from_crstream(stub: &Stub, own: &OwnedFd) -> Result<i64, TaskError> {
    match stub.handoff {
        Some(crstream) => stub.call(
            "pidfd_getfd",
            libc::SYS_pidfd_getfd,
            &[crstream as u64, own.as_raw_fd() as u64, 0],
        ),
        None => take_fd(stub, std::process::id() as i32, own.as_raw_fd() as u64),
    }
}

fn take_fd(stub: &Stub, owner: i32, fd: u64) -> Result<i64, TaskError> {
    let pidfd = stub.call("pidfd_open", libc::SYS_pidfd_open, &[owner as u64, 0])?;
    let got = stub.call("pidfd_getfd", libc::SYS_pidfd_getfd, &[pidfd as u64, fd, 0]);
    stub.call("close", libc::SYS_close, &[pidfd as u64])?;
    got
}

/// Moves fd `tmp_fd` of the stub to the saved number with the saved
/// close-on-exec flag.
fn place_fd(stub: &Stub, tmp_fd: i64, f: &OpenFile) -> Result<(), TaskError> {
    let cloexec = if f.cloexec { libc::O_CLOEXEC } else { 0 };
    if tmp_fd != f.fd as i64 {
        stub.call(
            "dup3",
            libc::SYS_dup3,
            &[tmp_fd as u64, f.fd as u64, cloexec as u64],
        )?;
        stub.call("close", libc::SYS_close, &[tmp_fd as u64])?;
    } else {
        let flag = if f.cloexec { libc::FD_CLOEXEC } else { 0 };
        stub.call(
            "fcntl",
            libc::SYS_fcntl,
            &[f.fd as u64, libc::F_SETFD as u64, flag as u64],
        )?;
    }
    Ok(())
}

/// Whether any socket of the tree has files in flight in its queue (an
/// image of records version 6).
pub(crate) fn passes_files(procs: &[ProcessDump]) -> bool {
    procs.iter().any(|p| {
        p.records.get::<FileTable>().is_some_and(|t| {
            t.files
                .iter()
                .any(|f| f.socket.as_ref().is_some_and(|s| !s.passed.is_empty()))
        })
    })
}

#[cfg(test)]
mod testing;
