//! `crstream run --cache`: a service started cold is checkpointed once
//! ready; the next run restores it warm (the same process state: here a
//! random nonce the service drew at start-up) and falls back to a cold
//! start with a warning whenever the cache entry cannot be used.
//!
//! Run with: cargo build && cargo test --test engine_run

mod support;

use std::process::Output;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

/// One service at a time: they listen on ports picked free, which two
/// tests picking at once could share.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The output files of the services the runs of this test started.
static OUTPUTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A test's turn; at its end, the output files its services wrote go.
struct Turn(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl Drop for Turn {
    fn drop(&mut self) {
        for f in OUTPUTS.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn one_at_a_time() -> Turn {
    Turn(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// An HTTP service that imports many modules, draws a nonce at start-up
/// and answers "NONCE PID" (its PID as it sees it).
const PY_SERVICE: &str = r#"
import sys, os, random, http.server, socketserver
import email, xml.dom.minidom, decimal, fractions, statistics, asyncio, sqlite3, csv
import argparse, logging, unittest, difflib, json, tarfile, zipfile, urllib.request
port = int(sys.argv[1])
nonce = random.getrandbits(62)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%d %d" % (nonce, os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
socketserver.TCPServer.allow_reuse_address = True
with socketserver.TCPServer(("127.0.0.1", port), H) as s:
    print("ready on", port, flush=True)
    s.serve_forever()
"#;

/// The same in Java (com.sun.net.httpserver).
const JAVA_SERVICE: &str = r#"
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
public class Svc {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        long nonce = new java.util.Random().nextLong() & Long.MAX_VALUE;
        long pid = ProcessHandle.current().pid();
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 16);
        s.createContext("/", ex -> {
            byte[] body = (nonce + " " + pid).getBytes();
            ex.sendResponseHeaders(200, body.length);
            ex.getResponseBody().write(body);
            ex.close();
        });
        s.start();
        System.out.println("ready on " + port);
    }
}
"#;

/// `crstream run ARGS`; its JSON summary when it succeeded.
fn run_cache(args: &[&str]) -> (Output, Option<serde_json::Value>) {
    run_cache_env(args, &[])
}

fn run_cache_env(args: &[&str], env: &[(&str, &str)]) -> (Output, Option<serde_json::Value>) {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let o = run(&all, env);
    let v: Option<serde_json::Value> = o
        .status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).expect("json summary"));
    if let Some(v) = &v {
        let files = ["stdout", "stderr"].map(|k| v[k].as_str().unwrap_or_default().to_string());
        OUTPUTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(files);
    }
    (o, v)
}

fn pid_of(v: &serde_json::Value) -> i32 {
    v["pid"].as_i64().unwrap() as i32
}

/// The service's answer: (nonce, its PID as it sees it).
fn ask(port: u16) -> (u64, i32) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
    let mut f = body.split_whitespace();
    (
        f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
        f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
    )
}

/// Ends a service by PID (its namespace's init ends with it).
fn stop(pid: i32) {
    // SAFETY: signalling a service this test had crstream start.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_gone(pid, T), "pid {pid} still exists");
}

