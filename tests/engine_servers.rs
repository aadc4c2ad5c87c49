//! Real servers with a client outside the tree: redis and memcached, each
//! dumped with --tcp-established while a client (this test) holds a
//! connection open, restored, and asked on that same connection for what
//! it stored before the dump; then restored again with --tcp-close (the
//! first copy had the connection) and asked on a new connection. And
//! OpenSSH's server with a session whose client reads on across the dump.
//! unbound, answering DNS from two threads and taking control commands.
//!
//! Skipped with a message when the program is not installed, unless
//! CRSTREAM_TEST_REQUIRE_PROGRAMS is set (as `.ci/test` does).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

fn connect(port: u16) -> TcpStream {
    let started = Instant::now();
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(T)).unwrap();
            return s;
        }
        assert!(started.elapsed() < T, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `request`, reads until the answer holds `until`; the answer.
fn ask(s: &mut TcpStream, request: &str, until: &str) -> String {
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = s.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "asking {request:?}: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        assert!(
            n > 0,
            "asking {request:?}: closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn restore_with(img: &Path, extra: &[&str], w: &mut Workload) {
    let mut args = vec!["restore", "-i", img.to_str().unwrap(), "--detach", "--json"];
    args.extend_from_slice(extra);
    let o = run(&args, &[]);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    w.restored(v["pid"].as_i64().unwrap() as i32);
}

/// A server, a client holding one connection across dump and restore, and
/// the protocol: `set(key, value)` and `get(key)` requests with what ends
/// their answers.
struct Server<'a> {
    program: &'a str,
    args: Vec<String>,
    set: &'a dyn Fn(&str, &str) -> (String, String),
    get: &'a dyn Fn(&str, &str) -> (String, String),
}

fn keeps_its_client_across_dump_and_restore(dir: &TestDir, port: u16, srv: Server<'_>) {
    let mut cmd = Command::new(srv.program);
    cmd.args(&srv.args);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let mut client = connect(port);
    let ask_set = |c: &mut TcpStream, k: &str, v: &str| {
        let (req, until) = (srv.set)(k, v);
        ask(c, &req, &until);
    };
    let ask_get = |c: &mut TcpStream, k: &str, v: &str| {
        let (req, until) = (srv.get)(k, v);
        let answer = ask(c, &req, &until);
        assert!(answer.contains(v), "{} {k}: {answer:?}", srv.program);
    };
    ask_set(&mut client, "before", "written-before-the-dump");
    ask_get(&mut client, "before", "written-before-the-dump");

    let img = dir.path("img");
    let dumped = dump_tree_with(&mut w, img.to_str().unwrap(), &["--tcp-established"], &[]);
    let _lock = NetLockGuard::of(&dumped);
    restore_with(&img, &[], &mut w);
    // The same connection: no reset, nothing lost.
    ask_get(&mut client, "before", "written-before-the-dump");
    ask_set(&mut client, "after", "written-after-the-restore");
    ask_get(&mut client, "after", "written-after-the-restore");
    assert_running_untraced(w.pid);
    drop(client);

    w.kill();
    restore_with(&img, &["--tcp-close"], &mut w);
    let mut again = connect(port);
    ask_get(&mut again, "before", "written-before-the-dump");
    assert_running_untraced(w.pid);
    w.kill();
}

/// OpenSSH's server with a session: the listener, the session's monitor
/// and the shell it runs (a count), dumped with --tcp-established while
/// the client, outside the tree, reads the shell's output over the
/// encrypted connection. Restored, the same session goes on: the client
/// reads the count on from where it was, each number once, and a new
/// client is greeted. Its keys and configuration are the test's own (sshd
/// needs its privilege separation directory, /run/sshd, made if missing).
#[test]
fn sshd_keeps_a_session_across_dump_and_restore() {
    let sshd = "/usr/sbin/sshd";
    if !available(sshd, &["-V"]) || !available("ssh", &["-V"]) {
        return;
    }
    let dir = TestDir::new("sshd");
    for key in ["host", "user"] {
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path(key))
            .output()
            .unwrap();
        assert!(made.status.success(), "ssh-keygen: {}", text(&made));
    }
    let authorized = dir.path("authorized_keys");
    std::fs::copy(dir.path("user.pub"), &authorized).unwrap();
    // sshd's privilege separation directory: root's, not writable by others.
    if !Path::new("/run/sshd").exists() {
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::set_permissions(
            "/run/sshd",
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    let port = free_port();
    let mut cmd = Command::new(sshd);
    // No system configuration: keys and files of the test only.
    cmd.args(["-D", "-e", "-f", "/dev/null", "-p", &port.to_string()])
        .args([
            "-o",
            "ListenAddress=127.0.0.1",
            "-o",
            "StrictModes=no",
            "-h",
        ])
        .arg(dir.path("host"))
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", authorized.display()))
        .arg("-o")
        .arg(format!("PidFile={}", dir.path("sshd.pid").display()));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    drop(connect(port));
    let output = dir.path("client.out");
    let client = ChildGuard(Some(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
            .arg(dir.path("user"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "root@127.0.0.1",
            ])
            .arg("n=0; while :; do n=$((n+1)); echo tick $n; sleep 0.1; done")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(dir.path("client.err")).unwrap())
            .spawn()
            .unwrap(),
    ));
    let ticks = || -> Vec<u64> {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .collect()
    };
    let log = || std::fs::read_to_string(dir.path("client.err")).unwrap_or_default();
    assert!(
        wait_until(T, || ticks().len() >= 5),
        "no session: {}",
        log()
    );
    assert!(!children_of(w.pid).is_empty(), "the session's processes");

    let img = dir.path("img");
    let dumped = dump_tree_with(&mut w, img.to_str().unwrap(), &["--tcp-established"], &[]);
    let _lock = NetLockGuard::of(&dumped);
    let at_dump = ticks().len();
    restore_with(&img, &[], &mut w);
    assert!(
        wait_until(T, || ticks().len() >= at_dump + 10),
        "the session did not go on ({at_dump} ticks at the dump): {}",
        log()
    );
    let seen = ticks();
    assert!(
        seen.iter().zip(1..).all(|(&n, i)| n == i),
        "the count restarted or lost a number: {seen:?}"
    );
    let pid = client.0.as_ref().unwrap().id() as i32;
    assert_running_untraced(pid);
    let mut banner = [0u8; 8];
    connect(port).read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    assert_running_untraced(w.pid);
    drop(client);
    w.kill();
}

