//! Workload: a server holding N established TCP connections with a child
//! of its own (both in the tree), for benchmarks. Each round the child
//! sends one byte on one of its connections, in turn, and the server reads
//! whatever arrived on all of them; it accepts no other client. Reports
//! "pid counter STATUS bytes port accepted".
//!
//! With Q, the child also opens Q connections that each send one byte
//! "q" and wait in the server's accept queue, unaccepted, until the file
//! REPORT.accept exists: the server then accepts them all and checks each
//! byte ("accepted" counts them).
//!
//! Usage: wl_conns REPORT N [Q]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

mod wl_common;
use wl_common::report;

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let (path, n): (String, usize) = (args[1].clone(), args[2].parse().expect("N"));
    let queued: usize = args.get(3).map_or(0, |q| q.parse().expect("Q"));
    // Two fds per connection and then some.
    // SAFETY: plain rlimit calls on this process.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(2 * n as u64 + 64).max(l.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    // Room in the accept queue for every waiting connection (std listens
    // with a backlog of 128).
    // SAFETY: listen on our own listening socket only changes its backlog.
    unsafe {
        libc::listen(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            (queued as i32).max(128),
        )
    };
    // SAFETY: a single-threaded process.
    let child = unsafe { libc::fork() };
    if child == 0 {
        drop(listener);
        let mut conns: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let _waiting: Vec<TcpStream> = (0..queued)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.write_all(b"q").expect("write");
                s
            })
            .collect();
        let mut i = 0;
        loop {
            if !conns.is_empty() {
                let k = i % conns.len();
                let _ = conns[k].write_all(b"x");
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let (s, _) = listener.accept().expect("accept");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut bytes = 0u64;
    let mut status = String::from("OK");
    let mut accepted = 0usize;
    let go = format!("{path}.accept");
    loop {
        counter += 1;
        if accepted < queued && std::path::Path::new(&go).exists() {
            while accepted < queued {
                let (mut s, _) = listener.accept().expect("accept");
                let mut b = [0u8; 1];
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                if s.read_exact(&mut b).is_err() || &b != b"q" {
                    status = "a-queued-connection-lost-its-byte".into();
                }
                accepted += 1;
            }
        }
        let mut buf = [0u8; 64];
        for c in conns.iter_mut() {
            match c.read(&mut buf) {
                Ok(0) => status = "a-connection-closed".into(),
                Ok(k) => bytes += k as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => status = format!("read-{e}").replace(' ', "-"),
            }
        }
        report(
            &path,
            &format!("{pid} {counter} {status} {bytes} {port} {accepted}\n"),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
