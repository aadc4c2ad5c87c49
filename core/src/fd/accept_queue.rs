//! Connections waiting in a TCP listener's accept queue: established (or
//! closed by their peer already), with data perhaps, but no fd yet.
//!
//! Dump takes each out (an accept injected into the process, the new fd
//! duplicated into crstream and closed in the process) to read it in
//! repair mode like any connection (`tcp.rs`). Should the tree run on
//! (`--leave-running`, or a failed dump), each goes back into its queue as
//! restore puts it there; this is made sure to work before any is taken,
//! and a connection holding more than a new one's first receive window
//! takes is refused first ([`MOST_QUEUED`]).
//!
//! Restore puts each back in its listener's queue, so that the next
//! accept() returns it. A socket cannot be handed to a listener; but since
//! kernel 6.9 a tc program may answer a handshake's final ACK with a
//! request of its own making (`bpf_sk_assign_tcp_reqsk`, meant for custom
//! SYN cookies), from which the kernel creates the connection as it would
//! from a SYN cookie: its sequence numbers are the ACK's, its options
//! (MSS, window scaling, SACK, timestamps and the timestamp clock) are the
//! request's. crstream attaches such a program (some 60 eBPF instructions,
//! assembled here) to the loopback device's ingress for as long as it
//! needs it (a tcx link: it goes with crstream), then sends the listener,
//! through a raw socket, the ACK the peer would have sent: it carries the
//! request's attributes in an experimental TCP option (kind 254, RFC 6994)
//! and the network lock's signature. What the connection had received
//! follows as segments from the peer, then its FIN if it had come.
//! sock_diag then confirms the connection is there with every byte.

use super::packets::{TCP_ACK, TCP_FIN, TCP_PSH, send_tcp, send_tcp_segment};
use super::sock_diag;
use crate::netlock::{INJECT_ID, INJECT_TTL};
use crate::sys::bpf::{self, Asm, R0, R1, R2, R3, R4, R5, R6, R7, R8, R10, Size};
use crstream_proto::TcpConnection;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

/// The experimental option's identifier (RFC 6994 ExID) and length: kind,
/// length, ExID, then struct bpf_tcp_req_attrs (20 bytes).
const EXID: u16 = INJECT_ID;

/// The most bytes a waiting connection may hold to be saved: a new
/// connection's first receive window takes 64 KiB, what a connection
/// held beyond that would not go back (its window opened as its data
/// came, which a new one's does not do the same).
pub(crate) const MOST_QUEUED: u32 = 64 << 10;
const OPTION_LEN: usize = 24;
const ATTRS_LEN: i32 = 20;

/// The programs attached while connections are put back (one per IP
/// version, as needed): detached when dropped.
#[derive(Default)]
pub(crate) struct AcceptQueues {
    /// (program, link) for IPv4 and for IPv6.
    attached: [Option<(OwnedFd, OwnedFd)>; 2],
    /// The kfunc's BTF id, read once (vmlinux BTF is megabytes).
    kfunc: Option<u32>,
}