/// A redis configuration in `dir`: on 127.0.0.1:`port`, in the
/// foreground, nothing saved to disk.
fn redis_conf(dir: &TestDir, port: u16) -> std::path::PathBuf {
    let conf = dir.path("redis.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {}\nlogfile {}\n",
            dir.0.display(),
            dir.path("redis.log").display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn redis_keeps_its_client_connection_across_dump_and_restore() {
    if !available("redis-server", &["--version"]) {
        return;
    }
    let dir = TestDir::new("redis");
    let port = free_port();
    let conf = redis_conf(&dir, port);
    let set = |k: &str, v: &str| (format!("SET {k} {v}\r\n"), "+OK\r\n".to_string());
    let get = |k: &str, v: &str| (format!("GET {k}\r\n"), format!("{v}\r\n"));
    keeps_its_client_across_dump_and_restore(
        &dir,
        port,
        Server {
            program: "redis-server",
            args: vec![conf.to_string_lossy().into_owned()],
            set: &set,
            get: &get,
        },
    );
}

/// redis stopped (SIGSTOP) while clients outside the tree connect and send
/// their first command: the kernel completes their handshakes, and they
/// wait in the accept queue, unaccepted. Dumped with --tcp-established
/// and restored, redis is still stopped; continued, it accepts them and
/// answers each on its own connection, and a client it had accepted
/// before goes on too.
#[test]
fn redis_stopped_with_clients_in_its_accept_queue() {
    if !available("redis-server", &["--version"]) {
        return;
    }
    let dir = TestDir::new("redis-queue");
    let port = free_port();
    let conf = redis_conf(&dir, port);
    let mut cmd = Command::new("redis-server");
    cmd.arg(&conf);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let mut accepted = connect(port);
    ask(&mut accepted, "SET before 1\r\n", "+OK\r\n");
    let state = |pid: i32| status_field(pid, "State").unwrap_or_default();
    // SAFETY: stopping the server this test started.
    unsafe { libc::kill(w.pid, libc::SIGSTOP) };
    assert!(wait_until(T, || state(w.pid).starts_with('T')));
    let mut waiting: Vec<TcpStream> = (0..2).map(|_| connect(port)).collect();
    waiting[0].write_all(b"SET queued yes\r\n").unwrap();
    waiting[1].write_all(b"PING\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let img = dir.path("img");
    let dumped = dump_tree_with(&mut w, img.to_str().unwrap(), &["--tcp-established"], &[]);
    let _lock = NetLockGuard::of(&dumped);
    restore_with(&img, &[], &mut w);
    assert!(
        wait_until(T, || state(w.pid).starts_with('T')),
        "restored running"
    );
    // SAFETY: continuing the restored server.
    unsafe { libc::kill(w.pid, libc::SIGCONT) };
    let mut answer = [0u8; 5];
    waiting[0].read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"+OK\r\n");
    let mut answer = [0u8; 7];
    waiting[1].read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"+PONG\r\n");
    ask(&mut waiting[1], "GET queued\r\n", "yes\r\n");
    ask(&mut accepted, "GET before\r\n", "1\r\n");
    assert_running_untraced(w.pid);
    w.kill();
}

#[test]
fn memcached_keeps_its_client_connection_across_dump_and_restore() {
    if !available("memcached", &["--version"]) {
        return;
    }
    let dir = TestDir::new("memcached");
    let port = free_port();
    let set = |k: &str, v: &str| {
        (
            format!("set {k} 0 0 {}\r\n{v}\r\n", v.len()),
            "STORED\r\n".to_string(),
        )
    };
    let get = |k: &str, _: &str| (format!("get {k}\r\n"), "END\r\n".to_string());
    keeps_its_client_across_dump_and_restore(
        &dir,
        port,
        Server {
            program: "memcached",
            args: [
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
            ]
            .map(String::from)
            .to_vec(),
            set: &set,
            get: &get,
        },
    );
}

/// python3 logging through a unix datagram socket connected to a server
/// outside the tree (as /dev/log is) and streaming to a unix stream
/// server outside it: refused by name without --ext-unix-sk; with it, the
/// datagram socket connects to the same name again after restore, and the
/// stream goes on through the socket the restorer hands in (--inherit-fd).
#[test]
fn python_with_unix_sockets_connected_outside_the_tree() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("ext-unix");
    let (log, listen) = (dir.path("log.sock"), dir.path("stream.sock"));
    let logs = UnixDatagram::bind(&log).unwrap();
    logs.set_read_timeout(Some(T)).unwrap();
    let listener = UnixListener::bind(&listen).unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import socket, sys, time\n\
         d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.connect(sys.argv[1])\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[2])\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1\n\
         \x20   d.send(b'log %d' % n)\n\
         \x20   s.sendall(b'stream %d\\n' % n)\n\
         \x20   time.sleep(0.05)\n",
    ])
    .arg(&log)
    .arg(&listen);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let n = logs.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"log "));
    // The stream socket's inode, as the restorer names it.
    let inode = (3..8)
        .filter_map(|fd| std::fs::read_link(format!("/proc/{}/fd/{fd}", w.pid)).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .nth(1)
        .expect("python's stream socket");
    let img = dir.path("img");
    let err = dump_refused(w.pid, &img, &[], &[]);
    assert!(
        err.contains("outside the dumped process tree") && err.contains("--ext-unix-sk"),
        "{err}"
    );
    dump(w.pid, &img, &["--ext-unix-sk"]);
    w.reap_dumped();
    drop(conn);
    // Drain what was logged before the dump.
    logs.set_nonblocking(true).unwrap();
    while logs.recv(&mut buf).is_ok() {}
    logs.set_nonblocking(false).unwrap();

    let (ours, theirs) = UnixStream::pair().unwrap();
    let key = format!("fd[{}]:{inode}", theirs.as_raw_fd());
    let o = {
        let mut c = crstream();
        c.args([
            "restore",
            "-i",
            img.to_str().unwrap(),
            "--detach",
            "--json",
            "--inherit-fd",
            &key,
        ]);
        c.stdin(Stdio::null());
        // The fd stays open across exec: clear its CLOEXEC in the child.
        let raw = theirs.as_raw_fd();
        // SAFETY: fcntl on an fd of the child before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                libc::fcntl(raw, libc::F_SETFD, 0);
                Ok(())
            });
        }
        c.output().unwrap()
    };
    assert!(o.status.success(), "restore failed: {}", text(&o));
    drop(theirs);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    w.restored(v["pid"].as_i64().unwrap() as i32);
    // Logging goes on to the same name, with the counter where it was.
    let n = logs.recv(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(line.starts_with("log "), "{line}");
    // And the stream comes through the socket handed in.
    ours.set_read_timeout(Some(T)).unwrap();
    let mut r = std::io::BufReader::new(&ours);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut r, &mut first).unwrap();
    assert!(first.starts_with("stream "), "{first}");
    assert_running_untraced(w.pid);
    w.kill();
}

