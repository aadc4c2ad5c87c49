//! Packet sockets (AF_PACKET: a DHCP client, a capture tool): made again
//! bound to the same interface (by name: its index may differ where the
//! tree is restored) and protocol, with their memberships (promiscuous,
//! all-multicast, multicast addresses, found with packet_diag), fanout
//! group (with its flags) and options. Refused by name: a socket with a ring (mapped
//! memory the kernel fills) and one with packets waiting.

use super::socket::{Created, apply_options, finish, has_queued, is_socket_of, read};
use super::{DumpFd, FdKind, Reopen, sock_diag};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::sys::socket;
use crstream_proto::{OpenFile, PacketMembership, SocketFile};
use std::io;
use std::os::fd::OwnedFd;

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_FANOUT: i32 = 18;

#[derive(Default)]
pub(super) struct PacketSockets {
    created: Created,
}

/// The interface with index `index`, by name.
fn if_name(index: u32) -> io::Result<String> {
    for e in std::fs::read_dir("/sys/class/net")?.flatten() {
        let i = std::fs::read_to_string(e.path().join("ifindex")).unwrap_or_default();
        if i.trim().parse() == Ok(index) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::other(format!("no interface has index {index}")))
}

/// The index of interface `name` here.
pub(super) fn if_index(name: &str) -> io::Result<u32> {
    if name.contains('/') {
        return Err(io::Error::other(format!("{name:?} is no interface name")));
    }
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .map_err(|e| io::Error::new(e.kind(), format!("interface {name} is not here: {e}")))?
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("interface {name}: bad index")))
}

/// The ifindex of a sockaddr_ll (0: none).
fn ll_index(addr: &[u8]) -> u32 {
    addr.get(4..8)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

impl FdKind for PacketSockets {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let Some((dup, mut sf)) = read(d, |family| family == libc::AF_PACKET)? else {
            return Ok(false);
        };
        if has_queued(&dup) {
            return Err(d.refuse("packet socket with packets waiting"));
        }
        let diag = sock_diag::packet(sf.inode).map_err(|e| d.error("packet_diag", e))?;
        if diag.rings {
            return Err(d.refuse("packet socket with a ring (PACKET_RX_RING/TX_RING)"));
        }
        let index = ll_index(&sf.local_addr);
        if index != 0 {
            sf.packet_ifname = if_name(index).map_err(|e| d.error("its interface", e))?;
        }
        for (ifindex, count, ty, address) in diag.mclist {
            sf.packet_memberships.push(PacketMembership {
                ifname: if_name(ifindex).map_err(|e| d.error("a membership's interface", e))?,
                count,
                r#type: ty as u32,
                address,
            });
        }
        // getsockopt has the fanout's flags, packet_diag not.
        let fanout = socket::getsockopt_int(&dup, SOL_PACKET, PACKET_FANOUT)
            .map_err(|e| d.error("PACKET_FANOUT", e))? as u32;
        if fanout != 0 {
            // PACKET_FANOUT_CBPF, PACKET_FANOUT_EBPF: a program nothing reads back.
            if matches!((fanout >> 16) & 0xff, 6 | 7) {
                return Err(d.refuse("packet socket in a fanout group steered by a BPF program"));
            }
            sf.packet_fanout = Some(fanout);
        }
        finish(d, &dup, sf, f)?;
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        is_socket_of(f, &[libc::AF_PACKET])
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let s = f.socket.as_ref().expect("restores() checked it");
        self.created.open(pid, f, s.inode, || {
            create(s).map_err(|e| super::file_error(pid, f, format!("packet socket: {e}")))
        })
    }
}

