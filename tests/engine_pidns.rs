//! PID namespaces: `restore --pidns` brings a tree back in a new PID
//! namespace where each process has its saved PID, so that copies of one
//! image run side by side (and beside the original); a tree that lives in
//! a PID namespace of its own is dumped with its PIDs there and restored
//! into a new one.
//!
//! Run with: cargo build --examples && cargo test --test engine_pidns

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

/// The tests here look for processes left behind: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// python3 with a second thread and a child, which counts in memory they
/// share (MAP_SHARED|MAP_ANONYMOUS); every 50 ms it appends "N PID CHILD
/// /proc/self PIDNS-INODE THREADS SHARED-COUNT" to the report.
const SCRIPT: &str = r#"
import mmap, os, struct, sys, threading, time
report = sys.argv[1]
shared = mmap.mmap(-1, 4096)
def spin():
    while True:
        time.sleep(0.05)
threading.Thread(target=spin, daemon=True).start()
child = os.fork()
if child == 0:
    while True:
        struct.pack_into("Q", shared, 0, struct.unpack_from("Q", shared, 0)[0] + 1)
        time.sleep(0.02)
n = 0
while True:
    line = "%d %d %d %s %d %d %d\n" % (n, os.getpid(), child, os.readlink("/proc/self"),
        os.stat("/proc/self/ns/pid").st_ino, threading.active_count(),
        struct.unpack_from("Q", shared, 0)[0])
    with open(report, "a") as f:
        f.write(line)
    n += 1
    time.sleep(0.05)
"#;

/// One report line.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    n: u64,
    pid: i32,
    child: i32,
    proc_self: i32,
    ns: u64,
    threads: u32,
    /// The child's count, as the parent reads it.
    shared: u64,
}

fn lines(report: &str) -> Vec<Line> {
    report
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Line {
                n: f.first()?.parse().ok()?,
                pid: f.get(1)?.parse().ok()?,
                child: f.get(2)?.parse().ok()?,
                proc_self: f.get(3)?.parse().ok()?,
                ns: f.get(4)?.parse().ok()?,
                threads: f.get(5)?.parse().ok()?,
                shared: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// The last line of each PID namespace that wrote to the report.
fn last_by_namespace(report: &str) -> BTreeMap<u64, Line> {
    lines(report).into_iter().map(|l| (l.ns, l)).collect()
}

fn python_available() -> bool {
    available("python3", &["--version"])
}

/// The PID of `pid` in its innermost PID namespace.
fn inner_pid(pid: i32) -> i32 {
    status_field(pid, "NSpid")
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

fn pid_ns(pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap()
}

fn proc_mounts_here() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - proc "))
        .count()
}

/// A restored copy, from `restore --json`.
struct Copy {
    pid: i32,
    processes: Vec<i32>,
    saved: Vec<i32>,
    init: Option<i32>,
}

fn restore_copy(img: &std::path::Path, extra: &[&str]) -> Copy {
    let mut args = vec!["restore", "-i", img.to_str().unwrap(), "--detach", "--json"];
    args.extend_from_slice(extra);
    let o = run(&args, &[]);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let list = |k: &str| -> Vec<i32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap() as i32)
            .collect()
    };
    Copy {
        pid: v["pid"].as_i64().unwrap() as i32,
        processes: list("processes"),
        saved: list("saved_pids"),
        init: v["ns_init"].as_i64().map(|p| p as i32),
    }
}

impl Copy {
    fn guard(&self) -> TreeGuard {
        TreeGuard(self.processes.iter().copied().chain(self.init).collect())
    }
}

/// Waits until the report has a line from each of `namespaces` past `after`.
fn wait_lines_from(w: &Workload, namespaces: &[u64], after: u64) -> BTreeMap<u64, Line> {
    let r = w.wait_report(T, |r| {
        let last = last_by_namespace(r);
        namespaces
            .iter()
            .all(|ns| last.get(ns).is_some_and(|l| l.n > after + 2))
    });
    last_by_namespace(&r)
}

