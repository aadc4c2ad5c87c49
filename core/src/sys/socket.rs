//! Sockets with their addresses and options as raw bytes, the way the
//! image keeps them (any family, any option).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

// Socket options the libc crate does not export for x86_64 gnu.
pub(crate) const SO_PEEK_OFF: i32 = 42;
pub(crate) const SO_DOMAIN: i32 = 39;
pub(crate) const SO_PROTOCOL: i32 = 38;
pub(crate) const SO_ACCEPTCONN: i32 = 30;

fn raw(fd: impl AsFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

/// getsockopt into `buf`; returns the length the kernel wrote.
pub(crate) fn getsockopt(
    fd: impl AsFd,
    level: i32,
    name: i32,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes.
    super::cvt(unsafe {
        libc::getsockopt(raw(fd), level, name, buf.as_mut_ptr().cast(), &mut len)
    })?;
    Ok(len as usize)
}

pub(crate) fn getsockopt_int(fd: impl AsFd, level: i32, name: i32) -> io::Result<i32> {
    let mut b = [0u8; 4];
    getsockopt(fd, level, name, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

pub(crate) fn setsockopt(fd: impl AsFd, level: i32, name: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: val is valid for its length.
    super::cvt(unsafe {
        libc::setsockopt(
            raw(fd),
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub(crate) fn setsockopt_int(fd: impl AsFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    setsockopt(fd, level, name, &v.to_ne_bytes())
}

/// The PID and effective ids a unix socket holds for its peer
/// (SO_PEERCRED, SO_PEERGROUPS); `None` if it holds none (never connected
/// nor listening).
pub(crate) fn peer_ids(fd: impl AsFd) -> io::Result<Option<(i32, super::ids::Ids)>> {
    let fd = fd.as_fd();
    // struct ucred: pid, uid, gid.
    let mut b = [0u8; 12];
    getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut b)?;
    let word = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let (pid, uid, gid) = (word(0), word(1), word(2));
    if pid == 0 && uid == u32::MAX {
        return Ok(None);
    }
    let ids = super::ids::Ids {
        uid,
        gid,
        groups: peer_groups(fd)?,
    };
    Ok(Some((pid as i32, ids)))
}

/// SO_PEERGROUPS: the supplementary groups a unix socket holds for its peer.
pub(crate) fn peer_groups(fd: impl AsFd) -> io::Result<Vec<u32>> {
    let mut buf = vec![0u8; 64 * 4];
    loop {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: buf is valid for len bytes.
        let r = unsafe {
            libc::getsockopt(
                raw(&fd),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        match super::cvt(r) {
            // Too small: len is what it needs.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && len as usize > buf.len() => {
                buf.resize(len as usize, 0)
            }
            Err(e) => return Err(e),
            Ok(_) => {
                return Ok(buf[..len as usize]
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
                    .collect());
            }
        }
    }
}

/// The raw sockaddr of the socket's own name (`peer` false) or of its
/// peer; empty when it has none (ENOTCONN).
pub(crate) fn name(fd: impl AsFd, peer: bool) -> io::Result<Vec<u8>> {
    let mut ss: libc::sockaddr_storage = super::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&raw mut ss).cast::<libc::sockaddr>();
    // SAFETY: ss is valid for len bytes.
    let r = unsafe {
        if peer {
            libc::getpeername(raw(fd), p, &mut len)
        } else {
            libc::getsockname(raw(fd), p, &mut len)
        }
    };
    match super::cvt(r) {
        Ok(_) => {}
        // Not connected, or a family without peers (packet sockets).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::EOPNOTSUPP)) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    Ok(super::bytes_of_mut(&mut ss)[..len].to_vec())
}

/// The TCP state (TCP_ESTABLISHED, TCP_LISTEN, ...) of a TCP socket.
pub(crate) fn tcp_state(fd: impl AsFd) -> io::Result<u8> {
    let mut ti: libc::tcp_info = super::zeroed();
    getsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        super::bytes_of_mut(&mut ti),
    )?;
    Ok(ti.tcpi_state)
}

/// A new socket (close-on-exec).
pub(crate) fn socket(family: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket with integer arguments.
    super::cvt_fd(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) })
}

/// A connected pair of unix sockets of type `ty` (close-on-exec).
pub(crate) fn socketpair(ty: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0; 2];
    // SAFETY: sv holds two ints.
    super::cvt(unsafe {
        libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr())
    })?;
    use std::os::fd::FromRawFd;
    // SAFETY: two fresh fds from socketpair, owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

/// bind to a raw sockaddr.
pub(crate) fn bind(fd: impl AsFd, addr: &[u8]) -> io::Result<()> {
    // SAFETY: addr is a sockaddr of its length (the kernel checks it).
    super::cvt(unsafe { libc::bind(raw(fd), addr.as_ptr().cast(), addr.len() as libc::socklen_t) })
        .map(drop)
}

pub(crate) fn listen(fd: impl AsFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen with integer arguments.
    super::cvt(unsafe { libc::listen(raw(fd), backlog) }).map(drop)
}

/// Sends one message without blocking, to `to` or to the peer, with the
/// sender credentials `creds` (SCM_CREDENTIALS: pid, uid, gid; any, for
/// root, of a process that exists); returns the bytes accepted.
#[cfg(test)]
pub(crate) fn send_with_creds(
    fd: impl AsFd,
    msg: &[u8],
    to: Option<&[u8]>,
    creds: (i32, u32, u32),
) -> io::Result<usize> {
    send_with(fd, msg, to, Some(creds), &[])
}

/// Sends one message without blocking, with the sender's credentials
/// (SCM_CREDENTIALS) and file descriptors to pass (SCM_RIGHTS), each if
/// given.
pub(crate) fn send_with(
    fd: impl AsFd,
    msg: &[u8],
    to: Option<&[u8]>,
    creds: Option<(i32, u32, u32)>,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<usize> {
    let creds_len = std::mem::size_of::<libc::ucred>() as u32;
    let fds_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe {
        (if creds.is_some() {
            libc::CMSG_SPACE(creds_len)
        } else {
            0
        }) + if fds.is_empty() {
            0
        } else {
            libc::CMSG_SPACE(fds_len)
        }
    } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr().cast_mut().cast(),
        iov_len: msg.len(),
    };
    // SAFETY: msghdr is plain data, filled below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(a) = to {
        mh.msg_name = a.as_ptr().cast_mut().cast();
        mh.msg_namelen = a.len() as libc::socklen_t;
    }
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    if space > 0 {
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = space;
    }
    // SAFETY: the control buffer has room for each entry written (its
    // length is their CMSG_SPACE sum); iov and the name outlive the call.
    let n = unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        if let Some((pid, uid, gid)) = creds {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_CREDENTIALS;
            (*c).cmsg_len = libc::CMSG_LEN(creds_len) as usize;
            libc::CMSG_DATA(c)
                .cast::<libc::ucred>()
                .write_unaligned(libc::ucred { pid, uid, gid });
            c = libc::CMSG_NXTHDR(&mh, c);
        }
        if !fds.is_empty() {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fds_len) as usize;
            let data = libc::CMSG_DATA(c).cast::<i32>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
        libc::sendmsg(raw(&fd), &mh, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// connect to a raw sockaddr (an empty one: AF_UNSPEC, which disconnects).
pub(crate) fn connect(fd: impl AsFd, addr: &[u8]) -> io::Result<()> {
    let unspec = (libc::AF_UNSPEC as u16).to_ne_bytes();
    let addr = if addr.is_empty() { &unspec[..] } else { addr };
    // SAFETY: addr is a sockaddr of its length (the kernel checks it).
    super::cvt(unsafe {
        libc::connect(raw(fd), addr.as_ptr().cast(), addr.len() as libc::socklen_t)
    })
    .map(drop)
}

/// An ioctl that reads an int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub(crate) fn ioctl_int(fd: impl AsFd, request: u64) -> io::Result<i32> {
    let mut v: i32 = 0;
    // SAFETY: the request writes one int.
    super::cvt(unsafe { libc::ioctl(raw(fd), request as _, &mut v) })?;
    Ok(v)
}

/// recv with MSG_PEEK | MSG_DONTWAIT into `buf`: the bytes copied.
pub(crate) fn recv_peek(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    recv(fd, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// recv with MSG_OOB | MSG_PEEK | MSG_DONTWAIT into `buf`: the urgent
/// (out-of-band) bytes copied.
pub(crate) fn recv_peek_urgent(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    recv(fd, buf, libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

fn recv(fd: impl AsFd, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(raw(fd), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// send, without waiting or SIGPIPE: the bytes accepted.
pub(crate) fn send(fd: impl AsFd, msg: &[u8]) -> io::Result<usize> {
    // SAFETY: msg is valid for its length.
    let n = unsafe {
        libc::send(
            raw(fd),
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A datagram [`peek_datagram`] saw.
pub(crate) struct PeekedDatagram {
    /// Its whole length, even if longer than the buffer.
    pub len: usize,
    /// The raw sockaddr it came from.
    pub from: Vec<u8>,
    /// The TOS or traffic class it arrived with, if the socket asks for
    /// it (IP_RECVTOS, IPV6_RECVTCLASS).
    pub tos: Option<u8>,
}

/// The next datagram of `fd`, peeked (MSG_PEEK) into `buf`; None: nothing
/// is queued.
pub(crate) fn peek_datagram(fd: impl AsFd, buf: &mut [u8]) -> io::Result<Option<PeekedDatagram>> {
    let mut from: libc::sockaddr_storage = super::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a TOS and a traffic class message, and for others the
    // process asked for (a cut list ends with a message of no data),
    // aligned as cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: msghdr is plain data, filled below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = (&raw mut from).cast();
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: mh points at `iov` (covering `buf`), `from` and
        // `control`, all alive.
        let n = unsafe {
            libc::recvmsg(
                raw(&fd),
                &mut mh,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    };
    let mut tos = None;
    // SAFETY: the kernel filled msg_control up to msg_controllen with
    // cmsghdrs, walked with the libc macros within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let holds = |n: u32| (*c).cmsg_len >= libc::CMSG_LEN(n) as usize;
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TOS) if holds(1) => tos = Some(*data),
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) if holds(4) => {
                    tos = Some(std::ptr::read_unaligned(data.cast::<i32>()) as u8)
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    let len = (mh.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    Ok(Some(PeekedDatagram {
        len: n,
        from: super::bytes_of_mut(&mut from)[..len].to_vec(),
        tos,
    }))
}

/// Sends a whole IP packet (header included) through a raw socket of
/// `family` (IPPROTO_RAW) to `to`.
pub(crate) fn send_raw_packet(family: i32, packet: &[u8], to: &[u8]) -> io::Result<()> {
    let s = socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    if family == libc::AF_INET6 {
        const IPV6_HDRINCL: i32 = 36;
        setsockopt_int(&s, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1)?;
    }
    // SAFETY: packet and to are valid for their lengths.
    let n = unsafe {
        libc::sendto(
            raw(&s),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            to.as_ptr().cast(),
            to.len() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The fds of control message `c` if it is SCM_RIGHTS, owned from now on.
///
/// # Safety
/// `c` is a control message the kernel filled in a message just received,
/// whose fds nothing else owns.
unsafe fn take_rights(c: *const libc::cmsghdr, into: &mut Vec<OwnedFd>) {
    // SAFETY: as the caller promises.
    unsafe {
        if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(c).cast::<i32>();
            let cnt = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
            for i in 0..cnt {
                into.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
            }
        }
    }
}

/// Takes every message waiting on `fd` without blocking and returns the
/// file descriptors they carried (SCM_RIGHTS), in order, each with the
/// first byte of its message.
pub(crate) fn receive_tagged_fds(fd: impl AsFd) -> io::Result<Vec<(u8, OwnedFd)>> {
    let mut tagged = Vec::new();
    loop {
        let mut fds = Vec::new();
        let mut byte = [0u8; 16];
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: byte.len(),
        };
        // SAFETY: msghdr is plain data, filled below.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: mh points at `iov` (covering `byte`) and `cbuf`, alive.
        let n = unsafe {
            libc::recvmsg(
                raw(&fd),
                &mut mh,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(tagged),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if n == 0 && mh.msg_controllen == 0 {
            return Ok(tagged); // the other end is closed
        }
        // SAFETY: walking the control buffer the kernel filled.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                take_rights(c, &mut fds);
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        let tag = if n > 0 { byte[0] } else { 0 };
        tagged.extend(fds.into_iter().map(|f| (tag, f)));
    }
}

/// Attaches a classic BPF filter (`insns`: struct sock_filter, 8 bytes
/// each) with SO_ATTACH_FILTER.
pub(crate) fn attach_filter(fd: impl AsFd, insns: &[u8]) -> io::Result<()> {
    if !insns.len().is_multiple_of(8) || insns.len() / 8 > u16::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a list of BPF instructions",
        ));
    }
    // Aligned copies of the instructions.
    let code: Vec<libc::sock_filter> = insns
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `code`, alive for the call.
    super::cvt(unsafe {
        libc::setsockopt(
            raw(fd),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// shutdown(SHUT_RD / SHUT_WR / SHUT_RDWR).
pub(crate) fn shutdown(fd: impl AsFd, how: i32) -> io::Result<()> {
    // SAFETY: shutdown with integer arguments.
    super::cvt(unsafe { libc::shutdown(raw(fd), how) }).map(drop)
}

/// Sends one message without blocking, to `to` (a raw sockaddr) or to the
/// peer; returns the bytes accepted.
#[cfg(test)]
pub(crate) fn send_to(fd: impl AsFd, msg: &[u8], to: Option<&[u8]>) -> io::Result<usize> {
    let (addr, alen) = match to {
        Some(a) => (
            a.as_ptr().cast::<libc::sockaddr>(),
            a.len() as libc::socklen_t,
        ),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: msg and addr are valid for their lengths.
    let n = unsafe {
        libc::sendto(
            raw(fd),
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            addr,
            alen,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What came with a peeked message besides its bytes.
#[derive(Debug, Default)]
pub(crate) struct Ancillary {
    /// The file descriptors it carries (SCM_RIGHTS): the copies the kernel
    /// installed in crstream's table.
    pub fds: Vec<OwnedFd>,
    /// The sender's credentials (SCM_CREDENTIALS: pid, uid, gid), which a
    /// socket with SO_PASSCRED gets.
    pub creds: Option<(i32, u32, u32)>,
    /// The sender's name (a raw sockaddr; empty or the family alone for
    /// an unnamed sender).
    pub sender: Vec<u8>,
}

/// One message peeked from the head of the queue, at the socket's
/// SO_PEEK_OFF, into `buf`: its length (more than `buf` when a datagram was
/// truncated, with `truncate`), and what came with it. Ok(None): nothing
/// queued.
pub(crate) fn peek(
    fd: impl AsFd,
    buf: &mut [u8],
    truncate: bool,
) -> io::Result<Option<(usize, Ancillary)>> {
    // Room for the most fds one message carries (SCM_MAX_FD, 253) and
    // credentials: fds that do not fit would be closed by the kernel.
    let mut cbuf = [0u64; 160];
    let mut from: libc::sockaddr_storage = super::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data, filled below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = (&raw mut from).cast();
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&cbuf);
    let flags = libc::MSG_PEEK
        | libc::MSG_DONTWAIT
        | libc::MSG_CMSG_CLOEXEC
        | if truncate { libc::MSG_TRUNC } else { 0 };
    let n = loop {
        // SAFETY: mh points at `iov` (covering `buf`), `from` and `cbuf`,
        // all alive.
        let n = unsafe { libc::recvmsg(raw(&fd), &mut mh, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    };
    let name_len = (mh.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    let mut anc = Ancillary {
        sender: super::bytes_of_mut(&mut from)[..name_len].to_vec(),
        ..Default::default()
    };
    // SAFETY: walking the control buffer the kernel filled; each SCM_RIGHTS
    // entry holds fds it installed in our table, which nothing else owns;
    // an SCM_CREDENTIALS entry holds a struct ucred.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            take_rights(c, &mut anc.fds);
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let u = libc::CMSG_DATA(c).cast::<libc::ucred>().read_unaligned();
                anc.creds = Some((u.pid, u.uid, u.gid));
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    if mh.msg_flags & libc::MSG_CTRUNC != 0 {
        // (The fds that fit are closed with `anc`.)
        return Err(io::Error::other(
            "the control data of a message did not fit",
        ));
    }
    Ok(Some((n, anc)))
}
