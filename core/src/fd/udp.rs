//! The datagrams waiting on a UDP socket: read without consuming them
//! (MSG_PEEK, walking the queue with SO_PEEK_OFF), each with the address
//! it came from and the TOS it arrived with, and put back in the restored
//! socket's queue in order by sending each again from that address, with
//! that TOS (`packets.rs`).

use super::socket::PeekError;
use crate::netlock::socket_addr;
use crate::sys::socket::{SO_PEEK_OFF, getsockopt_int, name, peek_datagram, setsockopt_int};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

/// A datagram, the raw sockaddr it came from, and its TOS (IPv4) or
/// traffic class (IPv6).
pub(super) type Datagram = (Vec<u8>, Vec<u8>, u8);

/// The options that make a peek tell each datagram's TOS or traffic
/// class: set while the queue is read, then as they were.
pub(super) const TOS_OPTIONS: [(i32, i32); 2] = [
    (libc::IPPROTO_IP, libc::IP_RECVTOS),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
];

/// Upper bound of datagrams read from one socket.
const MAX_DATAGRAMS: usize = 1 << 16;

/// The queued datagrams of `s`, oldest first, with their sources.
pub(super) fn peek_datagrams(s: &OwnedFd) -> Result<Vec<Datagram>, PeekError> {
    let saved_off = getsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    // An IPv4 socket has no IPv6 options: those it has are set.
    let saved_tos: Vec<_> = TOS_OPTIONS
        .iter()
        .filter_map(|&(level, opt)| Some((level, opt, getsockopt_int(s, level, opt).ok()?)))
        .collect();
    let mut r = Ok(());
    for &(level, opt, _) in &saved_tos {
        r = r.and(setsockopt_int(s, level, opt, 1));
    }
    let r = r.map_err(PeekError::from).and_then(|()| walk(s));
    let mut restored = setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, saved_off);
    for &(level, opt, v) in &saved_tos {
        restored = restored.and(setsockopt_int(s, level, opt, v));
    }
    let out = r?;
    restored?;
    Ok(out)
}

fn walk(s: &OwnedFd) -> Result<Vec<Datagram>, PeekError> {
    let mut out = Vec::new();
    let mut off: i32 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..MAX_DATAGRAMS {
        setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, off)?;
        let Some(peeked) = peek_datagram(s, &mut buf)? else {
            return Ok(out);
        };
        let n = peeked.len;
        if n > buf.len() {
            buf.resize(n, 0);
            continue;
        }
        if n == 0 {
            // The peek offset counts bytes: an empty datagram would be
            // seen again and again.
            return Err(PeekError::Refuse(
                "an empty datagram is queued: it cannot be told from the next".into(),
            ));
        }
        out.push((buf[..n].to_vec(), peeked.from, peeked.tos.unwrap_or(0)));
        off += n as i32;
    }
    Err(PeekError::Refuse(format!(
        "more than {MAX_DATAGRAMS} datagrams are queued"
    )))
}

/// Puts the saved datagrams back in the queue of `s`, the restored socket.
pub(super) fn refill(
    s: &OwnedFd,
    protocol: i32,
    queued: &[Vec<u8>],
    from: &[Vec<u8>],
    tos: &[u32],
) -> io::Result<()> {
    if queued.is_empty() {
        return Ok(());
    }
    let local = name(s, false)?;
    let mut dest = socket_addr(&local)
        .ok_or_else(|| io::Error::other("the restored socket has no IP address"))?;
    // Bound to any address: deliver on loopback.
    if dest.ip().is_unspecified() {
        dest.set_ip(match dest.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    if from.len() != queued.len() {
        return Err(io::Error::other(
            "the image names no source for some datagrams",
        ));
    }
    // Older images name no TOS: 0.
    let tos = tos.iter().map(|&t| t as u8).chain(std::iter::repeat(0));
    for ((data, src), tos) in queued.iter().zip(from).zip(tos) {
        let mut src = socket_addr(src)
            .ok_or_else(|| io::Error::other("a datagram from an address that is not IP"))?;
        let mut to = dest;
        // An IPv4 source seen on an IPv6 socket arrived as IPv4: send it so.
        if let (IpAddr::V4(_), SocketAddr::V6(_)) = (src.ip(), to) {
            to = to_v4(to);
        }
        if let (IpAddr::V6(v6), SocketAddr::V4(_)) = (src.ip(), to)
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            src.set_ip(IpAddr::V4(v4));
        }
        let lite = protocol == libc::IPPROTO_UDPLITE;
        super::packets::send_udp(src, to, data, lite, tos)?;
    }
    Ok(())
}

/// The IPv4 address an IPv6 socket's name maps (loopback for ::1).
fn to_v4(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => SocketAddr::new(
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST)),
            a.port(),
        ),
        IpAddr::V4(_) => a,
    }
}
