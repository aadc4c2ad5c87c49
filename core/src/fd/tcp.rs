//! Established TCP connections, in CRIU's terms: refused by default;
//! `--tcp-established` saves them with TCP_REPAIR and builds them again
//! connected (the local address must exist where they are restored);
//! `--tcp-close` (at dump or at restore) brings them back closed, as a
//! socket whose next call fails with ECONNABORTED (the peer may be gone).
//!
//! Dump notes every connection of the tree while reading its fds, then
//! locks the network for all of them at once (`crate::netlock`), puts each
//! socket in repair mode and reads it: sequence numbers, both queues (the
//! send queue with what was sent but not acknowledged), window, MSS,
//! options agreed at the handshake, timestamp, and takes it out of repair
//! mode at once (a process that ran on with a socket in repair mode would
//! fail on it: a dump worker killed outright leaves nothing so for longer
//! than one socket's reading, which its supervisor then undoes). crstream
//! keeps a duplicate of each: once the tree is killed, it puts them back
//! in repair mode and closes them, which tells the peer nothing.
//!
//! Restore makes a socket in repair mode, sets the sequence numbers, binds
//! and connects it (no packet: repair mode), sets the options, refills the
//! queues (what was sent goes back as sent: TCP sends it again if the peer
//! did not get it), sets the window and leaves repair mode; the bytes never
//! sent are then sent as usual. The network lock goes once the tree runs.
//!
//! A closing connection (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING) is
//! built as an established one, then closed the way it was: our FIN by
//! shutdown (in repair mode, which counts it as sent, unless bytes never
//! sent come first), the peer's FIN and its acknowledgement of ours as
//! segments from the peer that crstream builds (`packets.rs`), which the
//! lock lets through.

use super::accept_queue::{AcceptQueues, Taken};
use super::packets;
use super::socket::{apply_options, fmt_sockaddr};
use crate::error::DumpError;
use crate::kind::ProcessDump;
use crate::netlock::{self, NetLock};
use crate::sys::socket::{
    SO_PEEK_OFF, bind, connect, getsockopt, getsockopt_int, ioctl_int, recv_peek, send, setsockopt,
    setsockopt_int,
};
use crstream_proto::{FileTable, SocketFile, TcpConnection};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// What dump does with an established TCP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TcpMode {
    /// Refuse the tree, naming the connection and the two flags.
    #[default]
    Refuse,
    /// `--tcp-established`: save it, restore it connected.
    Established,
    /// `--tcp-close`: save its addresses only, restore it closed.
    Close,
}

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
/// Leaving repair mode: with a window probe to the peer, or without.
const TCP_REPAIR_OFF: i32 = 0;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const SIOCINQ: u64 = libc::FIONREAD;
const SIOCOUTQ: u64 = libc::TIOCOUTQ;
const SIOCOUTQNSD: u64 = 0x894b;
/// TCP_INFO: tcpi_options bits, and where they are.
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// TCP_REPAIR_OPTIONS codes (TCPOPT_*).
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// The bytes the timestamp option takes in every segment.
const TCPOLEN_TSTAMP_ALIGNED: u32 = 12;
pub(super) const TCP_ESTABLISHED: u32 = 1;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

/// The states of a connection that dump saves: established, and closing
/// from either side (TIME_WAIT has no socket any more).
pub(super) fn saved_state(state: u8) -> bool {
    matches!(
        state as u32,
        TCP_ESTABLISHED
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING
    )
}

/// We sent (or queued) our FIN.
fn our_fin(state: u32) -> bool {
    matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING
    )
}

/// The peer's FIN was received.
fn peer_fin(state: u32) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}

/// Our FIN is in the send queue, not acknowledged.
fn fin_queued(state: u32) -> bool {
    matches!(state, TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSING)
}
/// Queued bytes go back in pieces of this size.
const CHUNK: usize = 64 << 10;

