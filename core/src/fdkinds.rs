//! Non-regular open files: anonymous pipes, FIFOs, sockets (unix; TCP/UDP
//! that are bound or listening but not connected), eventfd, timerfd,
//! signalfd, epoll and inotify.
//!
//! Dump inspects the target's fd from crstream's own process through a
//! duplicate obtained with pidfd_getfd (same open file description), so
//! nothing has to be injected into the target. Everything is read without
//! consuming: pipes are copied with tee(), socket queues with MSG_PEEK at an
//! explicit SO_PEEK_OFF. A failed dump leaves the target as it was.
//!
//! Restore creates the objects in crstream's own process; the caller moves
//! the returned fd into the restored process with pidfd_getfd. Objects with
//! two ends (pipes, socketpairs) live in a [`Registry`] until it is dropped,
//! so the second end can be handed out later.

use crate::error::{DumpError, RestoreError};
use crstream_proto::{
    EpollFile, EpollTarget, EventFdFile, FileKind, InotifyFile, InotifyWatch, OpenFile, PipeFile,
    SignalFdFile, SockOpt, SocketFile, TimerFdFile,
};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

// Constants the libc crate does not export for x86_64 gnu (values from the
// kernel uapi headers).
const SO_PEEK_OFF: i32 = 42;
const SO_DOMAIN: i32 = 39;
const SO_PROTOCOL: i32 = 38;
const SO_ACCEPTCONN: i32 = 30;
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
/// _IOW('T', 0, __u64): sets the expiration count of a timerfd
/// (CONFIG_CHECKPOINT_RESTORE kernels).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
const KCMP_EPOLL_TFD: i32 = 7;
/// Status flags F_SETFL can change; the rest of `open_flags` is fixed by
/// how the object is created.
const SETFL_MASK: i32 =
    libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;
/// Upper bound of datagrams peeked from one socket, so that a kernel that
/// does not advance the peek offset cannot make the dump loop forever.
const MAX_PEEKED_MESSAGES: usize = 1 << 16;

// ---------------------------------------------------------------- helpers

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_fd(r: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `r` is a fresh fd owned by nobody else.
    cvt(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A duplicate of fd `fd` of `pid` in our process, sharing its open file
/// description (pidfd_getfd sets O_CLOEXEC on it).
fn steal_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = cvt_fd(pidfd as libc::c_int)?;
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    cvt_fd(r as libc::c_int)
}

fn dup_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl with integer arguments.
    cvt_fd(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })
}

fn getsockopt_raw(fd: RawFd, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes.
    cvt(unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) })?;
    Ok(len as usize)
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut b = [0u8; 4];
    getsockopt_raw(fd, level, name, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

fn setsockopt_raw(fd: RawFd, level: i32, name: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: val is valid for its length.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    setsockopt_raw(fd, level, name, &v.to_ne_bytes())
}

type NameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// Raw sockaddr bytes from getsockname/getpeername; empty on ENOTCONN.
fn sock_name(fd: RawFd, f: NameFn) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss is valid for len bytes.
    match cvt(unsafe { f(fd, (&raw mut ss).cast(), &mut len) }) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: ss is len initialised bytes.
    Ok(unsafe { std::slice::from_raw_parts((&raw const ss).cast::<u8>(), len) }.to_vec())
}

/// "ADDR:PORT" / "[ADDR]:PORT" / unix path, for messages.
fn fmt_sockaddr(raw: &[u8]) -> String {
    if raw.len() < 2 {
        return "(none)".into();
    }
    let fam = u16::from_ne_bytes([raw[0], raw[1]]) as i32;
    match fam {
        libc::AF_INET if raw.len() >= 8 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = std::net::Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            format!("{ip}:{port}")
        }
        libc::AF_INET6 if raw.len() >= 24 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let mut o = [0u8; 16];
            o.copy_from_slice(&raw[8..24]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(o))
        }
        libc::AF_UNIX => {
            let p = &raw[2..];
            if p.is_empty() {
                "(unnamed)".into()
            } else if p[0] == 0 {
                format!("@{}", String::from_utf8_lossy(&p[1..]))
            } else {
                let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                String::from_utf8_lossy(&p[..end]).into_owned()
            }
        }
        _ => format!("(family {fam})"),
    }
}

/// Port of an AF_INET/AF_INET6 sockaddr.
fn inet_port(raw: &[u8]) -> u16 {
    if raw.len() >= 4 {
        u16::from_be_bytes([raw[2], raw[3]])
    } else {
        0
    }
}

/// `INODE` of "prefix:[INODE]".
fn bracket_inode(link: &str, prefix: &str) -> Option<u64> {
    link.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Value of `key:` in an fdinfo text.
fn fdinfo_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

fn set_status_flags(fd: RawFd, open_flags: u32) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let cur = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let want = (cur & !SETFL_MASK) | (open_flags as i32 & SETFL_MASK);
    if want != cur {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, want) })?;
    }
    Ok(())
}

/// Writes all of `data` to a non-blocking or blocking fd that is known to
/// have room; EAGAIN is an error (the object cannot hold what it held).
fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is valid for its length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

// ---------------------------------------------------------------- sock_diag

/// Sends one SOCK_DIAG_BY_FAMILY request and calls `each` with the payload
/// of every answer until it returns true, the dump ends, or (for a
/// non-dump request) after the first answer.
fn sock_diag(req: &[u8], dump: bool, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    // SAFETY: socket with integer arguments.
    let nl = cvt_fd(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    })?;
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST as u16 | if dump { libc::NLM_F_DUMP as u16 } else { 0 };
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(req);
    // SAFETY: msg is valid for its length.
    let n = unsafe { libc::send(nl.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut b = &buf[..n as usize];
        if b.is_empty() {
            return Ok(());
        }
        while b.len() >= 16 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            if len < 16 || len > b.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let payload = &b[16..len];
            match ty as i32 {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map(|p| i32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
                        .unwrap_or(-libc::EIO);
                    if code == 0 {
                        return Ok(());
                    }
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ => {
                    if each(payload) || !dump {
                        return Ok(());
                    }
                }
            }
            let adv = (len + 3) & !3;
            b = &b[adv.min(b.len())..];
        }
    }
}

/// Netlink attributes (rtattr) of `b`, as (type, payload).
fn rtattrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]);
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

#[derive(Debug, Default)]
struct UnixDiag {
    state: u8,
    peer: u64,
    /// Listener: connections waiting in the accept queue; others: bytes.
    rqueue: u32,
    /// Listener: the listen() backlog.
    wqueue: u32,
    shutdown: u8,
}

fn unix_diag(inode: u64) -> io::Result<UnixDiag> {
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
    let mut req = Vec::with_capacity(24);
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&(inode as u32).to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    // INET_DIAG_NOCOOKIE: do not check the cookie.
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut found = None;
    sock_diag(&req, false, |p| {
        // struct unix_diag_msg: family, type, state, pad, ino, cookie[2]
        if p.len() < 16 || u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as u64 != inode {
            return false;
        }
        let mut d = UnixDiag {
            state: p[2],
            ..Default::default()
        };
        for (ty, v) in rtattrs(&p[16..]) {
            match ty {
                UNIX_DIAG_PEER if v.len() >= 4 => {
                    d.peer = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]) as u64
                }
                UNIX_DIAG_RQLEN if v.len() >= 8 => {
                    d.rqueue = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
                    d.wqueue = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]);
                }
                UNIX_DIAG_SHUTDOWN if !v.is_empty() => d.shutdown = v[0],
                _ => {}
            }
        }
        found = Some(d);
        true
    })?;
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in unix_diag"))
}

/// (accept queue length, backlog) of a TCP listener, found by inode among
/// the listeners of our network namespace.
fn inet_listener_diag(family: i32, inode: u64) -> io::Result<(u32, u32)> {
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48 bytes)
    let mut req = vec![0u8; 56];
    req[0] = family as u8;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    let mut found = None;
    sock_diag(&req, true, |p| {
        // struct inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid, inode
        if p.len() < 72 {
            return false;
        }
        let at = |o: usize| u32::from_ne_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
        if at(68) as u64 == inode {
            found = Some((at(56), at(60)));
            return true;
        }
        false
    })?;
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not among the TCP listeners"))
}

// ---------------------------------------------------------------- dump

/// Per-dump state shared across every fd of every process of the tree.
#[derive(Default)]
pub(crate) struct DumpCtx {
    /// Dumping a shell job: fds of its controlling terminal (this device
    /// number, the root's tty_nr) or of /dev/tty are saved, not refused.
    pub(crate) shell_job: bool,
    pub(crate) job_tty: u64,
    /// Pipe inodes whose queued bytes are already saved (on an earlier fd).
    pipes_saved: HashSet<u64>,
    /// Connected unix sockets seen: inode -> (pid, fd, peer inode), to
    /// check at the end that every peer is inside the tree.
    unix_peers: HashMap<u64, (i32, i32, u64)>,
}