struct Stop(Vec<i32>);
impl Drop for Stop {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// A test of the Python service: None (the test skips) without python3;
/// else its turn (one service at a time) and a directory holding svc.py.
fn python_test(name: &str) -> Option<(Turn, TestDir)> {
    if !available("python3", &["--version"]) {
        return None;
    }
    let turn = one_at_a_time();
    let dir = TestDir::new(name);
    std::fs::write(dir.path("svc.py"), PY_SERVICE).unwrap();
    Some((turn, dir))
}

/// A miss then a hit of one service, cached in a directory of `dir`.
fn miss_then_hit(dir: &TestDir, cmd: &[&str], port: u16) {
    let cache = format!("{}/{{key}}.img", dir.0.display());
    miss_then_hit_in(&cache, &[], cmd, port, |key| {
        dir.0.join(format!("{key}.img")).exists()
    });
}

/// A miss then a hit of one service: the miss starts it cold and stores a
/// checkpoint (`stored(key)` says it is there), the hit brings back that
/// very process (same nonce, same PID in its namespace) with its output in
/// this run's files.
fn miss_then_hit_in(
    cache: &str,
    env: &[(&str, &str)],
    cmd: &[&str],
    port: u16,
    stored: impl Fn(&str) -> bool,
) {
    let ready = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--cache", cache, "--ready-when", &ready];
    if !cmd.contains(&"--") {
        args.push("--");
    }
    args.extend_from_slice(cmd);
    let (o, v) = run_cache_env(&args, env);
    let miss = v.unwrap_or_else(|| panic!("cold run failed: {}", text(&o)));
    let mut guard = Stop(vec![pid_of(&miss)]);
    assert_eq!(miss["cache"], "miss", "{miss}");
    assert_eq!(miss["warning"], serde_json::Value::Null, "{miss}");
    assert!(miss["uploaded_bytes"].as_u64().unwrap() > 0, "{miss}");
    assert!(
        stored(miss["key"].as_str().unwrap()),
        "no cache entry: {miss}"
    );
    let (nonce, inner) = ask(port);
    assert!(
        inner >= 2,
        "in a namespace of its own (after crstream's init)"
    );
    assert_running_untraced(pid_of(&miss));
    stop(pid_of(&miss));

    let (o, v) = run_cache_env(&args, env);
    let hit = v.unwrap_or_else(|| panic!("warm run failed: {}", text(&o)));
    guard.0.push(pid_of(&hit));
    assert_eq!(hit["cache"], "hit", "{hit} {}", text(&o));
    assert_eq!(hit["key"], miss["key"]);
    assert_eq!(
        ask(port),
        (nonce, inner),
        "the restored service is the one checkpointed, with its PID"
    );
    let out = hit["stdout"].as_str().unwrap();
    assert_ne!(out, miss["stdout"].as_str().unwrap());
    // It writes on into this run's file: the answer above logged nothing,
    // so the proof is that the file exists and the old one is not written.
    assert!(std::path::Path::new(out).exists());
    stop(pid_of(&hit));
}

#[test]
fn a_python_service_is_started_cold_then_restored_warm() {
    let Some((_turn, dir)) = python_test("run-py") else {
        return;
    };
    let port = free_port();
    let script = dir.path("svc.py");
    miss_then_hit(
        &dir,
        &["python3", script.to_str().unwrap(), &port.to_string()],
        port,
    );
}

/// The same, restored eagerly (`--eager`: every byte in before it runs).
#[test]
fn a_python_service_is_restored_eagerly() {
    let Some((_turn, dir)) = python_test("run-eager") else {
        return;
    };
    let port = free_port();
    let script = dir.path("svc.py");
    miss_then_hit(
        &dir,
        &[
            "--eager",
            "--",
            "python3",
            script.to_str().unwrap(),
            &port.to_string(),
        ],
        port,
    );
}

/// A JVM with its default flags: its hsperfdata file under /tmp travels
/// with the checkpoint.
#[test]
fn a_java_service_is_started_cold_then_restored_warm() {
    if !available("java", &["-version"]) || !available("javac", &["-version"]) {
        return;
    }
    let _one = one_at_a_time();
    // Its JVMs, killed in their PID namespace, leave hsperfdata files whose
    // small-PID names no later JVM takes for dead ones.
    let _perf_files = NewFilesRemoved::new("/tmp/hsperfdata_root", "");
    let dir = TestDir::new("run-java");
    std::fs::write(dir.path("Svc.java"), JAVA_SERVICE).unwrap();
    let st = std::process::Command::new("javac")
        .arg(dir.path("Svc.java"))
        .status()
        .unwrap();
    assert!(st.success(), "javac failed");
    let port = free_port();
    let cp = dir.0.display().to_string();
    miss_then_hit(&dir, &["java", "-cp", &cp, "Svc", &port.to_string()], port);
}

/// The cache in an object store (the local S3 server): a miss uploads the
/// checkpoint, the next run hits it.
#[test]
fn a_service_cached_in_s3_comes_back_from_there() {
    let Some((_turn, dir)) = python_test("run-s3") else {
        return;
    };
    let bucket = s3_bucket("run");
    let env = s3_env();
    let cache = format!("s3://{bucket}/warm/{{key}}.img");
    let port = free_port();
    let script = dir.path("svc.py").display().to_string();
    miss_then_hit_in(
        &cache,
        &env_refs(&env),
        &["python3", &script, &port.to_string()],
        port,
        |key| s3_object_exists(&bucket, &format!("warm/{key}.img")),
    );
}

/// A service that holds a connection to another service (a database, say)
/// when it is ready: the checkpoint stores that connection closed, so a
/// hit's service finds it gone (ECONNABORTED) and answers all the same.
const PY_CONNECTED: &str = r#"
import sys, os, errno, socket, random, http.server, socketserver
port, db = int(sys.argv[1]), int(sys.argv[2])
nonce = random.getrandbits(62)
conn = socket.create_connection(("127.0.0.1", db))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            conn.recv(1, socket.MSG_DONTWAIT)
            state = "eof"
        except BlockingIOError:
            state = "open"
        except OSError as e:
            state = errno.errorcode.get(e.errno, str(e.errno))
        body = ("%d %d %s" % (nonce, os.getpid(), state)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
socketserver.TCPServer.allow_reuse_address = True
with socketserver.TCPServer(("127.0.0.1", port), H) as s:
    print("ready on", port, flush=True)
    s.serve_forever()
"#;

#[test]
fn a_service_holding_a_connection_is_stored_with_it_closed() {
    let Some((_turn, dir)) = python_test("run-conn") else {
        return;
    };
    std::fs::write(dir.path("conn.py"), PY_CONNECTED).unwrap();
    let db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let db_port = db.local_addr().unwrap().port().to_string();
    let port = free_port();
    let (cache, ready) = (
        format!("{}/{{key}}.img", dir.0.display()),
        format!("tcp:127.0.0.1:{port}"),
    );
    let script = dir.path("conn.py");
    let args = [
        "--cache",
        &cache,
        "--ready-when",
        &ready,
        "--",
        "python3",
        script.to_str().unwrap(),
        &port.to_string(),
        &db_port,
    ];
    let answer = |port: u16| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(T)).unwrap();
        write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
    };

