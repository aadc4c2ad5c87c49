//! Established TCP connections: a server with a client of its own inside
//! the tree (bytes in flight both ways, every byte checked) and a client
//! outside it (this test) that keeps its connection across the dump and
//! the restore, sending during the gap too: no reset, no byte lost or
//! doubled. Then restored again (the pair), and with --tcp-close. A dump
//! that fails, or leaves the tree running, leaves the connections working.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);

fn restore_with(img: &Path, extra: &[&str]) -> i32 {
    let mut args = vec!["restore", "-i", img.to_str().unwrap(), "--detach", "--json"];
    args.extend_from_slice(extra);
    let o = run(&args, &[]);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["pid"].as_i64().unwrap() as i32
}

/// An outside client of wl_tcp: sends "ping N", expects "pong N" back on
/// the same connection.
struct Client {
    out: TcpStream,
    lines: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u64) -> Self {
        let out = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
        out.set_read_timeout(Some(T)).unwrap();
        let lines = BufReader::new(out.try_clone().unwrap());
        Client { out, lines }
    }

    fn send(&mut self, n: u32) {
        self.out
            .write_all(format!("ping {n}\n").as_bytes())
            .unwrap();
    }

    fn expect(&mut self, n: u32) {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        assert_eq!(line, format!("pong {n}\n"));
    }

    fn ping(&mut self, n: u32) {
        self.send(n);
        self.expect(n);
    }
}

/// Bytes each end of the inner pair got, from a report.
fn got(r: &str) -> (u64, u64) {
    (field(r, 0, 4), field(r, 0, 5))
}

/// Waits until the pair moved on by a good stretch from `since`, with
/// `status`.
fn moves_on(w: &Workload, since: (u64, u64), want: &str) -> String {
    let r = w.wait_report(T, |r| {
        let (a, b) = got(r);
        status(r) != "OK" || (a > since.0 + (1 << 20) && b > since.1 + (1 << 20))
    });
    assert_eq!(status(&r), want, "{r}");
    r
}

/// The MSS each established connection to or from `port` sends with, by
/// (local, peer) address, as `ss -ti` shows it.
fn mss_by_connection(port: u64) -> std::collections::BTreeMap<(String, String), String> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let o = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &filter])
        .output()
        .expect("ss (Debian package iproute2)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut out = std::collections::BTreeMap::new();
    let mut conn: Option<(String, String)> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && words.len() >= 4 {
            conn = Some((words[2].to_string(), words[3].to_string()));
        } else if let Some(c) = conn.take() {
            let mss = words.iter().find_map(|w| w.strip_prefix("mss:"));
            out.insert(c, mss.unwrap_or("none").to_string());
        }
    }
    out
}