/// Files in flight: python3 sends files over a unix stream and a datagram
/// socketpair (SCM_RIGHTS) and receives them only after restore. A pipe
/// and a memfd only the messages hold, a file at an offset, an eventfd,
/// a file the process keeps too (received, it must share the offset with
/// the kept fd) and a pipe it keeps, with bytes in it: each comes back with its contents and state, in the
/// message that carried it, at its place in the stream.
const PASS_FDS: &str = r#"
import os, sys, socket, time
report, d = sys.argv[1], sys.argv[2]
st_a, st_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
dg_a, dg_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
os.write(w, b"through the pipe")
os.close(w)
f = os.open(os.path.join(d, "data"), os.O_RDWR | os.O_CREAT)
os.write(f, b"0123456789")
os.lseek(f, 3, 0)
m = os.memfd_create("passed")
os.write(m, b"memfd bytes")
os.lseek(m, 0, 0)
k = os.open(os.path.join(d, "kept"), os.O_RDWR | os.O_CREAT)
os.write(k, b"abcdef")
os.lseek(k, 2, 0)
e = os.eventfd(7)
kr, kw = os.pipe()
os.write(kw, b"kept pipe")
st_b.sendall(b"before ")
socket.send_fds(st_b, [b"first"], [r, f])
st_b.sendall(b" between ")
socket.send_fds(st_b, [b"second"], [m, k])
st_b.sendall(b" after")
socket.send_fds(dg_b, [b"dgram one"], [e, kr])
dg_b.send(b"dgram two")
for x in (r, f, m, e):
    os.close(x)
