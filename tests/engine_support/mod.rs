//! Helpers for the engine end-to-end tests: run real workloads (the
//! examples/wl_*.rs programs) and the real crstream binary.
//!
//! Every process a test starts is killed by PID and reaped (or waited for
//! until /proc/PID is gone) by a Drop guard, even when the test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn crstream() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crstream"))
}

/// A workload example, built next to the binary (`cargo build --examples`,
/// or any plain `cargo test`, builds them).
pub fn example(name: &str) -> PathBuf {
    let p = crstream().parent().unwrap().join("examples").join(name);
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

    /// Kills it (SIGKILL by PID) and waits until the PID is free.
    pub fn kill(&mut self) {
        // SAFETY: signalling the process this guard owns.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        wait_gone(self.pid, Duration::from_secs(10));
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
    let mut c = Command::new(crstream());
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

/// `crstream restore -i IMG --detach --json`; returns (pid, tids).
pub fn restore(img: &Path) -> (i32, Vec<i32>) {
    let o = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach", "--json"],
        &[],
    );
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
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
