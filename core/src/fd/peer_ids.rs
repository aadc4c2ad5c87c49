//! Who makes a unix connection again. A unix socket holds the PID and
//! effective ids of whoever called socketpair(), listen() (a listener's
//! own, which its clients get) or connect() (the accepted end's):
//! SO_PEERCRED and SO_PEERGROUPS answer with them. Restore makes that call
//! again in the process that made it, when it is in the tree (its stub,
//! which has its PID), acting as the saved ids; otherwise on a thread of
//! crstream acting as them (the PID is then crstream's, which exits).

use std::io;
use std::os::fd::OwnedFd;

use crate::error::TaskError;
use crate::stub::{SCRATCH_DATA, Stub, capset};
use crate::sys::ids::{self, Ids};

/// The saved peer of a socket: its PID in the image (0: outside the tree)
/// and its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Peer {
    pub pid: i32,
    pub ids: Ids,
}

/// Who makes a call for a socket's peer.
pub(super) enum Maker<'a> {
    /// crstream as it is: the peer was crstream's ids, outside the tree.
    Crstream,
    /// A thread of crstream acting as these ids.
    As(Ids),
    /// The process of the tree with the peer's PID, acting as these ids.
    Stub(&'a Stub, Ids),
}

impl Maker<'_> {
    /// The same call made by crstream (a thread of it acting as the ids,
    /// where the stub would).
    pub(super) fn in_crstream(&self) -> Maker<'static> {
        match self {
            Maker::Crstream => Maker::Crstream,
            Maker::As(ids) | Maker::Stub(_, ids) => Maker::As(ids.clone()),
        }
    }

    pub(super) fn socketpair(&self, ty: i32) -> io::Result<(OwnedFd, OwnedFd)> {
        let pair = || crate::sys::socket::socketpair(ty);
        match self {
            Maker::Crstream => pair(),
            Maker::As(ids) => ids::run_as(ids, pair),
            Maker::Stub(stub, ids) => acting_as(stub, ids, || {
                let at = stub.put(SCRATCH_DATA + FDS, &[0; 8])?;
                let flags = (ty | libc::SOCK_CLOEXEC) as u64;
                stub.call(
                    "socketpair",
                    libc::SYS_socketpair,
                    &[libc::AF_UNIX as u64, flags, 0, at],
                )?;
                let mut fds = [0u8; 8];
                stub.mem.read(at, &mut fds)?;
                let fd = |i: usize| i32::from_ne_bytes(fds[i * 4..i * 4 + 4].try_into().unwrap());
                let taken = (take(stub, fd(0)), take(stub, fd(1)));
                let closed = [0, 1].map(|i| stub.call("close", libc::SYS_close, &[fd(i) as u64]));
                for c in closed {
                    c?;
                }
                Ok((taken.0?, taken.1?))
            }),
        }
    }

    pub(super) fn listen(&self, sock: &OwnedFd, backlog: i32) -> io::Result<()> {
        let listen = || crate::sys::socket::listen(sock, backlog);
        match self {
            Maker::Crstream => listen(),
            Maker::As(ids) => ids::run_as(ids, listen),
            Maker::Stub(stub, ids) => with_fd_in(stub, ids, sock, |fd| {
                stub.call("listen", libc::SYS_listen, &[fd, backlog as u64])
                    .map(drop)
            }),
        }
    }

    pub(super) fn connect(&self, sock: &OwnedFd, addr: &[u8]) -> io::Result<()> {
        let connect = || crate::sys::socket::connect(sock, addr);
        match self {
            Maker::Crstream => connect(),
            Maker::As(ids) => ids::run_as(ids, connect),
            Maker::Stub(stub, ids) => with_fd_in(stub, ids, sock, |fd| {
                let at = stub.put(SCRATCH_DATA + ADDR, addr)?;
                stub.call("connect", libc::SYS_connect, &[fd, at, addr.len() as u64])
                    .map(drop)
            }),
        }
    }
}

// Where the calls keep their data in the stub's scratch area (`capset`
// takes its first 32 bytes).
const GROUPS: usize = 64;
const MOST_GROUPS: usize = 1024;
const FDS: usize = GROUPS + MOST_GROUPS * 4;
const ADDR: usize = FDS + 8;

/// Runs `call` (with the number `sock` has in the stub) in the stub
/// acting as `ids`.
fn with_fd_in(
    stub: &Stub,
    ids: &Ids,
    sock: &OwnedFd,
    call: impl FnOnce(u64) -> Result<(), TaskError>,
) -> io::Result<()> {
    acting_as(stub, ids, || {
        let fd = super::take_from_crstream(stub, sock)? as u64;
        let made = call(fd);
        stub.call("close", libc::SYS_close, &[fd])?;
        made
    })
}

/// crstream's copy of fd `fd` of the stub.
fn take(stub: &Stub, fd: i32) -> Result<OwnedFd, TaskError> {
    crate::sys::pidfd::take_fd(stub.pid, fd).map_err(|err| TaskError::Ptrace {
        tid: stub.pid,
        op: "taking a socket it made",
        err,
    })
}

/// Runs `call` in the stub with `ids` as its effective ids and groups,
/// its capabilities kept effective (it reaches every path it could),
/// then gives it back what it had: crstream's ids, which a stub keeps
/// until its own are set in the final phase.
fn acting_as<T>(
    stub: &Stub,
    ids: &Ids,
    call: impl FnOnce() -> Result<T, TaskError>,
) -> io::Result<T> {
    let own = Ids::current()?;
    if ids.groups.len() > MOST_GROUPS || own.groups.len() > MOST_GROUPS {
        return Err(io::Error::other(format!(
            "more than {MOST_GROUPS} supplementary groups"
        )));
    }
    let caps = crate::proc::status(stub.pid).map_err(|e| io::Error::other(e.to_string()))?;
    let set_caps = |effective| capset(stub, &stub.leader, effective, caps.cap_prm, caps.cap_inh);
    let made = (|| {
        set_ids(stub, ids)?;
        // Effective = permitted, as they were (an effective uid other
        // than 0 cleared them).
        set_caps(caps.cap_prm)?;
        call()
    })();
    // Back, whatever failed: the next calls injected into the stub need
    // what it had.
    let back = set_ids(stub, &own).and_then(|()| set_caps(caps.cap_eff));
    match (made, back) {
        (Ok(t), Ok(())) => Ok(t),
        (Err(e), _) | (Ok(_), Err(e)) => Err(to_io(e)),
    }
}

fn set_ids(stub: &Stub, ids: &Ids) -> Result<(), TaskError> {
    const KEEP: u64 = u64::MAX;
    let groups: Vec<u8> = ids.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let at = stub.put(SCRATCH_DATA + GROUPS, &groups)?;
    // The uid last on the way there, first on the way back: changing the
    // others needs root's.
    if ids.uid == 0 {
        stub.call("setresuid", libc::SYS_setresuid, &[KEEP, 0, KEEP])?;
    }
    stub.call(
        "setgroups",
        libc::SYS_setgroups,
        &[ids.groups.len() as u64, at],
    )?;
    stub.call(
        "setresgid",
        libc::SYS_setresgid,
        &[KEEP, ids.gid as u64, KEEP],
    )?;
    if ids.uid != 0 {
        stub.call(
            "setresuid",
            libc::SYS_setresuid,
            &[KEEP, ids.uid as u64, KEEP],
        )?;
    }
    Ok(())
}

fn to_io(e: TaskError) -> io::Error {
    match e {
        TaskError::Syscall { errno, .. } => io::Error::from_raw_os_error(errno),
        other => io::Error::other(other.to_string()),
    }
}