def put(line):
    with open(report + ".tmp", "w") as out:
        out.write(line + "\n")
    os.rename(report + ".tmp", report)
n = 0
while not os.path.exists(os.path.join(d, "go")):
    n += 1
    put("%d %d waiting" % (os.getpid(), n))
    time.sleep(0.05)
got = []
st_a.setblocking(False)
for _ in range(3):
    data, fds, _, _ = socket.recv_fds(st_a, 100, 10)
    got.append((data, fds))
checks = []
def check(name, ok):
    checks.append(name + ("=ok" if ok else "=BAD"))
check("stream", [g[0] for g in got] == [b"before first", b" between second", b" after"])
check("counts", [len(g[1]) for g in got] == [2, 2, 0])
if [len(g[1]) for g in got][:2] == [2, 2]:
    (r2, f2), (m2, k2) = got[0][1], got[1][1]
    check("pipe", os.read(r2, 100) == b"through the pipe" and os.read(r2, 100) == b"")
    check("file", os.read(f2, 100) == b"3456789")
    check("memfd", os.read(m2, 100) == b"memfd bytes")
    check("kept", os.read(k2, 2) == b"cd" and os.lseek(k, 0, 1) == 4)
data, fds, _, _ = socket.recv_fds(dg_a, 100, 10)
check("dgram", data == b"dgram one" and len(fds) == 2 and os.eventfd_read(fds[0]) == 7)
check("keptpipe", len(fds) == 2 and os.read(fds[1], 100) == b"kept pipe")
check("dgram2", dg_a.recv(100) == b"dgram two")
put("%d %d %s" % (os.getpid(), n, " ".join(checks)))
time.sleep(600)
"#;

#[test]
fn files_in_flight_in_unix_messages_come_back_with_them() {
    let dir = TestDir::new("passfds");
    std::fs::write(dir.path("wl.py"), PASS_FDS).unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(dir.path("wl.py"))
        .arg(dir.path("report"))
        .arg(dir.path(""));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| r.contains("waiting") && field(r, 0, 1) >= 2);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    // Readers that would drop the files (before version 6) refuse the image.
    assert!(records_version(&img) >= 6);
    let (pid, _) = restore(&img);
    w.restored(pid);
    std::fs::write(dir.path("go"), b"").unwrap();
    let r = w.wait_report(T, |r| !r.contains("waiting"));
    assert!(!r.contains("BAD"), "{r}\n{}", w.log());
    assert!(r.contains("kept=ok") && r.contains("dgram2=ok"), "{r}");
    w.kill();
}

/// A file in flight that no process of the tree holds and whose kind needs
/// a process around it (a TCP socket) is refused by name, and the process
/// runs on with its message intact.
#[test]
fn a_tcp_socket_in_flight_alone_is_refused_by_name() {
    let dir = TestDir::new("passfds-refused");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import os, sys, socket, time\n\
         a, b = socket.socketpair()\n\
         t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen()\n\
         socket.send_fds(b, [b'x'], [t.fileno()]); t.close()\n\
         n = 0\n\
         while not os.path.exists(sys.argv[1] + '.go'):\n\
         \x20   n += 1; open(sys.argv[1], 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         data, fds, _, _ = socket.recv_fds(a, 10, 4)\n\
         kind = socket.socket(fileno=fds[0]).type\n\
         open(sys.argv[1], 'w').write('%d %d %s %s\\n' % (os.getpid(), n, data.decode(), kind == socket.SOCK_STREAM))\n\
         time.sleep(600)\n",
    ])
    .arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let err = dump_refused(w.pid, &dir.path("img"), &[], &[]);
    assert!(
        err.contains("SCM_RIGHTS") && err.contains("which no process of the tree holds"),
        "{err}"
    );
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(T, |r| r.contains(" x "));
    assert!(r.trim_end().ends_with("x True"), "{r}");
    w.kill();
}

