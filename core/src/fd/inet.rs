//! IPv4 and IPv6 sockets: TCP listeners (with their backlog, found with
//! sock_diag, and with --tcp-established the connections waiting in their
//! accept queue, see `accept_queue.rs`), established and closing TCP
//! connections (with --tcp-established or --tcp-close, see `tcp.rs`), UDP
//! and UDP-Lite sockets with their peer and queued datagrams (`udp.rs`),
//! raw and ICMP echo sockets, each with its options (and the multicast
//! groups datagram and raw sockets joined: `multicast.rs`).

use super::socket::{
    Created, PeekError, apply_options, finish, fmt_sockaddr, has_queued, is_socket_of,
    listener_backlog, read, type_name, urgent_pending,
};
use super::tcp::TcpMode;
use super::unix::backlog;
use super::{DumpFd, FdKind, Reopen, multicast, sock_diag};
use crate::error::{DumpError, RestoreError};
use crate::kind::DumpTree;
use crate::kind::RestoreObjects;
use crate::sys::socket;
use crstream_proto::{OpenFile, SockOpt, SocketFile, TcpConnection};
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;

#[derive(Default)]
pub(super) struct InetSockets {
    created: Created,
    /// Dump: the multicast groups joined here, read at the first datagram
    /// or raw socket.
    joined_here: Option<multicast::JoinedHere>,
}

impl InetSockets {
    /// The multicast groups datagram or raw socket `dup` of fd `d` joined.
    fn memberships(
        &mut self,
        d: &DumpFd<'_>,
        dup: &OwnedFd,
        family: i32,
    ) -> Result<Vec<crstream_proto::IpMembership>, DumpError> {
        let what = |e| d.error("its multicast memberships", e);
        let here = match &mut self.joined_here {
            Some(here) => here,
            none => none.insert(multicast::JoinedHere::read().map_err(what)?),
        };
        multicast::memberships(dup, family, here).map_err(what)
    }
}

/// A listener with TCP_DEFER_ACCEPT keeps a connection whose client sent
/// no data yet as a handshake (SYN_RECV) that no fd or queue holds: it
/// cannot be saved, and restored without it the client would be reset at
/// its first send. Refused, unless --skip-in-flight drops them.
fn refuse_deferred_handshakes(
    d: &DumpFd<'_>,
    dup: &OwnedFd,
    sf: &SocketFile,
    what: &str,
) -> Result<(), DumpError> {
    let deferred = socket::getsockopt_int(dup, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT);
    if !deferred.is_ok_and(|v| v > 0) {
        return Ok(());
    }
    let Some(addr) = crate::netlock::socket_addr(&sf.local_addr) else {
        return Ok(());
    };
    let waiting = sock_diag::syn_received(addr).map_err(|e| d.error("inet_diag (SYN_RECV)", e))?;
    if waiting == 0 {
        return Ok(());
    }
    let why = format!(
        "{what} has {waiting} connection(s) waiting for their client's first data \
         (TCP_DEFER_ACCEPT), which cannot be saved: restored, their clients would be reset"
    );
    if d.skip_in_flight {
        tracing::warn!(pid = d.pid, fd = d.fd, "{why} (dropped: --skip-in-flight)");
        return Ok(());
    }
    Err(d.refuse(format!("{why}; dump with --skip-in-flight to drop them")))
}

/// The MSS TCP_MAXSEG accepts (the kernel's TCP_MIN_MSS, MAX_TCP_WINDOW).
const TCP_MIN_MSS: i32 = 88;
const MAX_TCP_WINDOW: i32 = 32767;

/// Port of an AF_INET/AF_INET6 sockaddr.
fn port(raw: &[u8]) -> u16 {
    if raw.len() >= 4 {
        u16::from_be_bytes([raw[2], raw[3]])
    } else {
        0
    }
}