struct Noted {
    pid: i32,
    fd: u32,
    inode: u64,
    sock: OwnedFd,
    local: SocketAddr,
    peer: SocketAddr,
    /// Taken from this listener's accept queue (`accept_queue.rs`): its
    /// inode, and the connection's raw names.
    queued_on: Option<(u64, Taken)>,
}

/// The connections of a dump: noted while fds are read, then locked, read
/// in repair mode, and held until the dump ends (see the module doc).
#[derive(Default)]
pub(crate) struct TcpHold {
    noted: Vec<Noted>,
    held: Vec<OwnedFd>,
    lock: Option<NetLock>,
    /// Connections taken from accept queues, read (or not yet): put back
    /// in their queues should the tree run on.
    taken: Vec<(Taken, Option<TcpConnection>)>,
    pub(super) queues: AcceptQueues,
    /// Where each connection taken from an accept queue is handed at once
    /// (`DumpOptions::handoff`, see `handoff`), for the supervisor to put
    /// back should this worker die outright.
    pub(crate) handoff: Option<std::sync::Arc<OwnedFd>>,
}

impl TcpHold {
    /// Notes connection `inode` (fd `fd` of `pid`, a duplicate in `sock`);
    /// Err: addresses that are not IPv4 or IPv6.
    pub(super) fn note(
        &mut self,
        pid: i32,
        fd: u32,
        sf: &SocketFile,
        sock: OwnedFd,
    ) -> Result<(), String> {
        let addr = |raw: &[u8]| {
            netlock::socket_addr(raw).ok_or_else(|| format!("address {}", fmt_sockaddr(raw)))
        };
        let (local, peer) = (addr(&sf.local_addr)?, addr(&sf.peer_addr)?);
        if !self.noted.iter().any(|n| n.inode == sf.inode) {
            self.noted.push(Noted {
                pid,
                fd,
                inode: sf.inode,
                sock,
                local,
                peer,
                queued_on: None,
            });
        }
        Ok(())
    }

    /// Notes connection `t`, taken from the accept queue of listener
    /// `listener` (fd `fd` of `pid`).
    pub(super) fn note_queued(
        &mut self,
        pid: i32,
        fd: u32,
        listener: u64,
        t: Taken,
    ) -> Result<(), String> {
        let addrs = (
            netlock::socket_addr(&t.local),
            netlock::socket_addr(&t.peer),
        );
        let (local, peer, sock) = match (addrs, t.sock.try_clone()) {
            ((Some(local), Some(peer)), Ok(sock)) => (local, peer, sock),
            (_, dup) => {
                let why = match dup {
                    Ok(_) => format!("address {}", fmt_sockaddr(&t.peer)),
                    Err(e) => format!("dup: {e}"),
                };
                // It goes back in its queue with the rest (Drop).
                self.taken.push((t, None));
                return Err(why);
            }
        };
        self.noted.push(Noted {
            pid,
            fd,
            inode: 0,
            sock,
            local,
            peer,
            queued_on: Some((listener, t)),
        });
        Ok(())
    }

