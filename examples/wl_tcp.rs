//! Workload: a TCP server with clients. It listens on 127.0.0.1 (an
//! ephemeral port, reported), forks a client of its own and accepts it;
//! then both ends stream a pattern to each other faster than they read it,
//! so bytes are always in flight both ways, and each checks every byte it
//! reads. Clients from outside send lines "ping N" and get "pong N" back.
//!
//! Reports "pid counter STATUS port got_by_server got_by_client pongs".
//! STATUS is OK, "inner-closed" once the pair's connection failed with
//! ECONNABORTED (restored with --tcp-close), or the first problem seen.
//!
//! Usage: wl_tcp REPORT [v6|mapped] (v6: on ::1; mapped: listening on ::
//! for IPv4 too, its own client coming over IPv4, so that the server's end
//! is an IPv6 socket with IPv4-mapped addresses)

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

/// Byte `i` of either stream.
fn pattern(i: u64, salt: u64) -> u8 {
    ((i.wrapping_mul(31) + salt) % 251) as u8
}

/// One end of the pair: writes up to `burst` bytes and reads up to `sip`
/// bytes per round, checking them.
struct End {
    s: TcpStream,
    sent: u64,
    got: u64,
    salt_out: u64,
    salt_in: u64,
}

impl End {
    fn round(&mut self, burst: usize, sip: usize) -> Result<(), String> {
        let mut out = vec![0u8; burst];
        for (k, b) in out.iter_mut().enumerate() {
            *b = pattern(self.sent + k as u64, self.salt_out);
        }
        match self.s.write(&out) {
            Ok(n) => self.sent += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(closed_or(e, "write")),
        }
        let mut buf = vec![0u8; sip];
        match self.s.read(&mut buf) {
            Ok(0) => return Err("eof".into()),
            Ok(n) => {
                for (k, &b) in buf[..n].iter().enumerate() {
                    if b != pattern(self.got + k as u64, self.salt_in) {
                        return Err(format!("byte-{}-differs", self.got + k as u64));
                    }
                }
                self.got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(closed_or(e, "read")),
        }
        Ok(())
    }
}

fn closed_or(e: std::io::Error, what: &str) -> String {
    if e.raw_os_error() == Some(libc::ECONNABORTED) {
        "inner-closed".into()
    } else {
        format!("{what}-{e}").replace(' ', "-")
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_tcp REPORT");
    let (bind, client) = match std::env::args().nth(2).as_deref() {
        Some("v6") => ("[::1]:0", "::1"),
        Some("mapped") => ("[::]:0", "127.0.0.1"),
        _ => ("127.0.0.1:0", "127.0.0.1"),
    };
    let listener = TcpListener::bind(bind).expect("bind");
    // Connections to it send 1388-byte segments, as on an Ethernet path,
    // both ways: loopback's 65483 is more than a restore can set again.
    let mss: libc::c_int = 1400;
    // SAFETY: a valid socket and an int option.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "TCP_MAXSEG");
    let port = listener.local_addr().unwrap().port();
    // The child's progress, seen by the parent: [0] bytes it got, [1] a
    // problem (1: inner-closed, 2: other).
    // SAFETY: a fresh shared anonymous page.
    let board = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u64;
    // SAFETY: a single-threaded process.
    let child = unsafe { libc::fork() };
    if child == 0 {
        drop(listener);
        let s = TcpStream::connect((client, port)).expect("connect");
        s.set_nonblocking(true).unwrap();
        let mut end = End {
            s,
            sent: 0,
            got: 0,
            salt_out: 1,
            salt_in: 2,
        };
        loop {
            if let Err(e) = end.round(64 << 10, 16 << 10) {
                // SAFETY: the shared board.
                unsafe {
                    board
                        .add(1)
                        .write_volatile(if e == "inner-closed" { 1 } else { 2 })
                };
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // SAFETY: the shared board.
            unsafe { board.write_volatile(end.got) };
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (inner, _) = listener.accept().expect("accept the child");
    inner.set_nonblocking(true).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut end = End {
        s: inner,
        sent: 0,
        got: 0,
        salt_out: 2,
        salt_in: 1,
    };
    let mut outside: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    static PONGS: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let mut status = String::from("OK");
    let mut counter = 0u64;
    loop {
        counter += 1;
        for _ in 0..5 {
            if status == "OK"
                && let Err(e) = end.round(64 << 10, 16 << 10)
            {
                status = e;
            }
            while let Ok((s, _)) = listener.accept() {
                s.set_nonblocking(true).unwrap();
                outside.push((s, Vec::new()));
            }
            outside.retain_mut(|(s, line)| {
                let mut buf = [0u8; 256];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(n) => line.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => return false,
                    }
                }
                while let Some(at) = line.iter().position(|&b| b == b'\n') {
                    let l: Vec<u8> = line.drain(..=at).collect();
                    let text = String::from_utf8_lossy(&l);
                    let reply = text.replacen("ping", "pong", 1);
                    if s.write_all(reply.as_bytes()).is_err() {
                        return false;
                    }
                    PONGS.fetch_add(1, Ordering::Relaxed);
                }
                true
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: the shared board.
        let (child_got, child_bad) =
            unsafe { (board.read_volatile(), board.add(1).read_volatile()) };
        if status == "OK" && child_bad != 0 {
            status = if child_bad == 1 {
                "inner-closed".into()
            } else {
                "child-failed".into()
            };
        }
        report(
            &path,
            &format!(
                "{pid} {counter} {status} {port} {} {child_got} {}\n",
                end.got,
                PONGS.load(Ordering::Relaxed)
            ),
        );
    }
}