impl FdKind for InetSockets {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let inet = |family| family == libc::AF_INET || family == libc::AF_INET6;
        let Some((dup, mut sf)) = read(d, inet)? else {
            return Ok(false);
        };
        let family = if sf.family == libc::AF_INET {
            "IPv4"
        } else {
            "IPv6"
        };
        let tcp = match (sf.r#type, sf.protocol) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => true,
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE) => false,
            // ICMP echo ("ping") and raw sockets: made again with their
            // options, name and peer; what waits in their queue cannot be
            // put back and is refused.
            (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) | (libc::SOCK_RAW, _) => {
                if has_queued(&dup) {
                    return Err(d.refuse(format!(
                        "{family} {} socket of protocol {} with data queued",
                        type_name(sf.r#type),
                        sf.protocol
                    )));
                }
                sf.ip_memberships = self.memberships(d, &dup, sf.family)?;
                finish(d, &dup, sf, f)?;
                return Ok(true);
            }
            (ty, protocol) => {
                return Err(d.refuse(format!(
                    "{family} socket of type {} protocol {protocol}",
                    type_name(ty)
                )));
            }
        };
        if tcp {
            let state = socket::tcp_state(&dup).map_err(|e| d.error("TCP_INFO", e))?;
            if super::tcp::saved_state(state) {
                let to = fmt_sockaddr(&sf.peer_addr);
                match d.tcp {
                    TcpMode::Refuse => {
                        return Err(d.refuse(format!(
                            "established TCP connection to {to}: dump with --tcp-established to \
                             restore it connected (the local address must exist where it is \
                             restored) or --tcp-close to restore it closed"
                        )));
                    }
                    TcpMode::Established => {
                        if urgent_pending(&dup) {
                            return Err(d.refuse(format!(
                                "TCP connection to {to} has urgent data (MSG_OOB) not read yet, \
                                 which repair mode cannot put back"
                            )));
                        }
                        let sock = dup.try_clone().map_err(|e| d.error("dup", e))?;
                        let (pid, fd) = (d.pid, d.fd as u32);
                        d.objects
                            .tcp
                            .note(pid, fd, &sf, sock)
                            .map_err(|e| d.refuse(format!("TCP connection to {to}: {e}")))?;
                        // Read once the network is locked (tcp.rs).
                        sf.tcp = Some(TcpConnection::default());
                        sf.shutdown =
                            sock_diag::tcp_shutdown(&sf.local_addr, &sf.peer_addr, sf.inode)
                                .map_err(|e| d.error("inet_diag (shutdown)", e))?
                                as u32;
                    }
                    TcpMode::Close => {
                        sf.tcp = Some(TcpConnection {
                            state: super::tcp::TCP_ESTABLISHED,
                            closed: true,
                            ..Default::default()
                        });
                    }
                }
            } else if state != sock_diag::TCP_LISTEN && state != sock_diag::TCP_CLOSE {
                return Err(d.refuse(format!(
                    "TCP connection in state {state} with {}: not supported yet",
                    fmt_sockaddr(&sf.peer_addr)
                )));
            }
            if sf.listening {
                // A listener's TCP_MAXSEG reads the MSS set on it (536 when
                // none is), which the connections it accepts take. (A
                // closed socket's reads its last connection's segment size
                // when none was set.)
                let mss = socket::getsockopt_int(&dup, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
                    .map_err(|e| d.error("TCP_MAXSEG", e))?;
                if (TCP_MIN_MSS..=MAX_TCP_WINDOW).contains(&mss) {
                    sf.options.push(SockOpt {
                        level: libc::IPPROTO_TCP,
                        name: libc::TCP_MAXSEG,
                        value: mss.to_ne_bytes().to_vec(),
                    });
                }
                let what = format!("TCP listener on {}", fmt_sockaddr(&sf.local_addr));
                let diag = sock_diag::tcp_listener(sf.family, sf.inode);
                match (diag, d.tcp) {
                    (Ok((pending, backlog)), mode) if pending > 0 && !d.skip_in_flight => {
                        sf.backlog = backlog;
                        match mode {
                            TcpMode::Established => take_accept_queue(d, &dup, &sf, pending)?,
                            TcpMode::Close => tracing::warn!(
                                pid = d.pid,
                                fd = d.fd,
                                "{what}: {pending} connection(s) waiting in the accept queue are \
                                 not saved (--tcp-close)"
                            ),
                            TcpMode::Refuse => {
                                return Err(d.refuse(format!(
                                    "{what} has {pending} connection(s) waiting in the accept \
                                     queue: dump with --tcp-established to save them (restored \
                                     in the queue), --tcp-close or --skip-in-flight to drop them"
                                )));
                            }
                        }
                    }
                    (diag, _) => sf.backlog = listener_backlog(d, &what, diag)?,
                }
                refuse_deferred_handshakes(d, &dup, &sf, &what)?;
            }
        } else {
            // Corked data waits in the send queue, which nothing reads.
            // (UDP-Lite shares UDP's options.)
            let corked =
                socket::getsockopt_int(&dup, sf.protocol, libc::UDP_CORK).is_ok_and(|c| c != 0);
            if corked && socket::ioctl_int(&dup, libc::TIOCOUTQ).is_ok_and(|n| n > 0) {
                return Err(d.refuse("UDP socket with corked data not sent yet"));
            }
            let queued = super::udp::peek_datagrams(&dup).map_err(|e| match e {
                PeekError::Io(e) => d.error("reading the queued datagrams", e),
                PeekError::Refuse(why) => d.refuse(format!("UDP socket: {why}")),
            })?;
            for (data, from, tos) in queued {
                sf.queued.push(data);
                sf.queued_from.push(from);
                sf.queued_tos.push(tos as u32);
            }
            if sf.queued_tos.iter().all(|&t| t == 0) {
                // What an image without them means: written only if needed.
                sf.queued_tos.clear();
            }
            sf.ip_memberships = self.memberships(d, &dup, sf.family)?;
        }
        finish(d, &dup, sf, f)?;
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        is_socket_of(f, &[libc::AF_INET, libc::AF_INET6])
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |what: &str, e: io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let s = f.socket.as_ref().expect("restores() checked it");
        self.created.open(pid, f, s.inode, || match &s.tcp {
            Some(t) => super::tcp::build(s, t, objects.tcp_close, objects.tcp_built).map_err(|e| {
                ferr(
                    &format!(
                        "TCP connection {} -> {}",
                        fmt_sockaddr(&s.local_addr),
                        fmt_sockaddr(&s.peer_addr)
                    ),
                    e,
                )
            }),
            None => {
                let sock = create(s, &ferr)?;
                if objects.tcp_close && !s.accept_queue.is_empty() {
                    tracing::info!(
                        pid,
                        fd = f.fd,
                        "{} connection(s) of the accept queue not restored (--tcp-close)",
                        s.accept_queue.len()
                    );
                } else {
                    for q in &s.accept_queue {
                        objects.tcp_built.put_queued(q).map_err(|e| {
                            ferr(
                                &format!(
                                    "putting the connection {} -> {} back in the accept queue",
                                    fmt_sockaddr(&q.peer_addr),
                                    fmt_sockaddr(&q.local_addr)
                                ),
                                e,
                            )
                        })?;
                    }
                }
                Ok(sock)
            }
        })
    }
}