fn create(s: &SocketFile) -> io::Result<OwnedFd> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let sock = socket::socket(libc::AF_PACKET, s.r#type, s.protocol).map_err(step("socket"))?;
    apply_options(&sock, &s.options).map_err(step("options"))?;
    if s.local_addr.len() >= 8 {
        // getsockname gives the address up to its hardware address; bind
        // wants a whole sockaddr_ll.
        let mut addr = s.local_addr.clone();
        addr.resize(addr.len().max(20), 0);
        let index = if s.packet_ifname.is_empty() {
            0
        } else {
            if_index(&s.packet_ifname)?
        };
        addr[4..8].copy_from_slice(&index.to_ne_bytes());
        socket::bind(&sock, &addr).map_err(step("bind"))?;
    }
    for m in &s.packet_memberships {
        // struct packet_mreq: ifindex, type, alen, address[8].
        let mut mreq = vec![0u8; 16];
        mreq[..4].copy_from_slice(&(if_index(&m.ifname)? as i32).to_ne_bytes());
        mreq[4..6].copy_from_slice(&(m.r#type as u16).to_ne_bytes());
        let alen = m.address.len().min(8);
        mreq[6..8].copy_from_slice(&(alen as u16).to_ne_bytes());
        mreq[8..8 + alen].copy_from_slice(&m.address[..alen]);
        for _ in 0..m.count.max(1) {
            socket::setsockopt(&sock, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(step("PACKET_ADD_MEMBERSHIP"))?;
        }
    }
    if let Some(fanout) = s.packet_fanout {
        socket::setsockopt_int(&sock, SOL_PACKET, PACKET_FANOUT, fanout as i32)
            .map_err(step("PACKET_FANOUT"))?;
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use std::os::fd::AsRawFd;

    /// A packet socket bound to lo (for an ethertype nobody sends), with an
    /// all-multicast membership, a fanout group and an option, comes back
    /// the same.
    #[test]
    fn a_packet_socket_keeps_its_interface_memberships_fanout_and_options() {
        let proto = (0x88b5u16).to_be() as i32; // local experimental ethertype
        let s = socket::socket(libc::AF_PACKET, libc::SOCK_RAW, proto).unwrap();
        socket::setsockopt_int(&s, SOL_PACKET, 8 /* PACKET_AUXDATA */, 1).unwrap();
        let lo = if_index("lo").unwrap();
        let mut addr = vec![0u8; 20];
        addr[..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        addr[2..4].copy_from_slice(&(proto as u16).to_ne_bytes());
        addr[4..8].copy_from_slice(&lo.to_ne_bytes());
        socket::bind(&s, &addr).unwrap();
        let mut mreq = vec![0u8; 16];
        mreq[..4].copy_from_slice(&(lo as i32).to_ne_bytes());
        mreq[4..6].copy_from_slice(&2u16.to_ne_bytes()); // PACKET_MR_ALLMULTI
        socket::setsockopt(&s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq).unwrap();
        let fanout = 4242; // id 4242, PACKET_FANOUT_HASH
        socket::setsockopt_int(&s, SOL_PACKET, PACKET_FANOUT, fanout).unwrap();
        let name = socket::name(&s, false).unwrap();
        let f = dump_own(s.as_raw_fd()).unwrap();
        let saved = f.socket.as_ref().unwrap();
        assert_eq!(saved.packet_ifname, "lo");
        assert_eq!(saved.packet_memberships.len(), 1);
        assert_eq!(saved.packet_fanout, Some(fanout as u32));
        drop(s);
        let n = created(&mut PacketSockets::default(), &f);
        assert_eq!(socket::name(&n, false).unwrap(), name);
        assert_eq!(socket::getsockopt_int(&n, SOL_PACKET, 8).unwrap(), 1);
        assert_eq!(
            socket::getsockopt_int(&n, SOL_PACKET, PACKET_FANOUT).unwrap(),
            fanout
        );
        let link = crate::proc::read_link(format!("/proc/self/fd/{}", n.as_raw_fd())).unwrap();
        let inode = crate::fd::pipe::bracket_inode(&link, "socket:").unwrap();
        let diag = sock_diag::packet(inode).unwrap();
        assert_eq!(diag.mclist.len(), 1);
    }
}
