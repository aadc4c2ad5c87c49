//! What every socket kind shares: reading a socket's family, type, names
//! and options through a duplicate of its fd, setting options again,
//! queued data (peeked without consuming, sent again on restore), and the
//! sockets restore created in crstream. Sockets of families no kind
//! restores are refused by name here.

use super::pipe::bracket_inode;
use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::sys::socket::{
    SO_ACCEPTCONN, SO_DOMAIN, SO_PEEK_OFF, SO_PROTOCOL, getsockopt, getsockopt_int, name, peek,
    send_with, setsockopt, setsockopt_int, shutdown,
};
use crstream_proto::{FileKind, OpenFile, SockOpt, SocketFile, UnixCreds};
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;

/// Upper bound of datagrams peeked from one socket, so that a kernel that
/// does not advance the peek offset cannot make the dump loop forever.
const MAX_PEEKED_MESSAGES: usize = 1 << 16;

/// If fd `d` is a socket of a family `wanted` takes: a duplicate of it in
/// crstream, and what every socket record holds (inode, family, type,
/// protocol, listening, names).
pub(super) fn read(
    d: &DumpFd<'_>,
    wanted: impl Fn(i32) -> bool,
) -> Result<Option<(OwnedFd, SocketFile)>, DumpError> {
    let Some(inode) = bracket_inode(d.link, "socket:") else {
        return Ok(None);
    };
    let dup = d.take()?;
    let int = |level, opt, what| getsockopt_int(&dup, level, opt).map_err(|e| d.error(what, e));
    let family = int(libc::SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN")?;
    if !wanted(family) {
        return Ok(None);
    }
    let sf = SocketFile {
        inode,
        family,
        r#type: int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?,
        protocol: int(libc::SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL")?,
        listening: int(libc::SOL_SOCKET, SO_ACCEPTCONN, "SO_ACCEPTCONN")? != 0,
        local_addr: name(&dup, false).map_err(|e| d.error("getsockname", e))?,
        peer_addr: name(&dup, true).map_err(|e| d.error("getpeername", e))?,
        // The socket inode's owner is the sk_uid it was made with.
        owner_uid: d
            .md
            .map(std::os::unix::fs::MetadataExt::uid)
            .filter(|&uid| uid != 0 && (family == libc::AF_INET || family == libc::AF_INET6)),
        ..Default::default()
    };
    Ok(Some((dup, sf)))
}

/// `make`'s result, made by this thread acting as `uid` for the file
/// system (fsuid: what a new socket takes as its owner), or as itself.
pub(super) fn made_as<T>(uid: Option<u32>, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(uid) = uid else {
        return make();
    };
    let own = crate::sys::ids::set_fsuid(uid);
    let made = make();
    crate::sys::ids::set_fsuid(own);
    // setfsuid reports no failure: a second call returns what is set.
    if crate::sys::ids::set_fsuid(own) != own {
        return Err(io::Error::other("crstream could not act as itself again"));
    }
    made
}

/// Whether `f` is a socket of one of `families` (for `FdKind::restores`).
pub(super) fn is_socket_of(f: &OpenFile, families: &[i32]) -> bool {
    f.kind() == FileKind::Socket
        && f.socket
            .as_ref()
            .is_some_and(|s| families.contains(&s.family))
}

/// Whether anything waits to be read on socket `s` (for the kinds that
/// cannot put it back).
pub(super) fn has_queued(s: &OwnedFd) -> bool {
    let mut one = [0u8; 1];
    crate::sys::socket::recv_peek(s, &mut one).is_ok()
}

/// Saves the options of the socket and fills `f` with its record. Err: a
/// socket filter that cannot be read back.
pub(super) fn finish(
    d: &DumpFd<'_>,
    dup: &OwnedFd,
    mut sf: SocketFile,
    f: &mut OpenFile,
) -> Result<(), DumpError> {
    refuse_connection_state(d, dup, &sf)?;
    for (level, opt) in option_list(sf.family, sf.r#type, sf.protocol) {
        let mut buf = [0u8; 64];
        match getsockopt(dup, level, opt, &mut buf) {
            Ok(n) => sf.options.push(SockOpt {
                level,
                name: opt,
                value: buf[..n].to_vec(),
            }),
            Err(e) => tracing::debug!(pid = d.pid, fd = d.fd, level, opt, "getsockopt failed: {e}"),
        }
    }
    match socket_filter(dup) {
        Ok(None) => {}
        Ok(Some(insns)) => {
            let locked = getsockopt_int(dup, libc::SOL_SOCKET, SO_LOCK_FILTER).unwrap_or(0);
            sf.options.push(SockOpt {
                level: libc::SOL_SOCKET,
                name: libc::SO_ATTACH_FILTER,
                value: insns,
            });
            sf.options.push(SockOpt {
                level: libc::SOL_SOCKET,
                name: SO_LOCK_FILTER,
                value: locked.to_ne_bytes().to_vec(),
            });
        }
        Err(e) => {
            return Err(d.refuse(format!(
                "a socket filter that cannot be read back (an eBPF program?): {e}"
            )));
        }
    }
    f.kind = FileKind::Socket as i32;
    f.path = d.link.to_vec();
    f.inode = sf.inode;
    f.socket = Some(sf);
    Ok(())
}

/// Sockets of the families no other kind takes: refused by name.
pub(super) struct OtherSockets;

impl FdKind for OtherSockets {
    fn dump(&mut self, d: &mut DumpFd<'_>, _f: &mut OpenFile) -> Result<bool, DumpError> {
        match read(d, |_| true)? {
            Some((_, sf)) => Err(d.refuse(format!("{} socket", family_name(sf.family)))),
            None => Ok(false),
        }
    }

    fn restores(&self, _f: &OpenFile) -> bool {
        false
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _o: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        Err(super::file_error(
            pid,
            f,
            "bad image: a socket of an unknown family",
        ))
    }
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

pub(super) fn type_name(ty: i32) -> &'static str {
    match ty {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        libc::SOCK_RAW => "raw",
        _ => "other",
    }
}

/// Options the libc crate does not name for x86_64 gnu.
const SO_BUF_LOCK: i32 = 72;
const SO_LOCK_FILTER: i32 = 44;
const SO_GET_FILTER: i32 = libc::SO_ATTACH_FILTER;
const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
const IPV6_FREEBIND: i32 = 78;

/// Whether a stream socket has urgent data (MSG_OOB) not read yet (TCP:
/// or announced and on its way), which no peek of its queue shows as such
/// (a TCP receive queue reads up to the mark; a unix one without the byte).
pub(super) fn urgent_pending(s: &OwnedFd) -> bool {
    // EINVAL: none (or read inline, which the receive queue holds).
    match crate::sys::socket::recv_peek_urgent(s, &mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::EAGAIN),
    }
}

// Options libc does not name (uapi values, x86_64).
const SO_TIMESTAMPING: i32 = 37;
const SO_RXQ_OVFL: i32 = 40;
const SO_SELECT_ERR_QUEUE: i32 = 45;
const SO_BUSY_POLL: i32 = 46;
/// A u64 where the buffer has room for one.
const SO_MAX_PACING_RATE: i32 = 47;
const SO_PREFER_BUSY_POLL: i32 = 69;
const SO_BUSY_POLL_BUDGET: i32 = 70;
const SO_TXREHASH: i32 = 74;
const SO_RCVMARK: i32 = 75;
const SO_PASSSEC: i32 = 34;
const SO_PASSPIDFD: i32 = 76;
/// Kernel 6.16 and later (elsewhere the getsockopt fails: not saved).
const SO_PASSRIGHTS: i32 = 83;
const IP_RECVOPTS: i32 = 6;
const IP_RECVRETOPTS: i32 = 7;
const IP_RECVORIGDSTADDR: i32 = 20;
const IP_CHECKSUM: i32 = 23;
const IP_RECVFRAGSIZE: i32 = 25;
const IP_RECVERR_RFC4884: i32 = 26;
/// Read as the address (an interface chosen by index alone reads 0.0.0.0).
const IP_MULTICAST_IF: i32 = 32;
const IP_MULTICAST_ALL: i32 = 49;
const IP_LOCAL_PORT_RANGE: i32 = 51;
const IPV6_MULTICAST_IF: i32 = 17;
const IPV6_MULTICAST_ALL: i32 = 29;
const IPV6_RECVERR_RFC4884: i32 = 31;
const IPV6_RECVHOPLIMIT: i32 = 51;
const IPV6_RECVHOPOPTS: i32 = 53;
const IPV6_RECVRTHDR: i32 = 56;
const IPV6_RECVDSTOPTS: i32 = 58;
const IPV6_RECVPATHMTU: i32 = 60;
const IPV6_DONTFRAG: i32 = 62;
const IPV6_RECVTCLASS: i32 = 66;
const IPV6_AUTOFLOWLABEL: i32 = 70;
const IPV6_ADDR_PREFERENCES: i32 = 72;
const IPV6_RECVORIGDSTADDR: i32 = 74;
const IPV6_RECVFRAGSIZE: i32 = 77;
const TCP_THIN_LINEAR_TIMEOUTS: i32 = 16;
const TCP_SAVE_SYN: i32 = 27;
const TCP_FASTOPEN_CONNECT: i32 = 30;
const TCP_FASTOPEN_NO_COOKIE: i32 = 34;
const TCP_INQ: i32 = 36;
const TCP_TX_DELAY: i32 = 37;
const TCP_ULP: i32 = 31;
const SO_ZEROCOPY: i32 = 60;
const SO_TXTIME: i32 = 61;
const UDP_SEGMENT: i32 = 103;
const UDP_GRO: i32 = 104;

/// (level, name) of the options saved for a socket of this kind, in the
/// order restore sets those whose value differs from a fresh socket's
/// (buffer sizes before SO_BUF_LOCK, which setting them changes). A
/// classic BPF filter (SO_ATTACH_FILTER) is saved apart, before
/// SO_LOCK_FILTER.
fn option_list(family: i32, ty: i32, protocol: i32) -> Vec<(i32, i32)> {
    let s = libc::SOL_SOCKET;
    let mut v = vec![
        (s, libc::SO_RCVBUF),
        (s, libc::SO_SNDBUF),
        (s, SO_BUF_LOCK),
        (s, libc::SO_RCVLOWAT),
        (s, libc::SO_RCVTIMEO),
        (s, libc::SO_SNDTIMEO),
        (s, libc::SO_MARK),
        (s, libc::SO_PEEK_OFF),
    ];
    if family == libc::AF_UNIX {
        v.extend([
            (s, libc::SO_PASSCRED),
            (s, SO_PASSSEC),
            (s, SO_PASSPIDFD),
            (s, SO_PASSRIGHTS),
            (s, libc::SO_PRIORITY),
        ]);
        return v;
    }
    if family == libc::AF_PACKET {
        const SOL_PACKET: i32 = 263;
        // COPY_THRESH, AUXDATA, ORIGDEV, VERSION, RESERVE, LOSS, VNET_HDR,
        // TIMESTAMP, QDISC_BYPASS, IGNORE_OUTGOING.
        v.extend([7, 8, 9, 10, 12, 14, 15, 17, 20, 23].map(|o| (SOL_PACKET, o)));
        v.push((s, libc::SO_PRIORITY));
        return v;
    }
    if family == libc::AF_NETLINK {
        const SOL_NETLINK: i32 = 270;
        // PKTINFO, BROADCAST_ERROR, NO_ENOBUFS, LISTEN_ALL_NSID, CAP_ACK,
        // EXT_ACK, GET_STRICT_CHK.
        v.extend([3, 4, 5, 8, 10, 11, 12].map(|o| (SOL_NETLINK, o)));
        v.extend([(s, libc::SO_PASSCRED), (s, libc::SO_PRIORITY)]);
        return v;
    }
    v.extend([
        (s, libc::SO_REUSEADDR),
        (s, libc::SO_REUSEPORT),
        (s, libc::SO_KEEPALIVE),
        (s, libc::SO_BINDTODEVICE),
        (s, libc::SO_OOBINLINE),
        (s, libc::SO_DONTROUTE),
        (s, libc::SO_TIMESTAMP),
        (s, libc::SO_TIMESTAMPNS),
        (s, SO_TIMESTAMPING),
        (s, SO_RXQ_OVFL),
        (s, SO_SELECT_ERR_QUEUE),
        (s, SO_BUSY_POLL),
        (s, SO_PREFER_BUSY_POLL),
        (s, SO_BUSY_POLL_BUDGET),
        (s, SO_MAX_PACING_RATE),
        (s, SO_TXREHASH),
        (s, SO_RCVMARK),
        // Read back as its clock and flags only: one enabled with
        // CLOCK_REALTIME and no flags looks like none, and is lost.
        (s, SO_TXTIME),
    ]);
    // Zero-copy sends: TCP and UDP only.
    if ty == libc::SOCK_STREAM || protocol == libc::IPPROTO_UDP {
        v.push((s, SO_ZEROCOPY));
    }
    if ty == libc::SOCK_DGRAM {
        v.push((s, libc::SO_BROADCAST));
    }
    if family == libc::AF_INET {
        let ip = libc::IPPROTO_IP;
        v.extend([
            (ip, libc::IP_TOS),
            (ip, libc::IP_TTL),
            (ip, libc::IP_FREEBIND),
            (ip, libc::IP_TRANSPARENT),
            (ip, IP_BIND_ADDRESS_NO_PORT),
            (ip, libc::IP_MTU_DISCOVER),
            (ip, libc::IP_RECVTOS),
            (ip, libc::IP_RECVTTL),
            (ip, libc::IP_PKTINFO),
            (ip, libc::IP_RECVERR),
            (ip, IP_RECVOPTS),
            (ip, IP_RECVRETOPTS),
            (ip, IP_RECVORIGDSTADDR),
            (ip, IP_CHECKSUM),
            (ip, IP_RECVFRAGSIZE),
            (ip, IP_RECVERR_RFC4884),
            (ip, IP_LOCAL_PORT_RANGE),
        ]);
        // Multicast: datagram sockets only (TCP refuses them, and a socket
        // accept() returned has the SYN's TTL there).
        if ty != libc::SOCK_STREAM {
            v.extend([
                (ip, libc::IP_MULTICAST_TTL),
                (ip, libc::IP_MULTICAST_LOOP),
                (ip, IP_MULTICAST_IF),
                (ip, IP_MULTICAST_ALL),
            ]);
        }
    }
    if family == libc::AF_INET6 {
        let ip6 = libc::IPPROTO_IPV6;
        v.extend([
            (ip6, libc::IPV6_V6ONLY),
            (ip6, libc::IPV6_TCLASS),
            (ip6, libc::IPV6_UNICAST_HOPS),
            (ip6, IPV6_FREEBIND),
            (ip6, libc::IPV6_TRANSPARENT),
            (ip6, libc::IPV6_MTU_DISCOVER),
            (ip6, libc::IPV6_RECVPKTINFO),
            (ip6, libc::IPV6_RECVERR),
            (ip6, IPV6_RECVHOPLIMIT),
            (ip6, IPV6_RECVHOPOPTS),
            (ip6, IPV6_RECVRTHDR),
            (ip6, IPV6_RECVDSTOPTS),
            (ip6, IPV6_RECVPATHMTU),
            (ip6, IPV6_DONTFRAG),
            (ip6, IPV6_RECVTCLASS),
            (ip6, IPV6_AUTOFLOWLABEL),
            (ip6, IPV6_ADDR_PREFERENCES),
            (ip6, IPV6_RECVORIGDSTADDR),
            (ip6, IPV6_RECVFRAGSIZE),
            (ip6, IPV6_RECVERR_RFC4884),
        ]);
        if ty != libc::SOCK_STREAM {
            v.extend([
                (ip6, libc::IPV6_MULTICAST_HOPS),
                (ip6, libc::IPV6_MULTICAST_LOOP),
                (ip6, IPV6_MULTICAST_IF),
                (ip6, IPV6_MULTICAST_ALL),
            ]);
        }
    }
    if ty == libc::SOCK_STREAM {
        let tcp = libc::IPPROTO_TCP;
        v.extend([
            (s, libc::SO_LINGER),
            (tcp, libc::TCP_NODELAY),
            (tcp, libc::TCP_CORK),
            (tcp, libc::TCP_KEEPIDLE),
            (tcp, libc::TCP_KEEPINTVL),
            (tcp, libc::TCP_KEEPCNT),
            (tcp, libc::TCP_DEFER_ACCEPT),
            (tcp, libc::TCP_USER_TIMEOUT),
            (tcp, libc::TCP_NOTSENT_LOWAT),
            (tcp, libc::TCP_WINDOW_CLAMP),
            (tcp, libc::TCP_SYNCNT),
            (tcp, libc::TCP_LINGER2),
            (tcp, libc::TCP_CONGESTION),
            (tcp, libc::TCP_FASTOPEN),
            (tcp, TCP_FASTOPEN_CONNECT),
            (tcp, TCP_FASTOPEN_NO_COOKIE),
            (tcp, TCP_THIN_LINEAR_TIMEOUTS),
            (tcp, TCP_SAVE_SYN),
            (tcp, TCP_INQ),
            (tcp, TCP_TX_DELAY),
        ]);
    }
    if ty == libc::SOCK_DGRAM && protocol == libc::IPPROTO_UDP {
        v.extend([
            (libc::IPPROTO_UDP, libc::UDP_CORK),
            (libc::IPPROTO_UDP, UDP_SEGMENT),
            (libc::IPPROTO_UDP, UDP_GRO),
        ]);
    }
    if protocol == libc::IPPROTO_UDPLITE {
        const UDPLITE_SEND_CSCOV: i32 = 10;
        const UDPLITE_RECV_CSCOV: i32 = 11;
        v.extend([
            (libc::IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV),
            (libc::IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV),
        ]);
    }
    if ty == libc::SOCK_RAW {
        const SOL_RAW: i32 = 255;
        const ICMP_FILTER: i32 = 1;
        const ICMPV6_FILTER: i32 = 1;
        if family == libc::AF_INET {
            v.push((libc::IPPROTO_IP, libc::IP_HDRINCL));
            if protocol == libc::IPPROTO_ICMP {
                v.push((SOL_RAW, ICMP_FILTER));
            }
        } else {
            v.push((libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM));
            if protocol == libc::IPPROTO_ICMPV6 {
                v.push((libc::IPPROTO_ICMPV6, ICMPV6_FILTER));
            }
        }
    }
    // After IP_TOS / IPV6_TCLASS, which may set it too.
    v.push((s, libc::SO_PRIORITY));
    v
}

/// Refuses a TCP connection to be restored established
/// (`--tcp-established`) with state on it that is not saved: an upper
/// layer protocol (TCP_ULP: kernel TLS keys and records, ESP in TCP),
/// without which it would send in the clear; zero-copy sends
/// (SO_ZEROCOPY), whose completion counter would start again at 0 and
/// whose pending completions would be lost. Closed (`--tcp-close`) or
/// refused anyway, a connection sends nothing more.
fn refuse_connection_state(d: &DumpFd<'_>, s: &OwnedFd, sf: &SocketFile) -> Result<(), DumpError> {
    let inet = sf.family == libc::AF_INET || sf.family == libc::AF_INET6;
    let tcp = inet && sf.r#type == libc::SOCK_STREAM && sf.protocol == libc::IPPROTO_TCP;
    if !tcp || sf.peer_addr.is_empty() || d.tcp != super::tcp::TcpMode::Established {
        return Ok(());
    }
    if let Some(ulp) = upper_layer(s) {
        return Err(d.refuse(format!(
            "a TCP connection with the upper layer protocol \"{ulp}\" (TCP_ULP: kernel TLS or \
             ESP in TCP), which is not saved: restored, it would send in the clear"
        )));
    }
    if getsockopt_int(s, libc::SOL_SOCKET, SO_ZEROCOPY).unwrap_or(0) != 0 {
        return Err(d.refuse(
            "a TCP connection with zero-copy sends (SO_ZEROCOPY), whose completion counter \
             and pending completions are not saved",
        ));
    }
    Ok(())
}

/// The upper layer protocol on a TCP socket (TCP_ULP: "tls", "espintcp"),
/// if it has one.
fn upper_layer(s: &OwnedFd) -> Option<String> {
    let mut name = [0u8; 16];
    let n = getsockopt(s, libc::IPPROTO_TCP, TCP_ULP, &mut name).ok()?;
    let name = name[..n].split(|&b| b == 0).next().unwrap_or_default();
    (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
}

/// A classic BPF socket filter (SO_GET_FILTER): its instructions, 8 bytes
/// each; None without one. Err for a filter that cannot be read back (an
/// eBPF program attached with SO_ATTACH_BPF).
fn socket_filter(s: &OwnedFd) -> io::Result<Option<Vec<u8>>> {
    // With room for none, the kernel answers the instruction count.
    let mut none = [0u8; 0];
    let count = match getsockopt(s, libc::SOL_SOCKET, SO_GET_FILTER, &mut none) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 0,
        Err(e) => return Err(e),
    };
    if count == 0 {
        return Ok(None);
    }
    let mut insns = vec![0u8; count * 8];
    let n = getsockopt(s, libc::SOL_SOCKET, SO_GET_FILTER, &mut insns)?;
    insns.truncate(n * 8);
    Ok(Some(insns))
}

/// Applies the saved options whose value differs from the fresh socket's,
/// so that untouched buffers keep their auto-tuning.
pub(super) fn apply_options(s: &OwnedFd, opts: &[SockOpt]) -> io::Result<()> {
    for o in opts {
        if o.level == libc::SOL_SOCKET && o.name == libc::SO_ATTACH_FILTER {
            crate::sys::socket::attach_filter(s, &o.value)
                .map_err(|e| io::Error::new(e.kind(), format!("SO_ATTACH_FILTER: {e}")))?;
            continue;
        }
        let mut cur = [0u8; 64];
        let n = getsockopt(s, o.level, o.name, &mut cur)?;
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
            setsockopt(s, o.level, o.name, &o.value)
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

/// "ADDR:PORT" / "[ADDR]:PORT" / unix path, for messages.
pub(super) fn fmt_sockaddr(raw: &[u8]) -> String {
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

/// The backlog of a listening socket from its sock_diag answer (connections
/// waiting, backlog). One with connections waiting is refused: they would
/// be lost. When sock_diag cannot tell, SOMAXCONN.
pub(super) fn listener_backlog(
    d: &DumpFd<'_>,
    what: &str,
    diag: io::Result<(u32, u32)>,
) -> Result<u32, DumpError> {
    match diag {
        Ok((pending, backlog)) if pending > 0 && d.skip_in_flight => {
            tracing::warn!(
                pid = d.pid,
                fd = d.fd,
                "{what}: {pending} connection(s) waiting in the accept queue are dropped \
                 (--skip-in-flight)"
            );
            Ok(backlog)
        }
        Ok((pending, _)) if pending > 0 => Err(d.refuse(format!(
            "{what} has {pending} connection(s) waiting in the accept queue (--skip-in-flight \
             drops them: their clients see the connection reset)"
        ))),
        Ok((_, backlog)) => Ok(backlog),
        Err(e) => {
            tracing::debug!(
                pid = d.pid,
                fd = d.fd,
                "sock_diag failed ({e}): backlog set to SOMAXCONN"
            );
            Ok(libc::SOMAXCONN as u32)
        }
    }
}

/// Why the queue of a socket could not be read.
pub(super) enum PeekError {
    Io(io::Error),
    Refuse(String),
}

impl From<io::Error> for PeekError {
    fn from(e: io::Error) -> Self {
        PeekError::Io(e)
    }
}

/// What waits on a socket, read without consuming it.
#[derive(Default)]
pub(super) struct PeekedQueue {
    /// One entry per message (a stream: one entry with all its bytes, cut
    /// after each message that carries files).
    pub messages: Vec<Vec<u8>>,
    /// The sender of each message, for a socket that gets them
    /// (SO_PASSCRED; else empty).
    pub creds: Vec<UnixCreds>,
    /// The files messages carry (SCM_RIGHTS), by index in `messages`:
    /// copies the kernel installed in crstream.
    pub passed: Vec<(u32, Vec<OwnedFd>)>,
}

/// The data queued on a socket, left in place (see [`PeekedQueue`]). With
/// `unnamed_senders`, a message from a sender with a name is refused (a
/// socket whose queue goes back from an unnamed socket: the receiver would
/// answer nobody).
///
/// MSG_PEEK always starts at the head of the queue, so we walk it with an
/// explicit SO_PEEK_OFF that we set before every peek (so a truncated
/// datagram can be retried with a larger buffer), then put back the
/// socket's own value (normally -1: disabled).
pub(super) fn peek_queue(
    s: &OwnedFd,
    ty: i32,
    unnamed_senders: bool,
) -> Result<PeekedQueue, PeekError> {
    let saved_off = getsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    let r = peek_messages(s, ty, unnamed_senders);
    let restored = setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, saved_off);
    let out = r?;
    restored?;
    Ok(out)
}

fn peek_messages(s: &OwnedFd, ty: i32, unnamed_senders: bool) -> Result<PeekedQueue, PeekError> {
    let stream = ty == libc::SOCK_STREAM;
    let mut q = PeekedQueue::default();
    let mut all = Vec::new();
    let mut off: i32 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..MAX_PEEKED_MESSAGES {
        setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, off)?;
        let Some((n, anc)) = peek(s, &mut buf, !stream)? else {
            break;
        };
        if unnamed_senders && anc.sender.len() > 2 {
            return Err(PeekError::Refuse(format!(
                "a queued message from {}: it would come back from no name, and an answer \
                 would go nowhere",
                fmt_sockaddr(&anc.sender)
            )));
        }
        if stream {
            if n == 0 {
                break; // end of stream: the peer shut down its side
            }
            if !anc.fds.is_empty() && n == buf.len() {
                // The message with the files may go on: read it whole.
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            all.extend_from_slice(&buf[..n]);
            off += n as i32;
            // A peek stops where the senders' credentials change (on a
            // socket with SO_PASSCRED) and after a message that carries
            // files: each such run goes back as a message of its own, with
            // them. Where a message with files begins no peek tells (one
            // goes on past its size to the next message with files): the
            // bytes since the last cut go with it (see README, "Not kept").
            if anc.creds.is_some() || !anc.fds.is_empty() {
                let at = q.messages.len();
                if let Some((pid, uid, gid)) = anc.creds {
                    q.creds.resize(at, UnixCreds::default());
                    q.creds.push(UnixCreds { pid, uid, gid });
                }
                if !anc.fds.is_empty() {
                    q.passed.push((at as u32, anc.fds));
                }
                q.messages.push(std::mem::take(&mut all));
            }
            continue;
        }
        if n > buf.len() {
            // Truncated: retry the same message with a large enough buffer.
            buf.resize(n, 0);
            continue;
        }
        q.messages.push(buf[..n].to_vec());
        if let Some((pid, uid, gid)) = anc.creds {
            // Every message of a socket with SO_PASSCRED has them.
            q.creds.resize(q.messages.len() - 1, UnixCreds::default());
            q.creds.push(UnixCreds { pid, uid, gid });
        }
        if !anc.fds.is_empty() {
            q.passed.push((q.messages.len() as u32 - 1, anc.fds));
        }
        off += n as i32;
        // A zero-length datagram does not move the offset; the kernel
        // skips it next time because it is marked as peeked.
    }
    if stream && !all.is_empty() {
        q.messages.push(all);
    }
    if !q.creds.is_empty() {
        q.creds.resize(q.messages.len(), UnixCreds::default());
    }
    Ok(q)
}

/// Sends one message whole, without blocking.
#[cfg(test)]
pub(super) fn send_all(s: &OwnedFd, msg: &[u8], to: Option<&[u8]>) -> io::Result<()> {
    let n = crate::sys::socket::send_to(s, msg, to)?;
    if n != msg.len() {
        return Err(io::Error::other(format!(
            "only {n} of {} bytes accepted",
            msg.len()
        )));
    }
    Ok(())
}

/// Sends the saved queue of a socket through `into` (its peer), making
/// room in the sender's buffer first if the data would not fit.
/// With `creds` (one per message), each message goes with its sender's
/// credentials; one whose sender is gone goes with crstream's pid.
pub(super) fn refill(
    into: &OwnedFd,
    queued: &[Vec<u8>],
    to: Option<&[u8]>,
    creds: &[UnixCreds],
    files: &[(u32, Vec<OwnedFd>)],
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let total: usize = queued.iter().map(|q| q.len() + 512).sum();
    if total > 0 {
        let cur = getsockopt_int(into, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
        if (cur as usize) < total * 2 {
            setsockopt_int(into, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, total as i32)?;
        }
    }
    for (i, q) in queued.iter().enumerate() {
        let fds: Vec<_> = files
            .iter()
            .filter(|(m, _)| *m as usize == i)
            .flat_map(|(_, f)| f.iter().map(AsFd::as_fd))
            .collect();
        let c = creds
            .get(i)
            .filter(|c| c.pid > 0)
            .map(|c| (c.pid, c.uid, c.gid));
        let sent = match send_with(into, q, to, c, &fds) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) && c.is_some() => {
                tracing::warn!(
                    pid = c.map_or(0, |c| c.0),
                    "a queued message's sender is gone: sent as crstream's"
                );
                let me = std::process::id() as i32;
                send_with(into, q, to, c.map(|(_, u, g)| (me, u, g)), &fds)?
            }
            r => r?,
        };
        if sent != q.len() {
            return Err(io::Error::other(format!(
                "only {sent} of {} bytes accepted",
                q.len()
            )));
        }
    }
    Ok(())
}

/// shutdown() with the saved SHUT_RD=1 / SHUT_WR=2 bits.
pub(super) fn shutdown_bits(s: &OwnedFd, bits: u32) -> io::Result<()> {
    let how = match bits & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    shutdown(s, how)
}

/// Sockets restore created in crstream, by their inode at dump.
#[derive(Default)]
pub(super) struct Created {
    socks: HashMap<u64, OwnedFd>,
    /// Inodes already handed out once.
    handed: std::collections::HashSet<u64>,
}

impl Created {
    /// A second description of a socket handed out already: sockets cannot
    /// be reopened, so it shares the first one's (and its status flags).
    pub(super) fn again(&self, pid: i32, f: &OpenFile, inode: u64) -> Option<io::Result<OwnedFd>> {
        if !self.handed.contains(&inode) {
            return None;
        }
        tracing::debug!(
            pid,
            fd = f.fd,
            "socket:[{inode}] opened twice: sharing one description"
        );
        Some(match self.socks.get(&inode) {
            Some(s) => super::dup(s),
            None => Err(io::Error::other("socket missing")),
        })
    }

    pub(super) fn get(&self, inode: u64) -> Option<&OwnedFd> {
        self.socks.get(&inode)
    }

    /// Keeps socket `s` created for `inode` (not handed out yet).
    pub(super) fn keep(&mut self, inode: u64, s: OwnedFd) {
        self.socks.insert(inode, s);
    }

    /// The fd of the socket of `f` (`inode`): another fd of the one made
    /// already, or one of the socket `create` makes; with `f`'s status
    /// flags.
    pub(super) fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        inode: u64,
        create: impl FnOnce() -> Result<OwnedFd, RestoreError>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |what: &str, e: io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let fd = match self.again(pid, f, inode) {
            Some(again) => again.map_err(|e| ferr("dup", e))?,
            None => {
                self.keep(inode, create()?);
                self.hand_out(inode).map_err(|e| ferr("dup", e))?
            }
        };
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
        Ok(Reopen::Created(fd))
    }

    /// Hands out a new fd of the socket kept for `inode`.
    pub(super) fn hand_out(&mut self, inode: u64) -> io::Result<OwnedFd> {
        let s = self
            .socks
            .get(&inode)
            .ok_or_else(|| io::Error::other("socket missing"))?;
        let out = super::dup(s)?;
        self.handed.insert(inode);
        Ok(out)
    }
}
