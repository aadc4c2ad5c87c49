//! Netlink sockets, of any protocol (route, generic, uevent, audit, ...):
//! made again with their port id, the multicast groups they joined and
//! their options (NETLINK_EXT_ACK, NO_ENOBUFS, ...). Messages waiting on
//! one cannot be put back: such a socket is refused by name.

use super::socket::{Created, apply_options, finish, has_queued, is_socket_of, read};
use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::sys::socket;
use crstream_proto::{OpenFile, SocketFile};
use std::io;
use std::os::fd::OwnedFd;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

#[derive(Default)]
pub(super) struct NetlinkSockets {
    created: Created,
}

/// The groups a socket joined: a bitmap of u32 words (group g is bit g-1).
fn memberships(s: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 128];
    loop {
        let n = socket::getsockopt(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut buf)?;
        // The kernel says how much it needs, even beyond what it wrote.
        if n <= buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(n, 0);
    }
}

impl FdKind for NetlinkSockets {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let Some((dup, mut sf)) = read(d, |family| family == libc::AF_NETLINK)? else {
            return Ok(false);
        };
        if has_queued(&dup) {
            return Err(d.refuse(format!(
                "netlink socket of protocol {} with messages waiting",
                sf.protocol
            )));
        }
        sf.netlink_groups =
            memberships(&dup).map_err(|e| d.error("NETLINK_LIST_MEMBERSHIPS", e))?;
        finish(d, &dup, sf, f)?;
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        is_socket_of(f, &[libc::AF_NETLINK])
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let s = f.socket.as_ref().expect("restores() checked it");
        self.created.open(pid, f, s.inode, || {
            create(s).map_err(|e| super::file_error(pid, f, format!("netlink socket: {e}")))
        })
    }
}

/// Whether a sockaddr_nl names a port or groups.
fn names_something(addr: &[u8]) -> bool {
    addr.len() >= 12 && addr[4..12].iter().any(|&b| b != 0)
}

fn create(s: &SocketFile) -> io::Result<OwnedFd> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let sock = socket::socket(libc::AF_NETLINK, s.r#type, s.protocol).map_err(step("socket"))?;
    apply_options(&sock, &s.options).map_err(step("options"))?;
    if names_something(&s.local_addr) {
        socket::bind(&sock, &s.local_addr).map_err(step("bind (its port id taken?)"))?;
    }
    for (w, word) in s.netlink_groups.chunks_exact(4).enumerate() {
        let bits = u32::from_ne_bytes(word.try_into().expect("4 bytes"));
        for b in (0..32).filter(|b| bits & (1 << b) != 0) {
            let group = (w * 32 + b + 1) as i32;
            socket::setsockopt_int(&sock, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
                .map_err(step("joining a multicast group"))?;
        }
    }
    if names_something(&s.peer_addr) {
        socket::connect(&sock, &s.peer_addr).map_err(step("connect"))?;
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use std::os::fd::AsRawFd;

    /// A route socket bound to a port id with groups past the first 32,
    /// and an option set, comes back the same.
    #[test]
    fn a_netlink_socket_keeps_its_port_groups_and_options() {
        let s = socket::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        socket::setsockopt_int(&s, SOL_NETLINK, 5 /* NETLINK_NO_ENOBUFS */, 1).unwrap();
        let mut addr = vec![0u8; 12];
        addr[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
        // RTNLGRP_LINK (1) by the bind; RTNLGRP_NSID (28) and a group past 32
        // (RTNLGRP_IPV6_MROUTE_R, 36) joined after.
        addr[8..12].copy_from_slice(&1u32.to_ne_bytes());
        socket::bind(&s, &addr).unwrap();
        for g in [28, 36] {
            socket::setsockopt_int(&s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g).unwrap();
        }
        let name = socket::name(&s, false).unwrap();
        let groups = memberships(&s).unwrap();
        let f = dump_own(s.as_raw_fd()).unwrap();
        drop(s);
        let n = created(&mut NetlinkSockets::default(), &f);
        assert_eq!(socket::name(&n, false).unwrap(), name, "port id");
        assert_eq!(memberships(&n).unwrap(), groups);
        assert_eq!(socket::getsockopt_int(&n, SOL_NETLINK, 5).unwrap(), 1);
    }
}
