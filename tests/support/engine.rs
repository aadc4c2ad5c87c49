//! Real workloads (the examples/wl_*.rs programs and real programs)
//! dumped and restored by the real crstream binary.
//!
//! Every process a test starts is killed by PID and reaped (or waited for
//! until /proc/PID is gone) by a Drop guard, even when the test fails.

use super::cli::crstream;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the crstream binary under test.
pub fn crstream_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crstream"))
}

/// A workload example, built next to the binary (`cargo build --examples`,
/// or any plain `cargo test`, builds them).
pub fn example(name: &str) -> PathBuf {
    let p = crstream_bin().parent().unwrap().join("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --examples` first",
        p.display()
    );
    p
}

pub fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until /proc/PID is gone (PID 1 reaps orphans late).
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let t = Instant::now();
    while proc_exists(pid) {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Waits until `cond` holds; false if it still does not after `timeout`.
pub fn wait_until(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}:"))
            .map(|v| v.trim().to_string())
    })
}

pub fn tasks(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Asserts the process runs and is not stopped or traced.
pub fn assert_running_untraced(pid: i32) {
    let state = status_field(pid, "State").unwrap_or_default();
    assert!(
        !state.starts_with('t') && !state.starts_with('T') && !state.starts_with('Z'),
        "pid {pid} state {state}"
    );
    assert_eq!(
        status_field(pid, "TracerPid").as_deref(),
        Some("0"),
        "pid {pid} is traced"
    );
    for t in tasks(pid) {
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap_or_default();
        assert!(s.contains("TracerPid:\t0"), "tid {t} is traced");
    }
}

pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("crstream-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process under test: either our child (spawned) or a restored one.
pub struct Workload {
    pub pid: i32,
    child: Option<Child>,
    pub report: PathBuf,
}

impl Workload {
    /// Starts a workload example with REPORT as its first argument; stdio
    /// goes to /dev/null and a log file (the engine refuses pipes).
    pub fn spawn(name: &str, report: PathBuf, args: &[&str]) -> Self {
        let log = std::fs::File::create(report.with_extension("log")).unwrap();
        let child = Command::new(example(name))
            .arg(&report)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Workload {
            pid: child.id() as i32,
            child: Some(child),
            report,
        }
    }

    /// A process started some other way (e.g. with its own stdio).
    pub fn from_child(child: Child, report: PathBuf) -> Self {
        Workload {
            pid: child.id() as i32,
            child: Some(child),
            report,
        }
    }

    pub fn read_report(&self) -> Option<String> {
        std::fs::read_to_string(&self.report).ok()
    }

    /// Waits until the report satisfies `pred`; panics after `timeout`.
    pub fn wait_report(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            if let Some(r) = self.read_report() {
                if pred(&r) {
                    return r;
                }
            }
            if t.elapsed() > timeout {
                panic!(
                    "pid {}: report {:?} never satisfied the condition; log: {}",
                    self.pid,
                    self.read_report(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.report.with_extension("log")).unwrap_or_default()
    }

    /// After a dump killed it: reap it and wait until its PID is free.
    pub fn reap_dumped(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = c.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL),
                "killed by the dump"
            );
        }
        assert!(
            wait_gone(self.pid, Duration::from_secs(10)),
            "pid {} still exists",
            self.pid
        );
    }

    /// After a dump killed it: reaps it on a thread after `delay` (a
    /// parent that is slow to collect its child's exit).
    pub fn reap_later(&mut self, delay: Duration) -> std::thread::JoinHandle<()> {
        let mut child = self.child.take().expect("our child");
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let st = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL),
                "killed by the dump"
            );
        })
    }

    /// Kills it (SIGKILL by PID) and waits until the PID is free.
    /// Kills the workload and its descendants (a tree workload's, which
    /// would outlive it).
    pub fn kill(&mut self) {
        let children = descendants_of(self.pid);
        // SAFETY: signalling the process this guard owns and its children.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            for &c in &children {
                libc::kill(c, libc::SIGKILL);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        for pid in children.into_iter().chain([self.pid]) {
            wait_gone(pid, Duration::from_secs(10));
        }
    }

    /// Now the same PID names a restored process (not our child).
    pub fn restored(&mut self, pid: i32) {
        assert_eq!(pid, self.pid, "restored with another PID");
        self.child = None;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.child.is_some() || proc_exists(self.pid) {
            self.kill();
        }
    }
}

pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = crstream();
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn dump(pid: i32, img: &Path, extra: &[&str]) -> Output {
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "-t", &pid_s, "-o", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args, &[]);
    assert!(o.status.success(), "dump failed: {}", text(&o));
    o
}

/// Dumps the workload to `img` (which kills it), reaps it, and restores
/// it: returns the PID it runs as again (its own).
pub fn dump_and_restore(w: &mut Workload, img: &Path) -> i32 {
    dump(w.pid, img, &[]);
    w.reap_dumped();
    let (pid, _) = restore(img);
    w.restored(pid);
    pid
}

/// python3 running `script` (its arguments: DIR/report, then `args`),
/// which reports "PID N ..." until DIR/report.go exists, then what it
/// checked: once it has reported twice, it is dumped and restored
/// (DIR/img), report.go is made, and the first report holding `done` is
/// returned with the workload.
pub fn python_across_restore(
    dir: &TestDir,
    script: &str,
    args: &[PathBuf],
    done: &str,
) -> (Workload, String) {
    let timeout = Duration::from_secs(30);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(dir.path("report")).args(args);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(timeout, |r| field(r, 0, 1) >= 2);
    dump_and_restore(&mut w, &dir.path("img"));
    std::fs::write(dir.path("report.go"), b"").unwrap();
    let r = w.wait_report(timeout, |r| r.contains(done));
    (w, r)
}

/// `crstream restore -i IMG --detach --json`; returns (pid, tids).
pub fn restore(img: &Path) -> (i32, Vec<i32>) {
    let o = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach", "--json"],
        &[],
    );
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["server_pid"].is_null(), "nothing stays behind: {v}");
    let pid = v["pid"].as_i64().unwrap() as i32;
    let tids = v["tids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap() as i32)
        .collect();
    (pid, tids)
}

