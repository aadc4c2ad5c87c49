//! The datagrams waiting on a UDP socket: read without consuming them
//! (MSG_PEEK, walking the queue with SO_PEEK_OFF), each with the address
//! it came from, and put back in the restored socket's queue in order by
//! sending each again from that address: a raw IP packet (built here, with
//! its UDP checksum) that the kernel delivers locally like the first.

use super::socket::PeekError;
use crate::netlock::socket_addr;
use crate::sys::socket::{
    SO_PEEK_OFF, getsockopt_int, name, peek_from, send_raw_packet, setsockopt_int,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

/// A datagram and the raw sockaddr it came from.
pub(super) type Datagram = (Vec<u8>, Vec<u8>);

/// Upper bound of datagrams read from one socket.
const MAX_DATAGRAMS: usize = 1 << 16;

/// The queued datagrams of `s`, oldest first, with their sources.
pub(super) fn peek_datagrams(s: &OwnedFd) -> Result<Vec<Datagram>, PeekError> {
    let saved_off = getsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    let r = walk(s);
    let restored = setsockopt_int(s, libc::SOL_SOCKET, SO_PEEK_OFF, saved_off);
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
        let Some((n, from)) = peek_from(s, &mut buf)? else {
            return Ok(out);
        };
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
        out.push((buf[..n].to_vec(), from));
        off += n as i32;
    }
    Err(PeekError::Refuse(format!(
        "more than {MAX_DATAGRAMS} datagrams are queued"
    )))
}

/// Puts the saved datagrams back in the queue of `s`, the restored socket.
pub(super) fn refill(s: &OwnedFd, queued: &[Vec<u8>], from: &[Vec<u8>]) -> io::Result<()> {
    if queued.is_empty() {
        return Ok(());
    }
    let local = name(s, false)?;
    let mut to = socket_addr(&local)
        .ok_or_else(|| io::Error::other("the restored socket has no IP address"))?;
    // Bound to any address: deliver on loopback.
    if to.ip().is_unspecified() {
        to.set_ip(match to.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    if from.len() != queued.len() {
        return Err(io::Error::other(
            "the image names no source for some datagrams",
        ));
    }
    for (data, src) in queued.iter().zip(from) {
        let mut src = socket_addr(src)
            .ok_or_else(|| io::Error::other("a datagram from an address that is not IP"))?;
        // An IPv4 source seen on an IPv6 socket arrived as IPv4: send it so.
        if let (IpAddr::V4(_), SocketAddr::V6(_)) = (src.ip(), to)
            && let Some(v4) = to_v4(to)
        {
            to = v4;
        }
        if let (IpAddr::V6(v6), SocketAddr::V4(_)) = (src.ip(), to)
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            src.set_ip(IpAddr::V4(v4));
        }
        let (packet, dest) = udp_packet(src, to, data)?;
        send_raw_packet(
            if dest.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            },
            &packet,
            &sockaddr(dest),
        )?;
    }
    Ok(())
}

fn to_v4(a: SocketAddr) -> Option<SocketAddr> {
    match a.ip() {
        IpAddr::V6(v6) => Some(SocketAddr::new(
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST)),
            a.port(),
        )),
        IpAddr::V4(_) => Some(a),
    }
}

fn sockaddr(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(v4) => {
            let mut b = vec![0u8; 16];
            b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[4..8].copy_from_slice(&v4.ip().octets());
            b
        }
        SocketAddr::V6(v6) => {
            let mut b = vec![0u8; 28];
            b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[8..24].copy_from_slice(&v6.ip().octets());
            b
        }
    }
}

/// One's complement sum of 16-bit words (RFC 1071), folded.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u16::from_be_bytes([hi, b]) as u32,
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u16::from_be_bytes([hi, 0]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IP packet carrying `data` in a UDP datagram from `src` to `dst`
/// (both IPv4 or both IPv6), and where to send it.
fn udp_packet(src: SocketAddr, dst: SocketAddr, data: &[u8]) -> io::Result<(Vec<u8>, SocketAddr)> {
    let udp_len = 8 + data.len();
    if udp_len > u16::MAX as usize {
        return Err(io::Error::other("datagram too long"));
    }
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let len = (udp_len as u16).to_be_bytes();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let pseudo = [
                &s.octets()[..],
                &d.octets(),
                &[0, libc::IPPROTO_UDP as u8],
                &len,
            ];
            let sum = match checksum(&[&pseudo.concat(), &udp]) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            let total = (20 + udp_len) as u16;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let hsum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&hsum.to_be_bytes());
            ip.extend_from_slice(&udp);
            Ok((ip, dst))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ulen = (udp_len as u32).to_be_bytes();
            let pseudo = [
                &s.octets()[..],
                &d.octets(),
                &ulen,
                &[0, 0, 0, libc::IPPROTO_UDP as u8],
            ];
            let sum = match checksum(&[&pseudo.concat(), &udp]) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&len);
            ip.extend_from_slice(&[libc::IPPROTO_UDP as u8, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&udp);
            Ok((ip, dst))
        }
        _ => Err(io::Error::other(format!(
            "a datagram from {src} cannot reach {dst}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        // RFC 1071's example words.
        let words = [0x00u8, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&words]), !0xddf2);
        assert_eq!(checksum(&[&words[..3], &words[3..]]), !0xddf2);
    }
}