impl AcceptQueues {
    /// Puts connection `c` (`local` <- `peer`, as dump read it) in the
    /// accept queue of the listener of `local` in our network namespace.
    pub(crate) fn put(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        c: &TcpConnection,
    ) -> io::Result<()> {
        let state = c.state as u8;
        if !matches!(state, TCP_ESTABLISHED | TCP_CLOSE_WAIT)
            || !c.send_queue.is_empty()
            || c.snd_una != c.send_seq
        {
            return Err(io::Error::other(format!(
                "a connection in state {state} that has sent data was never accepted"
            )));
        }
        if local.is_ipv4() != peer.is_ipv4() {
            return Err(io::Error::other("addresses of two IP versions"));
        }
        let syncookies = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")?;
        if syncookies.trim() == "0" {
            return Err(io::Error::other(
                "net.ipv4.tcp_syncookies is 0 here: the kernel makes no connection from an ACK",
            ));
        }
        self.attach(local.is_ipv4())?;
        let fin = (state == TCP_CLOSE_WAIT) as u32;
        let data = &c.recv_queue;
        let first = c.recv_seq.wrapping_sub(data.len() as u32 + fin);
        let window = (c.snd_wnd >> c.snd_wscale.min(14)).min(u16::MAX as u32) as u16;
        let seq_ack = |seq: u32| [seq, c.send_seq];
        // The handshake's last ACK, which the program answers with the
        // request (struct bpf_tcp_req_attrs): no timestamp of the peer's
        // yet (any is taken), ours resumes where dump read it.
        let mut option = vec![254, OPTION_LEN as u8];
        option.extend_from_slice(&EXID.to_be_bytes());
        option.extend_from_slice(&0u32.to_ne_bytes());
        option.extend_from_slice(&c.timestamp.to_ne_bytes());
        option.extend_from_slice(&(c.mss.min(u16::MAX as u32) as u16).to_ne_bytes());
        option.extend_from_slice(&[
            c.rcv_wscale as u8,
            c.snd_wscale as u8,
            0, // ECN
            c.window_scaling as u8,
            c.sack as u8,
            c.timestamps as u8,
            0, // microsecond timestamps
            0,
            0,
            0,
        ]);
        send_tcp_segment(peer, local, seq_ack(first), TCP_ACK, window, &option, &[])?;
        wait_for(local, peer, |_| true, "to be created")?;
        // What was received goes in as its window opens (a new connection's
        // first window is smaller than what the old one may have held):
        // what it does not take is sent again from where it stopped.
        // Pieces whose buffers (with headers and the kernel's skb_shared_info,
        // about 400 bytes) fill 16 KiB: a larger one would take twice its
        // size of the receive buffer, which would then fill at half.
        let chunk = (c.mss as usize).clamp(536, (16 << 10) - 512);
        let mut held = 0usize;
        let mut stalled = 0;
        while held < data.len() {
            for (i, piece) in data[held..].chunks(chunk).enumerate() {
                let seq = first.wrapping_add((held + i * chunk) as u32);
                send_tcp_segment(
                    peer,
                    local,
                    seq_ack(seq),
                    TCP_ACK | TCP_PSH,
                    window,
                    &[],
                    piece,
                )?;
            }
            let now = settled_rqueue(local, peer)? as usize;
            stalled = if now > held { 0 } else { stalled + 1 };
            if stalled > 20 {
                return Err(io::Error::other(format!(
                    "the connection {peer} -> {local} takes {now} of the {} bytes it had \
                     received",
                    data.len()
                )));
            }
            held = now;
        }
        if fin == 1 {
            let seq = first.wrapping_add(data.len() as u32);
            send_tcp(peer, local, seq, c.send_seq, TCP_FIN | TCP_ACK, window)?;
        }
        // sock_diag counts a FIN received as a byte not read yet.
        let want = data.len() as u32 + fin;
        wait_for(
            local,
            peer,
            |d| d.state == state && d.rqueue == want,
            "to hold what it had",
        )
    }

    fn attach(&mut self, ipv4: bool) -> io::Result<()> {
        if self.attached[!ipv4 as usize].is_some() {
            return Ok(());
        }
        let kfunc = match self.kfunc {
            Some(id) => id,
            None => {
                *self
                    .kfunc
                    .insert(
                        bpf::kernel_function_id("bpf_sk_assign_tcp_reqsk").map_err(|e| {
                            io::Error::new(e.kind(), format!("{e}: kernel 6.9 or later is needed"))
                        })?,
                    )
            }
        };
        let prog = bpf::load_classifier(&program(ipv4, kfunc), c"Dual MIT/GPL")?;
        let lo = rustix::net::netdevice::name_to_index(
            &rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::DGRAM,
                None,
            )?,
            "lo",
        )?;
        let link = bpf::attach_ingress(&prog, lo)?;
        self.attached[!ipv4 as usize] = Some((prog, link));
        Ok(())
    }
}

/// A connection dump took out of a listener's accept queue: crstream's
/// fd on it, its names (raw sockaddrs).
pub(crate) struct Taken {
    pub sock: OwnedFd,
    pub local: Vec<u8>,
    pub peer: Vec<u8>,
}

