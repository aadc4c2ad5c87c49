//! Dump of the multi-threaded Java program (as in engine_programs.rs) to the
//! S3 test server, then restore from it, once without and once with
//! `--lazy`: same PID and TIDs, counters continue past their dumped values.
//! Skipped (with a message) when java / javac are not installed.
//!
//! Run with: cargo build --examples && cargo test --test engine_java_s3
//! (needs CRSTREAM_TEST_S3_ENDPOINT, as set by .ci/test).
//!
//! `have`, `spawn` and the Java program are copied from engine_programs.rs,
//! where they are private to that test crate.

#[path = "engine_support/mod.rs"]
mod support;

#[path = "support/mod.rs"]
mod s3;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(60);

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Spawns `cmd` with stdin /dev/null, output to a log file and no other
/// inherited fds (a test runner's pipes would make the dump refuse).
fn spawn(mut cmd: Command, report: std::path::PathBuf) -> Workload {
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

const JAVA: &str = r#"
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

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A running `crstream restore --lazy --detach --json`: it prints the PID
/// and TIDs as soon as the process runs and exits once every page is in.
struct LazyRestore {
    child: Option<Child>,
    pid: i32,
    tids: Vec<i32>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LazyRestore {
    fn start(src: &str, env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(crstream());
        c.args(["restore", "--lazy", "-i", src, "--detach", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("CRSTREAM_LOG");
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
        LazyRestore {
            child: Some(child),
            pid,
            tids,
            stderr: Some(stderr),
        }
    }

    /// Waits for crstream to exit; returns its status and stderr.
    fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
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
    }
}

/// Waits until every thread counter is well past its value at the dump
/// and checks the program reports no corruption.
fn check_continues(w: &Workload, pid: i32, at_dump: &str) {
    let r = w.wait_report(T, |r| {
        field(r, 0, 0) == pid as u64 && (2..6).all(|i| field(r, 0, i) > field(at_dump, 0, i) + 50)
    });
    assert!(r.contains(" OK "), "{r}\n{}", w.log());
}

#[test]
fn java_restored_from_s3_with_and_without_lazy() {
    if !have("javac") || !have("java") {
        eprintln!("java/javac not installed: skipped");
        return;
    }
    let env = s3::s3_env();
    let env = env_refs(&env);
    let bucket = s3::s3_bucket("java");
    let url = format!("s3://{bucket}/java.img");

    let dir = TestDir::new("java-s3");
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
    let mut w = spawn(cmd, dir.path("report"));
    w.wait_report(T, |r| (2..6).all(|i| field(r, 0, i) >= 50));
    let tids_before = tasks(w.pid);
    let o = run(&["dump", "-t", &w.pid.to_string(), "-o", &url], &env);
    assert!(o.status.success(), "dump failed: {}", text(&o));
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    assert!(s3::s3_object_exists(&bucket, "java.img"), "no object {url}");

    // (a) Plain restore from S3.
    let o = run(&["restore", "-i", &url, "--detach"], &env);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no PID printed: {}", text(&o)));
    w.restored(pid);
    assert_eq!(tasks(pid), tids_before, "TIDs after restore");
    check_continues(&w, pid, &at_dump);
    assert_eq!(tasks(pid), tids_before, "TIDs after running on");
    assert_running_untraced(pid);
    w.kill();
    assert!(!proc_exists(pid), "pid {pid} still exists");
    std::fs::remove_file(&w.report).unwrap();

    // (b) Lazy restore from S3: counters must again continue past their
    // dumped values (the image is unchanged).
    let lr = LazyRestore::start(&url, &env);
    let pid = lr.pid;
    w.restored(pid);
    let mut tids = lr.tids.clone();
    tids.sort_unstable();
    assert_eq!(tids, tids_before, "TIDs printed by the lazy restore");
    check_continues(&w, pid, &at_dump);
    let (st, stderr) = lr.finish(T);
    assert!(st.success(), "lazy restore failed: {st:?} {stderr}");
    // After every page is in, the process runs on without crstream.
    let now = w.read_report().unwrap();
    check_continues(&w, pid, &now);
    assert_eq!(tasks(pid), tids_before, "TIDs after the lazy restore");
    assert_running_untraced(pid);
    w.kill();
    assert!(!proc_exists(pid), "pid {pid} still exists");
}