/// Two copies of one image, taken live from python3 with a thread and a
/// child, run side by side and beside the original, whose PIDs they
/// share: each in a new PID namespace where it and its child have their
/// saved PIDs and /proc shows them so, with an init of crstream's that
/// ends with it. The restorer's own mounts are untouched.
#[test]
fn copies_of_one_image_run_side_by_side_in_pid_namespaces_of_their_own() {
    if !python_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("pidns-copies");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT]).arg(dir.path("report"));
    let w = spawn_isolated(cmd, dir.path("report"));
    let before = w.wait_report(T, |r| lines(r).len() >= 3);
    let orig = lines(&before).last().unwrap().clone();
    assert_eq!(orig.pid, w.pid);
    let img = dir.path("img");
    dump(w.pid, &img, &["--leave-running"]);
    let dumped_at = lines(&w.read_report().unwrap()).last().unwrap().n;
    let mounts = proc_mounts_here();

    let a = restore_copy(&img, &["--pidns"]);
    let _ga = a.guard();
    let b = restore_copy(&img, &["--pidns"]);
    let mut gb = b.guard();
    for c in [&a, &b] {
        assert_eq!(c.saved, vec![orig.pid, orig.child]);
        assert_eq!(c.processes.len(), 2);
        assert!(c.init.is_some(), "a root that is not PID 1 gets an init");
        assert_ne!(pid_ns(c.pid), pid_ns(std::process::id() as i32));
        assert_eq!(pid_ns(c.processes[1]), pid_ns(c.pid));
        assert_eq!(inner_pid(c.pid), orig.pid);
        assert_eq!(inner_pid(c.processes[1]), orig.child);
        assert_eq!(inner_pid(c.init.unwrap()), 1);
        assert_eq!(tasks(c.pid).len(), 2, "the root's two threads");
        assert_running_untraced(c.pid);
    }
    assert_ne!(pid_ns(a.pid), pid_ns(b.pid));
    assert!(proc_exists(w.pid), "the original runs on");

    let ns_of = |c: &Copy| {
        std::fs::metadata(format!("/proc/{}/ns/pid", c.pid))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    };
    let (na, nb) = (ns_of(&a), ns_of(&b));
    let last = wait_lines_from(&w, &[na, nb], dumped_at);
    let shared_at_dump = lines(&w.read_report().unwrap())
        .iter()
        .find(|l| l.n == dumped_at && l.pid == orig.pid)
        .map_or(0, |l| l.shared);
    for ns in [na, nb] {
        let l = &last[&ns];
        assert_eq!(
            (l.pid, l.child, l.proc_self, l.threads),
            (orig.pid, orig.child, orig.pid, 2),
            "{l:?}"
        );
        // The child still counts in memory its parent sees.
        assert!(l.shared > shared_at_dump, "{l:?}, {shared_at_dump} at dump");
    }
    assert_eq!(proc_mounts_here(), mounts, "a /proc mount leaked out");

    // The first copy ends: its namespace (init and child) with it; the
    // second runs on.
    // SAFETY: signalling a process this test restored.
    unsafe { libc::kill(a.pid, libc::SIGKILL) };
    for pid in [a.init.unwrap(), a.processes[1]] {
        assert!(wait_gone(pid, T), "pid {pid} outlived the copy's root");
    }
    let n = last_by_namespace(&w.read_report().unwrap())[&nb].n;
    wait_lines_from(&w, &[nb], n);
    gb.kill();
}

/// python3 started with `unshare --pid --fork --mount-proc` (PID 1 of its
/// namespace): dumped with its PIDs there, restored twice without asking
/// for a namespace, each copy PID 1 of a new one with its child at its
/// saved PID; killing a copy's root ends its namespace.
#[test]
fn a_tree_in_its_own_pid_namespace_comes_back_in_a_new_one() {
    if !python_available() || !have("unshare") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("pidns-own");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "python3", "-c", SCRIPT])
        .arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let before = w.wait_report(T, |r| lines(r).len() >= 3);
    let orig = lines(&before).last().unwrap().clone();
    assert_eq!((orig.pid, orig.proc_self), (1, 1));
    let python = children_of(w.pid)[0];
    let img = dir.path("img");
    dump(python, &img, &[]);
    assert!(wait_gone(python, T));
    w.kill();
    let dumped_at = lines(&w.read_report().unwrap()).last().unwrap().n;

    let copies: Vec<Copy> = (0..2).map(|_| restore_copy(&img, &[])).collect();
    let mut guards: Vec<TreeGuard> = copies.iter().map(Copy::guard).collect();
    let mut namespaces = Vec::new();
    for c in &copies {
        assert_eq!(c.saved, vec![1, orig.child]);
        assert_eq!(c.init, None, "the root is PID 1 itself");
        assert_eq!(inner_pid(c.pid), 1);
        assert_eq!(inner_pid(c.processes[1]), orig.child);
        assert_eq!(tasks(c.pid).len(), 2);
        namespaces.push(
            std::fs::metadata(format!("/proc/{}/ns/pid", c.pid))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap(),
        );
    }
    let last = wait_lines_from(&w, &namespaces, dumped_at);
    for ns in &namespaces {
        let l = &last[ns];
        assert_eq!(
            (l.pid, l.child, l.proc_self, l.threads),
            (1, orig.child, 1, 2),
            "{l:?}"
        );
    }
    // SAFETY: signalling a process this test restored.
    unsafe { libc::kill(copies[0].pid, libc::SIGKILL) };
    assert!(
        wait_gone(copies[0].processes[1], T),
        "the child outlived PID 1 of its namespace"
    );
    for g in &mut guards {
        g.kill();
    }
}