fn tables() -> String {
    let o = nft().args(["list", "tables"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_server_keeps_its_tcp_connections_inside_and_outside_the_tree() {
    let dir = TestDir::new("tcp");
    let mut w = Workload::spawn("wl_tcp", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3 && got(r).1 > 0);
    let mut client = Client::connect(field(&r, 0, 3));
    client.ping(1);
    let img = dir.path("img");

    let err = dump_refused(w.pid, &img, &[], &[]);
    assert!(
        err.contains("established TCP connection to 127.0.0.1:")
            && err.contains("--tcp-established")
            && err.contains("--tcp-close"),
        "{err}"
    );
    client.ping(2);

    let kids = children_of(w.pid);
    let port = field(&r, 0, 3);
    let mss_at_dump = mss_by_connection(port);
    assert_eq!(mss_at_dump.len(), 4, "{mss_at_dump:?}");
    let o = dump(w.pid, &img, &["--tcp-established", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lock = v["net_lock"].as_str().expect("a network lock").to_string();
    let _lock = NetLockGuard(lock.clone());
    w.reap_dumped();
    for &pid in &kids {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
    let at_dump = got(&w.read_report().unwrap());
    assert!(tables().contains(&lock), "the lock is held until restore");
    // Sent while no socket exists: dropped by the lock, sent again by TCP
    // once the restored server has it.
    client.send(3);
    std::thread::sleep(Duration::from_millis(300));

    // A restore that fails late (its sockets built) tells the peers
    // nothing and keeps the lock: the next try gets the connections.
    let failed = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach"],
        &[("CRSTREAM_TEST_FAIL_AT", "restore")],
    );
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        tables().contains(&lock),
        "the lock is kept after a failed restore"
    );
    assert!(
        text(&failed).contains(&format!("nft delete table inet {lock}")),
        "a failed restore says the lock is kept, and how to give it up: {}",
        text(&failed)
    );
    for &pid in kids.iter().chain([&w.pid]) {
        assert!(wait_gone(pid, T), "the failed restore left pid {pid}");
    }

    let pid = restore_with(&img, &[]);
    w.restored(pid);
    // Each connection sends segments of the size it did (not the 524 bytes
    // a connect in repair mode sets).
    assert_eq!(mss_by_connection(port), mss_at_dump);
    client.expect(3);
    client.ping(4);
    moves_on(&w, at_dump, "OK");
    assert_running_untraced(pid);
    assert!(
        !tables().contains(&lock),
        "the lock is gone once the tree runs"
    );

    // The pair again, from the same image (its outside client was reset
    // when the first copy was killed).
    w.kill();
    let pid = restore_with(&img, &["--tcp-established"]);
    w.restored(pid);
    moves_on(&w, at_dump, "OK");

    // Closed: the pair's next calls fail with ECONNABORTED.
    w.kill();
    let pid = restore_with(&img, &["--tcp-close"]);
    w.restored(pid);
    let at = field(&w.read_report().unwrap(), 0, 1);
    let r = w.wait_report(T, |r| field(r, 0, 1) > at + 2);
    assert_eq!(status(&r), "inner-closed", "{r}");
    w.kill();
}

#[test]
fn a_failed_or_live_dump_leaves_tcp_connections_working() {
    let dir = TestDir::new("tcp-live");
    let mut w = Workload::spawn("wl_tcp", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3 && got(r).1 > 0);
    let mut client = Client::connect(field(&r, 0, 3));
    client.ping(1);
    let img = dir.path("img");

    fail_dump_once_connections_are_read(w.pid, &img);
    client.ping(2);
    let r = moves_on(&w, got(&w.read_report().unwrap()), "OK");
    assert_running_untraced(w.pid);

    live_dump_leaving_no_lock(w.pid, &img);
    client.ping(3);
    moves_on(&w, got(&r), "OK");
    assert_running_untraced(w.pid);
    w.kill();
}

/// SIGKILL of the dump's worker while the connections are locked and in
/// repair mode: the supervisor takes them out of repair mode and lifts the
/// lock, and the server and its clients go on.
#[test]
fn a_dump_worker_killed_while_connections_are_locked_harms_nothing() {
    let dir = TestDir::new("tcp-kill");
    let mut w = Workload::spawn("wl_tcp", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3 && got(r).1 > 0);
    let mut client = Client::connect(field(&r, 0, 3));
    client.ping(1);
    kill_dump_worker_once_locked(&dir, w.pid);
    client.ping(2);
    moves_on(&w, got(&w.read_report().unwrap()), "OK");
    assert_running_untraced(w.pid);
    w.kill();
}

/// A dump of `pid` with --tcp-established and --leave-running, which
/// names no network lock: none is left.
fn live_dump_leaving_no_lock(pid: i32, img: &Path) {
    let o = dump(
        pid,
        img,
        &["--tcp-established", "--leave-running", "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["net_lock"].is_null(), "{v}");
}

/// A dump of `pid` with --tcp-established that fails after the
/// connections were locked and read in repair mode (writing the memory).
fn fail_dump_once_connections_are_read(pid: i32, img: &Path) {
    let err = dump_refused(
        pid,
        img,
        &["--tcp-established"],
        &[("CRSTREAM_TEST_FAIL_AT", "memory")],
    );
    assert!(err.contains("memory"), "{err}");
}

/// Starts a live dump of `pid` with --tcp-established, kills its worker
/// with SIGKILL once the connections are locked and read, and checks that
/// the supervisor said so, lifted the worker's network lock and had the
/// process reap its memory snapshot.
fn kill_dump_worker_once_locked(dir: &TestDir, pid: i32) {
    let paused = dir.path("paused");
    let img = dir.path("img-killed");
    let children = children_of(pid);
    let pid_arg = pid.to_string();
    // Live: each process has its memory snapshot by then, handed to the
    // supervisor with the connections taken from accept queues.
    let dump = crstream()
        .args([
            "dump",
            "-t",
            &pid_arg,
            "--tcp-established",
            "--leave-running",
            "-o",
            img.to_str().unwrap(),
        ])
        .env("CRSTREAM_TEST_PAUSE_AT", "tcp-locked:1")
        .env("CRSTREAM_TEST_PAUSE_FILE", &paused)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !paused.exists() {
        assert!(
            started.elapsed() < T,
            "the dump never locked the connections"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let worker = children_of(dump.id() as i32)[0];
    assert!(tables().contains(&format!("crstream_lock_{worker}_")));
    // SAFETY: killing the worker of the dump this test started.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let out = dump.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("killed by SIGKILL"),
        "{err}"
    );
    assert!(!err.contains("lost"), "{err}");
    assert!(
        !tables().contains(&format!("crstream_lock_{worker}_")),
        "{err}"
    );
    assert_eq!(children_of(pid), children, "the snapshot is left: {err}");
}

/// Connections on their way to closing come back in their states: one in
/// CLOSE_WAIT with bytes unread before the peer's FIN (its peer in
/// FIN_WAIT2), one in FIN_WAIT1 with megabytes never sent before its FIN,
/// one shut down for reading. The workload checks each after restore;
/// restored twice from one image.
#[test]
fn closing_tcp_connections_come_back_in_their_states() {
    let dir = TestDir::new("tcp-states");
    let mut w = Workload::spawn("wl_tcp_states", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| status(r) == "READY" && field(r, 0, 3) == 4);
    assert_eq!(status(&r), "READY", "{r}");
    let img = dir.path("img");
    let o = dump(w.pid, &img, &["--tcp-established", "--json"]);
    let _lock = NetLockGuard::of(&o);
    w.reap_dumped();
    std::fs::write(dir.path("report.go"), b"").unwrap();
    for round in ["first restore", "second restore"] {
        let pid = restore_with(&img, &[]);
        w.restored(pid);
        let r = w.wait_report(T, |r| status(r) != "READY" && !r.is_empty());
        assert_eq!(status(&r), "OK", "{round}: {r}");
        w.kill();
    }
}

/// IPv6 connections, and IPv4 ones on an IPv6 socket (v4-mapped
/// addresses): the pair inside the tree and a client outside it go on.
#[test]
fn ipv6_and_v4_mapped_connections_come_back() {
    for (mode, outside) in [("v6", "::1"), ("mapped", "127.0.0.1")] {
        let dir = TestDir::new(&format!("tcp-{mode}"));
        let mut w = Workload::spawn("wl_tcp", dir.path("report"), &[mode]);
        let r = w.wait_report(T, |r| field(r, 0, 1) >= 3 && got(r).1 > 0);
        let port = field(&r, 0, 3) as u16;
        let out = TcpStream::connect((outside, port)).unwrap();
        out.set_read_timeout(Some(T)).unwrap();
        let mut client = Client {
            lines: BufReader::new(out.try_clone().unwrap()),
            out,
        };
        client.ping(1);
        let kids = children_of(w.pid);
        let o = dump(w.pid, &dir.path("img"), &["--tcp-established", "--json"]);
        let _lock = NetLockGuard::of(&o);
        w.reap_dumped();
        for pid in kids {
            assert!(wait_gone(pid, T), "{mode}: pid {pid} survived the dump");
        }
        let at_dump = got(&w.read_report().unwrap());
        client.send(2);
        let pid = restore_with(&dir.path("img"), &[]);
        w.restored(pid);
        client.expect(2);
        client.ping(3);
        moves_on(&w, at_dump, "OK");
        w.kill();
    }
}

/// Connections waiting in a listener's accept queue (accepted by no
/// process of the tree yet): refused by name without --tcp-established, or
/// dropped with --skip-in-flight, their clients seeing them reset; the rest
/// of the tree goes on.
#[test]
fn connections_waiting_to_be_accepted_are_refused_or_dropped() {
    let dir = TestDir::new("tcp-in-flight");
    let mut w = Workload::spawn("wl_conns", dir.path("report"), &["1"]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    // wl_conns accepts its own client only: these wait in the queue.
    let port = field(&r, 0, 4) as u16;
    let waiting: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let img = dir.path("img");
    let err = dump_refused(w.pid, &img, &[], &[]);
    assert!(
        err.contains("accept queue")
            && err.contains("--skip-in-flight")
            && err.contains("--tcp-established"),
        "{err}"
    );
    let kids = children_of(w.pid);
    let o = dump(
        w.pid,
        &img,
        &["--tcp-established", "--skip-in-flight", "--json"],
    );
    let _lock = NetLockGuard::of(&o);
    w.reap_dumped();
    for &pid in &kids {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
    for mut c in waiting {
        c.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut c, &mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "a dropped connection: {r:?}");
    }
    let at = field(&w.read_report().unwrap(), 0, 3);
    let pid = restore_with(&img, &[]);
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 3) > at + 5 || status(r) != "OK");
    assert_eq!(status(&r), "OK", "{r}");
    w.kill();
}

/// A Python server that accepts nobody until told: it listens on `::`
/// (IPv4 clients too), reports "pid port READY", waits for the file
/// REPORT.go, then accepts `n` clients in turn and answers each line of
/// each with "echo:LINE", and its end of file with "eof".
const LAZY_SERVER: &str = r#"
import os, socket, sys, time
report, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
s.listen(8)
with open(report + ".tmp", "w") as f:
    f.write("%d %d READY\n" % (os.getpid(), s.getsockname()[1]))
os.rename(report + ".tmp", report)
while not os.path.exists(report + ".go"):
    time.sleep(0.02)
for _ in range(n):
    c, _ = s.accept()
    f = c.makefile("rb")
    for line in f:
        c.sendall(b"echo:" + line)
    c.sendall(b"eof\n")
    c.close()
time.sleep(600)
"#;

/// Clients of LAZY_SERVER from outside the tree, connected before the
/// dump, one per (address, what it sends first, whether it then shuts down
/// writing).
fn lazy_clients(port: u16, plan: &[(&str, &str, bool)]) -> Vec<Client> {
    plan.iter()
        .map(|&(addr, first, shut)| {
            let out = TcpStream::connect((addr, port)).unwrap();
            out.set_read_timeout(Some(T)).unwrap();
            let mut c = Client {
                lines: BufReader::new(out.try_clone().unwrap()),
                out,
            };
            c.out.write_all(first.as_bytes()).unwrap();
            if shut {
                c.out.shutdown(std::net::Shutdown::Write).unwrap();
            }
            c
        })
        .collect()
}

impl Client {
    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        assert_eq!(line, want);
    }
}

/// The first two clients of `lazy_clients` ("one", then "two" and shut
/// down) get their answers, and the first talks on.
fn served_one_and_two(clients: &mut [Client]) {
    clients[0].expect_line("echo:one\n");
    clients[0].out.write_all(b"again\n").unwrap();
    clients[0].expect_line("echo:again\n");
    clients[0].out.shutdown(std::net::Shutdown::Write).unwrap();
    clients[0].expect_line("eof\n");
    clients[1].expect_line("echo:two\n");
    clients[1].expect_line("eof\n");
}

fn start_lazy_server(dir: &TestDir, n: usize) -> (Workload, u16) {
    let script = dir.path("server.py");
    std::fs::write(&script, LAZY_SERVER).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script).arg(dir.path("report")).arg(n.to_string());
    let w = spawn_isolated(cmd, dir.path("report"));
    let r = w.wait_report(T, |r| status(r) == "READY" || r.contains("READY"));
    let port: u16 = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (w, port)
}

/// Connections waiting in a listener's accept queue (a Python server that
/// has not called accept yet; its clients outside the tree: one over IPv4
/// with a line sent, one over IPv4 that also shut down writing, one over
/// IPv6 that sends its line only while the server is gone). With
/// --tcp-established they are saved and come back in the queue: once the
/// restored server accepts, each gets its answers on the same connection,
/// and the one that shut down gets its end of file. A dump whose worker
/// is killed outright (its supervisor puts them back), a dump that fails
/// and a live dump leave them in the original's queue, which then serves
/// them.
#[test]
fn connections_waiting_to_be_accepted_come_back_in_the_accept_queue() {
    // Dumps that end with the tree running: the original keeps its queue.
    let dir = TestDir::new("tcp-queue-live");
    let (mut w, port) = start_lazy_server(&dir, 2);
    let mut clients = lazy_clients(
        port,
        &[("127.0.0.1", "one\n", false), ("::1", "two\n", true)],
    );
    std::thread::sleep(Duration::from_millis(100));
    let img = dir.path("img");
    kill_dump_worker_once_locked(&dir, w.pid);
    fail_dump_once_connections_are_read(w.pid, &img);
    live_dump_leaving_no_lock(w.pid, &img);
    assert_running_untraced(w.pid);
    std::fs::write(dir.path("report.go"), b"").unwrap();
    served_one_and_two(&mut clients);
    w.kill();

    // Dumped and restored.
    let dir = TestDir::new("tcp-queue");
    let (mut w, port) = start_lazy_server(&dir, 3);
    let mut clients = lazy_clients(
        port,
        &[
            ("127.0.0.1", "one\n", false),
            ("127.0.0.1", "two\n", true),
            ("::1", "", false),
        ],
    );
    std::thread::sleep(Duration::from_millis(100));
    let err = dump_refused(w.pid, &img, &[], &[]);
    assert!(
        err.contains("accept queue") && err.contains("--tcp-established"),
        "{err}"
    );
    let img = dir.path("img");
    let o = dump(w.pid, &img, &["--tcp-established", "--json"]);
    let _lock = NetLockGuard::of(&o);
    w.reap_dumped();
    // Sent while no socket exists: held back by the lock, sent again by
    // TCP once the connection is back.
    clients[2].out.write_all(b"three\n").unwrap();
    let pid = restore_with(&img, &[]);
    w.restored(pid);
    std::fs::write(dir.path("report.go"), b"").unwrap();
    served_one_and_two(&mut clients);
    clients[2].expect_line("echo:three\n");
    assert_running_untraced(pid);
    w.kill();
}

/// A connection waiting in the accept queue whose client sent more than a
/// new connection's first window takes (so that it could not go back
/// whole) is refused by name, before any connection is taken; the server
/// then serves it.
#[test]
fn a_waiting_connection_holding_too_much_is_refused() {
    let dir = TestDir::new("tcp-queue-big");
    let (mut w, port) = start_lazy_server(&dir, 1);
    let line = format!("{}\n", "x".repeat(100 << 10));
    let mut clients = lazy_clients(port, &[("127.0.0.1", &line, false)]);
    std::thread::sleep(Duration::from_millis(100));
    let err = dump_refused(w.pid, &dir.path("img"), &["--tcp-established"], &[]);
    assert!(err.contains("more than crstream puts back"), "{err}");
    std::fs::write(dir.path("report.go"), b"").unwrap();
    clients[0].expect_line(&format!("echo:{line}"));
    assert_running_untraced(w.pid);
    w.kill();
}

/// Sockets a process made after dropping root (to nobody) come back owned
/// by nobody: another of nobody's processes can still join their
/// SO_REUSEPORT groups (the kernel lets in only sockets of the same
/// owner), as a server adding workers does.
#[test]
fn sockets_of_a_process_that_dropped_root_keep_their_owner() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("socket-owner");
    // Its report is written as nobody.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let join = "import os, socket, sys\n\
         os.setgid(65534); os.setuid(65534)\n\
         for ty in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n\
         \x20   s = socket.socket(socket.AF_INET, ty); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         \x20   try: s.bind(('127.0.0.1', int(sys.argv[1]))); print('joined')\n\
         \x20   except OSError as e: print('refused', e)\n";
    let joins = |port: u16| {
        let o = std::process::Command::new("python3")
            .args(["-c", join, &port.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).matches("joined").count()
    };
    let server = "import os, socket, sys, time\n\
         os.setgid(65534); os.setuid(65534)\n\
         t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         t.bind(('127.0.0.1', 0)); t.listen(); port = t.getsockname()[1]\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         u.bind(('127.0.0.1', port))\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1; open(sys.argv[1] + '.tmp', 'w').write('%d %d %d\\n' % (os.getpid(), n, port)); os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(0.05)\n";
    let report = dir.path("report");
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", server]).arg(&report);
    let mut w = spawn_isolated(cmd, report);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let port = field(&r, 0, 2) as u16;
    assert_eq!(joins(port), 2, "nobody joins nobody's groups");
    dump_and_restore(&mut w, &dir.path("img"));
    let n = field(&w.read_report().unwrap(), 0, 1);
    w.wait_report(T, |r| field(r, 0, 1) > n + 2);
    assert_eq!(joins(port), 2, "nobody still joins them after restore");
    w.kill();
}