    let (o, v) = run_cache(&args);
    let miss = v.unwrap_or_else(|| panic!("cold run failed: {}", text(&o)));
    let mut guard = Stop(vec![pid_of(&miss)]);
    // The service's connection, held open on this side all along.
    let (_held, _) = db.accept().unwrap();
    assert_eq!(miss["cache"], "miss", "{miss}");
    assert_eq!(
        miss["warning"],
        serde_json::Value::Null,
        "stored despite the connection: {miss}"
    );
    let cold = answer(port);
    assert!(cold.ends_with(" open"), "{cold}");
    stop(pid_of(&miss));

    let (o, v) = run_cache(&args);
    let hit = v.unwrap_or_else(|| panic!("warm run failed: {}", text(&o)));
    guard.0.push(pid_of(&hit));
    assert_eq!(hit["cache"], "hit", "{hit} {}", text(&o));
    let warm = answer(port);
    assert_eq!(
        warm,
        format!("{} ECONNABORTED", cold.trim_end_matches(" open")),
        "the same process, its connection closed"
    );
    stop(pid_of(&hit));
}

/// A service with a child (a tree: lazy restore takes single processes)
/// is restored eagerly, child and all.
#[test]
fn a_service_with_a_child_comes_back_eagerly() {
    let Some((_turn, dir)) = python_test("run-tree") else {
        return;
    };
    let port = free_port();
    let line = format!("python3 {} {port} & wait", dir.path("svc.py").display());
    miss_then_hit(&dir, &["sh", "-c", &line], port);
}