/// A restore into a new namespace that fails late leaves nothing behind:
/// neither the processes nor the namespace's init.
#[test]
fn a_failed_restore_into_a_pid_namespace_leaves_no_process() {
    if !python_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("pidns-fail");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT]).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| lines(r).len() >= 3);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let inits_before = processes_named("crstream-init");
    let o = run(
        &[
            "restore",
            "-i",
            img.to_str().unwrap(),
            "--pidns",
            "--detach",
        ],
        &[("CRSTREAM_TEST_FAIL_AT", "restore")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let report = dir.path("report");
    let deadline = Instant::now() + T;
    loop {
        let left: Vec<i32> = processes_with_arg(report.to_str().unwrap());
        let inits: Vec<i32> = processes_named("crstream-init")
            .into_iter()
            .filter(|p| !inits_before.contains(p))
            .collect();
        if left.is_empty() && inits.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?} and inits {inits:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes (not zombies) whose name is `comm`.
fn processes_named(comm: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
                && status_field(p, "State").is_some_and(|s| !s.starts_with('Z'))
        })
        .collect()
}

/// Processes with `arg` on their command line.
fn processes_with_arg(arg: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// python3 whose working directory was removed, holding a removed file
/// open and a memfd mapped: in a new PID namespace (`--pidns`) too, it
/// comes back in that directory, with the file and the memfd's contents
/// (the restore reached them through crstream's /proc entry, which the
/// namespace's /proc lacks: it failed, after the dump).
#[test]
fn removed_files_and_directories_come_back_in_a_new_pid_namespace() {
    if !python_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("pidns-unlinked");
    let gone = dir.path("gone");
    std::fs::create_dir(&gone).unwrap();
    const REMOVED: &str = r#"
import mmap, os, sys, time
report = sys.argv[1]
os.chdir(sys.argv[2])
f = open("file", "w+")
f.write("kept in a removed file")
f.flush()
os.unlink("file")
os.rmdir(sys.argv[2])
m = os.memfd_create("crstream-test")
os.write(m, b"memfd contents".ljust(4096, b"."))
area = mmap.mmap(m, 4096)
n = 0
while True:
    f.seek(0)
    line = "%d %s %s %s\n" % (n, os.getpid(), f.read().replace(" ", "_"), area[:14].decode())
    with open(report, "a") as r:
        r.write(line)
    n += 1
    time.sleep(0.05)
"#;
    let report = dir.path("report");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", REMOVED]).arg(&report).arg(&gone);
    let mut w = spawn_isolated(cmd, report.clone());
    w.wait_report(T, |r| r.lines().count() >= 3);
    let cwd_before = std::fs::read_link(format!("/proc/{}/cwd", w.pid)).unwrap();
    assert!(
        cwd_before.to_string_lossy().ends_with("(deleted)"),
        "{cwd_before:?}"
    );
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let copy = restore_copy(&img, &["--pidns"]);
    let _guard = copy.guard();
    let n = std::fs::read_to_string(&report).unwrap().lines().count();
    let deadline = Instant::now() + T;
    let last = loop {
        let r = std::fs::read_to_string(&report).unwrap();
        if r.lines().count() > n + 2 {
            break r.lines().last().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the copy does not report");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        last.ends_with(" kept_in_a_removed_file memfd contents"),
        "{last}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", copy.pid)).unwrap(),
        cwd_before
    );
}