/// Takes up to `pending` connections waiting in the accept queue of
/// listener fd `fd` of the frozen process `inject` reaches (`listener`:
/// crstream's duplicate of it), oldest first: an accept4 injected for
/// each, its fd duplicated into crstream, then closed in the process. The
/// listener is non-blocking for the while (another process sharing it may
/// have taken one meanwhile: the call must not wait for the next).
pub(crate) fn take(
    pid: i32,
    fd: i32,
    listener: &OwnedFd,
    pending: u32,
    inject: &crate::kind::Injector,
    handoff: Option<&OwnedFd>,
) -> Result<Vec<Taken>, crate::error::DumpError> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(listener).map_err(io::Error::from);
    let file_err = |what: &str, e: io::Error| crate::error::DumpError::UnsupportedFile {
        pid,
        fd,
        what: format!("TCP listener: {what}: {e}"),
    };
    let flags = flags.map_err(|e| file_err("F_GETFL", e))?;
    fcntl_setfl(listener, flags | OFlags::NONBLOCK).map_err(|e| file_err("F_SETFL", e.into()))?;
    let mut taken = Vec::new();
    let result = (|| {
        for _ in 0..pending {
            let accepted = match inject.call(
                "accept4",
                libc::SYS_accept4,
                &[fd as u64, 0, 0, libc::SOCK_CLOEXEC as u64],
            ) {
                Ok(n) => n as i32,
                Err(crate::error::TaskError::Syscall {
                    errno: libc::EAGAIN,
                    ..
                }) => break,
                Err(e) => return Err(e.into()),
            };
            let sock = crate::sys::pidfd::take_fd(pid, accepted);
            if let (Ok(sock), Some(to)) = (&sock, handoff) {
                // Before the process lets go of it.
                let sent = crate::handoff::hand(to, crate::handoff::CONNECTION, sock.as_fd());
                if let Err(e) = sent {
                    tracing::warn!(pid, fd, "handing a taken connection to the supervisor: {e}");
                }
            }
            inject.call("close", libc::SYS_close, &[accepted as u64])?;
            let sock = sock.map_err(|e| file_err("pidfd_getfd of an accepted connection", e))?;
            let name = |peer| {
                crate::sys::socket::name(&sock, peer).map_err(|e| file_err("getsockname", e))
            };
            let (local, peer) = (name(false)?, name(true)?);
            taken.push(Taken { sock, local, peer });
        }
        Ok(())
    })();
    let put_back = fcntl_setfl(listener, flags).map_err(|e| file_err("F_SETFL", e.into()));
    match result.and(put_back) {
        Ok(()) => Ok(taken),
        Err(e) => {
            // What was taken goes back at once.
            let mut queues = AcceptQueues::default();
            for t in taken {
                if let Err(back) = queues.put_taken(t, None) {
                    tracing::error!(pid, fd, "a connection of the accept queue is lost: {back}");
                }
            }
            Err(e)
        }
    }
}

impl AcceptQueues {
    /// Puts a connection dump took back in its listener's queue: read in
    /// repair mode (unless `read` already holds it, read under the network
    /// lock, so unchanged since), ended silently, made again.
    pub(crate) fn put_taken(&mut self, t: Taken, read: Option<TcpConnection>) -> io::Result<()> {
        let conn = match read {
            Some(conn) => conn,
            None => super::tcp::read_in_repair(&t.sock)?,
        };
        super::tcp::disconnect_silently(t.sock.as_fd())?;
        drop(t.sock);
        self.put_raw(&t.local, &t.peer, &conn)
    }

    /// [`AcceptQueues::put`] with raw sockaddrs.
    pub(crate) fn put_raw(
        &mut self,
        local: &[u8],
        peer: &[u8],
        c: &TcpConnection,
    ) -> io::Result<()> {
        let addr = |raw: &[u8]| {
            crate::netlock::socket_addr(raw)
                .ok_or_else(|| io::Error::other("an address that is not IPv4 or IPv6"))
        };
        self.put(addr(local)?, addr(peer)?, c)
    }

    /// Makes sure connections of IPv4 (or IPv6) can be put back here.
    pub(crate) fn prepare(&mut self, ipv4: bool) -> io::Result<()> {
        self.attach(ipv4)
    }
}

/// The bytes the connection holds once they stop growing (the segments
/// sent are delivered by softirq, not always before the send returns).
fn settled_rqueue(local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
    let mut last = None;
    for _ in 0..50 {
        let now = sock_diag::tcp_connection(local, peer)?.map(|d| d.rqueue);
        if now.is_some() && now == last {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_micros(200));
    }
    last.ok_or_else(|| io::Error::other(format!("the connection {peer} -> {local} is gone")))
}