/// Takes the `pending` connections waiting in the accept queue of a
/// listener (`dup`: crstream's duplicate) to save them
/// (`accept_queue.rs`), once putting them back is known to work here.
fn take_accept_queue(
    d: &mut DumpFd<'_>,
    dup: &OwnedFd,
    sf: &SocketFile,
    pending: u32,
) -> Result<(), DumpError> {
    let Some(inject) = d.inject else {
        return Err(d.refuse("connections in its accept queue, and no way to take them"));
    };
    let most = crate::netlock::socket_addr(&sf.local_addr)
        .and_then(|at| sock_diag::unaccepted(at).ok())
        .and_then(|held| held.into_iter().max());
    if let Some(held) = most.filter(|&n| n > super::accept_queue::MOST_QUEUED) {
        return Err(d.refuse(format!(
            "a connection waiting in its accept queue holds {held} bytes its client sent, more \
             than crstream puts back ({} KiB; --skip-in-flight drops them)",
            super::accept_queue::MOST_QUEUED >> 10
        )));
    }
    // An IPv6 listener takes IPv4 connections too (unless IPV6_V6ONLY).
    let versions: &[bool] = if sf.family == libc::AF_INET {
        &[true]
    } else {
        &[true, false]
    };
    for &ipv4 in versions {
        d.objects.tcp.queues.prepare(ipv4).map_err(|e| {
            d.refuse(format!(
                "{pending} connection(s) wait in its accept queue, which crstream cannot put back \
                 here: {e} (--skip-in-flight drops them)"
            ))
        })?;
    }
    let handoff = d.objects.tcp.handoff.clone();
    let taken = super::accept_queue::take(d.pid, d.fd, dup, pending, inject, handoff.as_deref())?;
    tracing::debug!(
        pid = d.pid,
        fd = d.fd,
        connections = taken.len(),
        "taken from the accept queue"
    );
    for t in taken {
        let (pid, fd) = (d.pid, d.fd as u32);
        d.objects
            .tcp
            .note_queued(pid, fd, sf.inode, t)
            .map_err(|e| d.refuse(format!("a connection in its accept queue: {e}")))?;
    }
    Ok(())
}