impl DumpCtx {
    /// Call after every fd of the tree went through [`dump`]: refuses unix
    /// sockets connected to a peer outside the dumped tree, or connected one
    /// way only (restore recreates connected unix sockets as socketpairs).
    pub(crate) fn check_unix_peers(&self) -> Result<(), DumpError> {
        let mut v: Vec<_> = self.unix_peers.iter().collect();
        v.sort();
        for (ino, &(pid, fd, peer)) in v {
            match self.unix_peers.get(&peer) {
                Some(&(_, _, back)) if back == *ino => {}
                Some(&(ppid, pfd, _)) => {
                    return Err(DumpError::UnsupportedFile {
                        pid,
                        fd,
                        what: format!(
                            "socket:[{ino}] (unix socket connected to socket:[{peer}] (pid {ppid} fd {pfd}), which is connected elsewhere: one-way unix connections are not supported)"
                        ),
                    });
                }
                None => {
                    return Err(DumpError::UnsupportedFile {
                        pid,
                        fd,
                        what: format!(
                            "socket:[{ino}] (unix socket connected to socket:[{peer}], which is outside the dumped process tree)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// If fd `fd` of `pid` is one of the kinds of this module, fills `f.kind`,
/// its sub-message and `f.path`, and returns Ok(true); `f.open_flags` and
/// `f.cloexec` are filled by the caller. Ok(false): not one of these kinds.
/// Err: a kind we recognise but cannot save, naming the fd and the reason.
pub(crate) fn dump(
    ctx: &mut DumpCtx,
    pid: i32,
    fd: i32,
    link: &str,
    f: &mut OpenFile,
) -> Result<bool, DumpError> {
    if let Some(ino) = bracket_inode(link, "pipe:") {
        dump_pipe(ctx, pid, fd, link, ino, FileKind::Pipe, f)?;
        return Ok(true);
    }
    if let Some(ino) = bracket_inode(link, "socket:") {
        dump_socket(ctx, pid, fd, link, ino, f)?;
        return Ok(true);
    }
    let info = || {
        crate::proc::read_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .map_err(|err| DumpError::Proc { pid, err })
    };
    match link {
        "anon_inode:[eventfd]" => dump_eventfd(pid, fd, &info()?, f)?,
        "anon_inode:[timerfd]" => dump_timerfd(pid, fd, &info()?, f)?,
        "anon_inode:[signalfd]" => dump_signalfd(pid, fd, &info()?, f)?,
        "anon_inode:[eventpoll]" => dump_epoll(pid, fd, &info()?, f)?,
        "anon_inode:inotify" => dump_inotify(pid, fd, &info()?, f)?,
        _ if link.starts_with('/') => {
            let proc_path = format!("/proc/{pid}/fd/{fd}");
            let md = std::fs::metadata(&proc_path).map_err(|err| DumpError::File {
                pid,
                fd,
                path: link.to_string(),
                err,
            })?;
            if !md.file_type().is_fifo() {
                return Ok(false);
            }
            if link.ends_with(" (deleted)") {
                return Err(DumpError::UnsupportedFile {
                    pid,
                    fd,
                    what: format!("{link} (fifo whose path was removed: cannot reopen it)"),
                });
            }
            f.dev = md.dev();
            f.mode = md.mode();
            dump_pipe(ctx, pid, fd, link, md.ino(), FileKind::Fifo, f)?;
            f.path = link.to_string();
            return Ok(true);
        }
        _ => return Ok(false),
    }
    f.path = link.to_string();
    Ok(true)
}

/// The error of a failed step (`what`) while saving fd `fd` (`link`) of
/// `pid`.
fn fd_error(pid: i32, fd: i32, link: &str) -> impl Fn(&str, io::Error) -> DumpError + '_ {
    move |what, e| DumpError::File {
        pid,
        fd,
        path: link.to_string(),
        err: io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

/// The backlog of a listening socket from its sock_diag answer (connections
/// waiting, backlog). One with connections waiting is refused: they would
/// be lost. When sock_diag cannot tell, SOMAXCONN.
fn listener_backlog(
    pid: i32,
    fd: i32,
    what: &str,
    diag: io::Result<(u32, u32)>,
    refuse: impl Fn(String) -> DumpError,
) -> Result<u32, DumpError> {
    match diag {
        Ok((pending, _)) if pending > 0 => Err(refuse(format!(
            "{what} has {pending} connection(s) waiting in the accept queue"
        ))),
        Ok((_, backlog)) => Ok(backlog),
        Err(e) => {
            tracing::debug!(pid, fd, "sock_diag failed ({e}): backlog set to SOMAXCONN");
            Ok(libc::SOMAXCONN as u32)
        }
    }
}
fn dump_pipe(
    ctx: &mut DumpCtx,
    pid: i32,
    fd: i32,
    link: &str,
    inode: u64,
    kind: FileKind,
    f: &mut OpenFile,
) -> Result<(), DumpError> {
    let err = fd_error(pid, fd, link);
    let dup = steal_fd(pid, fd).map_err(|e| err("pidfd_getfd", e))?;
    // SAFETY: fcntl with integer arguments.
    let capacity = cvt(unsafe { libc::fcntl(dup.as_raw_fd(), libc::F_GETPIPE_SZ) })
        .map_err(|e| err("F_GETPIPE_SZ", e))?;
    let queued = if ctx.pipes_saved.contains(&inode) {
        Vec::new()
    } else {
        let q = peek_pipe(pid, fd, capacity).map_err(|e| err("reading the queued bytes", e))?;
        ctx.pipes_saved.insert(inode);
        q
    };
    f.kind = kind as i32;
    f.path = link.to_string();
    f.inode = inode;
    f.pipe = Some(PipeFile {
        inode,
        write_end: f.open_flags as i32 & libc::O_ACCMODE == libc::O_WRONLY,
        capacity: capacity as u32,
        queued,
    });
    Ok(())
}

/// The bytes queued in the pipe of fd `fd` of `pid`, left in place.
fn peek_pipe(pid: i32, fd: i32, capacity: i32) -> io::Result<Vec<u8>> {
    // A read end of our own on the same pipe: works when the process only
    // holds the write end, and O_NONBLOCK keeps a FIFO open from blocking.
    let c = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid C string.
    let rd = cvt_fd(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    let mut avail: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    cvt(unsafe { libc::ioctl(rd.as_raw_fd(), libc::FIONREAD, &mut avail) })?;
    if avail <= 0 {
        return Ok(Vec::new());
    }
    // A scratch pipe with as many slots as the source, so tee() can
    // duplicate every buffer in one call (it always starts at the head of
    // the source, so it cannot be resumed).
    let mut p = [0; 2];
    // SAFETY: p holds two ints.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: fresh fds from pipe2.
    let (sr, sw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl with integer arguments.
    cvt(unsafe { libc::fcntl(sw.as_raw_fd(), libc::F_SETPIPE_SZ, capacity) })?;
    // SAFETY: tee with fds and integers.
    let n = unsafe {
        libc::tee(
            rd.as_raw_fd(),
            sw.as_raw_fd(),
            avail as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != avail as usize {
        return Err(io::Error::other(format!(
            "tee copied {n} of the {avail} queued bytes"
        )));
    }
    let mut out = vec![0u8; avail as usize];
    let mut got = 0;
    while got < out.len() {
        // SAFETY: out[got..] is valid for the given length.
        let r = unsafe {
            libc::read(
                sr.as_raw_fd(),
                out[got..].as_mut_ptr().cast(),
                out.len() - got,
            )
        };
        if r <= 0 {
            return Err(if r < 0 {
                io::Error::last_os_error()
            } else {
                io::Error::from(io::ErrorKind::UnexpectedEof)
            });
        }
        got += r as usize;
    }
    Ok(out)
}

fn family_name(fam: i32) -> String {
    match fam {
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        libc::AF_ALG => "AF_ALG".into(),
        libc::AF_VSOCK => "vsock".into(),
        libc::AF_BLUETOOTH => "bluetooth".into(),
        libc::AF_CAN => "CAN".into(),
        libc::AF_XDP => "XDP".into(),
        libc::AF_TIPC => "TIPC".into(),
        _ => format!("family {fam}"),
    }
}

fn type_name(ty: i32) -> &'static str {
    match ty {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        libc::SOCK_RAW => "raw",
        _ => "other",
    }
}

/// (level, name) of the options saved for a socket of this kind; restore
/// sets those whose value differs from a fresh socket's.
fn option_list(family: i32, ty: i32) -> Vec<(i32, i32)> {
    let mut v = vec![
        (libc::SOL_SOCKET, libc::SO_RCVBUF),
        (libc::SOL_SOCKET, libc::SO_SNDBUF),
    ];
    if family == libc::AF_UNIX {
        v.push((libc::SOL_SOCKET, libc::SO_PASSCRED));
        return v;
    }
    v.extend([
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
        (libc::SOL_SOCKET, libc::SO_REUSEPORT),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::SOL_SOCKET, libc::SO_PRIORITY),
    ]);
    if ty == libc::SOCK_DGRAM {
        v.push((libc::SOL_SOCKET, libc::SO_BROADCAST));
    }
    if ty == libc::SOCK_STREAM {
        v.extend([
            (libc::SOL_SOCKET, libc::SO_LINGER),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY),
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
        ]);
    }
    if family == libc::AF_INET6 {
        v.push((libc::IPPROTO_IPV6, libc::IPV6_V6ONLY));
    }
    v
}

fn dump_socket(
    ctx: &mut DumpCtx,
    pid: i32,
    fd: i32,
    link: &str,
    inode: u64,
    f: &mut OpenFile,
) -> Result<(), DumpError> {
    let err = fd_error(pid, fd, link);
    let refuse = |why: String| DumpError::UnsupportedFile {
        pid,
        fd,
        what: format!("{link} ({why})"),
    };
    let dup = steal_fd(pid, fd).map_err(|e| err("pidfd_getfd", e))?;
    let s = dup.as_raw_fd();
    let family = getsockopt_int(s, libc::SOL_SOCKET, SO_DOMAIN).map_err(|e| err("SO_DOMAIN", e))?;
    let ty = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| err("SO_TYPE", e))?;
    let protocol =
        getsockopt_int(s, libc::SOL_SOCKET, SO_PROTOCOL).map_err(|e| err("SO_PROTOCOL", e))?;
    let listening = getsockopt_int(s, libc::SOL_SOCKET, SO_ACCEPTCONN)
        .map_err(|e| err("SO_ACCEPTCONN", e))?
        != 0;
    let local_addr = sock_name(s, libc::getsockname).map_err(|e| err("getsockname", e))?;
    let peer_addr = sock_name(s, libc::getpeername).map_err(|e| err("getpeername", e))?;
    let mut sf = SocketFile {
        inode,
        family,
        r#type: ty,
        protocol,
        listening,
        local_addr,
        peer_addr,
        ..Default::default()
    };
    match family {
        libc::AF_UNIX => {
            if !matches!(
                ty,
                libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
            ) {
                return Err(refuse(format!("unix socket of type {ty}")));
            }
            let diag = unix_diag(inode);
            if listening {
                let what = format!("unix listener {}", fmt_sockaddr(&sf.local_addr));
                let queues = diag.map(|d| (d.rqueue, d.wqueue));
                sf.backlog = listener_backlog(pid, fd, &what, queues, refuse)?;
            } else {
                match diag {
                    Ok(d) => {
                        sf.peer_inode = d.peer;
                        sf.shutdown = d.shutdown as u32;
                        if d.peer == 0
                            && d.state == TCP_ESTABLISHED
                            && ty != libc::SOCK_DGRAM
                            && d.shutdown != 3
                        {
                            return Err(refuse(
                                "connected unix socket whose peer cannot be identified".into(),
                            ));
                        }
                    }
                    Err(e) if !sf.peer_addr.is_empty() => {
                        return Err(refuse(format!(
                            "unix socket connected to {} but its peer cannot be identified (unix_diag: {e})",
                            fmt_sockaddr(&sf.peer_addr)
                        )));
                    }
                    Err(e) => {
                        tracing::debug!(pid, fd, "unix_diag failed ({e}) on an unconnected socket")
                    }
                }
                sf.queued = peek_socket(s, ty).map_err(|e| match e {
                    PeekError::Io(e) => err("peeking the queued data", e),
                    PeekError::Refuse(why) => refuse(why),
                })?;
                if sf.peer_inode != 0 {
                    ctx.unix_peers.insert(inode, (pid, fd, sf.peer_inode));
                } else if !sf.queued.is_empty()
                    && ty == libc::SOCK_DGRAM
                    && sf.local_addr.len() <= 2
                {
                    return Err(refuse(
                        "unbound, unconnected unix datagram socket with queued messages".into(),
                    ));
                }
            }
        }
        libc::AF_INET | libc::AF_INET6 => {
            let proto = match (ty, protocol) {
                (libc::SOCK_STREAM, libc::IPPROTO_TCP) => "TCP",
                (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => "UDP",
                _ => {
                    return Err(refuse(format!(
                        "{} socket of type {} protocol {protocol}: only TCP and UDP are supported",
                        if family == libc::AF_INET {
                            "IPv4"
                        } else {
                            "IPv6"
                        },
                        type_name(ty)
                    )));
                }
            };
            if proto == "TCP" {
                // SAFETY: tcp_info is plain data.
                let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
                let len = std::mem::size_of::<libc::tcp_info>();
                // SAFETY: ti is valid for len bytes.
                let buf =
                    unsafe { std::slice::from_raw_parts_mut((&raw mut ti).cast::<u8>(), len) };
                getsockopt_raw(s, libc::IPPROTO_TCP, libc::TCP_INFO, buf)
                    .map_err(|e| err("TCP_INFO", e))?;
                let state = ti.tcpi_state;
                if state == TCP_ESTABLISHED {
                    return Err(refuse(format!(
                        "established TCP connection to {}: not supported yet",
                        fmt_sockaddr(&sf.peer_addr)
                    )));
                }
                if state != TCP_LISTEN && state != TCP_CLOSE {
                    return Err(refuse(format!(
                        "TCP connection in state {state} with {}: not supported yet",
                        fmt_sockaddr(&sf.peer_addr)
                    )));
                }
                if listening {
                    let what = format!("TCP listener on {}", fmt_sockaddr(&sf.local_addr));
                    let diag = inet_listener_diag(family, inode);
                    sf.backlog = listener_backlog(pid, fd, &what, diag, refuse)?;
                }
            } else {
                if !sf.peer_addr.is_empty() {
                    return Err(refuse(format!(
                        "UDP socket connected to {}: not supported yet",
                        fmt_sockaddr(&sf.peer_addr)
                    )));
                }
                let mut avail: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int.
                if unsafe { libc::ioctl(s, libc::FIONREAD, &mut avail) } == 0 && avail > 0 {
                    tracing::warn!(
                        pid,
                        fd,
                        "UDP socket has queued datagrams; they are not saved"
                    );
                }
            }
        }
        _ => return Err(refuse(format!("{} socket", family_name(family)))),
    }
    for (level, name) in option_list(family, ty) {
        let mut buf = [0u8; 16];
        match getsockopt_raw(s, level, name, &mut buf) {
            Ok(n) => sf.options.push(SockOpt {
                level,
                name,
                value: buf[..n].to_vec(),
            }),
            Err(e) => tracing::debug!(pid, fd, level, name, "getsockopt failed: {e}"),
        }
    }
    f.kind = FileKind::Socket as i32;
    f.path = link.to_string();
    f.inode = inode;
    f.socket = Some(sf);
    Ok(())
}

enum PeekError {
    Io(io::Error),
    Refuse(String),
}

impl From<io::Error> for PeekError {
    fn from(e: io::Error) -> Self {
        PeekError::Io(e)
    }
}

/// The data queued on a unix socket, left in place: one entry per message
/// (stream: one entry with all bytes).
///
/// MSG_PEEK always starts at the head of the queue, so we walk it with an
/// explicit SO_PEEK_OFF that we set before every peek (so a truncated
/// datagram can be retried with a larger buffer), then put back the
/// socket's own value (normally -1: disabled).
fn peek_socket(s: RawFd, ty: i32) -> Result<Vec<Vec<u8>>, PeekError> {
    let saved_off = getsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    let r = peek_socket_inner(s, ty);
    let restored = setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, saved_off);
    let out = r?;
    restored?;
    Ok(out)
}

fn peek_socket_inner(s: RawFd, ty: i32) -> Result<Vec<Vec<u8>>, PeekError> {
    let stream = ty == libc::SOCK_STREAM;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut all = Vec::new();
    let mut off: i32 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut cbuf = [0u64; 32];
    for _ in 0..MAX_PEEKED_MESSAGES {
        setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, off)?;
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        let flags = libc::MSG_PEEK
            | libc::MSG_DONTWAIT
            | libc::MSG_CMSG_CLOEXEC
            | if stream { 0 } else { libc::MSG_TRUNC };
        // SAFETY: mh points at valid buffers.
        let n = unsafe { libc::recvmsg(s, &mut mh, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR) => continue,
                _ => return Err(e.into()),
            }
        }
        // Peeking passed file descriptors installs copies in our process:
        // close them, and refuse, since we cannot carry them.
        // SAFETY: walking the control buffer the kernel filled.
        let mut passed_fds = false;
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    passed_fds = true;
                    let data = libc::CMSG_DATA(c).cast::<i32>();
                    let cnt = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..cnt {
                        libc::close(data.add(i).read_unaligned());
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        if passed_fds {
            return Err(PeekError::Refuse(
                "a queued message carries file descriptors (SCM_RIGHTS): not supported".into(),
            ));
        }
        let n = n as usize;
        if stream {
            if n == 0 {
                break; // end of stream: the peer shut down its side
            }
            all.extend_from_slice(&buf[..n]);
            off += n as i32;
            continue;
        }
        if n > buf.len() {
            // Truncated: retry the same message with a large enough buffer.
            buf.resize(n, 0);
            continue;
        }
        out.push(buf[..n].to_vec());
        off += n as i32;
        if n == 0 {
            // A zero-length datagram does not move the offset; the kernel
            // skips it next time because it is marked as peeked.
            continue;
        }
    }
    if stream && !all.is_empty() {
        out.push(all);
    }
    Ok(out)
}

fn parse_hex(pid: i32, fd: i32, text: &str, key: &str) -> Result<u64, DumpError> {
    let v = fdinfo_field(text, key).ok_or_else(|| missing(pid, fd, key))?;
    u64::from_str_radix(v, 16).map_err(|e| DumpError::Proc {
        pid,
        err: crate::error::ProcError::Parse {
            path: format!("/proc/{pid}/fdinfo/{fd}"),
            detail: format!("{key}: {e}"),
        },
    })
}

fn missing(pid: i32, fd: i32, key: &str) -> DumpError {
    DumpError::Proc {
        pid,
        err: crate::error::ProcError::Parse {
            path: format!("/proc/{pid}/fdinfo/{fd}"),
            detail: format!("no {key} field"),
        },
    }
}

fn dump_eventfd(pid: i32, fd: i32, info: &str, f: &mut OpenFile) -> Result<(), DumpError> {
    let count = parse_hex(pid, fd, info, "eventfd-count")?;
    // EFD_SEMAPHORE lives in the eventfd context, not in the file flags, so
    // only the fdinfo of newer kernels shows it.
    let semaphore = match fdinfo_field(info, "eventfd-semaphore") {
        Some(v) => v != "0",
        None => {
            tracing::debug!(
                pid,
                fd,
                "no eventfd-semaphore in fdinfo: assuming not a semaphore"
            );
            false
        }
    };
    f.kind = FileKind::Eventfd as i32;
    f.eventfd = Some(EventFdFile { count, semaphore });
    Ok(())
}

/// "(SEC, NSEC)" -> nanoseconds.
fn parse_timespec(pid: i32, fd: i32, info: &str, key: &str) -> Result<u64, DumpError> {
    let v = fdinfo_field(info, key).ok_or_else(|| missing(pid, fd, key))?;
    let bad = || DumpError::Proc {
        pid,
        err: crate::error::ProcError::Parse {
            path: format!("/proc/{pid}/fdinfo/{fd}"),
            detail: format!("{key}: {v:?}"),
        },
    };
    let inner = v
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split_once(',')
        .ok_or_else(bad)?;
    let s: u64 = inner.0.trim().parse().map_err(|_| bad())?;
    let ns: u64 = inner.1.trim().parse().map_err(|_| bad())?;
    Ok(s.saturating_mul(1_000_000_000).saturating_add(ns))
}

fn dump_timerfd(pid: i32, fd: i32, info: &str, f: &mut OpenFile) -> Result<(), DumpError> {
    let num = |key: &str| -> Result<u64, DumpError> {
        fdinfo_field(info, key)
            .ok_or_else(|| missing(pid, fd, key))?
            .parse()
            .map_err(|_| missing(pid, fd, key))
    };
    let clockid = num("clockid")? as i32;
    let ticks = num("ticks")?;
    let value_ns = parse_timespec(pid, fd, info, "it_value")?;
    let interval_ns = parse_timespec(pid, fd, info, "it_interval")?;
    if let Some(fl) = fdinfo_field(info, "settime flags")
        && u32::from_str_radix(fl.trim_start_matches('0'), 8).unwrap_or(0)
            & libc::TFD_TIMER_CANCEL_ON_SET as u32
            != 0
    {
        tracing::debug!(pid, fd, "timerfd TFD_TIMER_CANCEL_ON_SET is not kept");
    }
    f.kind = FileKind::Timerfd as i32;
    f.timerfd = Some(TimerFdFile {
        clockid,
        interval_ns,
        value_ns,
        ticks,
    });
    Ok(())
}

/// inotify_add_watch flags restore reapplies: the event bits (IN_ALL_EVENTS)
/// and the two flags the kernel keeps with a watch.
const IN_WATCH_MASK: u32 = 0x0000_0fff | 0x0400_0000 /* IN_EXCL_UNLINK */ | 0x8000_0000 /* IN_ONESHOT */;
const IN_DONT_FOLLOW: u32 = 0x0200_0000;
const IN_MASK_CREATE: u32 = 0x1000_0000;

/// One "inotify wd:.. ino:.. sdev:.. mask:.. ignored_mask:.. fhandle-bytes:..
/// fhandle-type:.. f_handle:.." line of an fdinfo (numbers in hex; sdev is
/// the kernel's dev_t, major << 20 | minor).
#[derive(Debug, Default, PartialEq)]
struct InotifyLine {
    wd: i32,
    ino: u64,
    sdev: u32,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_inotify_line(line: &str) -> Option<InotifyLine> {
    let rest = line.strip_prefix("inotify ")?;
    let mut w = InotifyLine::default();
    let mut wd = None;
    for tok in rest.split_whitespace() {
        let (k, v) = tok.split_once(':')?;
        let hex = || u64::from_str_radix(v, 16).ok();
        match k {
            "wd" => wd = Some(hex()? as i32),
            "ino" => w.ino = hex()?,
            "sdev" => w.sdev = hex()? as u32,
            "mask" => w.mask = hex()? as u32,
            "fhandle-type" => w.handle_type = hex()? as i32,
            "f_handle" => {
                w.handle = (0..v.len() / 2)
                    .map(|i| u8::from_str_radix(&v[i * 2..i * 2 + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
            }
            _ => {}
        }
    }
    w.wd = wd?;
    Some(w)
}

/// Undoes the octal escapes (\040 ...) of a /proc/PID/mountinfo field.
fn unescape_mount_field(s: &str) -> String {
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

/// The path of the inode an inotify watch names, found with
/// open_by_handle_at (CAP_DAC_READ_SEARCH) through a mount of its device in
/// the target's mount table, and checked by stat. Err: why not.
fn inotify_watch_path(pid: i32, w: &InotifyLine) -> Result<(String, u64), String> {
    let (major, minor) = (w.sdev >> 20, w.sdev & 0xf_ffff);
    let dev = libc::makedev(major, minor);
    if w.handle.is_empty() {
        return Err(format!(
            "device {major}:{minor} gives no file handle for inode {}",
            w.ino
        ));
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("reading /proc/{pid}/mountinfo: {e}"))?;
    let want = format!("{major}:{minor}");
    // Mounts of the device, those of its root first (a bind mount of a
    // subdirectory may not reach the inode).
    let mut mounts: Vec<(bool, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[2] == want).then(|| (f[3] != "/", unescape_mount_field(f[4])))
        })
        .collect();
    mounts.sort();
    if mounts.is_empty() {
        return Err(format!(
            "device {major}:{minor} of inode {} is not mounted in its mount table",
            w.ino
        ));
    }
    let mut fh = Vec::with_capacity(8 + w.handle.len());
    fh.extend_from_slice(&(w.handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&w.handle_type.to_ne_bytes());
    fh.extend_from_slice(&w.handle);
    let mut last_err = String::new();
    for (_, mnt) in &mounts {
        let mnt_path = format!("/proc/{pid}/root{mnt}");
        let Ok(c) = std::ffi::CString::new(mnt_path.clone()) else {
            continue;
        };
        // SAFETY: c is a valid C string.
        let mfd = match cvt_fd(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        }) {
            Ok(fd) => fd,
            Err(e) => {
                last_err = format!("opening {mnt_path}: {e}");
                continue;
            }
        };
        // SAFETY: fh is a struct file_handle with handle_bytes bytes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mfd.as_raw_fd(),
                fh.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        let fd = match cvt_fd(r as libc::c_int) {
            Ok(fd) => fd,
            Err(e) => {
                last_err = format!("open_by_handle_at through {mnt}: {e}");
                continue;
            }
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| format!("resolving inode {}: {e}", w.ino))?;
        let path = link.to_string_lossy().into_owned();
        if path.ends_with(" (deleted)") {
            return Err(format!("the watched inode {} was deleted ({path})", w.ino));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.ino() == w.ino && md.dev() == dev => return Ok((path, dev)),
            Ok(_) => last_err = format!("inode {} resolves to {path}, another inode here", w.ino),
            Err(e) => last_err = format!("inode {} resolves to {path}: {e}", w.ino),
        }
    }
    Err(last_err)
}

/// inotify: every watch with its wd, mask and the path of its inode.
/// Events queued and not yet read are not saved (the restored instance
/// starts with an empty queue).
fn dump_inotify(pid: i32, fd: i32, info: &str, f: &mut OpenFile) -> Result<(), DumpError> {
    let mut watches = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("inotify ")) {
        let w = parse_inotify_line(line).ok_or_else(|| DumpError::Proc {
            pid,
            err: crate::error::ProcError::Parse {
                path: format!("/proc/{pid}/fdinfo/{fd}"),
                detail: format!("inotify line {line:?}"),
            },
        })?;
        let (path, dev) =
            inotify_watch_path(pid, &w).map_err(|reason| DumpError::UnsupportedFile {
                pid,
                fd,
                what: format!("anon_inode:inotify (watch wd {}: {reason})", w.wd),
            })?;
        watches.push(InotifyWatch {
            wd: w.wd,
            mask: w.mask & IN_WATCH_MASK,
            path,
            inode: w.ino,
            dev,
        });
    }
    watches.sort_by_key(|w| w.wd);
    f.kind = FileKind::Inotify as i32;
    f.inotify = Some(InotifyFile { watches });
    Ok(())
}

fn dump_signalfd(pid: i32, fd: i32, info: &str, f: &mut OpenFile) -> Result<(), DumpError> {
    let mask = parse_hex(pid, fd, info, "sigmask")?;
    f.kind = FileKind::Signalfd as i32;
    f.signalfd = Some(SignalFdFile { mask });
    Ok(())
}

/// Parses the "tfd: N events: HEX data: HEX ..." lines of an epoll fdinfo.
fn parse_epoll_targets(info: &str) -> Option<Vec<EpollTarget>> {
    let mut out = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let mut it = line.split_whitespace();
        let mut t = EpollTarget::default();
        while let Some(k) = it.next() {
            match k {
                "tfd:" => t.fd = it.next()?.parse().ok()?,
                "events:" => t.events = u32::from_str_radix(it.next()?, 16).ok()?,
                "data:" => t.data = u64::from_str_radix(it.next()?, 16).ok()?,
                _ => {}
            }
        }
        out.push(t);
    }
    Some(out)
}

fn dump_epoll(pid: i32, fd: i32, info: &str, f: &mut OpenFile) -> Result<(), DumpError> {
    let targets = parse_epoll_targets(info).ok_or_else(|| DumpError::Proc {
        pid,
        err: crate::error::ProcError::Parse {
            path: format!("/proc/{pid}/fdinfo/{fd}"),
            detail: "bad tfd line".into(),
        },
    })?;
    for t in &targets {
        // Registrations are keyed by (file, fd number): if the process closed
        // or replaced fd t.fd since, the number now names another file (or
        // none) and re-adding it would watch the wrong thing.
        let slot: [u32; 3] = [fd as u32, t.fd, 0];
        // SAFETY: kcmp reads `slot`, which lives across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                pid,
                pid,
                KCMP_EPOLL_TFD,
                t.fd as libc::c_ulong,
                slot.as_ptr() as libc::c_ulong,
            )
        };
        if r != 0 {
            return Err(DumpError::UnsupportedFile {
                pid,
                fd,
                what: format!(
                    "anon_inode:[eventpoll] (watches a file registered as fd {} that is no longer open at that number)",
                    t.fd
                ),
            });
        }
    }
    f.kind = FileKind::Epoll as i32;
    f.epoll = Some(EpollFile { targets });
    Ok(())
}

// ---------------------------------------------------------------- restore

/// Objects created in crstream's own process during a restore, shared by
/// every fd of the tree that names them (both ends of a pipe, the two ends
/// of a socketpair). Everything is closed when it is dropped.
#[derive(Default)]
pub(crate) struct Registry {
    /// Pipe/FIFO inode (at dump) -> our copy of it.
    pipes: HashMap<u64, PipeObj>,
    /// Socket inode (at dump) -> our copy of the socket created for it.
    socks: HashMap<u64, OwnedFd>,
    /// Second end of a socketpair (by inode) -> (first end inode, its
    /// shutdown bits), applied once both records are known.
    pair_waiting: HashMap<u64, (u64, u32)>,
    /// Socket inodes already handed out.
    sockets_opened: HashSet<u64>,
}

struct PipeObj {
    /// Anonymous pipe: [read, write]; FIFO: [O_RDWR keeper, same].
    ends: [OwnedFd; 2],
    /// Read/write ends already handed out once (later ones are reopened to
    /// get their own open file description).
    handed: [bool; 2],
    filled: bool,
}

/// The epoll registrations of `f`, to add in the restored process once all
/// of its fds are in place (they are keyed by fd number there).
pub(crate) fn epoll_targets(f: &OpenFile) -> &[EpollTarget] {
    f.epoll
        .as_ref()
        .map(|e| e.targets.as_slice())
        .unwrap_or(&[])
}

/// Creates (or takes from the registry) the open file description `f`
/// describes, in crstream's own process, and returns an fd for it with the
/// saved status flags. The caller moves it into the restored process.
pub(crate) fn open(reg: &mut Registry, pid: i32, f: &OpenFile) -> Result<OwnedFd, RestoreError> {
    let ferr = |what: &str, e: io::Error| RestoreError::File {
        pid,
        fd: f.fd,
        path: f.path.clone(),
        reason: format!("{what}: {e}"),
    };
    let missing = |what: &str| RestoreError::File {
        pid,
        fd: f.fd,
        path: f.path.clone(),
        reason: format!("bad image: {what} record missing"),
    };
    let fd = match f.kind() {
        FileKind::Pipe | FileKind::Fifo => {
            let p = f.pipe.as_ref().ok_or_else(|| missing("pipe"))?;
            open_pipe(reg, f, p).map_err(|e| ferr("recreating the pipe", e))?
        }
        FileKind::Socket => {
            let s = f.socket.as_ref().ok_or_else(|| missing("socket"))?;
            open_socket(reg, pid, f, s)?
        }
        FileKind::Eventfd => {
            let e = f.eventfd.as_ref().ok_or_else(|| missing("eventfd"))?;
            let sem = if e.semaphore { libc::EFD_SEMAPHORE } else { 0 };
            // SAFETY: eventfd with integer arguments.
            let fd = cvt_fd(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | sem) })
                .map_err(|e| ferr("eventfd", e))?;
            // eventfd() takes a 32-bit initial value: write the 64-bit count.
            if e.count != 0 {
                write_all_fd(fd.as_raw_fd(), &e.count.to_ne_bytes())
                    .map_err(|err| ferr("setting the eventfd count", err))?;
            }
            fd
        }
        FileKind::Timerfd => {
            let t = f.timerfd.as_ref().ok_or_else(|| missing("timerfd"))?;
            open_timerfd(t).map_err(|e| ferr("recreating the timerfd", e))?
        }
        FileKind::Signalfd => {
            let s = f.signalfd.as_ref().ok_or_else(|| missing("signalfd"))?;
            // SAFETY: sigset_t is plain data, initialised by sigemptyset.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: set is a valid sigset_t.
            unsafe { libc::sigemptyset(&mut set) };
            for sig in 1..=64 {
                if s.mask & (1u64 << (sig - 1)) != 0 {
                    // SAFETY: as above; invalid numbers are rejected by libc.
                    unsafe { libc::sigaddset(&mut set, sig) };
                }
            }
            // SAFETY: set is valid.
            cvt_fd(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) })
                .map_err(|e| ferr("signalfd", e))?
        }
        FileKind::Inotify => {
            let i = f.inotify.as_ref().ok_or_else(|| missing("inotify"))?;
            open_inotify(pid, f, i)?
        }
        FileKind::Epoll => {
            // Targets are added by the caller in the restored process.
            // SAFETY: epoll_create1 with an integer argument.
            cvt_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
                .map_err(|e| ferr("epoll_create1", e))?
        }
        other => {
            return Err(RestoreError::File {
                pid,
                fd: f.fd,
                path: f.path.clone(),
                reason: format!("{other:?} is not handled by fdkinds"),
            });
        }
    };
    set_status_flags(fd.as_raw_fd(), f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
    Ok(fd)
}

fn reopen(fd: RawFd, access: i32) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(format!("/proc/self/fd/{fd}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid C string. O_NONBLOCK: never wait for a partner;
    // the saved flags are set afterwards.
    cvt_fd(unsafe { libc::open(c.as_ptr(), access | libc::O_NONBLOCK | libc::O_CLOEXEC) })
}

fn open_pipe(reg: &mut Registry, f: &OpenFile, p: &PipeFile) -> io::Result<OwnedFd> {
    let fifo = f.kind() == FileKind::Fifo;
    let obj = match reg.pipes.entry(p.inode) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let ends = if fifo {
                let md = std::fs::metadata(&f.path)?;
                if !md.file_type().is_fifo() {
                    return Err(io::Error::other("the path is no longer a FIFO"));
                }
                let c = std::ffi::CString::new(f.path.as_bytes())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // O_RDWR|O_NONBLOCK never blocks waiting for the other side.
                // SAFETY: c is a valid C string.
                let keep = cvt_fd(unsafe {
                    libc::open(
                        c.as_ptr(),
                        libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                    )
                })?;
                let keep2 = dup_fd(keep.as_raw_fd())?;
                [keep, keep2]
            } else {
                let mut fds = [0; 2];
                // SAFETY: fds holds two ints.
                cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
                // SAFETY: fresh fds from pipe2.
                unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] }
            };
            if p.capacity != 0 {
                // SAFETY: fcntl with integer arguments.
                let cur = cvt(unsafe { libc::fcntl(ends[1].as_raw_fd(), libc::F_GETPIPE_SZ) })?;
                if cur as u32 != p.capacity {
                    // SAFETY: as above.
                    cvt(unsafe {
                        libc::fcntl(ends[1].as_raw_fd(), libc::F_SETPIPE_SZ, p.capacity as i32)
                    })?;
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
            let w = reopen(obj.ends[1].as_raw_fd(), libc::O_WRONLY)?;
            write_all_fd(w.as_raw_fd(), &p.queued)?;
            obj.filled = true;
        }
    }
    let access = f.open_flags as i32 & libc::O_ACCMODE;
    if fifo || access == libc::O_RDWR {
        // FIFO: every open is its own description, as at dump.
        return reopen(obj.ends[0].as_raw_fd(), access);
    }
    let i = usize::from(p.write_end);
    if obj.handed[i] {
        // Another description of the same end: reopen, so its status flags
        // are its own.
        return reopen(obj.ends[i].as_raw_fd(), access);
    }
    obj.handed[i] = true;
    dup_fd(obj.ends[i].as_raw_fd())
}

/// Before anything is created: every path an inotify fd of the image
/// watches must exist.
pub(crate) fn check_inotify(pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
    for w in f.inotify.iter().flat_map(|i| i.watches.iter()) {
        match std::fs::symlink_metadata(&w.path) {
            Err(e) => {
                return Err(RestoreError::File {
                    pid,
                    fd: f.fd,
                    path: f.path.clone(),
                    reason: format!("inotify watch wd {} on {}: {e}", w.wd, w.path),
                });
            }
            // Same machine, other file: watched by path all the same.
            Ok(md) if w.inode != 0 && (md.ino(), md.dev()) != (w.inode, w.dev) => {
                tracing::warn!(pid, fd = f.fd, path = %w.path, "inotify watch: the path names another file than at the dump");
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Most filler watches one inotify fd may need to reach its saved wds.
const MAX_INOTIFY_FILLERS: u64 = 1 << 20;

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
fn open_inotify(pid: i32, f: &OpenFile, i: &InotifyFile) -> Result<OwnedFd, RestoreError> {
    let ferr = |reason: String| RestoreError::File {
        pid,
        fd: f.fd,
        path: f.path.clone(),
        reason,
    };
    // SAFETY: inotify_init1 with integer flags.
    let ino = cvt_fd(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })
        .map_err(|e| ferr(format!("inotify_init1: {e}")))?;
    let add = |path: &str, mask: u32| -> io::Result<i32> {
        let c = std::ffi::CString::new(path)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: c is a valid C string.
        cvt(unsafe { libc::inotify_add_watch(ino.as_raw_fd(), c.as_ptr(), mask) })
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
        if (w.wd - next) as u64 + fillers > MAX_INOTIFY_FILLERS {
            return Err(ferr(format!(
                "bad image: inotify wd {} would take more than {MAX_INOTIFY_FILLERS} filler watches",
                w.wd
            )));
        }
        while next < w.wd {
            if filler.is_none() {
                // SAFETY: memfd_create with a static C string.
                let m = cvt_fd(unsafe {
                    libc::memfd_create(c"crstream-inotify-filler".as_ptr(), libc::MFD_CLOEXEC)
                })
                .map_err(|e| ferr(format!("memfd_create: {e}")))?;
                let p = format!("/proc/self/fd/{}", m.as_raw_fd());
                filler = Some((m, p));
            }
            let p = &filler.as_ref().expect("filler").1;
            let got = add(p, libc::IN_ATTRIB | IN_MASK_CREATE)
                .map_err(|e| ferr(format!("filler watch to reach wd {}: {e}", w.wd)))?;
            // SAFETY: removing the watch just added.
            cvt(unsafe { libc::inotify_rm_watch(ino.as_raw_fd(), got) })
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
                drain(ino.as_raw_fd());
            }
        }
        // IN_DONT_FOLLOW: the saved path names the watched inode itself;
        // IN_MASK_CREATE: two saved watches must not merge into one.
        let got = add(&w.path, w.mask | IN_DONT_FOLLOW | IN_MASK_CREATE)
            .map_err(|e| ferr(format!("inotify watch wd {} on {}: {e}", w.wd, w.path)))?;
        if got != w.wd {
            return Err(ferr(format!(
                "inotify watch on {} got wd {got} instead of {}",
                w.path, w.wd
            )));
        }
        next = got.saturating_add(1);
    }
    drain(ino.as_raw_fd());
    if fillers > 0 {
        tracing::debug!(pid, fd = f.fd, fillers, "inotify wds reached with fillers");
    }
    Ok(ino)
}

/// Reads and discards every event queued on a non-blocking inotify fd.
fn drain(fd: RawFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: buf is valid for its length.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

fn open_timerfd(t: &TimerFdFile) -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create with integer arguments.
    let fd = cvt_fd(unsafe { libc::timerfd_create(t.clockid, libc::TFD_CLOEXEC) })?;
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let mut value = t.value_ns;
    // A periodic timer that expired and was not read yet shows no time
    // left: the kernel re-arms it only when it is read. Arming it with a
    // zero value would disarm it for good, so arm it one period ahead (the
    // pending expirations are put back below).
    if value == 0 && t.interval_ns != 0 {
        value = t.interval_ns;
    }
    let mut ticks_left = t.ticks;
    let set = |value: u64| -> io::Result<()> {
        let its = libc::itimerspec {
            it_interval: ts(t.interval_ns),
            it_value: ts(value),
        };
        // Relative: the record holds the time left, not an absolute time.
        // SAFETY: its is valid; old value not wanted.
        cvt(unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &its, std::ptr::null_mut()) })
            .map(drop)
    };
    set(value)?;
    if ticks_left != 0 {
        // settime reset the count: put the pending expirations back.
        // SAFETY: the ioctl reads one u64.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks_left) };
        if r == 0 {
            ticks_left = 0;
        } else {
            tracing::debug!(
                "TFD_IOC_SET_TICKS failed ({}): pending timerfd ticks approximated",
                io::Error::last_os_error()
            );
        }
    }
    if ticks_left != 0 && value == 0 {
        // A disarmed timer with unread expirations (one-shot that fired):
        // without TFD_IOC_SET_TICKS, arm it to fire at once (1 ns) so a
        // reader still sees an expiration (one, not the saved count).
        value = 1;
        set(value)?;
    }
    Ok(fd)
}

/// Applies the saved options whose value differs from the fresh socket's,
/// so that untouched buffers keep their auto-tuning.
fn apply_sockopts(s: RawFd, opts: &[SockOpt]) -> io::Result<()> {
    for o in opts {
        let mut cur = [0u8; 16];
        let n = getsockopt_raw(s, o.level, o.name, &mut cur)?;
        if cur[..n] == o.value[..] {
            continue;
        }
        let is_buf = o.level == libc::SOL_SOCKET
            && (o.name == libc::SO_RCVBUF || o.name == libc::SO_SNDBUF)
            && o.value.len() == 4;
        let r = if is_buf {
            // getsockopt reports twice what setsockopt was given.
            let v = i32::from_ne_bytes([o.value[0], o.value[1], o.value[2], o.value[3]]);
            let force = if o.name == libc::SO_RCVBUF {
                libc::SO_RCVBUFFORCE
            } else {
                libc::SO_SNDBUFFORCE
            };
            // FORCE: the saved value may exceed the sysctl limits if it was
            // set by a privileged process; fall back to the plain option.
            setsockopt_int(s, o.level, force, v / 2)
                .or_else(|_| setsockopt_int(s, o.level, o.name, v / 2))
        } else {
            setsockopt_raw(s, o.level, o.name, &o.value)
        };
        r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("setsockopt level {} name {}: {e}", o.level, o.name),
            )
        })?;
    }
    Ok(())
}