    /// Locks the network for every noted connection, then reads each in
    /// repair mode into the socket records of `processes` that name it.
    pub(crate) fn lock_and_read(&mut self, processes: &mut [ProcessDump]) -> Result<(), DumpError> {
        if self.noted.is_empty() {
            return Ok(());
        }
        let conns: Vec<(SocketAddr, SocketAddr)> =
            self.noted.iter().map(|n| (n.local, n.peer)).collect();
        let first = &self.noted[0];
        self.lock = Some(NetLock::lock(&conns, netlock::Holder::Dump).map_err(|e| {
            DumpError::Unsupported {
                pid: first.pid,
                what: "network lock",
                reason: format!("locking {} TCP connections: {e}", conns.len()),
            }
        })?);
        let mut noted = std::mem::take(&mut self.noted).into_iter();
        while let Some(mut n) = noted.next() {
            let read = read_held(&n.sock);
            let conn = match read {
                Ok(conn) => conn,
                Err(e) => {
                    // What was taken from accept queues goes back (Drop).
                    self.taken
                        .extend(n.queued_on.take().map(|(_, t)| (t, None)));
                    self.noted.extend(noted);
                    return Err(DumpError::UnsupportedFile {
                        pid: n.pid,
                        fd: n.fd as i32,
                        what: format!("TCP connection {} -> {}: {e}", n.local, n.peer),
                    });
                }
            };
            if let Some((listener, taken)) = n.queued_on {
                let queued = crstream_proto::QueuedConnection {
                    local_addr: taken.local.clone(),
                    peer_addr: taken.peer.clone(),
                    tcp: Some(conn.clone()),
                };
                self.taken.push((taken, Some(conn)));
                for s in processes
                    .iter_mut()
                    .filter_map(|p| p.records.get_mut::<FileTable>())
                    .flat_map(|t| t.files.iter_mut())
                    .filter_map(|f| f.socket.as_mut())
                    .filter(|s| s.inode == listener)
                {
                    s.accept_queue.push(queued.clone());
                }
                continue;
            }
            self.held.push(n.sock);
            for p in processes.iter_mut() {
                let Some(table) = p.records.get_mut::<FileTable>() else {
                    continue;
                };
                for f in table.files.iter_mut() {
                    if let Some(s) = f.socket.as_mut().filter(|s| s.inode == n.inode) {
                        s.tcp = Some(conn.clone());
                    }
                }
            }
        }
        tracing::info!(
            connections = conns.len(),
            "TCP connections read in repair mode"
        );
        Ok(())
    }

    /// The lock the image names, if any.
    pub(crate) fn lock_name(&self) -> Option<&str> {
        self.lock.as_ref().map(|l| l.name())
    }

    /// The tree is dead, its sockets live on in our duplicates: closed in
    /// repair mode, they tell the peer nothing. The lock stays for restore
    /// to lift.
    pub(crate) fn after_kill(mut self) -> Option<String> {
        let taken = self.taken.drain(..).map(|(t, _)| t.sock);
        for s in self.held.drain(..).chain(taken) {
            if let Err(e) = set(&s, TCP_REPAIR, 1) {
                tracing::error!("closing a dumped TCP connection tells its peer: {e}");
            }
        }
        self.lock.take().map(|l| {
            let name = l.keep();
            tracing::info!(table = name, "network lock kept until restore");
            name
        })
    }

    /// The tree runs on: the connections taken from accept queues go back
    /// (while the network is locked: between the silent close of crstream's
    /// socket and the new one, the peer's packets would get a reset).
    fn put_back_taken(&mut self) {
        for n in std::mem::take(&mut self.noted) {
            if let Some((_, t)) = n.queued_on {
                self.taken.push((t, None));
            }
        }
        if self.taken.is_empty() {
            return;
        }
        let _lock = match self.lock {
            Some(_) => None,
            None => {
                let conns: Vec<_> = self
                    .taken
                    .iter()
                    .filter_map(|(t, _)| {
                        Some((
                            netlock::socket_addr(&t.local)?,
                            netlock::socket_addr(&t.peer)?,
                        ))
                    })
                    .collect();
                NetLock::lock(&conns, netlock::Holder::Dump)
                    .inspect_err(|e| tracing::warn!("locking the connections put back: {e}"))
                    .ok()
            }
        };
        for (t, read) in std::mem::take(&mut self.taken) {
            let (local, peer) = (fmt_sockaddr(&t.local), fmt_sockaddr(&t.peer));
            match self.queues.put_taken(t, read) {
                Ok(()) => tracing::debug!(%local, %peer, "connection put back in its accept queue"),
                Err(e) => tracing::error!(
                    "the connection {peer} -> {local} taken from an accept queue is lost: {e}"
                ),
            }
        }
    }
}