fn create(
    s: &SocketFile,
    ferr: &dyn Fn(&str, io::Error) -> RestoreError,
) -> Result<OwnedFd, RestoreError> {
    let sock = super::socket::made_as(s.owner_uid, || {
        socket::socket(s.family, s.r#type, s.protocol)
    })
    .map_err(|e| ferr("socket", e))?;
    apply_options(&sock, &s.options).map_err(|e| ferr("socket options", e))?;
    multicast::join(&sock, &s.ip_memberships).map_err(|e| ferr("joining", e))?;
    if port(&s.local_addr) != 0 {
        socket::bind(&sock, &s.local_addr)
            .map_err(|e| ferr(&format!("bind to {}", fmt_sockaddr(&s.local_addr)), e))?;
    }
    if s.listening {
        socket::listen(&sock, backlog(s)).map_err(|e| ferr("listen", e))?;
    }
    if s.r#type == libc::SOCK_DGRAM || s.r#type == libc::SOCK_RAW {
        // Before connecting: a connected socket takes datagrams from its
        // peer only, and some may have come from elsewhere before.
        super::udp::refill(&sock, s.protocol, &s.queued, &s.queued_from, &s.queued_tos)
            .map_err(|e| ferr("putting the queued datagrams back", e))?;
        if !s.peer_addr.is_empty() {
            socket::connect(&sock, &s.peer_addr)
                .map_err(|e| ferr(&format!("connect to {}", fmt_sockaddr(&s.peer_addr)), e))?;
        }
    }
    Ok(sock)
}

