//! Real servers with a client outside the tree: redis and memcached, each
//! dumped with --tcp-established while a client (this test) holds a
//! connection open, restored, and asked on that same connection for what
//! it stored before the dump; then restored again with --tcp-close (the
//! first copy had the connection) and asked on a new connection.
//!
//! Skipped with a message when the program is not installed, unless
//! CRSTREAM_TEST_REQUIRE_PROGRAMS is set (as `.ci/test` does).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

fn available(program: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CRSTREAM_TEST_REQUIRE_PROGRAMS").is_none(),
            "{program} is not installed (CRSTREAM_TEST_REQUIRE_PROGRAMS is set)"
        );
        eprintln!("{program} is not installed: skipped");
    }
    ok
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

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
    let mut tree = vec![w.pid];
    tree.extend(children_of(w.pid));
    let _lock = NetLockGuard::of(&dump(w.pid, &img, &["--tcp-established", "--json"]));
    w.reap_dumped();
    for &pid in &tree {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
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

#[test]
fn redis_keeps_its_client_connection_across_dump_and_restore() {
    if !available("redis-server") {
        return;
    }
    let dir = TestDir::new("redis");
    let port = free_port();
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

#[test]
fn memcached_keeps_its_client_connection_across_dump_and_restore() {
    if !available("memcached") {
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
