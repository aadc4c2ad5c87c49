//! IP packets crstream builds to put back what the kernel had received: a
//! queued UDP datagram, a TCP segment from a connection's peer (its FIN,
//! or its ACK of ours). Sent through a raw socket to a local address, they
//! are delivered like the first ones, past the network lock (they carry
//! its signature: see `netlock::INJECT_ID`).

use crate::netlock::{INJECT_ID, INJECT_TTL};
use crate::sys::socket::send_raw_packet;
use std::io;
use std::net::{IpAddr, SocketAddr};

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

/// Sends `l4` (a transport header and payload of `protocol`, whose
/// checksum field is at `csum_at`) from `src` to `dst`, both IPv4 or both
/// IPv6, with the checksum and IP header filled in.
fn send(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    tos: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
) -> io::Result<()> {
    let len = l4.len();
    let (pseudo, family) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            [
                &s.octets()[..],
                &d.octets(),
                &[0, protocol],
                &(len as u16).to_be_bytes(),
            ]
            .concat(),
            libc::AF_INET,
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            [
                &s.octets()[..],
                &d.octets(),
                &(len as u32).to_be_bytes(),
                &[0, 0, 0, protocol],
            ]
            .concat(),
            libc::AF_INET6,
        ),
        _ => {
            return Err(io::Error::other(format!(
                "a packet from {src} cannot reach {dst}"
            )));
        }
    };
    // UDP sends a zero sum as all ones; TCP never computes zero.
    let sum = match checksum(&[&pseudo, &l4]) {
        0 => 0xffff,
        c => c,
    };
    l4[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
    let (packet, to) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + len) as u16;
            let mut ip = vec![0x45, tos];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&INJECT_ID.to_be_bytes());
            ip.extend_from_slice(&[0x40, 0, INJECT_TTL, protocol, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let hsum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&hsum.to_be_bytes());
            ip.extend_from_slice(&l4);
            let mut to = vec![0u8; 16];
            to[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            to[4..8].copy_from_slice(&d.octets());
            (ip, to)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // Version 6, traffic class `tos`, flow label INJECT_ID.
            let mut ip = vec![0x60 | tos >> 4, (tos & 0xf) << 4];
            ip.extend_from_slice(&INJECT_ID.to_be_bytes());
            ip.extend_from_slice(&(len as u16).to_be_bytes());
            ip.extend_from_slice(&[protocol, INJECT_TTL]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&l4);
            let mut to = vec![0u8; 28];
            to[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            to[8..24].copy_from_slice(&d.octets());
            (ip, to)
        }
        _ => unreachable!("matched above"),
    };
    send_raw_packet(family, &packet, &to)
}

/// A UDP datagram carrying `data` from `src` to `dst`, with TOS (traffic
/// class) `tos`; with `lite`, a UDP-Lite one (RFC 3828) whose checksum
/// covers all of it.
pub(super) fn send_udp(
    src: SocketAddr,
    dst: SocketAddr,
    data: &[u8],
    lite: bool,
    tos: u8,
) -> io::Result<()> {
    let udp_len = 8 + data.len();
    // IPv4's total length counts its 20-byte header; IPv6's payload
    // length does not count its own.
    let header = if src.is_ipv4() { 20 } else { 0 };
    if udp_len + header > u16::MAX as usize {
        return Err(io::Error::other("datagram too long"));
    }
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    // UDP-Lite's length field is the checksum's coverage: 0, all.
    let length = if lite { 0 } else { udp_len as u16 };
    udp.extend_from_slice(&length.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let protocol = if lite {
        libc::IPPROTO_UDPLITE
    } else {
        libc::IPPROTO_UDP
    };
    send(src.ip(), dst.ip(), protocol as u8, tos, udp, 6)
}

pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_ACK: u8 = 0x10;

pub(super) const TCP_PSH: u8 = 0x08;

/// A TCP segment without data or options from `src` to `dst`.
pub(super) fn send_tcp(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
) -> io::Result<()> {
    send_tcp_segment(src, dst, [seq, ack], flags, window, &[], &[])
}

/// A TCP segment from `src` to `dst` (sequence and acknowledgement
/// numbers `seq_ack`) with `options` (a multiple of 4 bytes, at most 40)
/// and `data`.
pub(super) fn send_tcp_segment(
    src: SocketAddr,
    dst: SocketAddr,
    seq_ack: [u32; 2],
    flags: u8,
    window: u16,
    options: &[u8],
    data: &[u8],
) -> io::Result<()> {
    if !options.len().is_multiple_of(4) || options.len() > 40 {
        return Err(io::Error::other("TCP options of a bad length"));
    }
    let header = 20 + options.len();
    let mut tcp = Vec::with_capacity(header + data.len());
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq_ack[0].to_be_bytes());
    tcp.extend_from_slice(&seq_ack[1].to_be_bytes());
    tcp.extend_from_slice(&[((header / 4) as u8) << 4, flags]);
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(options);
    tcp.extend_from_slice(data);
    send(src.ip(), dst.ip(), libc::IPPROTO_TCP as u8, 0, tcp, 16)
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
