//! sock_diag (NETLINK_SOCK_DIAG): what the kernel tells of a socket that
//! its fd does not: the peer of a unix socket, its queue lengths and
//! shutdown state and the file it was bound to, the accept queue of a TCP
//! listener.

use crate::sys::socket;
use rustix::net::{RecvFlags, SendFlags};
use std::io;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
pub(super) const TCP_ESTABLISHED: u8 = 1;
pub(super) const TCP_CLOSE: u8 = 7;
pub(super) const TCP_LISTEN: u8 = 10;

/// Sends one SOCK_DIAG_BY_FAMILY request and calls `each` with the payload
/// of every answer until it returns true, the dump ends, or (for a
/// non-dump request) after the first answer.
fn request(req: &[u8], dump: bool, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    let nl = socket::socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_SOCK_DIAG)?;
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST as u16 | if dump { libc::NLM_F_DUMP as u16 } else { 0 };
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(req);
    rustix::net::send(&nl, &msg, SendFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rustix::net::recv(&nl, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut b = &buf[..n];
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
pub(super) struct UnixDiag {
    pub state: u8,
    pub peer: u64,
    /// Listener: connections waiting in the accept queue; others: bytes.
    pub rqueue: u32,
    /// Listener: the listen() backlog.
    pub wqueue: u32,
    pub shutdown: u8,
    /// (inode, device) of the file its bind to a path made.
    pub file: Option<(u64, u64)>,
}

/// A unix_diag request for socket `inode` (0: every socket, in a dump),
/// asking for the attributes `show`.
fn unix_request(inode: u64, show: u32) -> Vec<u8> {
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
    let mut req = Vec::with_capacity(24);
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&(inode as u32).to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    // INET_DIAG_NOCOOKIE: do not check the cookie.
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

pub(super) fn unix(inode: u64) -> io::Result<UnixDiag> {
    let req = unix_request(inode, UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN);
    let mut found = None;
    request(&req, false, |p| {
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
                UNIX_DIAG_VFS => d.file = vfs(v),
                _ => {}
            }
        }
        found = Some(d);
        true
    })?;
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in unix_diag"))
}

/// The (inode, device) of a socket's file from its UNIX_DIAG_VFS
/// attribute (struct unix_diag_vfs: inode, then the kernel's dev_t, whose
/// minor is its low 20 bits), with the device as stat(2) gives it.
fn vfs(v: &[u8]) -> Option<(u64, u64)> {
    let word = |i: usize| Some(u32::from_ne_bytes(v.get(i..i + 4)?.try_into().ok()?));
    let (ino, kdev) = (word(0)?, word(4)?);
    Some((ino as u64, libc::makedev(kdev >> 20, kdev & 0xf_ffff)))
}

/// Whether a live unix socket (of our network namespace) is bound to the
/// file with inode `ino` on device `dev`: its file is in use, not a stale
/// one left by a process that is gone.
pub(super) fn unix_file_in_use(ino: u64, dev: u64) -> io::Result<bool> {
    let mut found = false;
    request(&unix_request(0, UDIAG_SHOW_VFS), true, |p| {
        found = p.len() >= 16
            && rtattrs(&p[16..])
                .into_iter()
                .any(|(ty, v)| ty == UNIX_DIAG_VFS && vfs(v) == Some((ino, dev)));
        found
    })?;
    Ok(found)
}

/// (accept queue length, backlog) of a TCP listener, found by inode among
/// the listeners of our network namespace.
pub(super) fn tcp_listener(family: i32, inode: u64) -> io::Result<(u32, u32)> {
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48 bytes)
    let mut req = vec![0u8; 56];
    req[0] = family as u8;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    let mut found = None;
    request(&req, true, |p| {
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

/// What sock_diag tells of one TCP connection.
pub(super) struct TcpDiag {
    pub state: u8,
    /// Bytes received and not read (a FIN received counts as one).
    pub rqueue: u32,
    pub inode: u64,
    /// RCV_SHUTDOWN 1, SEND_SHUTDOWN 2.
    pub shutdown: u8,
}

/// The TCP connection `local` -> `peer` of our network namespace, looked
/// up by its addresses (one answer, not a walk over every socket); None if
/// there is none. An IPv4 connection of an IPv6 socket (v4-mapped) is found
/// by its IPv4 addresses.
pub(super) fn tcp_connection(
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> io::Result<Option<TcpDiag>> {
    const INET_DIAG_SHUTDOWN: u16 = 8;
    if local.is_ipv4() != peer.is_ipv4() {
        return Ok(None);
    }
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then
    // struct inet_diag_sockid: sport, dport, src[16], dst[16], if, cookie.
    let mut req = vec![0u8; 56];
    req[0] = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    req[8..10].copy_from_slice(&local.port().to_be_bytes());
    req[10..12].copy_from_slice(&peer.port().to_be_bytes());
    let put = |req: &mut [u8], at: usize, ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => req[at..at + 4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => req[at..at + 16].copy_from_slice(&v6.octets()),
    };
    put(&mut req, 12, local.ip());
    put(&mut req, 28, peer.ip());
    req[48..56].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    let mut found = None;
    let asked = request(&req, false, |p| {
        // struct inet_diag_msg: family, state, timer, retrans, sockid (48),
        // expires, rqueue, wqueue, uid, inode; then attributes.
        if p.len() < 72 {
            return false;
        }
        let at = |o: usize| u32::from_ne_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
        found = Some(TcpDiag {
            state: p[1],
            rqueue: at(56),
            inode: at(68) as u64,
            shutdown: rtattrs(&p[72..])
                .into_iter()
                .find(|(ty, _)| *ty == INET_DIAG_SHUTDOWN)
                .and_then(|(_, v)| v.first().copied())
                .unwrap_or(0),
        });
        true
    });
    match asked {
        Ok(()) => Ok(found),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bytes waiting to be read on each connection of our network
/// namespace that no fd holds yet (inode 0, established or closed by its
/// peer: in an accept queue) and whose local address is one listener
/// `listener` answers on.
pub(super) fn unaccepted(listener: std::net::SocketAddr) -> io::Result<Vec<u32>> {
    const TCP_CLOSE_WAIT: u8 = 8;
    let mut found = Vec::new();
    let states = (1u32 << TCP_ESTABLISHED) | (1u32 << TCP_CLOSE_WAIT);
    answered_by(listener, states, |_, at| {
        if at(68) == 0 {
            found.push(at(56));
        }
    })?;
    Ok(found)
}

/// How many handshakes `listener` answers on have not completed (SYN_RECV:
/// with TCP_DEFER_ACCEPT, those whose client sent no data yet).
pub(super) fn syn_received(listener: std::net::SocketAddr) -> io::Result<u32> {
    const TCP_SYN_RECV: u8 = 3;
    let mut n = 0;
    answered_by(listener, 1u32 << TCP_SYN_RECV, |_, _| n += 1)?;
    Ok(n)
}

/// Calls `each` with every TCP socket of our network namespace in one of
/// `states` (a mask of 1 << state) whose local address is one `listener`
/// answers on: its inet_diag_msg, and a reader of its u32 at an offset.
fn answered_by(
    listener: std::net::SocketAddr,
    states: u32,
    mut each: impl FnMut(&[u8], &dyn Fn(usize) -> u32),
) -> io::Result<()> {
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut req = vec![0u8; 56];
        req[0] = family as u8;
        req[1] = libc::IPPROTO_TCP as u8;
        req[4..8].copy_from_slice(&states.to_ne_bytes());
        request(&req, true, |p| {
            if p.len() < 72 {
                return false;
            }
            let at = |o: usize| u32::from_ne_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
            let port = u16::from_be_bytes([p[4], p[5]]);
            let ip = match p[0] as i32 {
                libc::AF_INET => std::net::IpAddr::from(<[u8; 4]>::try_from(&p[8..12]).unwrap()),
                _ => {
                    let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap());
                    v6.to_ipv4_mapped()
                        .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
                }
            };
            if port == listener.port() && (listener.ip().is_unspecified() || listener.ip() == ip) {
                each(p, &at);
            }
            false
        })?;
    }
    Ok(())
}

/// The shutdown bits (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2) of TCP socket
/// `inode`, connected `local` -> `peer` (raw sockaddrs).
pub(super) fn tcp_shutdown(local: &[u8], peer: &[u8], inode: u64) -> io::Result<u8> {
    let addr = |raw: &[u8]| {
        crate::netlock::socket_addr(raw)
            .ok_or_else(|| io::Error::other("an address that is not IPv4 or IPv6"))
    };
    match tcp_connection(addr(local)?, addr(peer)?)? {
        Some(d) if d.inode == inode => Ok(d.shutdown),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not among the TCP sockets",
        )),
    }
}

/// What packet_diag tells of an AF_PACKET socket.
#[derive(Debug, Default)]
pub(super) struct PacketDiag {
    /// Memberships: (ifindex, count, type, address).
    pub mclist: Vec<(u32, u32, u16, Vec<u8>)>,
    /// A receive or transmit ring is set up.
    pub rings: bool,
}

/// packet_diag of the packet socket `inode` in our network namespace.
pub(super) fn packet(inode: u64) -> io::Result<PacketDiag> {
    const PACKET_DIAG_MCLIST: u16 = 1;
    const PACKET_DIAG_RX_RING: u16 = 2;
    const PACKET_DIAG_TX_RING: u16 = 3;
    // struct packet_diag_req: family, protocol, pad, ino, show, cookie[2].
    let mut req = vec![0u8; 20];
    req[0] = libc::AF_PACKET as u8;
    req[8..12].copy_from_slice(&(2u32 | 4).to_ne_bytes()); // MCLIST, RING_CFG
    let mut found = None;
    request(&req, true, |p| {
        // struct packet_diag_msg: family, type, num, ino, cookie[2].
        if p.len() < 16 || u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as u64 != inode {
            return false;
        }
        let mut d = PacketDiag::default();
        for (ty, v) in rtattrs(&p[16..]) {
            match ty {
                PACKET_DIAG_MCLIST => {
                    // struct packet_diag_mclist: index, count, type, alen, addr[32].
                    for m in v.chunks_exact(44) {
                        let u32_at =
                            |o: usize| u32::from_ne_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]]);
                        let alen = (u16::from_ne_bytes([m[10], m[11]]) as usize).min(32);
                        d.mclist.push((
                            u32_at(0),
                            u32_at(4),
                            u16::from_ne_bytes([m[8], m[9]]),
                            m[12..12 + alen].to_vec(),
                        ));
                    }
                }
                PACKET_DIAG_RX_RING | PACKET_DIAG_TX_RING => d.rings = true,
                _ => {}
            }
        }
        found = Some(d);
        true
    })?;
    found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not among the packet sockets"))
}