impl Drop for TcpHold {
    /// The tree runs on (or was never touched): connections taken from
    /// accept queues go back, then the lock goes.
    fn drop(&mut self) {
        self.put_back_taken();
        self.held.clear();
        self.lock.take();
    }
}

/// After a dump worker (`worker`) died outright while the processes `tree`
/// run on: the connections it took from accept queues (`taken`, handed to
/// its supervisor, see `handoff`) go back in their queues, every TCP
/// socket of the tree left in repair mode leaves it, and the worker's
/// network locks go. Returns what could not be done.
pub(crate) fn recover_tcp(worker: i32, tree: &[i32], taken: Vec<OwnedFd>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut queues = AcceptQueues::default();
    for sock in taken {
        // One the worker put back already is closed here.
        if crate::sys::socket::tcp_state(&sock).is_ok_and(|st| !saved_state(st)) {
            continue;
        }
        let names = (
            crate::sys::socket::name(&sock, false),
            crate::sys::socket::name(&sock, true),
        );
        let back = match names {
            (Ok(local), Ok(peer)) => queues.put_taken(Taken { sock, local, peer }, None),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = back {
            problems.push(format!(
                "a connection taken from an accept queue is lost: {e}"
            ));
        }
    }
    for &pid in tree {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten();
        for fd in fds.flatten() {
            let is_socket = std::fs::read_link(fd.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
            let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if !is_socket {
                continue;
            }
            let Ok(s) = crate::sys::pidfd::take_fd(pid, n) else {
                continue;
            };
            if getsockopt_int(&s, libc::IPPROTO_TCP, TCP_REPAIR).is_ok_and(|r| r == 1)
                && let Err(e) = set(&s, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
            {
                problems.push(format!("pid {pid} fd {n} stays in TCP repair mode: {e}"));
            }
        }
    }
    if let Err(e) = netlock::unlock_all_of(worker) {
        problems.push(format!("the network lock of the dump stays: {e}"));
    }
    problems
}

/// The connections a restore built, and the lock it took for them until
/// every end exists. Should the restore fail, they go back into repair
/// mode before anything closes them (closing tells the peer nothing: it
/// may yet get its connection from another try), then the lock goes.
#[derive(Default)]
pub(crate) struct TcpBuilt {
    socks: std::cell::RefCell<Vec<OwnedFd>>,
    lock: std::cell::RefCell<Option<NetLock>>,
    /// What puts connections back in accept queues (its programs stay
    /// attached until the restore ends).
    queues: std::cell::RefCell<AcceptQueues>,
}

impl TcpBuilt {
    /// Puts connection `q` back in the accept queue of its listener.
    pub(super) fn put_queued(&self, q: &crstream_proto::QueuedConnection) -> io::Result<()> {
        let conn = q
            .tcp
            .as_ref()
            .ok_or_else(|| io::Error::other("a queued connection without its state"))?;
        self.queues
            .borrow_mut()
            .put_raw(&q.local_addr, &q.peer_addr, conn)
    }

    pub(crate) fn hold_lock(&self, lock: Option<NetLock>) {
        *self.lock.borrow_mut() = lock;
    }

    pub(super) fn keep(&self, s: OwnedFd) {
        self.socks.borrow_mut().push(s);
    }

    /// The tree runs: its connections are its own; the lock goes.
    pub(crate) fn commit(&self) {
        self.socks.borrow_mut().clear();
        self.lock.borrow_mut().take();
        *self.queues.borrow_mut() = AcceptQueues::default();
    }
}

impl Drop for TcpBuilt {
    fn drop(&mut self) {
        for s in self.socks.get_mut().drain(..) {
            if let Err(e) = set(&s, TCP_REPAIR, 1) {
                tracing::error!("a TCP connection of a failed restore is closed: {e}");
            }
        }
        self.lock.get_mut().take();
    }
}

/// Reads a connection in repair mode, taken out of it after (no window
/// probe: nothing was sent meanwhile).
pub(super) fn read_in_repair(s: &OwnedFd) -> io::Result<TcpConnection> {
    set(s, TCP_REPAIR, 1)?;
    let read = read_connection(s);
    set(s, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
    read
}

/// [`read_in_repair`] for a socket of the tree, whose address reuse
/// (which leaving repair mode drops) is put back.
fn read_held(s: &OwnedFd) -> io::Result<TcpConnection> {
    let reuse = getsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    let conn = read_in_repair(s);
    let put = setsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    let conn = conn?;
    put.map(|()| conn)
}

/// Ends a connection without telling the peer (no FIN, no reset): in
/// repair mode, a disconnect (connect to AF_UNSPEC) only closes it here,
/// whoever else holds an fd on it, and frees its addresses.
pub(super) fn disconnect_silently(s: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, TCP_REPAIR, 1)?;
    connect(s, &[])
}

fn int(s: &OwnedFd, name: i32) -> io::Result<i32> {
    getsockopt_int(s, libc::IPPROTO_TCP, name)
        .map_err(|e| io::Error::new(e.kind(), format!("getsockopt {name}: {e}")))
}

fn set(s: &OwnedFd, name: i32, v: i32) -> io::Result<()> {
    setsockopt_int(s, libc::IPPROTO_TCP, name, v)
        .map_err(|e| io::Error::new(e.kind(), format!("setsockopt {name} = {v}: {e}")))
}

/// The queue `which` (send or receive): its sequence number and bytes.
fn read_queue(s: &OwnedFd, which: i32, len: usize) -> io::Result<(u32, Vec<u8>)> {
    set(s, TCP_REPAIR_QUEUE, which)?;
    let seq = int(s, TCP_QUEUE_SEQ)? as u32;
    let mut data = vec![0u8; len];
    if len > 0 {
        let n = recv_peek(s, &mut data)?;
        if n != len {
            return Err(io::Error::other(format!(
                "peeked {n} of the {len} queued bytes (urgent data read inline stops a peek \
                 at its mark)"
            )));
        }
    }
    Ok((seq, data))
}

/// Reads a connection already in repair mode.
fn read_connection(s: &OwnedFd) -> io::Result<TcpConnection> {
    let mut info = [0u8; 20];
    getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    let (state, options, wscale) = (info[0], info[5], info[6]);
    let snd_mss = u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes"));
    if !saved_state(state) {
        return Err(io::Error::other(format!("in TCP state {state}")));
    }
    let state = state as u32;
    // The queue counts below include our FIN while it is not acknowledged:
    // the data is one byte less.
    let fin = fin_queued(state) as usize;
    let outq_all = ioctl_int(s, SIOCOUTQ)? as usize;
    let unsent_all = ioctl_int(s, SIOCOUTQNSD)? as usize;
    let outq = outq_all.saturating_sub(fin);
    let unsent = if unsent_all > 0 { unsent_all - fin } else { 0 } as u32;
    let inq = ioctl_int(s, SIOCINQ)? as usize;
    // A peek offset the process set would skip the head of the queue.
    let peek_off = getsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    if peek_off != -1 {
        setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, -1)?;
    }
    let queues = read_queue(s, TCP_SEND_QUEUE, outq)
        .and_then(|send| Ok((send, read_queue(s, TCP_RECV_QUEUE, inq)?)));
    if peek_off != -1 {
        setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, peek_off)?;
    }
    let ((send_seq, send_queue), (recv_seq, recv_queue)) = queues?;
    set(s, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    let mut window = [0u8; 20];
    getsockopt(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &mut window)?;
    let w = |i: usize| u32::from_ne_bytes(window[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let timestamps = options & TCPI_OPT_TIMESTAMPS != 0;
    Ok(TcpConnection {
        state,
        snd_una: send_seq.wrapping_sub(outq_all as u32),
        send_seq,
        recv_seq,
        send_queue,
        unsent,
        recv_queue,
        mss: int(s, libc::TCP_MAXSEG)? as u32,
        snd_mss,
        timestamps,
        sack: options & TCPI_OPT_SACK != 0,
        window_scaling: options & TCPI_OPT_WSCALE != 0,
        snd_wscale: (wscale & 0xf) as u32,
        rcv_wscale: (wscale >> 4) as u32,
        timestamp: if timestamps {
            int(s, TCP_TIMESTAMP)? as u32
        } else {
            0
        },
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
        closed: false,
    })
}

/// The largest clamp (peer's MSS) a restore gives a connection again: a
/// jumbo frame's. Beyond it (loopback's 65495) TCP_MAXSEG cannot always
/// say it (it takes at most 32767), and segments that large (32741, where
/// half the peer's window bounds them) stalled a restored connection whose
/// receiver had a full queue (its window, rebuilt, stays below one
/// segment): those keep the kernel's 524 bytes.
const MAX_RESTORED_CLAMP: u32 = 9000;

/// The TCP_MAXSEG to connect a saved connection with, so that it sends
/// segments of the size it did: the connect clamps to it, and a segment
/// carries that less the options every segment of the connection carries
/// (timestamps, agreed at its handshake); from an image without its MSS,
/// its clamp.
fn connect_mss(t: &TcpConnection) -> Option<u32> {
    let clamp = match t.snd_mss {
        0 => t.mss,
        mss if t.timestamps => mss + TCPOLEN_TSTAMP_ALIGNED,
        mss => mss,
    };
    // TCP_MAXSEG refuses less than the kernel's TCP_MIN_MSS (88).
    (88..=MAX_RESTORED_CLAMP).contains(&clamp).then_some(clamp)
}

/// The saved value of one SOL_SOCKET option again: SO_REUSEADDR, which
/// leaving repair mode drops; SO_SNDBUF, raised for the refill.
fn apply_saved(s: &OwnedFd, sf: &SocketFile, name: i32) -> io::Result<()> {
    let saved: Vec<_> = sf
        .options
        .iter()
        .filter(|o| o.level == libc::SOL_SOCKET && o.name == name)
        .cloned()
        .collect();
    apply_options(s, &saved)
}

fn send_all(s: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = send(s, &data[..data.len().min(CHUNK)])?;
        data = &data[n..];
    }
    Ok(())
}

/// The socket of a saved connection, built again: connected, or closed
/// (`close`, or a connection dumped with --tcp-close).
pub(super) fn build(
    sf: &SocketFile,
    t: &TcpConnection,
    close: bool,
    built: &TcpBuilt,
) -> io::Result<OwnedFd> {
    let s = super::socket::made_as(sf.owner_uid, || {
        crate::sys::socket::socket(sf.family, libc::SOCK_STREAM, libc::IPPROTO_TCP)
    })?;
    // Kept from the start: a failure below puts it back into repair mode.
    built.keep(s.try_clone()?);
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    apply_options(&s, &sf.options).map_err(step("socket options"))?;
    // After the options: repair mode forces address reuse (the listener
    // has the port), which setting SO_REUSEADDR would undo.
    set(&s, TCP_REPAIR, 1)?;
    if close || t.closed {
        // Bound where it was; disconnecting in repair mode sends nothing
        // and leaves ECONNABORTED for the process's next call.
        bind(&s, &sf.local_addr).map_err(step("bind"))?;
        connect(&s, &[]).map_err(step("disconnect"))?;
        set(&s, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
        apply_saved(&s, sf, libc::SO_REUSEADDR).map_err(step("SO_REUSEADDR"))?;
        return Ok(s);
    }
    if !saved_state(t.state.min(255) as u8) {
        return Err(io::Error::other(format!(
            "TCP state {} in the image",
            t.state
        )));
    }
    // Where the data ends, before the FINs (given again below).
    let send_end = t.send_seq.wrapping_sub(our_fin(t.state) as u32);
    let recv_end = t.recv_seq.wrapping_sub(peer_fin(t.state) as u32);
    let start = |seq: u32, queued: &[u8]| seq.wrapping_sub(queued.len() as u32) as i32;
    set(&s, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    set(&s, TCP_QUEUE_SEQ, start(send_end, &t.send_queue))?;
    set(&s, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    set(&s, TCP_QUEUE_SEQ, start(recv_end, &t.recv_queue))?;
    bind(&s, &sf.local_addr).map_err(step("bind"))?;
    // The MSS the connection sends with is computed once, by the connect,
    // from the clamp it has then (536 unless TCP_MAXSEG is set; the saved
    // clamp comes only after, with the options): a TCP_MAXSEG for the
    // connect only, or it would send 524-byte segments from then on.
    let mss_at_connect = connect_mss(t);
    if let Some(mss) = mss_at_connect {
        set(&s, libc::TCP_MAXSEG, mss as i32)?;
    }
    connect(&s, &sf.peer_addr).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            " (the connection exists here already: restored before? --tcp-close restores it closed)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("connect in repair mode: {e}{why}"))
    })?;
    if mss_at_connect.is_some()
        && let Err(e) = set(&s, libc::TCP_MAXSEG, 0)
    {
        // It only clamps the MSS a later connect would take.
        tracing::debug!("clearing TCP_MAXSEG after the connect: {e}");
    }
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MSS, t.mss)];
    if t.window_scaling {
        opts.push((TCPOPT_WINDOW, t.snd_wscale | t.rcv_wscale << 16));
    }
    if t.sack {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if t.timestamps {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let raw: Vec<u8> = opts
        .iter()
        .flat_map(|(c, v)| c.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    setsockopt(&s, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &raw)
        .map_err(step("TCP_REPAIR_OPTIONS"))?;
    if t.timestamps {
        set(&s, TCP_TIMESTAMP, t.timestamp as i32)?;
    }
    let unsent = (t.unsent as usize).min(t.send_queue.len());
    let (sent, not_sent) = t.send_queue.split_at(t.send_queue.len() - unsent);
    // Room for the whole send queue (the sends below do not wait: nothing
    // drains it behind the lock); the saved size comes back at the end.
    let need = t
        .send_queue
        .len()
        .saturating_mul(2)
        .saturating_add(64 << 10);
    if (getsockopt_int(&s, libc::SOL_SOCKET, libc::SO_SNDBUF)? as usize) < need {
        setsockopt_int(
            &s,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            need.min(i32::MAX as usize) as i32,
        )
        .map_err(step("SO_SNDBUFFORCE"))?;
    }
    set(&s, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    send_all(&s, &t.recv_queue).map_err(step("refilling the receive queue"))?;
    set(&s, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    send_all(&s, sent).map_err(step("refilling the send queue"))?;
    // Our FIN, sent after every byte: in repair mode it counts as sent (the
    // lock would drop it, and the kernel would hold it back as unsent).
    // Behind bytes never sent, it waits for them, as it did.
    let fin_now = our_fin(t.state) && not_sent.is_empty() && t.state != TCP_LAST_ACK;
    if fin_now {
        crate::sys::socket::shutdown(&s, libc::SHUT_WR).map_err(step("shutdown(SHUT_WR)"))?;
    }
    // The window was last updated at most where the data ends now.
    let rcv_wup = if (recv_end.wrapping_sub(t.rcv_wup) as i32) < 0 {
        recv_end
    } else {
        t.rcv_wup
    };
    let window: Vec<u8> = [t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, rcv_wup]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    setsockopt(&s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &window)
        .map_err(step("TCP_REPAIR_WINDOW"))?;
    set(&s, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    set(&s, TCP_REPAIR, TCP_REPAIR_OFF)?;
    apply_saved(&s, sf, libc::SO_REUSEADDR).map_err(step("SO_REUSEADDR"))?;
    send_all(&s, not_sent).map_err(step("sending what was never sent"))?;
    apply_saved(&s, sf, libc::SO_SNDBUF).map_err(step("SO_SNDBUF"))?;
    if our_fin(t.state) && !fin_now && t.state != TCP_LAST_ACK {
        crate::sys::socket::shutdown(&s, libc::SHUT_WR).map_err(step("shutdown(SHUT_WR)"))?;
    }
    close_as_saved(&s, sf, t, recv_end, fin_now)?;
    if sf.shutdown & 1 != 0 {
        crate::sys::socket::shutdown(&s, libc::SHUT_RD).map_err(step("shutdown(SHUT_RD)"))?;
    }
    Ok(s)
}

/// Brings a socket (out of repair mode, our FIN given already unless it is
/// LAST_ACK's, which follows the peer's) to the saved state: the peer's FIN
/// or its acknowledgement of ours come as segments from the peer
/// (`packets.rs`).
fn close_as_saved(
    s: &OwnedFd,
    sf: &SocketFile,
    t: &TcpConnection,
    recv_end: u32,
    fin_sent: bool,
) -> io::Result<()> {
    let addr =
        |raw: &[u8]| netlock::socket_addr(raw).ok_or_else(|| io::Error::other("not an IP address"));
    let (local, peer) = (addr(&sf.local_addr)?, addr(&sf.peer_addr)?);
    // The peer's window, in its own scale.
    let window = (t.snd_wnd >> t.snd_wscale).min(u16::MAX as u32) as u16;
    let shut = || {
        crate::sys::socket::shutdown(s, libc::SHUT_WR)
            .map_err(|e| io::Error::new(e.kind(), format!("shutdown(SHUT_WR): {e}")))
    };
    let peer_fin = || {
        packets::send_tcp(
            peer,
            local,
            recv_end,
            t.snd_una,
            packets::TCP_FIN | packets::TCP_ACK,
            window,
        )
    };
    match t.state {
        // The peer acknowledged our FIN: only a sent one can be.
        TCP_FIN_WAIT2 if fin_sent => {
            packets::send_tcp(
                peer,
                local,
                t.recv_seq,
                t.send_seq,
                packets::TCP_ACK,
                window,
            )?;
        }
        TCP_CLOSE_WAIT | TCP_CLOSING => peer_fin()?,
        TCP_LAST_ACK => {
            peer_fin()?;
            wait_state(s, &[TCP_CLOSE_WAIT])?;
            shut()?;
        }
        _ => return Ok(()),
    }
    wait_state(s, &[t.state])
}

/// Waits (briefly: the segments are delivered locally) for one of `want`.
fn wait_state(s: &OwnedFd, want: &[u32]) -> io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let mut info = [0u8; 1];
        getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
        if want.contains(&(info[0] as u32)) {
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(2) {
            return Err(io::Error::other(format!(
                "the connection reached TCP state {}, not {want:?}",
                info[0]
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clamp a restored connection connects with gives back the
    /// segments it sent: its MSS plus the timestamp option when it agreed
    /// on timestamps (whatever this machine's sysctl says), its clamp from
    /// an image without its MSS, and nothing beyond jumbo frames.
    #[test]
    fn connect_clamp_gives_back_the_segment_size() {
        let conn = |snd_mss, timestamps, mss| TcpConnection {
            snd_mss,
            timestamps,
            mss,
            ..Default::default()
        };
        assert_eq!(connect_mss(&conn(1448, true, 1460)), Some(1460));
        assert_eq!(connect_mss(&conn(1452, false, 1452)), Some(1452));
        assert_eq!(connect_mss(&conn(0, true, 1400)), Some(1400));
        assert_eq!(connect_mss(&conn(8948, true, 8960)), Some(8960));
        assert_eq!(connect_mss(&conn(65483, true, 65495)), None);
        assert_eq!(connect_mss(&conn(0, true, 65495)), None);
    }
}
