//! The IPv4 and IPv6 multicast groups a datagram or raw socket has joined,
//! with their source filters. No interface lists a socket's groups, but
//! the kernel lists every group joined on each interface (/proc/net/igmp,
//! /proc/net/igmp6), and MCAST_MSFILTER answers, for one group, whether
//! this socket is a member and with which filter. Restore joins each group
//! again and sets its filter.

use crate::sys::socket::{getsockopt, setsockopt};
use crstream_proto::IpMembership;
use std::io;
use std::os::fd::OwnedFd;

const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_MSFILTER: i32 = 48;
const MCAST_INCLUDE: u32 = 1;

/// struct group_filter (x86_64): gf_interface, padding, gf_group
/// (sockaddr_storage), gf_fmode, gf_numsrc, then gf_slist.
const GF_GROUP: usize = 8;
const GF_FMODE: usize = GF_GROUP + STORAGE;
const GF_NUMSRC: usize = GF_FMODE + 4;
const GF_SLIST: usize = GF_NUMSRC + 4;
const STORAGE: usize = 128;

/// Room for this many sources on the first read (the kernel's default
/// limit is 10: net.ipv4.igmp_max_msf); more are read with a second.
const SOURCES_FIRST_READ: usize = 16;

/// The groups joined on any interface of this network namespace, read
/// once for a dump (every socket of the tree is asked about each).
#[derive(Default)]
pub(super) struct JoinedHere {
    v4: Vec<Group>,
    v6: Vec<Group>,
}

/// A group joined on an interface: its name, its index, the group's
/// address (4 or 16 bytes).
struct Group {
    ifname: String,
    ifindex: u32,
    address: Vec<u8>,
}

impl JoinedHere {
    pub(super) fn read() -> io::Result<Self> {
        let groups = |ipv6| -> io::Result<Vec<Group>> {
            (joined_here(ipv6)?.into_iter())
                .map(|(ifname, address)| {
                    let ifindex = super::packet::if_index(&ifname)?;
                    Ok(Group {
                        ifname,
                        ifindex,
                        address,
                    })
                })
                .collect()
        };
        Ok(JoinedHere {
            v4: groups(false)?,
            v6: groups(true)?,
        })
    }
}

