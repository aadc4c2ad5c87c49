//! Workload: TCP connections in the states a closing connection passes
//! through, all on 127.0.0.1 inside this process, set up and then checked
//! once REPORT.go exists (after a dump and restore):
//! - `wait`: its peer shut its side down after sending "tail": it is in
//!   CLOSE_WAIT with those bytes unread; it reads them, then EOF, and can
//!   still send (its peer, in FIN_WAIT2, reads that);
//! - `full`: it sent 4 MiB its peer has not read, then shut down: in
//!   FIN_WAIT1 with most of it never sent; the peer reads every byte, then
//!   EOF;
//! - `deaf`: established, shut down for reading: reads give EOF at once.
//!
//! Reports "pid counter STATUS" (STATUS: READY while waiting, then OK or
//! the first difference).
//!
//! Usage: wl_tcp_states REPORT

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

mod wl_common;
use wl_common::report;

const FULL: usize = 4 << 20;

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

fn state(s: &TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt into a local buffer.
    unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    info[0]
}

fn check(
    wait: &mut TcpStream,
    waiter_peer: &mut TcpStream,
    full_peer: &mut TcpStream,
    deaf: &mut TcpStream,
) -> Result<(), String> {
    // CLOSE_WAIT: the unread bytes, then EOF; then it still sends.
    if state(wait) != 8 {
        return Err(format!("wait-in-state-{}", state(wait)));
    }
    if state(waiter_peer) != 5 {
        return Err(format!("wait-peer-in-state-{}", state(waiter_peer)));
    }
    let mut got = Vec::new();
    wait.read_to_end(&mut got)
        .map_err(|e| format!("wait-read-{e}"))?;
    if got != b"tail" {
        return Err(format!("wait-read-{:?}", String::from_utf8_lossy(&got)));
    }
    wait.write_all(b"back")
        .map_err(|e| format!("wait-write-{e}"))?;
    let mut back = [0u8; 4];
    waiter_peer
        .read_exact(&mut back)
        .map_err(|e| format!("wait-peer-read-{e}"))?;
    if &back != b"back" {
        return Err("wait-peer-read-differs".into());
    }
    // FIN_WAIT1 with data never sent: every byte, then EOF.
    let mut n = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let k = full_peer
            .read(&mut buf)
            .map_err(|e| format!("full-read-{e}"))?;
        if k == 0 {
            break;
        }
        if buf[..k]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != ((n + i) % 253) as u8)
        {
            return Err(format!("full-byte-near-{n}-differs"));
        }
        n += k;
    }
    if n != FULL {
        return Err(format!("full-got-{n}-bytes"));
    }
    // Shut down for reading: EOF at once.
    let mut one = [0u8; 1];
    match deaf.read(&mut one) {
        Ok(0) => Ok(()),
        r => Err(format!("deaf-read-{r:?}")),
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args()
        .nth(1)
        .expect("usage: wl_tcp_states REPORT");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut waiter_peer, mut wait) = pair(&l);
    waiter_peer.write_all(b"tail").unwrap();
    waiter_peer.shutdown(Shutdown::Write).unwrap();
    let (mut full, mut full_peer) = pair(&l);
    {
        use std::os::fd::AsRawFd;
        // A small receive buffer: most of the data stays unsent.
        let v: libc::c_int = 4096;
        // SAFETY: setsockopt with a local int.
        unsafe {
            libc::setsockopt(
                full_peer.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const v).cast(),
                4,
            )
        };
    }
    let data: Vec<u8> = (0..FULL).map(|i| (i % 253) as u8).collect();
    full.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < FULL {
        match full.write(&data[sent..]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Blocking for the rest: the peer reads nothing yet.
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The rest goes into the send buffer as it grows.
    full.set_nonblocking(false).unwrap();
    {
        use std::os::fd::AsRawFd;
        let v: libc::c_int = (FULL * 2) as libc::c_int;
        // SAFETY: setsockopt with a local int.
        unsafe {
            libc::setsockopt(
                full.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&raw const v).cast(),
                4,
            )
        };
    }
    full.write_all(&data[sent..]).unwrap();
    full.shutdown(Shutdown::Write).unwrap();
    let (_deaf_peer, mut deaf) = pair(&l);
    deaf.shutdown(Shutdown::Read).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = std::process::id();
    let go = format!("{path}.go");
    let mut counter = 0u64;
    loop {
        counter += 1;
        if std::path::Path::new(&go).exists() {
            let status = match check(&mut wait, &mut waiter_peer, &mut full_peer, &mut deaf) {
                Ok(()) => "OK".to_string(),
                Err(e) => e.replace(' ', "-"),
            };
            loop {
                counter += 1;
                report(&path, &format!("{pid} {counter} {status}\n"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        report(&path, &format!("{pid} {counter} READY {}\n", state(&full)));
        std::thread::sleep(Duration::from_millis(100));
    }
}