/// Two runs racing on one key (each its own port): both succeed, exactly
/// one checkpoint is stored, and it is whole (the next run hits it).
#[test]
fn racing_misses_on_one_key_store_one_whole_entry() {
    let Some((_turn, dir)) = python_test("run-race") else {
        return;
    };
    let cache = format!("{}/entry.img", dir.0.display());
    let script = dir.path("svc.py").display().to_string();
    let ports = [free_port(), free_port()];
    let racers: Vec<_> = ports
        .iter()
        .map(|&port| {
            let (cache, script) = (cache.clone(), script.clone());
            std::thread::spawn(move || {
                let ready = format!("tcp:127.0.0.1:{port}");
                let port = port.to_string();
                run_cache(&[
                    "--cache",
                    &cache,
                    "--key",
                    "raced",
                    "--ready-when",
                    &ready,
                    "--",
                    "python3",
                    &script,
                    &port,
                ])
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let mut guard = Stop(Vec::new());
    let mut uploaded = 0;
    for (o, v) in &results {
        let v = v
            .as_ref()
            .unwrap_or_else(|| panic!("a racer failed: {}", text(o)));
        guard.0.push(pid_of(v));
        assert_eq!(v["cache"], "miss", "{v}");
        if v["uploaded_bytes"].as_u64().unwrap() > 0 {
            uploaded += 1;
        }
    }
    assert_eq!(uploaded, 1, "exactly one racer stores its checkpoint");
    let nonces: Vec<u64> = ports.iter().map(|&p| ask(p).0).collect();
    for (_, v) in &results {
        stop(pid_of(v.as_ref().unwrap()));
    }
    // The stored one is whole: a third run restores it (whichever it was).
    let o = run(&["inspect", &cache], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let port = ports[0];
    let (o, v) = run_cache(&[
        "--cache",
        &cache,
        "--key",
        "raced",
        "--ready-when",
        "exec:true",
        "--",
        "python3",
        &script,
        &port.to_string(),
    ]);
    let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
    guard.0.push(pid_of(&v));
    assert_eq!(v["cache"], "hit", "{v}");
    std::thread::sleep(Duration::from_millis(200));
    // (The probe is closed before asking: the service answers one
    // connection at a time.)
    let answers: Vec<u64> = ports
        .iter()
        .filter(|&&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())
        .map(|&p| ask(p).0)
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "the restored copy listens on one racer's port"
    );
    assert!(nonces.contains(&answers[0]));
    stop(pid_of(&v));
}

/// A damaged entry: a warning, a cold start, and the entry is replaced
/// (the next run hits). Cut short (an interrupted copy): found when the
/// image is opened. Damaged in the middle: `--eager` checks every byte
/// before the service runs; a lazy hit finds the bad frame when it arrives,
/// then kills the service (never wrong memory) and removes the entry, so
/// that the next run starts cold. An entry stored under another key (a URL
/// without {key}): never used, a cold start.
#[test]
fn a_damaged_or_stale_entry_means_a_cold_start_with_a_warning() {
    let Some((_turn, dir)) = python_test("run-bad") else {
        return;
    };
    let cache = dir.path("entry.img").display().to_string();
    let script = dir.path("svc.py").display().to_string();
    let port = free_port();
    let ready = format!("tcp:127.0.0.1:{port}");
    let port_s = port.to_string();
    let with_key = |key: &str, eager: bool| {
        let mut args = vec!["--cache", &cache, "--key", key, "--ready-when", &ready];
        if eager {
            args.push("--eager");
        }
        args.extend(["--", "python3", &script, &port_s]);
        run_cache(&args)
    };
    let cold_with_warning = |o: &Output, v: &serde_json::Value| {
        assert_eq!(v["cache"], "miss", "{v}");
        assert!(v["warning"].is_string(), "{v}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("warning: cache entry"),
            "{}",
            text(o)
        );
        assert!(v["uploaded_bytes"].as_u64().unwrap() > 0, "replaced: {v}");
    };
    let hits = |key: &str| {
        let (o, v) = with_key(key, false);
        let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
        assert_eq!(v["cache"], "hit", "the replaced entry is whole: {v}");
        stop(pid_of(&v));
    };
    let (o, v) = with_key("one", false);
    let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
    stop(pid_of(&v));
    let whole = std::fs::read(&cache).unwrap();

    // Cut short.
    std::fs::write(&cache, &whole[..whole.len() * 2 / 3]).unwrap();
    let (o, v) = with_key("one", false);
    let v = v.unwrap_or_else(|| panic!("a damaged entry failed the run: {}", text(&o)));
    cold_with_warning(&o, &v);
    stop(pid_of(&v));
    hits("one");

    // The middle overwritten, restored eagerly.
    let damaged = |bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 4096].fill(0x5a);
        std::fs::write(&cache, &bytes).unwrap();
    };
    let whole = std::fs::read(&cache).unwrap();
    damaged(&whole);
    let (o, v) = with_key("one", true);
    let v = v.unwrap_or_else(|| panic!("a damaged entry failed the run: {}", text(&o)));
    cold_with_warning(&o, &v);
    stop(pid_of(&v));
    hits("one");

    // The middle overwritten, restored lazily: if the bad frame arrives
    // after the service is ready, the service is killed and the entry
    // removed; before (a frame it could not run without), a cold start.
    let whole = std::fs::read(&cache).unwrap();
    damaged(&whole);
    let (o, v) = with_key("one", false);
    let v = v.unwrap_or_else(|| panic!("a damaged entry failed the run: {}", text(&o)));
    if v["cache"] == "hit" {
        let pid = pid_of(&v);
        assert!(
            wait_gone(pid, T),
            "the service restored from a damaged image runs on: {v}"
        );
        assert!(
            wait_until(T, || !std::path::Path::new(&cache).exists()),
            "the damaged entry was not removed"
        );
        let (o, v) = with_key("one", false);
        let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
        assert_eq!(v["cache"], "miss", "{v}");
        assert!(v["uploaded_bytes"].as_u64().unwrap() > 0, "stored: {v}");
        stop(pid_of(&v));
    } else {
        cold_with_warning(&o, &v);
        stop(pid_of(&v));
    }
    hits("one");

    // Stale: the entry holds key "one"; this run's key is "two".
    let (o, v) = with_key("two", false);
    let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
    assert_eq!(v["cache"], "miss", "{v}");
    assert!(
        v["warning"].as_str().unwrap().contains("crstream.run.key"),
        "{v}"
    );
    stop(pid_of(&v));
}

/// The default key covers the executable: a service whose script changed
/// has another key (`--print-key`) and starts cold, even from a URL without
/// {key} that holds the old one's checkpoint.
#[test]
fn a_changed_executable_changes_the_key_and_starts_cold() {
    let Some((_turn, dir)) = python_test("run-exe") else {
        return;
    };
    let exe = dir.path("svc");
    let write_exe = |extra: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &exe,
            format!("#!/usr/bin/env python3\n{PY_SERVICE}\n{extra}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_exe("");
    let cache = dir.path("entry.img").display().to_string();
    let port = free_port();
    let (exe_s, port_s) = (exe.display().to_string(), port.to_string());
    let ready = format!("tcp:127.0.0.1:{port}");
    let args = [
        "--cache",
        &cache,
        "--ready-when",
        &ready,
        "--",
        &exe_s,
        &port_s,
    ];
    let key = |args: &[&str]| {
        let mut a = vec!["run", "--print-key"];
        a.extend_from_slice(args);
        let o = run(&a, &[]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let k1 = key(&args);
    assert_eq!(k1, key(&args), "the key is stable");
    let (o, v) = run_cache(&args);
    let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
    assert_eq!(
        (v["cache"].as_str(), v["key"].as_str()),
        (Some("miss"), Some(k1.as_str()))
    );
    stop(pid_of(&v));

    write_exe("# changed");
    let k2 = key(&args);
    assert_ne!(k1, k2);
    let (o, v) = run_cache(&args);
    let v = v.unwrap_or_else(|| panic!("{}", text(&o)));
    assert_eq!(v["cache"], "miss", "{v}");
    assert!(v["warning"].as_str().unwrap().contains(&k1), "{v}");
    stop(pid_of(&v));
}

/// A cold start that is not ready in time fails the run, leaves no
/// process and stores nothing; `log:` readiness and `--wait` pass the
/// service's exit status on, cold and restored.
#[test]
fn readiness_timeout_log_condition_and_wait() {
    let Some((_turn, dir)) = python_test("run-ready") else {
        return;
    };
    let (timeout_key, wait_key) = (
        format!("timeout-{}", std::process::id()),
        format!("wait-{}", std::process::id()),
    );
    let cache = format!("{}/{{key}}.img", dir.0.display());
    let port = free_port().to_string();
    let mark = dir.path("mark");
    let o = {
        let mut c = support::crstream();
        c.args([
            "run",
            "--key",
            &timeout_key,
            "--cache",
            &cache,
            "--ready-when",
            &format!("tcp:{port}"),
            "--timeout",
            "1",
            "--",
            "sh",
            "-c",
            "echo $$ > \"$MARK\"; exec sleep 60",
        ])
        .env("MARK", &mark)
        .stdin(std::process::Stdio::null());
        c.output().unwrap()
    };
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not ready after 1.0 s"),
        "{}",
        text(&o)
    );
    let inner: i32 = std::fs::read_to_string(&mark)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(inner, 2, "started as PID 2 of its namespace");
    let stored = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "img"));
    assert!(
        !stored,
        "nothing is stored for a service that never got ready"
    );

    // log: readiness, --wait with the service's status, cold then warm.
    let script =
        "import time; print('ready now', flush=True); time.sleep(1.5); raise SystemExit(7)";
    for want in ["miss", "hit"] {
        // Restored, it ends while its lazy server, paused once every page
        // is in, still is its parent: its status must outlive the server.
        let pause: &[(&str, &str)] = match want {
            "hit" => &[("CRSTREAM_TEST_PAUSE_AT", "lazy-all-in:1")],
            _ => &[],
        };
        let o = run(
            &[
                "run",
                "--key",
                &wait_key,
                "--cache",
                &cache,
                "--ready-when",
                "log:^ready",
                "--wait",
                "--",
                "python3",
                "-c",
                script,
            ],
            pause,
        );
        assert_eq!(o.status.code(), Some(7), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("cache {want}")), "{}", text(&o));
        if want == "miss" {
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("ready now"),
                "the output is passed through: {}",
                text(&o)
            );
        }
    }
    // The output files of these runs (which print no JSON).
    for e in std::fs::read_dir("/tmp").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if [&timeout_key, &wait_key]
            .iter()
            .any(|k| name.starts_with(&format!("crstream-run-{k}.")))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