/// The groups joined on any interface here: (interface name, group
/// address, 4 or 16 bytes). Each group once per interface.
fn joined_here(ipv6: bool) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut v = Vec::new();
    // (A kernel without multicast has neither file: no groups.)
    let read = |path: &str| match std::fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        r => r,
    };
    if ipv6 {
        // "1    lo    ff020000000000000000000000000001     1 0000000C 0"
        for line in read("/proc/net/igmp6")?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [_, dev, hex, ..] = f[..]
                && let Some(group) = hex_bytes(hex).filter(|g| g.len() == 16)
            {
                v.push((dev.to_string(), group));
            }
        }
    } else {
        // "1\tlo        :     1      V3" then one "\t\t\t\t010000E0 ..." line
        // per group, the address as a hex u32 of its network-order bytes.
        let mut dev = None;
        for line in read("/proc/net/igmp")?.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !line.starts_with('\t') {
                dev = f.get(1).map(|d| d.trim_end_matches(':').to_string());
            } else if let (Some(dev), Some(hex)) = (&dev, f.first())
                && let Ok(raw) = u32::from_str_radix(hex, 16)
            {
                v.push((dev.clone(), raw.to_ne_bytes().to_vec()));
            }
        }
    }
    Ok(v)
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A sockaddr_storage holding `addr` (4 bytes: IPv4, 16: IPv6), port 0.
fn storage(addr: &[u8]) -> [u8; STORAGE] {
    let mut s = [0u8; STORAGE];
    if addr.len() == 4 {
        s[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        s[4..8].copy_from_slice(addr);
    } else {
        s[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        s[8..24].copy_from_slice(addr);
    }
    s
}

/// The address a sockaddr_storage holds (its family's length).
fn address(s: &[u8]) -> Vec<u8> {
    match u16::from_ne_bytes([s[0], s[1]]) as i32 {
        libc::AF_INET => s[4..8].to_vec(),
        _ => s[8..24].to_vec(),
    }
}

/// The option level for a group of this address length.
fn level(group: &[u8]) -> i32 {
    if group.len() == 4 {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    }
}

fn group_filter(ifindex: u32, group: &[u8], include: bool, sources: &[Vec<u8>]) -> Vec<u8> {
    let mut gf = vec![0u8; GF_SLIST + STORAGE * sources.len().max(1)];
    gf[..4].copy_from_slice(&ifindex.to_ne_bytes());
    gf[GF_GROUP..GF_FMODE].copy_from_slice(&storage(group));
    let mode = if include { MCAST_INCLUDE } else { 0 };
    gf[GF_FMODE..GF_NUMSRC].copy_from_slice(&mode.to_ne_bytes());
    gf[GF_NUMSRC..GF_SLIST].copy_from_slice(&(sources.len() as u32).to_ne_bytes());
    for (i, s) in sources.iter().enumerate() {
        gf[GF_SLIST + i * STORAGE..][..STORAGE].copy_from_slice(&storage(s));
    }
    gf
}

/// This socket's membership of `group` on interface `ifindex`, with its
/// source filter; None if it is no member.
fn membership(
    s: &OwnedFd,
    ifname: &str,
    ifindex: u32,
    group: &[u8],
) -> io::Result<Option<IpMembership>> {
    let mut room = SOURCES_FIRST_READ;
    loop {
        let mut gf = group_filter(ifindex, group, false, &vec![vec![0; group.len()]; room]);
        gf[GF_NUMSRC..GF_SLIST].copy_from_slice(&(room as u32).to_ne_bytes());
        match getsockopt(s, level(group), MCAST_MSFILTER, &mut gf) {
            Ok(_) => {}
            // ENOPROTOOPT: an IPv6 raw socket, which has no IPv4 groups.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL | libc::ENOPROTOOPT)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let u32_at = |at: usize| u32::from_ne_bytes(gf[at..at + 4].try_into().expect("4 bytes"));
        let count = u32_at(GF_NUMSRC) as usize;
        if count > room {
            room = count;
            continue;
        }
        return Ok(Some(IpMembership {
            ifname: ifname.to_string(),
            group: group.to_vec(),
            include: u32_at(GF_FMODE) == MCAST_INCLUDE,
            sources: (0..count)
                .map(|i| address(&gf[GF_SLIST + i * STORAGE..][..STORAGE]))
                .collect(),
        }));
    }
}

/// The groups of `here` socket `s` (of `family`) has joined: IPv4 groups
/// for an IPv4 socket, IPv6 and IPv4 groups for an IPv6 one.
pub(super) fn memberships(
    s: &OwnedFd,
    family: i32,
    here: &JoinedHere,
) -> io::Result<Vec<IpMembership>> {
    let v6 = if family == libc::AF_INET6 {
        &here.v6[..]
    } else {
        &[]
    };
    let mut v = Vec::new();
    for g in here.v4.iter().chain(v6) {
        if let Some(m) = membership(s, &g.ifname, g.ifindex, &g.address)? {
            v.push(m);
        }
    }
    Ok(v)
}

/// Joins every group of `memberships` again on socket `s`, with its filter.
pub(super) fn join(s: &OwnedFd, memberships: &[IpMembership]) -> io::Result<()> {
    for m in memberships {
        if m.group.len() != 4 && m.group.len() != 16 {
            return Err(io::Error::other(
                "bad image: a multicast group of no known length",
            ));
        }
        let what = |e: io::Error| {
            let group = match <[u8; 4]>::try_from(&m.group[..]) {
                Ok(v4) => std::net::Ipv4Addr::from(v4).to_string(),
                Err(_) => {
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&m.group[..]).expect("16 bytes"))
                        .to_string()
                }
            };
            io::Error::new(
                e.kind(),
                format!("multicast group {group} on {}: {e}", m.ifname),
            )
        };
        let ifindex = super::packet::if_index(&m.ifname).map_err(what)?;
        // struct group_req: gr_interface, padding, gr_group.
        let mut req = [0u8; GF_GROUP + STORAGE];
        req[..4].copy_from_slice(&ifindex.to_ne_bytes());
        req[GF_GROUP..].copy_from_slice(&storage(&m.group));
        setsockopt(s, level(&m.group), MCAST_JOIN_GROUP, &req).map_err(what)?;
        if m.include || !m.sources.is_empty() {
            let gf = group_filter(ifindex, &m.group, m.include, &m.sources);
            let len = GF_SLIST + STORAGE * m.sources.len();
            setsockopt(s, level(&m.group), MCAST_MSFILTER, &gf[..len]).map_err(what)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::socket;

    fn v4(a: [u8; 4]) -> Vec<u8> {
        a.to_vec()
    }

    #[test]
    fn groups_and_source_filters_on_loopback_come_back() {
        let s = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).unwrap();
        let v6_group: Vec<u8> = std::net::Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0x43, 0x5253)
            .octets()
            .to_vec();
        let joined = vec![
            IpMembership {
                ifname: "lo".into(),
                group: v4([239, 67, 82, 1]),
                include: false,
                sources: vec![v4([127, 0, 0, 9])],
            },
            IpMembership {
                ifname: "lo".into(),
                group: v4([232, 67, 82, 2]),
                include: true,
                sources: vec![v4([127, 0, 0, 5]), v4([127, 0, 0, 6])],
            },
            IpMembership {
                ifname: "lo".into(),
                group: v6_group,
                include: false,
                sources: vec![],
            },
        ];
        join(&s, &joined).unwrap();
        let here = JoinedHere::read().unwrap();
        let mut read = memberships(&s, libc::AF_INET6, &here).unwrap();
        read.sort_by(|a, b| a.group.cmp(&b.group));
        let mut want = joined.clone();
        want.sort_by(|a, b| a.group.cmp(&b.group));
        assert_eq!(read, want);
        let other = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        assert_eq!(memberships(&other, libc::AF_INET, &here).unwrap(), vec![]);
    }
}