/// Polls sock_diag (for up to a second: the segments are delivered by
/// softirq, not always before the send returns) until the connection
/// exists and `ok` says it is as wanted.
fn wait_for(
    local: SocketAddr,
    peer: SocketAddr,
    ok: impl Fn(&sock_diag::TcpDiag) -> bool,
    what: &str,
) -> io::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(50);
    loop {
        let now = sock_diag::tcp_connection(local, peer)?;
        if now.as_ref().is_some_and(&ok) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(1) {
            return Err(io::Error::other(match now {
                None => format!("the connection {peer} -> {local} failed {what}"),
                Some(d) => format!(
                    "the connection {peer} -> {local} failed {what}: state {}, {} bytes queued",
                    d.state, d.rqueue
                ),
            }));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// The tc program: for a packet that carries crstream's signature (the
/// network lock's IP id or flow label and TTL, a bare ACK, the
/// experimental option first), looks up the listener of its destination
/// and assigns it a request made of the option's attributes; other packets
/// go on untouched (TCX_NEXT). A signed packet that gets no request is
/// dropped: the listener would answer it with a reset.
fn program(ipv4: bool, kfunc: u32) -> Vec<bpf::Insn> {
    const TCX_NEXT: i32 = -1;
    const TCX_PASS: i32 = 0;
    const TCX_DROP: i32 = 2;
    const ETH_HLEN: i32 = 14;
    // Loaded little-endian, a big-endian u16 reads swapped.
    let be16 = |v: u16| v.swap_bytes() as i32;
    let (ip_len, addr_len, proto) = if ipv4 {
        (20i16, 4i16, 0x0800u16)
    } else {
        (40, 16, 0x86dd)
    };
    // Stack: the headers (IP, TCP, the option) at -buf; the lookup's
    // struct bpf_sock_tuple (addresses, ports) below them.
    let loaded = ip_len as i32 + 20 + OPTION_LEN as i32;
    let buf = -((loaded + 7) & !7) as i16;
    let tuple = buf - ((2 * addr_len + 4 + 7) & !7);
    let tcp = buf + ip_len;
    let mut a = Asm::default();
    a.mov(R6, R1);
    // __sk_buff.protocol
    a.load(Size::W, R2, R6, 16).jne(R2, be16(proto), "next");
    a.mov(R1, R6)
        .mov_imm(R2, ETH_HLEN)
        .mov(R3, R10)
        .add_imm(R3, buf as i32)
        .mov_imm(R4, loaded)
        .call(bpf::SKB_LOAD_BYTES)
        .jne(R0, 0, "next");
    if ipv4 {
        a.load(Size::B, R2, R10, buf).jne(R2, 0x45, "next");
        a.load(Size::H, R2, R10, buf + 4)
            .jne(R2, be16(INJECT_ID), "next");
        a.load(Size::B, R2, R10, buf + 8)
            .jne(R2, INJECT_TTL as i32, "next");
        a.load(Size::B, R2, R10, buf + 9).jne(R2, 6, "next");
    } else {
        a.load(Size::B, R2, R10, buf).jne(R2, 0x60, "next");
        a.load(Size::H, R2, R10, buf + 2)
            .jne(R2, be16(INJECT_ID), "next");
        a.load(Size::B, R2, R10, buf + 6).jne(R2, 6, "next");
        a.load(Size::B, R2, R10, buf + 7)
            .jne(R2, INJECT_TTL as i32, "next");
    }
    a.load(Size::B, R2, R10, tcp + 13)
        .jne(R2, TCP_ACK as i32, "next");
    a.load(Size::B, R2, R10, tcp + 20).jne(R2, 254, "next");
    a.load(Size::B, R2, R10, tcp + 21)
        .jne(R2, OPTION_LEN as i32, "next");
    a.load(Size::H, R2, R10, tcp + 22)
        .jne(R2, be16(EXID), "next");
    // The tuple: source and destination addresses, then both ports.
    let addrs = buf + ip_len - 2 * addr_len;
    for w in 0..(2 * addr_len + 4) / 4 {
        let from = if w < 2 * addr_len / 4 {
            addrs + 4 * w
        } else {
            tcp + 4 * (w - 2 * addr_len / 4)
        };
        a.load(Size::W, R2, R10, from)
            .store(Size::W, R10, tuple + 4 * w, R2);
    }
    a.mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, tuple as i32)
        .mov_imm(R3, (2 * addr_len + 4) as i32)
        .mov_imm(R4, -1) // BPF_F_CURRENT_NETNS
        .mov_imm(R5, 0)
        .call(bpf::SK_LOOKUP_TCP)
        .jeq(R0, 0, "drop");
    a.mov(R7, R0)
        .mov(R1, R6)
        .mov(R2, R7)
        .mov(R3, R10)
        .add_imm(R3, (tcp + 24) as i32)
        .mov_imm(R4, ATTRS_LEN)
        .call_kfunc(kfunc)
        .mov(R8, R0)
        .mov(R1, R7)
        .call(bpf::SK_RELEASE)
        .jne(R8, 0, "drop");
    a.mov_imm(R0, TCX_PASS).exit();
    a.label("next").mov_imm(R0, TCX_NEXT).exit();
    a.label("drop").mov_imm(R0, TCX_DROP).exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::OwnedFd;

    /// A client that sent as much as a waiting connection may hold: every
    /// byte comes back.
    #[test]
    fn a_connection_holding_the_most_it_may_goes_back_whole() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let sent: Vec<u8> = (0..MOST_QUEUED).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let waiting = sock_diag::unaccepted(listener.local_addr().unwrap()).unwrap();
        assert_eq!(waiting, vec![MOST_QUEUED]);
        let (taken, peer) = listener.accept().unwrap();
        let local = taken.local_addr().unwrap();
        let taken = OwnedFd::from(taken);
        let conn = super::super::tcp::read_in_repair(&taken).unwrap();
        assert_eq!(conn.recv_queue, sent);
        super::super::tcp::disconnect_silently(taken.as_fd()).unwrap();
        drop(taken);
        if let Err(e) = AcceptQueues::default().put(local, peer, &conn) {
            panic!("putting back a connection with {MOST_QUEUED} bytes queued: {e}");
        }
        let (mut back, _) = listener.accept().unwrap();
        let mut got = vec![0u8; sent.len()];
        back.read_exact(&mut got).unwrap();
        assert!(got == sent, "the bytes differ");
    }

    /// A connection taken from a listener's queue, read in repair mode and
    /// closed silently, is put back: accept() returns it with the bytes its
    /// client had sent (and its FIN, if it had shut down writing), and
    /// both ends talk on. IPv4 and IPv6.
    #[test]
    fn a_connection_goes_back_into_the_accept_queue() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        for (addr, shut) in [
            ("127.0.0.1:0", false),
            ("[::1]:0", false),
            ("127.0.0.1:0", true),
        ] {
            let listener = TcpListener::bind(addr).unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            client.write_all(b"hello, server").unwrap();
            if shut {
                client.shutdown(std::net::Shutdown::Write).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
            let (taken, peer) = listener.accept().unwrap();
            let local = taken.local_addr().unwrap();
            let taken = OwnedFd::from(taken);
            let conn = super::super::tcp::read_in_repair(&taken).unwrap();
            assert_eq!(conn.recv_queue, b"hello, server");
            super::super::tcp::disconnect_silently(taken.as_fd()).unwrap();
            drop(taken);

            let mut queues = AcceptQueues::default();
            if let Err(e) = queues.put(local, peer, &conn) {
                panic!("{addr}: putting the connection back: {e}");
            }
            drop(queues);
            let (mut back, from) = listener.accept().unwrap();
            assert_eq!(from, peer);
            let mut got = [0u8; 13];
            back.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello, server");
            if shut {
                assert_eq!(back.read(&mut got).unwrap(), 0, "the client's FIN");
            }
            back.write_all(b"hello, client").unwrap();
            client.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello, client");
            if !shut {
                client.write_all(b"more").unwrap();
                let mut more = [0u8; 4];
                back.read_exact(&mut more).unwrap();
                assert_eq!(&more, b"more");
            }
        }
    }
}