/// First whitespace-separated field of line `line` of a report, as u64.
pub fn field(report: &str, line: usize, idx: usize) -> u64 {
    report
        .lines()
        .nth(line)
        .and_then(|l| l.split_whitespace().nth(idx))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The status word of a report whose first line is "PID COUNTER STATUS".
pub fn status(report: &str) -> &str {
    report
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
}

/// `crstream dump -t PID -o IMG [extra]` that must fail; returns its
/// stderr.
pub fn dump_refused(pid: i32, img: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "-t", &pid_s, "-o", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args, env);
    assert!(!o.status.success(), "the dump should fail: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `crstream restore -i SRC --detach` that must fail; returns its stderr.
pub fn restore_refused(src: &str, env: &[(&str, &str)]) -> String {
    let o = run(&["restore", "-i", src, "--detach"], env);
    assert!(!o.status.success(), "the restore should fail: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// --- shared by the real-program and lazy-restore tests ---

/// The system's python3: not a pyenv shim under root's home, which runs
/// helper processes of its own and which other users cannot run.
pub fn system_python() -> &'static str {
    let python = "/usr/bin/python3";
    assert!(
        Path::new(python).exists(),
        "{python} is needed for this test"
    );
    python
}

/// Whether `program` can run (`args` print its version); false means the
/// test skips, which CRSTREAM_TEST_REQUIRE_PROGRAMS (set by `.ci/test`)
/// turns into a failure.
pub fn available(program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
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

/// GET `path` from 127.0.0.1:`port`; the response body, or None.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The records version of the image at `img`, as `inspect` shows it.
pub fn records_version(img: &Path) -> u32 {
    let o = run(&["inspect", img.to_str().unwrap()], &[]);
    text(&o)
        .split("records version ")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no records version: {}", text(&o)))
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Whether `tool` runs (`tool --version`).
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Spawns `cmd` with stdin /dev/null, output to a log file and no other
/// inherited fds (a test runner's pipes would make the dump refuse).
pub fn spawn_isolated(mut cmd: Command, report: PathBuf) -> Workload {
    let log = std::fs::File::create(report.with_extension("log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: close_range is async-signal-safe; CLOEXEC keeps std's own
    // exec-error pipe working until exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3,
                u32::MAX,
                4, /* CLOSE_RANGE_CLOEXEC */
            );
            Ok(())
        });
    }
    Workload::from_child(cmd.spawn().unwrap(), report)
}

/// A small multi-threaded Java program: 4 threads count and do floating
/// point work; it reports "pid OK|CORRUPT c0 c1 c2 c3" every 100 ms.
pub const JAVA: &str = r#"
import java.util.concurrent.atomic.*;
public class Wl {
    public static void main(String[] args) throws Exception {
        int n = 4;
        AtomicLongArray counters = new AtomicLongArray(n);
        AtomicBoolean bad = new AtomicBoolean(false);
        for (int i = 0; i < n; i++) {
            final int idx = i;
            Thread t = new Thread(() -> {
                long local = 0;
                java.util.HashMap<Integer, Long> m = new java.util.HashMap<>();
                while (true) {
                    local++;
                    m.put((int) (local % 1000), local);
                    if (Double.isNaN(Math.sqrt(local) * Math.sin(local))) bad.set(true);
                    counters.set(idx, local);
                    try { Thread.sleep(5); } catch (InterruptedException e) { return; }
                }
            });
            t.setDaemon(true);
            t.start();
        }
        long pid = ProcessHandle.current().pid();
        while (true) {
            StringBuilder sb = new StringBuilder();
            sb.append(pid).append(' ').append(bad.get() ? "CORRUPT" : "OK");
            for (int i = 0; i < n; i++) sb.append(' ').append(counters.get(i));
            sb.append('\n');
            // java.io, not NIO: NIO's file dispatcher keeps a socketpair fd,
            // which the engine does not support.
            java.io.File tmp = new java.io.File(args[0] + ".tmp");
            try (java.io.FileOutputStream out = new java.io.FileOutputStream(tmp)) {
                out.write(sb.toString().getBytes());
            }
            tmp.renameTo(new java.io.File(args[0]));
            Thread.sleep(100);
        }
    }
}
"#;

/// Compiles the Java program in `dir` and starts it, reporting to
/// `dir/report`.
pub fn start_java(dir: &TestDir) -> Workload {
    std::fs::write(dir.path("Wl.java"), JAVA).unwrap();
    let st = Command::new("javac")
        .arg(dir.path("Wl.java"))
        .status()
        .unwrap();
    assert!(st.success(), "javac failed");
    let mut cmd = Command::new("java");
    cmd.args(["-XX:-UsePerfData", "-cp"])
        .arg(&dir.0)
        .arg("Wl")
        .arg(dir.path("report"));
    spawn_isolated(cmd, dir.path("report"))
}

pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A running `crstream restore --lazy --json [EXTRA]`: it prints the PID
/// and TIDs as soon as the process runs. Without `--detach` that crstream
/// serves the pages, then waits for the process; with `--detach` the
/// command returns at once, and the server it started (`server_pid`)
/// serves them, writing its errors to a log, and exits once all are in.
pub struct LazyRestore {
    child: Option<Child>,
    /// A detached restore's server: its PID, and its log.
    server: Option<(i32, PathBuf)>,
    pub pid: i32,
    pub tids: Vec<i32>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LazyRestore {
    pub fn start(src: &str, env: &[(&str, &str)], extra: &[&str]) -> Self {
        static LOGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let detached = extra.contains(&"--detach");
        let log = std::env::temp_dir().join(format!(
            "crstream-lazy-{}-{}.log",
            std::process::id(),
            LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut c = crstream();
        c.args(["restore", "--lazy", "-i", src, "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("CRSTREAM_LOG");
        if detached {
            c.arg("--log").arg(&log);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v,
            Err(_) => {
                let st = child.wait().unwrap();
                panic!(
                    "lazy restore printed no PID ({st:?}): {line}\n{}",
                    stderr.join().unwrap()
                );
            }
        };
        let pid = v["pid"].as_i64().unwrap() as i32;
        let tids = v["tids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap() as i32)
            .collect();
        let server_pid = v["server_pid"].as_i64().unwrap() as i32;
        let (child, server) = if detached {
            // The command returns as soon as the process runs.
            let st = child.wait().unwrap();
            assert!(st.success(), "crstream restore --lazy --detach: {st:?}");
            assert_ne!(server_pid, child.id() as i32, "no server of its own");
            (None, Some((server_pid, log)))
        } else {
            assert_eq!(server_pid, child.id() as i32);
            (Some(child), None)
        };
        LazyRestore {
            child,
            server,
            pid,
            tids,
            stderr: Some(stderr),
        }
    }

    /// PID of the crstream process serving the pages.
    pub fn crstream_pid(&self) -> i32 {
        match &self.server {
            Some((pid, _)) => *pid,
            None => self.child.as_ref().expect("running").id() as i32,
        }
    }

    /// Waits for the crstream serving the pages to exit; returns its status
    /// and what it wrote (a detached server's status is read from its log:
    /// failed if it logged an error).
    pub fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        use std::os::unix::process::ExitStatusExt;
        let t = Instant::now();
        if let Some((server, log)) = self.server.take() {
            // Not our child: gone, or a zombie its new parent has yet to reap.
            while proc_exists(server)
                && !status_field(server, "State").is_some_and(|s| s.starts_with('Z'))
            {
                assert!(
                    t.elapsed() < timeout,
                    "crstream restore --lazy server {server} did not finish in {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            let code = if text.contains("crstream: error:") {
                1
            } else {
                0
            };
            let stderr = self.stderr.take().unwrap().join().unwrap();
            return (ExitStatusExt::from_raw(code << 8), stderr + &text);
        }
        let mut child = self.child.take().unwrap();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("crstream restore --lazy did not finish in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (st, self.stderr.take().unwrap().join().unwrap())
    }
}

impl Drop for LazyRestore {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((server, log)) = self.server.take() {
            // SAFETY: ending the server this guard started, by PID.
            unsafe { libc::kill(server, libc::SIGKILL) };
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Child processes of `pid` (all its threads).
/// Children, grandchildren, ... of `pid`, parents before their children.
pub fn descendants_of(pid: i32) -> Vec<i32> {
    let mut all = children_of(pid);
    let mut i = 0;
    while i < all.len() {
        let next = children_of(all[i]);
        all.extend(next);
        i += 1;
    }
    all
}

pub fn children_of(pid: i32) -> Vec<i32> {
    tasks(pid)
        .into_iter()
        .flat_map(|t| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{t}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

// ---------------------------------------------------------------- trees

const TREE_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills every listed process by PID when dropped (a restored tree is not
/// our child), and waits until the PIDs are free.
pub struct TreeGuard(pub Vec<i32>);

impl TreeGuard {
    pub fn kill(&mut self) {
        for &pid in &self.0 {
            // SAFETY: signalling processes this test started or restored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            assert!(wait_gone(pid, TREE_TIMEOUT), "pid {pid} still exists");
        }
        self.0.clear();
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Restores `img` with --detach --json twice over (killing in between);
/// `check` verifies each round and gets the restored pids.
pub fn restore_twice(src: &str, env: &[(&str, &str)], w: &mut Workload, check: impl Fn(&Workload)) {
    // A workload frozen while it wrote its next report held REPORT.tmp
    // open: the first copy renames it away, and the second needs it back
    // as it was at the dump.
    let tmp = PathBuf::from(format!("{}.tmp", w.report.display()));
    let at_dump = std::fs::read(&tmp).ok();
    for _ in 0..2 {
        if let Some(bytes) = &at_dump {
            std::fs::write(&tmp, bytes).unwrap();
        }
        let mut g = restore_tree(src, env, w);
        check(w);
        for &pid in &g.0 {
            assert_running_untraced(pid);
        }
        g.0.extend(children_of(w.pid));
        g.kill();
    }
}

/// Restores `src` with --detach --json as `w` (its root); a guard of the
/// restored processes.
pub fn restore_tree(src: &str, env: &[(&str, &str)], w: &mut Workload) -> TreeGuard {
    let o = run(&["restore", "-i", src, "--detach", "--json"], env);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let procs: Vec<i32> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    let g = TreeGuard(procs);
    w.restored(v["pid"].as_i64().unwrap() as i32);
    g
}

/// Dumps the tree of `w` to `dest`, waits until every dumped PID is free.
pub fn dump_tree(w: &mut Workload, dest: &str, env: &[(&str, &str)]) -> Vec<i32> {
    pids_of(&dump_tree_with(w, dest, &[], env))
}

/// [`dump_tree`] with `extra` arguments; the dump's output (`--json`).
pub fn dump_tree_with(
    w: &mut Workload,
    dest: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-o", dest, "--json"];
    args.extend_from_slice(extra);
    let o = run(&args, env);
    assert!(o.status.success(), "dump failed: {}", text(&o));
    w.reap_dumped();
    for pid in pids_of(&o) {
        assert!(wait_gone(pid, TREE_TIMEOUT), "pid {pid} survived the dump");
    }
    o
}

/// The PIDs a `dump --json` output says it dumped.
fn pids_of(o: &Output) -> Vec<i32> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect()
}

/// The `nft` program (root's PATH may lack /usr/sbin).
pub fn nft() -> Command {
    let sbin = Path::new("/usr/sbin/nft");
    Command::new(if sbin.exists() {
        sbin
    } else {
        Path::new("nft")
    })
}

/// Deletes, when dropped, the network lock a dump with --tcp-established
/// named in its --json summary (a failed test would leave it behind).
pub struct NetLockGuard(pub String);

impl NetLockGuard {
    /// The guard of the lock a `dump --json` output names, if any.
    pub fn of(dump: &Output) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(&dump.stdout).ok()?;
        Some(NetLockGuard(v["net_lock"].as_str()?.to_string()))
    }
}

impl Drop for NetLockGuard {
    fn drop(&mut self) {
        let _ = nft()
            .args(["delete", "table", "inet", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// What wl_cow keeps shared between its parent and its child: all of its
/// 8192 pages but the quarter either side rewrote and the 16 the child
/// dropped.
pub const COW_PAGES_SHARED: usize = 8192 - 8192 / 4 - 16;

/// How many pages of wl_cow's area `pid` (its parent) shares with its only
/// child: the same physical frame at the same address (pagemap PFNs).
pub fn cow_pages_shared_with_child(pid: i32) -> usize {
    const AREA: u64 = 0x5a00_0000_0000;
    const PAGES: usize = 8192;
    let frames = |pid: i32| -> Vec<u64> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
        let mut buf = vec![0u8; PAGES * 8];
        f.read_exact_at(&mut buf, AREA / 4096 * 8).unwrap();
        buf.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
            .map(|e| if e >> 63 == 1 { e & ((1 << 55) - 1) } else { 0 })
            .collect()
    };
    let kids = children_of(pid);
    assert_eq!(kids.len(), 1, "{kids:?}");
    let (ours, theirs) = (frames(pid), frames(kids[0]));
    ours.iter()
        .zip(&theirs)
        .filter(|(a, b)| **a != 0 && a == b)
        .count()
}

/// Before a restore of an image that may have been dumped while its
/// workload was writing `REPORT.tmp` (between the write and the rename that
/// publish a report): the image then holds that fd by that name, and a
/// restore after the first one, whose process went on and renamed it,
/// would find it missing (restore refuses a missing file). Puts a file of
/// that name back, longer than any report, owned as the report is (a
/// workload that runs as another user must still be able to write it).
pub fn put_back_report_tmp(report: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let mut tmp = report.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, vec![b' '; 4096]).unwrap();
    if let Ok(m) = std::fs::metadata(report) {
        std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid())).unwrap();
    }
}

/// The start addresses (hex) of wl_advice's areas, from its report.
pub fn advice_starts(report: &str) -> Vec<String> {
    report
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Which of the 16 pages of wl_advice's area at `start` in `pid` are a guard region
/// (/proc/PID/pagemap: PM_GUARD_REGION).
pub fn guard_pages(pid: i32, start: u64) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut entries = [0u8; 16 * 8];
    pagemap
        .read_exact_at(&mut entries, start / 4096 * 8)
        .unwrap();
    (0..16)
        .filter(|&i| {
            let e = u64::from_ne_bytes(entries[i * 8..][..8].try_into().unwrap());
            e & (1 << 58) != 0
        })
        .map(|i| i as u64)
        .collect()
}

/// The VmFlags line of the area of `pid` that starts at `start` (hex).
pub fn vm_flags(pid: i32, start: &str) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_area = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && range.contains('-')
            && !line.starts_with("VmFlags")
            && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            in_area = range.split('-').next() == Some(start);
        } else if in_area && let Some(flags) = line.strip_prefix("VmFlags:") {
            let mut f: Vec<&str> = flags.split_whitespace().collect();
            f.sort();
            return f.join(" ");
        }
    }
    panic!("no area at {start} in pid {pid}");
}

/// Files named `prefix...` that appear in `dir` while a test runs (left
/// there by the programs it kills), removed when the test ends.
pub struct NewFilesRemoved {
    dir: PathBuf,
    prefix: &'static str,
    before: std::collections::HashSet<std::ffi::OsString>,
}

impl NewFilesRemoved {
    pub fn new(dir: &str, prefix: &'static str) -> Self {
        let dir = PathBuf::from(dir);
        let before = names_in(&dir);
        Self {
            dir,
            prefix,
            before,
        }
    }
}

fn names_in(dir: &Path) -> std::collections::HashSet<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.file_name())).collect())
        .unwrap_or_default()
}

impl Drop for NewFilesRemoved {
    fn drop(&mut self) {
        for name in names_in(&self.dir).difference(&self.before) {
            if name.to_string_lossy().starts_with(self.prefix) {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }
}