/// An IPv4 or IPv6 socket the tree shares with a process outside it
/// (a supervisor that handed it a listener, socket activation) is
/// refused, naming that process: restored, the tree would have a
/// socket of its own (a listener's bind fails while the other holds
/// the port), and a connection read in repair mode would stay so for
/// the other. Called before the connections are read in repair mode.
/// `also_ours`: crstream's snapshots of the tree's processes.
pub(crate) fn refuse_shared_outside(t: &DumpTree<'_>, also_ours: &[i32]) -> Result<(), DumpError> {
    let mut held: HashMap<u64, (i32, u32)> = HashMap::new();
    for p in t.processes.iter() {
        let Some(table) = p.records.get::<crstream_proto::FileTable>() else {
            continue;
        };
        for f in &table.files {
            if let Some(s) = f
                .socket
                .as_ref()
                .filter(|s| s.family == libc::AF_INET || s.family == libc::AF_INET6)
            {
                held.entry(s.inode).or_insert((p.pid, f.fd));
            }
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    let outside = super::held_outside(&super::ours(t, also_ours), "socket:", |i| {
        held.contains_key(&i)
    });
    let Some(&(pid, fd, inode)) = outside.first() else {
        return Ok(());
    };
    let (in_pid, in_fd) = held[&inode];
    let comm = crate::proc::read_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Err(DumpError::UnsupportedFile {
        pid: in_pid,
        fd: in_fd as i32,
        what: format!(
            "socket:[{inode}], which pid {pid} ({}) outside the tree holds too (its fd \
             {fd}): restored, the tree would have a socket of its own",
            comm.trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;

    fn tcp_listener(family: i32, addr: &[u8], backlog: i32) -> io::Result<OwnedFd> {
        let s = socket::socket(family, libc::SOCK_STREAM, 0)?;
        socket::setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        socket::setsockopt_int(&s, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        socket::bind(&s, addr)?;
        socket::listen(&s, backlog)?;
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
        let f = dump_own(orig.as_raw_fd()).unwrap();
        let s = f.socket.as_ref().unwrap();
        assert!(s.listening);
        assert_eq!(s.backlog, 7);
        assert_eq!(s.family, family);
        let p = port(&s.local_addr);
        assert_ne!(p, 0);
        drop(orig);
        let n = created(&mut InetSockets::default(), &f);
        assert_eq!(port(&socket::name(&n, false).unwrap()), p);
        let again = dump_own(n.as_raw_fd()).unwrap();
        assert_eq!(again.socket.as_ref().unwrap().backlog, 7);
        assert_ne!(
            socket::getsockopt_int(&n, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(),
            0
        );
        assert_eq!(
            socket::getsockopt_int(&n, libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap(),
            1
        );
        let to = if family == libc::AF_INET {
            format!("127.0.0.1:{p}")
        } else {
            format!("[::1]:{p}")
        };
        let mut c = TcpStream::connect(to).unwrap();
        let a = rustix::net::accept(&n).unwrap();
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
        let e = dump_own(l.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("accept queue"), "{e}");
    }

    #[test]
    fn established_tcp_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_srv, _) = l.accept().unwrap();
        let e = dump_own(c.as_raw_fd()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DumpError::UnsupportedFile { .. }), "{msg}");
        assert!(
            msg.contains(&format!(
                "established TCP connection to 127.0.0.1:{p}: dump with --tcp-established"
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
        let p = u.local_addr().unwrap().port();
        let f = dump_own(u.as_raw_fd()).unwrap();
        assert_ne!(f.open_flags as i32 & libc::O_NONBLOCK, 0);
        drop(u);
        let n = created(&mut InetSockets::default(), &f);
        let flags = rustix::fs::fcntl_getfl(&n).unwrap().bits() as i32;
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        let n = UdpSocket::from(n);
        assert_eq!(n.local_addr().unwrap().port(), p);
        assert!(n.broadcast().unwrap());
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"dgram", ("127.0.0.1", p)).unwrap();
        n.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 16];
        let (len, _) = n.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"dgram");
    }

    /// A datagram socket's receive options and multicast settings come
    /// back (IPv4 and IPv6).
    #[test]
    fn datagram_receive_and_multicast_options_come_back() {
        for (family, opts) in [
            (
                libc::AF_INET,
                vec![
                    (libc::IPPROTO_IP, 49 /* IP_MULTICAST_ALL */, 0),
                    (libc::IPPROTO_IP, 6 /* IP_RECVOPTS */, 1),
                    (libc::IPPROTO_IP, 25 /* IP_RECVFRAGSIZE */, 1),
                    (libc::IPPROTO_UDP, 103 /* UDP_SEGMENT */, 1_200),
                    (libc::IPPROTO_UDP, 104 /* UDP_GRO */, 1),
                    (libc::SOL_SOCKET, 45 /* SO_SELECT_ERR_QUEUE */, 1),
                ],
            ),
            (
                libc::AF_INET6,
                vec![
                    (libc::IPPROTO_IPV6, 17 /* IPV6_MULTICAST_IF */, 1),
                    (libc::IPPROTO_IPV6, 29 /* IPV6_MULTICAST_ALL */, 0),
                    (libc::IPPROTO_IPV6, 51 /* IPV6_RECVHOPLIMIT */, 1),
                    (libc::IPPROTO_IPV6, 66 /* IPV6_RECVTCLASS */, 1),
                    (libc::IPPROTO_IPV6, 74 /* IPV6_RECVORIGDSTADDR */, 1),
                    (libc::IPPROTO_IPV6, 62 /* IPV6_DONTFRAG */, 1),
                    (libc::IPPROTO_IPV6, 60 /* IPV6_RECVPATHMTU */, 1),
                    (
                        libc::IPPROTO_IPV6,
                        72, /* IPV6_ADDR_PREFERENCES */
                        0x400,
                    ),
                ],
            ),
        ] {
            let s = socket::socket(family, libc::SOCK_DGRAM, 0).unwrap();
            for &(level, name, v) in &opts {
                socket::setsockopt_int(&s, level, name, v)
                    .unwrap_or_else(|e| panic!("level {level} option {name}: {e}"));
            }
            // As the kernel reads them back (it adds defaults to some).
            let set: Vec<i32> = opts
                .iter()
                .map(|&(level, name, _)| socket::getsockopt_int(&s, level, name).unwrap())
                .collect();
            let f = dump_own(s.as_raw_fd()).unwrap();
            drop(s);
            let n = created(&mut InetSockets::default(), &f);
            for (&(level, name, _), &v) in opts.iter().zip(&set) {
                let got = socket::getsockopt_int(&n, level, name).unwrap();
                assert_eq!(got, v, "family {family} level {level} option {name}");
            }
        }
    }

    /// The MSS set on a listener (which the connections it accepts take)
    /// comes back; a closed socket's, which reads its last connection's
    /// segment size, is not set again.
    #[test]
    fn a_listeners_mss_comes_back() {
        let s = socket::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
        socket::setsockopt_int(&s, libc::IPPROTO_TCP, libc::TCP_MAXSEG, 1200).unwrap();
        socket::bind(&s, &sockaddr_in([127, 0, 0, 1], 0)).unwrap();
        socket::listen(&s, 4).unwrap();
        let f = dump_own(s.as_raw_fd()).unwrap();
        drop(s);
        let n = created(&mut InetSockets::default(), &f);
        let mss = socket::getsockopt_int(&n, libc::IPPROTO_TCP, libc::TCP_MAXSEG).unwrap();
        assert_eq!(mss, 1200);
    }

    /// Every option a server sets on its sockets comes back, and a
    /// classic BPF filter with its lock.
    #[test]
    fn socket_options_and_filters_come_back() {
        let s = socket::socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
        let int = |level, name, v: i32| socket::setsockopt_int(&s, level, name, v).unwrap();
        int(libc::SOL_SOCKET, libc::SO_MARK, 77);
        int(libc::SOL_SOCKET, libc::SO_RCVBUF, 200_000);
        int(libc::SOL_SOCKET, 72 /* SO_BUF_LOCK */, 1);
        int(libc::IPPROTO_IP, libc::IP_TOS, 0x10);
        int(libc::SOL_SOCKET, libc::SO_PRIORITY, 5);
        int(libc::IPPROTO_IP, libc::IP_TTL, 33);
        int(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 12_345);
        int(libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 9_999);
        int(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77);
        int(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
        // Less common ones a sweep of real servers found dropped.
        let rarer = [
            (libc::SOL_SOCKET, 40 /* SO_RXQ_OVFL */, 1),
            (libc::SOL_SOCKET, 37 /* SO_TIMESTAMPING */, 0x58),
            (libc::IPPROTO_IP, 20 /* IP_RECVORIGDSTADDR */, 1),
            (
                libc::IPPROTO_IP,
                51, /* IP_LOCAL_PORT_RANGE */
                (40_000 << 16) | 30_000,
            ),
            (libc::IPPROTO_TCP, 27 /* TCP_SAVE_SYN */, 1),
            (libc::IPPROTO_TCP, 36 /* TCP_INQ */, 1),
            (libc::IPPROTO_TCP, 16 /* TCP_THIN_LINEAR_TIMEOUTS */, 1),
            (libc::IPPROTO_TCP, 37 /* TCP_TX_DELAY */, 1_000),
            (libc::IPPROTO_TCP, 34 /* TCP_FASTOPEN_NO_COOKIE */, 1),
            (libc::SOL_SOCKET, 60 /* SO_ZEROCOPY */, 1),
        ];
        for &(level, name, v) in &rarer {
            int(level, name, v);
        }
        let pacing = 1_000_000u64.to_ne_bytes();
        socket::setsockopt(
            &s,
            libc::SOL_SOCKET,
            47, /* SO_MAX_PACING_RATE */
            &pacing,
        )
        .unwrap();
        // struct sock_txtime: CLOCK_TAI, SOF_TXTIME_REPORT_ERRORS.
        let txtime = [11i32.to_ne_bytes(), 2u32.to_ne_bytes()].concat();
        socket::setsockopt(&s, libc::SOL_SOCKET, 61 /* SO_TXTIME */, &txtime).unwrap();
        socket::setsockopt(&s, libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"reno").unwrap();
        socket::setsockopt(&s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, b"lo").unwrap();
        let timeout = [3u64.to_ne_bytes(), 500_000u64.to_ne_bytes()].concat();
        socket::setsockopt(&s, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout).unwrap();
        // ret #0x40000 (accept 256 KiB of each packet): one instruction.
        let filter = [
            0x06u16.to_ne_bytes().to_vec(),
            vec![0, 0],
            0x40000u32.to_ne_bytes().to_vec(),
        ]
        .concat();
        socket::attach_filter(&s, &filter).unwrap();
        int(libc::SOL_SOCKET, 44 /* SO_LOCK_FILTER */, 1);
        socket::bind(&s, &sockaddr_in([127, 0, 0, 1], 0)).unwrap();
        let f = dump_own(s.as_raw_fd()).unwrap();
        drop(s);
        let n = created(&mut InetSockets::default(), &f);
        let get = |level, name| {
            let mut b = [0u8; 16];
            let len = socket::getsockopt(&n, level, name, &mut b).unwrap();
            b[..len].to_vec()
        };
        let int = |level, name| i32::from_ne_bytes(get(level, name)[..4].try_into().unwrap());
        assert_eq!(int(libc::SOL_SOCKET, libc::SO_MARK), 77);
        assert_eq!(int(libc::SOL_SOCKET, libc::SO_PRIORITY), 5);
        assert_eq!(int(libc::SOL_SOCKET, 72), 1);
        assert_eq!(int(libc::IPPROTO_IP, libc::IP_TOS), 0x10);
        assert_eq!(int(libc::IPPROTO_IP, libc::IP_TTL), 33);
        assert_eq!(int(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 12_345);
        assert_eq!(int(libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT), 9_999);
        assert_eq!(int(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 77);
        assert_eq!(int(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        for &(level, name, v) in &rarer {
            assert_eq!(int(level, name), v, "level {level} option {name}");
        }
        assert_eq!(get(libc::SOL_SOCKET, 47), pacing);
        assert_eq!(get(libc::SOL_SOCKET, 61), txtime);
        assert!(get(libc::IPPROTO_TCP, libc::TCP_CONGESTION).starts_with(b"reno"));
        assert!(get(libc::SOL_SOCKET, libc::SO_BINDTODEVICE).starts_with(b"lo"));
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_RCVTIMEO), timeout);
        assert_eq!(int(libc::SOL_SOCKET, 44), 1);
        let mut insns = [0u8; 8];
        assert_eq!(
            socket::getsockopt(&n, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &mut insns).unwrap(),
            1
        );
        assert_eq!(insns.to_vec(), filter);
    }

    /// A socket bound with IP_FREEBIND to an address this machine does
    /// not have (TEST-NET-1; nothing is sent) binds there again.
    #[test]
    fn a_freebind_socket_on_an_address_not_configured_here_comes_back() {
        let s = socket::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        socket::setsockopt_int(&s, libc::IPPROTO_IP, libc::IP_FREEBIND, 1).unwrap();
        socket::bind(&s, &sockaddr_in([192, 0, 2, 55], 0)).unwrap();
        let addr = socket::name(&s, false).unwrap();
        let f = dump_own(s.as_raw_fd()).unwrap();
        drop(s);
        let n = created(&mut InetSockets::default(), &f);
        assert_eq!(socket::name(&n, false).unwrap(), addr);
    }

    /// Datagrams waiting on a UDP socket come back in order, each from
    /// where it came and with the TOS (traffic class) it came with; a
    /// connected socket is connected to the same peer.
    fn udp_queue_round_trip(local: &str, peers: [&str; 2]) {
        let u = match UdpSocket::bind(local) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("skipping the {local} UDP test: {e}");
                return;
            }
        };
        let a = UdpSocket::bind(peers[0]).unwrap();
        let b = UdpSocket::bind(peers[1]).unwrap();
        let to = u.local_addr().unwrap();
        // b marks what it sends (DSCP AF11): as TOS over IPv4, as traffic
        // class over IPv6.
        let (level, opt) = if b.local_addr().unwrap().is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_TOS)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
        };
        socket::setsockopt_int(&b, level, opt, 0x28).unwrap();
        a.send_to(b"first", to).unwrap();
        b.send_to(b"second, from b", to).unwrap();
        a.send_to(&[7u8; 3000], to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = dump_own(u.as_raw_fd()).unwrap();
        assert_eq!(f.socket.as_ref().unwrap().queued.len(), 3);
        // Still queued on the original.
        let mut buf = [0u8; 4096];
        u.set_nonblocking(true).unwrap();
        assert_eq!(u.peek_from(&mut buf).unwrap().0, 5);
        // The options the dump set to read TOS are as they were.
        for (level, opt) in crate::fd::udp::TOS_OPTIONS {
            // (An IPv4 socket has no IPv6 options.)
            let v = socket::getsockopt_int(&u, level, opt).unwrap_or(0);
            assert_eq!(v, 0, "option {level}/{opt} left set");
        }
        drop(u);
        let n = UdpSocket::from(created(&mut InetSockets::default(), &f));
        n.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for (level, opt) in crate::fd::udp::TOS_OPTIONS {
            let _ = socket::setsockopt_int(&n, level, opt, 1);
        }
        let mut got = Vec::new();
        let mut tos = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tos.push(
                socket::peek_datagram(&n, &mut buf)
                    .unwrap()
                    .and_then(|p| p.tos),
            );
            let (len, from) = n.recv_from(&mut buf).unwrap();
            got.push((buf[..len].to_vec(), from));
        }
        assert_eq!(tos, [Some(0), Some(0x28), Some(0)]);
        assert_eq!(got[0], (b"first".to_vec(), a.local_addr().unwrap()));
        assert_eq!(
            got[1],
            (b"second, from b".to_vec(), b.local_addr().unwrap())
        );
        assert_eq!(got[2], (vec![7u8; 3000], a.local_addr().unwrap()));
        // Connected: the peer comes back too.
        n.connect(a.local_addr().unwrap()).unwrap();
        let f = dump_own(n.as_raw_fd()).unwrap();
        drop(n);
        let c = UdpSocket::from(created(&mut InetSockets::default(), &f));
        assert_eq!(c.peer_addr().unwrap(), a.local_addr().unwrap());
        c.send(b"to a").unwrap();
        a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (len, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], from), (&b"to a"[..], c.local_addr().unwrap()));
    }

    #[test]
    fn udp_queue_and_peer_v4() {
        udp_queue_round_trip("127.0.0.1:0", ["127.0.0.1:0", "127.0.0.2:0"]);
    }

    #[test]
    fn udp_queue_and_peer_v6() {
        udp_queue_round_trip("[::1]:0", ["[::1]:0", "[::1]:0"]);
    }

    /// Datagrams waiting on a UDP-Lite socket (which takes only those
    /// whose checksum covers at least 20 bytes) come back in order, each
    /// from where it came.
    #[test]
    fn udplite_queue_round_trip() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // datagrams are put back through a raw socket
        }
        let lite = || -> Option<UdpSocket> {
            let s = socket::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE).ok()?;
            socket::bind(&s, &sockaddr_in([127, 0, 0, 1], 0)).ok()?;
            Some(UdpSocket::from(s))
        };
        let (Some(u), Some(a)) = (lite(), lite()) else {
            eprintln!("skipping the UDP-Lite test: no UDP-Lite here");
            return;
        };
        const UDPLITE_RECV_CSCOV: i32 = 11;
        socket::setsockopt_int(&u, libc::IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, 20).unwrap();
        let to = u.local_addr().unwrap();
        a.send_to(b"light", to).unwrap();
        a.send_to(&[9u8; 3000], to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = dump_own(u.as_raw_fd()).unwrap();
        assert_eq!(f.socket.as_ref().unwrap().queued.len(), 2);
        drop(u);
        let n = UdpSocket::from(created(&mut InetSockets::default(), &f));
        n.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let (len, from) = n.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..len], from),
            (&b"light"[..], a.local_addr().unwrap())
        );
        let (len, from) = n.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..len], from),
            (&[9u8; 3000][..], a.local_addr().unwrap())
        );
    }

    /// Raw, ICMP echo and UDP-Lite sockets come back with their name,
    /// peer and options (an ICMP filter, checksum coverage).
    #[test]
    fn raw_ping_and_udplite_sockets_come_back() {
        let raw = socket::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).unwrap();
        // Let only echo replies (type 0) through.
        socket::setsockopt_int(&raw, 255, 1, !1).unwrap();
        socket::bind(&raw, &sockaddr_in([127, 0, 0, 1], 0)).unwrap();
        socket::connect(&raw, &sockaddr_in([127, 0, 0, 2], 0)).unwrap();
        let lite = socket::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE).unwrap();
        socket::setsockopt_int(&lite, libc::IPPROTO_UDPLITE, 10, 20).unwrap();
        socket::bind(&lite, &sockaddr_in([127, 0, 0, 1], 0)).unwrap();
        let mut sockets = vec![
            (raw, vec![(255, 1, !1)]),
            (lite, vec![(libc::IPPROTO_UDPLITE, 10, 20)]),
        ];
        // ICMP echo sockets need this machine's ping_group_range to allow us.
        if let Ok(ping) = socket::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) {
            socket::setsockopt_int(&ping, libc::IPPROTO_IP, libc::IP_TTL, 7).unwrap();
            socket::bind(&ping, &sockaddr_in([127, 0, 0, 1], 0)).unwrap();
            sockets.push((ping, vec![(libc::IPPROTO_IP, libc::IP_TTL, 7)]));
        }
        for (s, opts) in sockets {
            let (name, peer) = (
                socket::name(&s, false).unwrap(),
                socket::name(&s, true).unwrap(),
            );
            let f = dump_own(s.as_raw_fd()).unwrap();
            drop(s);
            let n = created(&mut InetSockets::default(), &f);
            assert_eq!(socket::name(&n, false).unwrap(), name);
            assert_eq!(socket::name(&n, true).unwrap(), peer);
            for (level, opt, v) in opts {
                assert_eq!(
                    socket::getsockopt_int(&n, level, opt).unwrap(),
                    v,
                    "{level}/{opt}"
                );
            }
        }
    }
}