/// A unix stream connection accepted from a listener of the tree comes back
/// with its names: the accepted end has the listener's (getsockname), and
/// its client sees it as its peer's (getpeername); a client that bound a
/// name keeps it; the listener accepts new clients, and bytes in flight
/// both ways are still there.
#[test]
fn a_unix_connection_keeps_the_name_of_its_listener() {
    let dir = TestDir::new("unix-names");
    let script = "import os, sys, socket, time\n\
         report, path = sys.argv[1], sys.argv[2]\n\
         l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(path); l.listen(4)\n\
         c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(path)\n\
         s, _ = l.accept()\n\
         cpath = path + '.client'\n\
         b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); b.bind(cpath); b.connect(path)\n\
         sb, _ = l.accept()\n\
         c.sendall(b'to server'); s.sendall(b'to client')\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         names = [s.getsockname() == path, c.getpeername() == path, s.getpeername() == '', sb.getpeername() == cpath, b.getsockname() == cpath, b.getpeername() == path]\n\
         data = [s.recv(64) == b'to server', c.recv(64) == b'to client']\n\
         c2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c2.connect(path)\n\
         s2, _ = l.accept(); c2.sendall(b'new'); fresh = s2.recv(8) == b'new'\n\
         open(report, 'w').write('%d %d %s %s %s\\n' % (os.getpid(), n, names, data, fresh))\n\
         time.sleep(600)\n";
    check_after_restore(
        &dir,
        script,
        "listener.sock",
        "[True, True, True, True, True, True] [True, True] True",
    );
}

/// The file a unix socket's bind made comes back as it was: renamed into
/// place (bound to a temporary name, as haproxy does: the socket keeps
/// that name, its file is at the new one), with its mode and owner
/// (postgres makes its socket 0777; screen keeps state in the bits), or
/// removed. A live socket another process bound since at the removed
/// file's path is left alone (restore used to replace it with its own).
#[test]
fn unix_socket_files_come_back_where_and_as_they_were() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("unix-files");
    let script = "import os, sys, socket, time\n\
         report, base = sys.argv[1], sys.argv[2]\n\
         U = socket.AF_UNIX\n\
         a = socket.socket(U); a.bind(base + '.tmp'); os.rename(base + '.tmp', base); a.listen(4)\n\
         b = socket.socket(U); b.bind(base + '2'); os.chmod(base + '2', 0o640); os.chown(base + '2', 65534, 65534); b.listen(4)\n\
         c = socket.socket(U); c.bind(base + '3'); os.unlink(base + '3'); c.listen(4)\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         k = socket.socket(U); k.connect(base); a.settimeout(5); reached = a.accept()[0] is not None\n\
         st = os.stat(base + '2')\n\
         checks = [a.getsockname() == base + '.tmp', not os.path.exists(base + '.tmp'), reached,\n\
         \x20   st.st_mode & 0o7777 == 0o640, (st.st_uid, st.st_gid) == (65534, 65534),\n\
         \x20   c.getsockname() == base + '3']\n\
         open(report, 'w').write('%d %d %s\\n' % (os.getpid(), n, checks))\n\
         time.sleep(600)\n";
    let base = dir.path("sock");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(dir.path("report")).arg(&base);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    // Another process binds the removed file's path meanwhile.
    let removed = format!("{}3", base.display());
    let foreign = std::os::unix::net::UnixListener::bind(&removed).unwrap();
    let foreign_ino = std::fs::metadata(&removed).unwrap().ino();
    let (pid, _) = restore(&img);
    w.restored(pid);
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(T, |r| r.contains('['));
    assert!(
        r.contains("[True, True, True, True, True, True]"),
        "{r}\n{}",
        w.log()
    );
    assert_eq!(std::fs::metadata(&removed).unwrap().ino(), foreign_ino);
    drop(foreign);
    w.kill();
}

/// A chrooted process's unix listeners (haproxy's and unbound's control
/// sockets): one bound before the chroot, under crstream's root, and one
/// bound after it, under the process's root. Both come back where they
/// were and take connections (the first came back unreachable, the second
/// was bound in crstream's root).
#[test]
fn unix_sockets_of_a_chrooted_process_come_back_where_they_were() {
    if !available("python3", &["--version"]) {
        return;
    }
    assert!(!std::path::Path::new("/in.sock").exists());
    let dir = TestDir::new("unix-chroot");
    let script = "import os, sys, socket, time\n\
         report = sys.argv[1]; jail = os.path.dirname(report)\n\
         a = socket.socket(socket.AF_UNIX); a.bind(os.path.join(jail, 'before.sock')); a.listen(4)\n\
         os.chroot(jail); os.chdir('/'); report = '/' + os.path.basename(report)\n\
         b = socket.socket(socket.AF_UNIX); b.bind('/in.sock'); b.listen(4)\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         k = socket.socket(socket.AF_UNIX); k.connect('/in.sock')\n\
         a.settimeout(5); b.settimeout(5)\n\
         got = [len(b.accept()), len(b.accept()), len(a.accept())]\n\
         open(report, 'w').write('%d %d %s\\n' % (os.getpid(), n, got))\n\
         time.sleep(600)\n";
    let mut cmd = Command::new(system_python());
    cmd.args(["-c", script]).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    dump(w.pid, &dir.path("img"), &[]);
    w.reap_dumped();
    let (pid, _) = restore(&dir.path("img"));
    w.restored(pid);
    assert!(
        !std::path::Path::new("/in.sock").exists(),
        "bound in our root"
    );
    let connect = |name: &str| std::os::unix::net::UnixStream::connect(dir.path(name));
    let (inside, before) = (connect("in.sock"), connect("before.sock"));
    assert!(inside.is_ok() && before.is_ok(), "{inside:?} {before:?}");
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(T, |r| r.contains('['));
    assert!(r.contains("[2, 2, 2]"), "{r}\n{}", w.log());
    w.kill();
}