fn send_all(s: RawFd, msg: &[u8], to: Option<&[u8]>) -> io::Result<()> {
    let (addr, alen) = match to {
        Some(a) => (
            a.as_ptr().cast::<libc::sockaddr>(),
            a.len() as libc::socklen_t,
        ),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: msg and addr are valid for their lengths.
    let n = unsafe {
        libc::sendto(
            s,
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            addr,
            alen,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != msg.len() {
        return Err(io::Error::other(format!(
            "only {n} of {} bytes accepted",
            msg.len()
        )));
    }
    Ok(())
}

/// Sends the saved queue of a socket through `into` (its peer), making
/// room in the sender's buffer first if the data would not fit.
fn refill(into: RawFd, queued: &[Vec<u8>], to: Option<&[u8]>) -> io::Result<()> {
    let total: usize = queued.iter().map(|q| q.len() + 512).sum();
    if total > 0 {
        let cur = getsockopt_int(into, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
        if (cur as usize) < total * 2 {
            setsockopt_int(into, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, total as i32)?;
        }
    }
    for q in queued {
        send_all(into, q, to)?;
    }
    Ok(())
}

fn shutdown_bits(s: RawFd, bits: u32) -> io::Result<()> {
    let how = match bits & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown with integer arguments.
    cvt(unsafe { libc::shutdown(s, how) }).map(drop)
}

fn open_socket(
    reg: &mut Registry,
    pid: i32,
    f: &OpenFile,
    s: &SocketFile,
) -> Result<OwnedFd, RestoreError> {
    let ferr = |what: &str, e: io::Error| RestoreError::File {
        pid,
        fd: f.fd,
        path: f.path.clone(),
        reason: format!("{what}: {e}"),
    };
    if reg.sockets_opened.contains(&s.inode) {
        // Sockets cannot be reopened: a second description of the same
        // socket shares the first one's status flags.
        tracing::debug!(
            pid,
            fd = f.fd,
            "socket:[{}] opened twice: sharing one description",
            s.inode
        );
        let fd = reg
            .socks
            .get(&s.inode)
            .ok_or_else(|| ferr("registry", io::Error::other("socket missing")))?;
        return dup_fd(fd.as_raw_fd()).map_err(|e| ferr("dup", e));
    }
    let is_unix = s.family == libc::AF_UNIX;
    let orphan = is_unix
        && s.peer_inode == 0
        && !s.listening
        && s.r#type != libc::SOCK_DGRAM
        && s.shutdown == 3;
    let fd = if is_unix && (s.peer_inode != 0 || orphan) {
        if let Some(mine) = reg.socks.get(&s.inode) {
            // Second end of a pair created for its peer.
            let mine = dup_fd(mine.as_raw_fd()).map_err(|e| ferr("dup", e))?;
            apply_sockopts(mine.as_raw_fd(), &s.options).map_err(|e| ferr("socket options", e))?;
            let peer = reg
                .socks
                .get(&s.peer_inode)
                .ok_or_else(|| ferr("registry", io::Error::other("peer socket missing")))?;
            refill(peer.as_raw_fd(), &s.queued, None)
                .map_err(|e| ferr("writing the queued data into the peer", e))?;
            // Data of both directions is in: now the shutdowns can be set.
            if let Some((first, bits)) = reg.pair_waiting.remove(&s.inode) {
                shutdown_bits(peer.as_raw_fd(), bits)
                    .map_err(|e| ferr(&format!("shutdown of socket:[{first}]"), e))?;
            }
            shutdown_bits(mine.as_raw_fd(), s.shutdown).map_err(|e| ferr("shutdown", e))?;
            mine
        } else {
            let mut sv = [0; 2];
            // SAFETY: sv holds two ints.
            cvt(unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    s.r#type | libc::SOCK_CLOEXEC,
                    0,
                    sv.as_mut_ptr(),
                )
            })
            .map_err(|e| ferr("socketpair", e))?;
            // SAFETY: fresh fds from socketpair.
            let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
            apply_sockopts(a.as_raw_fd(), &s.options).map_err(|e| ferr("socket options", e))?;
            refill(b.as_raw_fd(), &s.queued, None)
                .map_err(|e| ferr("writing the queued data into the peer", e))?;
            let out = dup_fd(a.as_raw_fd()).map_err(|e| ferr("dup", e))?;
            if orphan {
                // The peer was closed at dump time: closing ours gives EOF
                // after the queued data, as the process saw it.
                drop(b);
                shutdown_bits(a.as_raw_fd(), s.shutdown & 1).map_err(|e| ferr("shutdown", e))?;
            } else {
                reg.socks.insert(s.peer_inode, b);
                reg.pair_waiting.insert(s.peer_inode, (s.inode, s.shutdown));
            }
            reg.socks.insert(s.inode, a);
            out
        }
    } else {
        // SAFETY: socket with integer arguments.
        let sock =
            cvt_fd(unsafe { libc::socket(s.family, s.r#type | libc::SOCK_CLOEXEC, s.protocol) })
                .map_err(|e| ferr("socket", e))?;
        let sfd = sock.as_raw_fd();
        apply_sockopts(sfd, &s.options).map_err(|e| ferr("socket options", e))?;
        let bound = if is_unix {
            s.local_addr.len() > 2
        } else {
            inet_port(&s.local_addr) != 0
        };
        if bound {
            if is_unix && s.local_addr[2] != 0 {
                // A path: a stale socket file left by the dumped process
                // would make bind fail with EADDRINUSE.
                let p = &s.local_addr[2..];
                let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                let path = std::path::Path::new(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&p[..end]),
                );
                if let Ok(md) = std::fs::symlink_metadata(path) {
                    if md.file_type().is_socket() {
                        std::fs::remove_file(path)
                            .map_err(|e| ferr("removing the old socket file", e))?;
                    } else {
                        return Err(ferr(
                            "bind",
                            io::Error::other(format!(
                                "{} exists and is not a socket",
                                path.display()
                            )),
                        ));
                    }
                }
            }
            // SAFETY: local_addr is a sockaddr of its length.
            cvt(unsafe {
                libc::bind(
                    sfd,
                    s.local_addr.as_ptr().cast(),
                    s.local_addr.len() as libc::socklen_t,
                )
            })
            .map_err(|e| ferr(&format!("bind to {}", fmt_sockaddr(&s.local_addr)), e))?;
        }
        if s.listening {
            let backlog = if s.backlog == 0 {
                libc::SOMAXCONN
            } else {
                s.backlog.min(i32::MAX as u32) as i32
            };
            // SAFETY: listen with integer arguments.
            cvt(unsafe { libc::listen(sfd, backlog) }).map_err(|e| ferr("listen", e))?;
        } else if is_unix && bound && !s.queued.is_empty() {
            // Datagrams queued on a bound, unconnected socket: send them
            // again to its name (their senders' addresses are lost).
            // SAFETY: socket with integer arguments.
            let tmp =
                cvt_fd(unsafe { libc::socket(libc::AF_UNIX, s.r#type | libc::SOCK_CLOEXEC, 0) })
                    .map_err(|e| ferr("socket", e))?;
            refill(tmp.as_raw_fd(), &s.queued, Some(&s.local_addr))
                .map_err(|e| ferr("sending the queued datagrams again", e))?;
        }
        let out = dup_fd(sfd).map_err(|e| ferr("dup", e))?;
        reg.socks.insert(s.inode, sock);
        out
    };
    reg.sockets_opened.insert(s.inode);
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsFd, IntoRawFd};

    fn me() -> i32 {
        std::process::id() as i32
    }

    /// Builds the OpenFile the caller would fill, then runs `dump`.
    fn dump_fd(ctx: &mut DumpCtx, fd: RawFd) -> Result<OpenFile, DumpError> {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let info = crate::proc::fdinfo(me(), fd).unwrap();
        let mut f = OpenFile {
            fd: fd as u32,
            open_flags: info.flags & !(libc::O_CLOEXEC as u32),
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            ..Default::default()
        };
        assert!(dump(ctx, me(), fd, &link, &mut f)?, "{link} not recognised");
        Ok(f)
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [0; 2];
        cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }).unwrap();
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    fn nread(fd: RawFd) -> i32 {
        let mut n: libc::c_int = 0;
        cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }).unwrap();
        n
    }

    fn read_avail(fd: RawFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            let n = if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSOCK) {
                unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
            } else {
                n
            };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    fn flags(fd: RawFd) -> i32 {
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    #[test]
    fn pipe_queued_bytes_survive_and_are_not_consumed() {
        let (r, w) = pipe();
        let data: Vec<u8> = (0..3072u32).map(|i| (i * 7) as u8).collect();
        let mut wf = std::fs::File::from(w.try_clone().unwrap());
        wf.write_all(&data).unwrap();
        let mut ctx = DumpCtx::default();
        // The write end first: it alone carries the queued bytes.
        let fw = dump_fd(&mut ctx, w.as_raw_fd()).unwrap();
        let fr = dump_fd(&mut ctx, r.as_raw_fd()).unwrap();
        assert_eq!(fw.kind(), FileKind::Pipe);
        let pw = fw.pipe.as_ref().unwrap();
        let pr = fr.pipe.as_ref().unwrap();
        assert!(pw.write_end && !pr.write_end);
        assert_eq!(pw.inode, pr.inode);
        assert_eq!(pw.queued, data);
        assert!(pr.queued.is_empty());
        assert_eq!(fw.path, format!("pipe:[{}]", pw.inode));
        // Nothing consumed.
        assert_eq!(nread(r.as_raw_fd()), 3072);

        let mut reg = Registry::default();
        let nr = open(&mut reg, me(), &fr).unwrap();
        let nw = open(&mut reg, me(), &fw).unwrap();
        assert_eq!(flags(nr.as_raw_fd()) & libc::O_ACCMODE, libc::O_RDONLY);
        assert_eq!(flags(nw.as_raw_fd()) & libc::O_ACCMODE, libc::O_WRONLY);
        let cap = unsafe { libc::fcntl(nr.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(cap as u32, pw.capacity);
        unsafe { libc::fcntl(nr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(read_avail(nr.as_raw_fd()), data);
        // The original still holds its bytes.
        let mut orig = vec![0u8; 3072];
        std::fs::File::from(r).read_exact(&mut orig).unwrap();
        assert_eq!(orig, data);
    }

    #[test]
    fn fifo_round_trip() {
        let path = std::env::temp_dir().join(format!("crstream-fdkinds-fifo-{}", me()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }).unwrap();
        let orig = cvt_fd(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })
        .unwrap();
        write_all_fd(orig.as_raw_fd(), b"fifo data").unwrap();
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, orig.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Fifo);
        assert_eq!(f.path, path.to_str().unwrap());
        assert_eq!(f.pipe.as_ref().unwrap().queued, b"fifo data");
        assert_eq!(read_avail(orig.as_raw_fd()), b"fifo data");
        drop(orig);
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        assert_eq!(
            flags(n.as_raw_fd()) & (libc::O_ACCMODE | libc::O_NONBLOCK),
            libc::O_RDWR | libc::O_NONBLOCK
        );
        assert_eq!(read_avail(n.as_raw_fd()), b"fifo data");
        drop(n);
        drop(reg);
        std::fs::remove_file(&path).unwrap();
    }

    fn socketpair(ty: i32) -> (OwnedFd, OwnedFd) {
        let mut sv = [0; 2];
        cvt(unsafe {
            libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr())
        })
        .unwrap();
        unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
    }

    #[test]
    fn unix_stream_pair_with_queued_data() {
        let (a, b) = socketpair(libc::SOCK_STREAM);
        send_all(b.as_raw_fd(), b"hello ", None).unwrap();
        send_all(b.as_raw_fd(), b"there", None).unwrap();
        send_all(a.as_raw_fd(), b"world", None).unwrap();
        let mut ctx = DumpCtx::default();
        let fa = dump_fd(&mut ctx, a.as_raw_fd()).unwrap();
        let fb = dump_fd(&mut ctx, b.as_raw_fd()).unwrap();
        ctx.check_unix_peers().unwrap();
        let (sa, sb) = (fa.socket.as_ref().unwrap(), fb.socket.as_ref().unwrap());
        assert_eq!(sa.family, libc::AF_UNIX);
        assert_eq!(sa.peer_inode, sb.inode);
        assert_eq!(sb.peer_inode, sa.inode);
        assert_eq!(sa.queued, vec![b"hello there".to_vec()]);
        assert_eq!(sb.queued, vec![b"world".to_vec()]);
        // Nothing consumed and the peek offset is disabled again.
        assert_eq!(
            getsockopt_int(a.as_raw_fd(), libc::SOL_SOCKET, SO_PEEK_OFF).unwrap(),
            -1
        );
        assert_eq!(read_avail(a.as_raw_fd()), b"hello there");
        assert_eq!(read_avail(b.as_raw_fd()), b"world");

        let mut reg = Registry::default();
        let na = open(&mut reg, me(), &fa).unwrap();
        let nb = open(&mut reg, me(), &fb).unwrap();
        assert_eq!(read_avail(na.as_raw_fd()), b"hello there");
        assert_eq!(read_avail(nb.as_raw_fd()), b"world");
        send_all(na.as_raw_fd(), b"ping", None).unwrap();
        assert_eq!(read_avail(nb.as_raw_fd()), b"ping");
    }

    #[test]
    fn unix_dgram_pair_keeps_message_boundaries() {
        let (a, b) = socketpair(libc::SOCK_DGRAM);
        let big = vec![0x5au8; 100_000];
        for m in [&b"m1"[..], b"message two", &big] {
            send_all(b.as_raw_fd(), m, None).unwrap();
        }
        let mut ctx = DumpCtx::default();
        let fa = dump_fd(&mut ctx, a.as_raw_fd()).unwrap();
        let fb = dump_fd(&mut ctx, b.as_raw_fd()).unwrap();
        ctx.check_unix_peers().unwrap();
        let sa = fa.socket.as_ref().unwrap();
        assert_eq!(
            sa.queued,
            vec![b"m1".to_vec(), b"message two".to_vec(), big.clone()]
        );
        assert_eq!(
            getsockopt_int(a.as_raw_fd(), libc::SOL_SOCKET, SO_PEEK_OFF).unwrap(),
            -1
        );
        drop((a, b));
        let mut reg = Registry::default();
        let na = open(&mut reg, me(), &fa).unwrap();
        let _nb = open(&mut reg, me(), &fb).unwrap();
        let mut buf = vec![0u8; 200_000];
        for want in [&b"m1"[..], b"message two", &big] {
            let n = unsafe {
                libc::recv(
                    na.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            assert_eq!(&buf[..n as usize], want);
        }
    }

    #[test]
    fn unix_peer_outside_the_tree_is_refused() {
        let (a, _b) = socketpair(libc::SOCK_STREAM);
        let mut ctx = DumpCtx::default();
        dump_fd(&mut ctx, a.as_raw_fd()).unwrap();
        let e = ctx.check_unix_peers().unwrap_err().to_string();
        assert!(e.contains("outside the dumped process tree"), "{e}");
    }

    fn backlog_and_reuse(fd: RawFd) -> (u32, bool) {
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, fd).unwrap();
        let s = f.socket.unwrap();
        let reuse = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap() != 0;
        (s.backlog, reuse)
    }

    fn tcp_listener(family: i32, addr: &[u8], backlog: i32) -> io::Result<OwnedFd> {
        let s = cvt_fd(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        cvt(unsafe { libc::bind(s.as_raw_fd(), addr.as_ptr().cast(), addr.len() as u32) })?;
        cvt(unsafe { libc::listen(s.as_raw_fd(), backlog) })?;
        Ok(s)
    }

    fn listener_round_trip(family: i32, addr: Vec<u8>) {
        let orig = match tcp_listener(family, &addr, 7) {
            Ok(s) => s,
            Err(e) if family == libc::AF_INET6 => {
                eprintln!("skipping the IPv6 listener test: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, orig.as_raw_fd()).unwrap();
        let s = f.socket.as_ref().unwrap();
        assert!(s.listening);
        assert_eq!(s.backlog, 7);
        assert_eq!(s.family, family);
        let port = inet_port(&s.local_addr);
        assert_ne!(port, 0);
        drop(orig);
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        drop(reg);
        let name = sock_name(n.as_raw_fd(), libc::getsockname).unwrap();
        assert_eq!(inet_port(&name), port);
        assert_eq!(backlog_and_reuse(n.as_raw_fd()), (7, true));
        assert_eq!(
            getsockopt_int(n.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap(),
            1
        );
        let to = if family == libc::AF_INET {
            format!("127.0.0.1:{port}")
        } else {
            format!("[::1]:{port}")
        };
        let mut c = TcpStream::connect(to).unwrap();
        let a = cvt_fd(unsafe {
            libc::accept4(
                n.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })
        .unwrap();
        c.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        std::fs::File::from(a).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v[2..4].copy_from_slice(&port.to_be_bytes());
        v[4..8].copy_from_slice(&ip);
        v
    }

    #[test]
    fn tcp_listener_v4_round_trip() {
        listener_round_trip(libc::AF_INET, sockaddr_in([127, 0, 0, 1], 0));
    }

    #[test]
    fn tcp_listener_v6_round_trip() {
        let mut v = vec![0u8; 28];
        v[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v[23] = 1; // ::1
        listener_round_trip(libc::AF_INET6, v);
    }

    #[test]
    fn tcp_listener_with_pending_connection_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut ctx = DumpCtx::default();
        let e = dump_fd(&mut ctx, l.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("accept queue"), "{e}");
    }

    #[test]
    fn established_tcp_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_srv, _) = l.accept().unwrap();
        let mut ctx = DumpCtx::default();
        let e = dump_fd(&mut ctx, c.as_raw_fd()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DumpError::UnsupportedFile { .. }), "{msg}");
        assert!(
            msg.contains(&format!(
                "established TCP connection to 127.0.0.1:{port}: not supported yet"
            )),
            "{msg}"
        );
        assert!(msg.contains(&format!("fd {}", c.as_raw_fd())), "{msg}");
    }

    #[test]
    fn udp_bound_round_trip() {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_broadcast(true).unwrap();
        u.set_nonblocking(true).unwrap();
        let port = u.local_addr().unwrap().port();
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, u.as_raw_fd()).unwrap();
        assert_ne!(f.open_flags as i32 & libc::O_NONBLOCK, 0);
        drop(u);
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        assert_ne!(flags(n.as_raw_fd()) & libc::O_NONBLOCK, 0);
        let n = UdpSocket::from(n);
        assert_eq!(n.local_addr().unwrap().port(), port);
        assert!(n.broadcast().unwrap());
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"dgram", ("127.0.0.1", port)).unwrap();
        n.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 16];
        let (len, _) = n.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"dgram");
    }

    #[test]
    fn eventfd_round_trip() {
        let e = cvt_fd(unsafe {
            libc::eventfd(
                5,
                libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
            )
        })
        .unwrap();
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, e.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Eventfd);
        let ef = f.eventfd.unwrap();
        assert_eq!(ef.count, 5);
        assert!(ef.semaphore);
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        assert_ne!(flags(n.as_raw_fd()) & libc::O_NONBLOCK, 0);
        let mut v = [0u8; 8];
        assert_eq!(
            unsafe { libc::read(n.as_raw_fd(), v.as_mut_ptr().cast(), 8) },
            8
        );
        assert_eq!(u64::from_ne_bytes(v), 1); // semaphore: one at a time
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", n.as_raw_fd())).unwrap();
        assert_eq!(
            u64::from_str_radix(fdinfo_field(&info, "eventfd-count").unwrap(), 16).unwrap(),
            4
        );
    }

    fn timerfd(value: u64, interval: u64) -> OwnedFd {
        let t = cvt_fd(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) })
            .unwrap();
        let ts = |ns: u64| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        let its = libc::itimerspec {
            it_interval: ts(interval),
            it_value: ts(value),
        };
        cvt(unsafe { libc::timerfd_settime(t.as_raw_fd(), 0, &its, std::ptr::null_mut()) })
            .unwrap();
        t
    }

    #[test]
    fn timerfd_round_trip() {
        let t = timerfd(10_000_000_000, 2_000_000_000);
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, t.as_raw_fd()).unwrap();
        let tf = f.timerfd.unwrap();
        assert_eq!(tf.clockid, libc::CLOCK_MONOTONIC);
        assert_eq!(tf.interval_ns, 2_000_000_000);
        assert!(
            tf.value_ns > 9_500_000_000 && tf.value_ns <= 10_000_000_000,
            "{tf:?}"
        );
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::timerfd_gettime(n.as_raw_fd(), &mut cur) }).unwrap();
        let left = cur.it_value.tv_sec as u64 * 1_000_000_000 + cur.it_value.tv_nsec as u64;
        assert!(
            left <= tf.value_ns && tf.value_ns - left < 500_000_000,
            "{left}"
        );
        assert_eq!(cur.it_interval.tv_sec, 2);
    }

    #[test]
    fn timerfd_pending_ticks_are_kept() {
        let t = timerfd(1000, 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, t.as_raw_fd()).unwrap();
        let tf = f.timerfd.unwrap();
        assert_eq!((tf.ticks, tf.value_ns), (1, 0));
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut v = [0u8; 8];
        assert_eq!(
            unsafe { libc::read(n.as_raw_fd(), v.as_mut_ptr().cast(), 8) },
            8
        );
        assert_eq!(u64::from_ne_bytes(v), 1);
    }

    #[test]
    fn inotify_fdinfo_lines_are_parsed() {
        let l = "inotify wd:1f ino:98c0e6 sdev:fe00000 mask:300 ignored_mask:0 \
                 fhandle-bytes:8 fhandle-type:1 f_handle:e6c098000654d312";
        let w = parse_inotify_line(l).unwrap();
        assert_eq!(
            w,
            InotifyLine {
                wd: 31,
                ino: 0x98c0e6,
                sdev: 0xfe00000,
                mask: 0x300,
                handle_type: 1,
                handle: vec![0xe6, 0xc0, 0x98, 0, 0x06, 0x54, 0xd3, 0x12],
            }
        );
        assert!(parse_inotify_line("inotify ino:1").is_none(), "no wd");
        assert_eq!(unescape_mount_field(r"/a\040b"), "/a b");
    }

    fn inotify_lines(fd: RawFd) -> Vec<String> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
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
        let dir = std::env::temp_dir().join(format!("crstream-inotify-{}", me()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let ino =
            cvt_fd(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) }).unwrap();
        let add = |p: &std::path::Path, mask: u32| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            cvt(unsafe { libc::inotify_add_watch(ino.as_raw_fd(), c.as_ptr(), mask) }).unwrap()
        };
        for _ in 0..5 {
            let wd = add(&dir, libc::IN_ATTRIB);
            cvt(unsafe { libc::inotify_rm_watch(ino.as_raw_fd(), wd) }).unwrap();
        }
        let w_file = add(&dir.join("file"), libc::IN_MODIFY | libc::IN_ONESHOT);
        let w_sub = add(&dir.join("sub"), libc::IN_CREATE | libc::IN_EXCL_UNLINK);
        assert_eq!((w_file, w_sub), (6, 7));
        let f = dump_fd(&mut DumpCtx::default(), ino.as_raw_fd()).unwrap();
        assert_eq!(f.kind(), FileKind::Inotify);
        let watches = &f.inotify.as_ref().unwrap().watches;
        assert_eq!(
            watches
                .iter()
                .map(|w| (w.wd, w.path.as_str()))
                .collect::<Vec<_>>(),
            [
                (6, dir.join("file").to_str().unwrap()),
                (7, dir.join("sub").to_str().unwrap())
            ]
        );
        let n = open(&mut Registry::default(), me(), &f).unwrap();
        assert_eq!(inotify_lines(n.as_raw_fd()), inotify_lines(ino.as_raw_fd()));
        assert_eq!(
            flags(n.as_raw_fd()) & libc::O_NONBLOCK,
            libc::O_NONBLOCK,
            "O_NONBLOCK kept"
        );
        // The fillers left no event behind; new events carry the saved wd.
        let mut buf = [0u8; 4096];
        assert!(unsafe { libc::read(n.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } < 0);
        std::fs::write(dir.join("sub").join("new"), b"").unwrap();
        let got = unsafe { libc::read(n.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(got >= 16);
        assert_eq!(i32::from_ne_bytes(buf[0..4].try_into().unwrap()), 7);
        // A watched path that is gone is refused before anything is created.
        std::fs::remove_file(dir.join("file")).unwrap();
        let e = check_inotify(me(), &f).unwrap_err().to_string();
        assert!(e.contains(dir.join("file").to_str().unwrap()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signalfd_round_trip() {
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGRTMIN() + 2);
        }
        let s = cvt_fd(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })
            .unwrap();
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, s.as_raw_fd()).unwrap();
        let want = (1u64 << (libc::SIGUSR1 - 1)) | (1u64 << (libc::SIGRTMIN() + 2 - 1));
        assert_eq!(f.signalfd.as_ref().unwrap().mask, want);
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        let mut ctx = DumpCtx::default();
        let again = dump_fd(&mut ctx, n.as_raw_fd()).unwrap();
        assert_eq!(again.signalfd.unwrap().mask, want);
        assert_eq!(again.open_flags, f.open_flags);
    }

    #[test]
    fn epoll_targets_are_parsed() {
        let ep = cvt_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).unwrap();
        let e = cvt_fd(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }).unwrap();
        let (r, _w) = pipe();
        for (fd, events, data) in [
            (e.as_raw_fd(), libc::EPOLLIN | libc::EPOLLET, 0x1234u64),
            (
                r.as_raw_fd(),
                libc::EPOLLIN | libc::EPOLLRDHUP,
                0xdead_beef_0000_0001,
            ),
        ] {
            let mut ev = libc::epoll_event {
                events: events as u32,
                u64: data,
            };
            cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })
                .unwrap();
        }
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, ep.as_raw_fd()).unwrap();
        let mut t = epoll_targets(&f).to_vec();
        t.sort_by_key(|t| t.fd);
        // The kernel always adds EPOLLERR|EPOLLHUP to a registration.
        for t in &mut t {
            t.events &= !((libc::EPOLLERR | libc::EPOLLHUP) as u32);
        }
        let mut want = vec![
            EpollTarget {
                fd: e.as_raw_fd() as u32,
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                data: 0x1234,
            },
            EpollTarget {
                fd: r.as_raw_fd() as u32,
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                data: 0xdead_beef_0000_0001,
            },
        ];
        want.sort_by_key(|t| t.fd);
        assert_eq!(t, want);
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", n.as_raw_fd())).unwrap();
        assert_eq!(link.to_str().unwrap(), "anon_inode:[eventpoll]");
        // A registration whose fd number was closed is refused.
        let e2 = e.as_fd().try_clone_to_owned().unwrap();
        let num = e.into_raw_fd();
        unsafe { libc::close(num) };
        let err = dump_fd(&mut DumpCtx::default(), ep.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("fd {num}")), "{err}");
        drop(e2);
    }

    #[test]
    fn regular_files_are_left_to_the_caller() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        let mut of = OpenFile::default();
        let r = dump(
            &mut DumpCtx::default(),
            me(),
            f.as_raw_fd(),
            link.to_str().unwrap(),
            &mut of,
        );
        assert!(!r.unwrap());
    }

    #[test]
    fn netlink_socket_is_refused_by_name() {
        let s = cvt_fd(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })
        .unwrap();
        let e = dump_fd(&mut DumpCtx::default(), s.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("netlink socket"), "{e}");
    }

    #[test]
    fn unix_listener_round_trip() {
        let path = std::env::temp_dir().join(format!("crstream-fdkinds-sock-{}", me()));
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // listen() again only updates the backlog.
        cvt(unsafe { libc::listen(l.as_raw_fd(), 9) }).unwrap();
        let mut ctx = DumpCtx::default();
        let f = dump_fd(&mut ctx, l.as_raw_fd()).unwrap();
        let s = f.socket.as_ref().unwrap();
        assert!(s.listening);
        assert_eq!(s.backlog, 9);
        drop(l); // leaves the socket file behind, as a dead process would
        let mut reg = Registry::default();
        let n = open(&mut reg, me(), &f).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let a = unsafe {
            libc::accept4(
                n.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        assert!(a >= 0);
        unsafe { libc::close(a) };
        drop(n);
        drop(reg);
        std::fs::remove_file(&path).unwrap();
    }
}