/// A unix socket bound to a relative name (postfix binds "public/pickup"
/// from its queue directory) comes back bound from that directory, with
/// its file's mode and owner, wherever restore runs (it was bound relative
/// to restore's own directory: the restore failed after the dump, or the
/// socket landed elsewhere, root's), and so does a connection accepted
/// from it (remade through it from restore's directory: it failed). Where
/// the name no longer leads to its file from the working directory, the
/// dump is refused.
#[test]
fn a_unix_socket_bound_to_a_relative_name_comes_back_in_its_directory() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("unix-relative");
    let script = "import os, sys, socket, time\n\
         report, where = sys.argv[1], sys.argv[2]\n\
         os.makedirs(os.path.join(where, 'public')); os.chdir(where)\n\
         a = socket.socket(socket.AF_UNIX); a.bind('public/svc'); a.listen(4)\n\
         os.chmod('public/svc', 0o666); os.chown('public/svc', 65534, 65534)\n\
         k0 = socket.socket(socket.AF_UNIX); k0.connect('public/svc'); c0 = a.accept()[0]\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         k = socket.socket(socket.AF_UNIX); k.connect(os.path.join(where, 'public/svc'))\n\
         a.settimeout(5); reached = a.accept()[0] is not None\n\
         st = os.stat('public/svc')\n\
         k0.send(b'across'); c0.settimeout(5)\n\
         checks = [a.getsockname() == 'public/svc', reached, st.st_mode & 0o7777 == 0o666,\n\
         \x20   (st.st_uid, st.st_gid) == (65534, 65534), c0.recv(10) == b'across',\n\
         \x20   c0.getsockname() == 'public/svc', k0.getpeername() == 'public/svc']\n\
         open(report, 'w').write('%d %d %s\\n' % (os.getpid(), n, checks))\n\
         time.sleep(600)\n";
    let queue = dir.path("queue");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(dir.path("report")).arg(&queue);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    // Restore runs in this test's working directory, which has no public/.
    assert!(!std::path::Path::new("public").exists());
    let (pid, _) = restore(&img);
    w.restored(pid);
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(T, |r| r.contains('['));
    assert!(
        r.contains("[True, True, True, True, True, True, True]"),
        "{r}\n{}",
        w.log()
    );
    assert!(!std::path::Path::new("public").exists());
    w.kill();

    // Bound from a directory the process has left since: refused.
    let dir = TestDir::new("unix-relative-moved");
    let script = "import os, sys, socket, time\n\
         report, where = sys.argv[1], sys.argv[2]\n\
         os.makedirs(where); os.chdir(where)\n\
         a = socket.socket(socket.AF_UNIX); a.bind('svc'); a.listen(4); os.chdir('/')\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(dir.path("report"))
        .arg(dir.path("moved"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let err = dump_refused(w.pid, &dir.path("img"), &[], &[]);
    assert!(err.contains("relative name svc"), "{err}");
    assert_running_untraced(w.pid);
    w.kill();
}

/// Datagram sockets connected to a bound datagram socket of the tree that
/// is not connected back (postfix's processes to its log server, whose
/// name is relative to the queue directory) come back connected to it:
/// the dump refused them as connected outside the tree. What was queued
/// on the server comes back too. One whose peer was closed before the dump
/// still names it, and its next send is refused (it came back unconnected:
/// ENOTCONN).
#[test]
fn datagram_sockets_connected_to_a_server_of_the_tree_come_back_connected() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("unix-dgram-server");
    let script = "import os, sys, socket, time\n\
         report, where = sys.argv[1], sys.argv[2]\n\
         os.makedirs(os.path.join(where, 'public')); os.chdir(where)\n\
         D = socket.SOCK_DGRAM\n\
         srv = socket.socket(socket.AF_UNIX, D); srv.bind('public/log')\n\
         c = socket.socket(socket.AF_UNIX, D); c.connect('public/log'); c.send(b'queued')\n\
         c2 = socket.socket(socket.AF_UNIX, D); c2.connect(os.path.join(where, 'public/log'))\n\
         gone = socket.socket(socket.AF_UNIX, D); gone.bind('public/gone')\n\
         d = socket.socket(socket.AF_UNIX, D); d.bind('public/d'); d.connect('public/gone'); gone.close()\n\
         def refused():\n\
         \x20   try: d.send(b'x')\n\
         \x20   except ConnectionRefusedError: return True\n\
         \x20   except OSError as e: return e.errno\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         c.send(b'one'); c2.send(b'two'); srv.settimeout(5)\n\
         got = [srv.recv(10) for _ in range(3)]\n\
         checks = [got == [b'queued', b'one', b'two'], c.getpeername() == 'public/log',\n\
         \x20   c2.getpeername() == 'public/log', d.getpeername() == 'public/gone', refused()]\n\
         open(report, 'w').write('%d %d %s %s\\n' % (os.getpid(), n, checks, got))\n\
         time.sleep(600)\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(dir.path("report"))
        .arg(dir.path("queue"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let (pid, _) = restore(&img);
    w.restored(pid);
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(T, |r| r.contains('['));
    assert!(
        r.contains("[True, True, True, True, True]"),
        "{r}\n{}",
        w.log()
    );
    w.kill();
}

/// A connection whose listener is gone by the dump (closed after it
/// accepted) keeps its names too: a path (whose stale socket file is left
/// as it is), an abstract name, a seqpacket listener, and an accepted end
/// whose client has closed (data, then EOF). Rebuilt as a nameless
/// socketpair, getsockname and getpeername would answer ''.
#[test]
fn a_unix_connection_keeps_its_names_when_its_listener_is_gone() {
    let dir = TestDir::new("unix-names-gone");
    let script = "import os, sys, socket, time\n\
         report, path = sys.argv[1], sys.argv[2]\n\
         U = socket.AF_UNIX\n\
         def pair(name, ty=socket.SOCK_STREAM, client_name=None):\n\
         \x20   l = socket.socket(U, ty); l.bind(name); l.listen(4)\n\
         \x20   c = socket.socket(U, ty)\n\
         \x20   if client_name: c.bind(client_name)\n\
         \x20   c.connect(name); s, _ = l.accept(); l.close(); return s, c\n\
         s, c = pair(path)\n\
         sb, b = pair(path + '.2', client_name=path + '.client')\n\
         abstract = b'\\0crstream-gone-%d' % os.getpid()\n\
         sa, ca = pair(abstract)\n\
         sq, cq = pair(path + '.seq', socket.SOCK_SEQPACKET)\n\
         so, co = pair(path + '.orphan'); os.unlink(path + '.orphan')\n\
         c.sendall(b'to server'); s.sendall(b'to client')\n\
         cq.send(b'one'); cq.send(b'two')\n\
         co.sendall(b'last words'); co.close()\n\
         stale = os.stat(path).st_ino\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         names = [s.getsockname() == path, c.getpeername() == path, c.getsockname() == '',\n\
         \x20   sb.getsockname() == path + '.2', sb.getpeername() == path + '.client',\n\
         \x20   b.getsockname() == path + '.client', b.getpeername() == path + '.2',\n\
         \x20   sa.getsockname() == abstract, ca.getpeername() == abstract,\n\
         \x20   sq.getsockname() == path + '.seq', cq.getpeername() == path + '.seq',\n\
         \x20   so.getsockname() == path + '.orphan']\n\
         data = [s.recv(64) == b'to server', c.recv(64) == b'to client',\n\
         \x20   sq.recv(64) == b'one', sq.recv(64) == b'two',\n\
         \x20   so.recv(64) == b'last words', so.recv(64) == b'']\n\
         free = socket.socket(U, socket.SOCK_STREAM); free.bind(abstract)\n\
         untouched = os.stat(path).st_ino == stale and not os.path.exists(path + '.orphan')\n\
         open(report, 'w').write('%d %d %s %s %s\\n' % (os.getpid(), n, names, data, untouched))\n\
         time.sleep(600)\n";
    check_after_restore(
        &dir,
        script,
        "gone.sock",
        "[True, True, True, True, True, True, True, True, True, True, True, True] \
         [True, True, True, True, True, True] True",
    );
}

/// The PID and ids a unix socket holds for its peer (SO_PEERCRED,
/// SO_PEERGROUPS) come back: a child that dropped to uid 1000 connected to
/// its parent's listener and made a socketpair. The parent sees the
/// child's on the connection it accepted, the child sees its parent's
/// (root's) on its end, and its own on the socketpair. Restored without
/// them, every one of these would be crstream's: its PID, root's ids.
#[test]
fn unix_sockets_keep_the_ids_of_their_peers() {
    let dir = TestDir::new("unix-peer-ids");
    let script = "import os, sys, socket, struct, time\n\
         report = sys.argv[1]\n\
         U, SO_PEERGROUPS = socket.AF_UNIX, 59\n\
         def ids(s):\n\
         \x20   p, u, g = struct.unpack('3i', s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))\n\
         \x20   b = s.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 256)\n\
         \x20   return [p, u, g, sorted(struct.unpack('%di' % (len(b) // 4), b))]\n\
         name = b'\\0crstream-peer-ids-%d' % os.getpid()\n\
         l = socket.socket(U, socket.SOCK_STREAM); l.bind(name); l.listen(4)\n\
         kid = os.fork()\n\
         if kid == 0:\n\
         \x20   os.setgroups([1000, 5]); os.setgid(1000); os.setuid(1000)\n\
         \x20   c = socket.socket(U, socket.SOCK_STREAM); c.connect(name)\n\
         \x20   a, b = socket.socketpair()\n\
         \x20   while c.recv(1):\n\
         \x20       c.sendall(repr([ids(c), ids(a), ids(b)]).encode())\n\
         \x20   os._exit(0)\n\
         s, _ = l.accept()\n\
         mine = [os.getpid(), 0, 0, sorted(os.getgroups())]\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         s.sendall(b'?'); child = eval(s.recv(4096))\n\
         pids = [ids(s)[0] == kid] + [c[0] == kid for c in child[1:]]\n\
         views = [ids(s)[1:], child[0] == mine, [c[1:] for c in child[1:]], pids]\n\
         open(report, 'w').write('%d %d %s %s %s %s\\n' % (os.getpid(), n, *views))\n\
         time.sleep(600)\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let img = dir.path("img");
    dump_tree(&mut w, img.to_str().unwrap(), &[]);
    let (pid, _) = restore(&img);
    w.restored(pid);
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(T, |r| r.contains('['));
    assert!(
        r.contains(
            "[1000, 1000, [5, 1000]] True [[1000, 1000, [5, 1000]], [1000, 1000, [5, 1000]]] \
             [True, True, True]"
        ),
        "{r}\n{}",
        w.log()
    );
    w.kill();
}

/// Runs python3 `script` (arguments: the report, and `dir`'s `name`)
/// across a dump and restore (`python_across_restore`) and asserts that
/// its final report holds `expected`.
fn check_after_restore(dir: &TestDir, script: &str, name: &str, expected: &str) {
    let (mut w, r) = python_across_restore(dir, script, &[dir.path(name)], "[");
    assert!(r.contains(expected), "{r}\n{}", w.log());
    w.kill();
}

/// Asks the DNS server on 127.0.0.1:`port` for the A record of `name` over
/// UDP; the answer's address, if it gave one.
fn dns_a(port: u16, name: &str) -> Option<[u8; 4]> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let id = (std::process::id() as u16) ^ 0x5a5a;
    // Header: id, recursion desired, one question.
    let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    s.send_to(&q, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    (n >= q.len() + 16 && buf[..2] == q[..2] && answers == 1)
        .then(|| buf[n - 4..n].try_into().unwrap())
}

/// unbound, Debian's validating DNS resolver: two threads answering on
/// one port through SO_REUSEPORT sockets, and a control socket. Restored,
/// it answers from its zone, `unbound-control` reaches it through its unix
/// socket, and its statistics count on from where they were.
#[test]
fn unbound_answers_and_takes_control_commands_after_restore() {
    // Root's PATH may lack /usr/sbin.
    let sbin = |name: &str| {
        let p = Path::new("/usr/sbin").join(name);
        match p.exists() {
            true => p,
            false => std::path::PathBuf::from(name),
        }
    };
    if !available(sbin("unbound").to_str().unwrap(), &["-V"]) {
        return;
    }
    let dir = TestDir::new("unbound");
    let port = free_port();
    let conf = dir.path("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  num-threads: 2\n  \
             so-reuseport: yes\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n  \
             chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  \
             access-control: 127.0.0.0/8 allow\n  local-zone: \"crstream.test.\" static\n  \
             local-data: \"a.crstream.test. IN A 10.1.2.3\"\n\
             remote-control:\n  control-enable: yes\n  control-interface: {d}/control\n  \
             control-use-cert: no\n",
            d = dir.0.display()
        ),
    )
    .unwrap();
    let control = |what: &str| {
        let o = Command::new(sbin("unbound-control"))
            .arg("-c")
            .arg(&conf)
            .arg(what)
            .output()
            .unwrap();
        assert!(o.status.success(), "unbound-control {what}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let queries = || -> u64 {
        control("stats_noreset")
            .lines()
            .find_map(|l| l.strip_prefix("total.num.queries="))
            .and_then(|v| v.parse().ok())
            .expect("total.num.queries")
    };
    let mut cmd = Command::new(sbin("unbound"));
    cmd.arg("-d").arg("-c").arg(&conf);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    assert!(
        wait_until(T, || dns_a(port, "a.crstream.test").is_some()),
        "unbound never answered: {}",
        w.log()
    );
    for _ in 0..3 {
        assert_eq!(dns_a(port, "a.crstream.test"), Some([10, 1, 2, 3]));
    }
    let before = queries();
    assert!(before >= 4, "{before}");
    let tids_before = tasks(w.pid);
    assert_eq!(tids_before.len(), 2, "two threads");

    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let (pid, tids) = restore(&img);
    w.restored(pid);
    assert_eq!(tids, tids_before, "the same threads");
    for _ in 0..4 {
        assert_eq!(dns_a(port, "a.crstream.test"), Some([10, 1, 2, 3]));
    }
    assert!(control("status").contains("is running"));
    assert_eq!(queries(), before + 4, "its statistics count on");
    assert_running_untraced(pid);
    w.kill();
}
