//! Dump and restore of real language runtimes: CPython with imported
//! modules keeping a dict checksum, a multi-threaded Java program, and
//! Node.js serving HTTP with a worker thread and a forked child, and a Go
//! HTTP server whose goroutines keep allocating (its runtime preempts them
//! with signals and collects garbage on threads of its own). Skipped (with
//! a message) when python3 / java / javac / node / go are not installed.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

const PYTHON: &str = r#"
import sys, os, time, json, hashlib, collections, re, threading
report = sys.argv[1]
d = {f"k{i}": i * i for i in range(200000)}
def digest():
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
expected = digest()
counter = 0
while True:
    counter += 1
    ok = "OK" if digest() == expected else "CORRUPT"
    with open(report + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {counter} {expected} {ok}\n")
    os.rename(report + ".tmp", report)
    time.sleep(0.1)
"#;

#[test]
fn python_with_modules_continues() {
    if !have("python3") {
        eprintln!("python3 not installed: skipped");
        return;
    }
    let dir = TestDir::new("python");
    std::fs::write(dir.path("wl.py"), PYTHON).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(dir.path("wl.py")).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let before = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = field(&w.read_report().unwrap(), 0, 1);
    w.reap_dumped();
    let (pid, _) = restore(&img);
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 1) > at_dump + 3);
    assert!(r.trim_end().ends_with("OK"), "{r}\n{}", w.log());
    assert_eq!(
        r.split_whitespace().nth(2),
        before.split_whitespace().nth(2),
        "dict digest"
    );
    assert_running_untraced(pid);
}

/// A JVM comes back with its threads, and with the flock on its
/// hsperfdata file, which it holds only through the file's mapping (it
/// closed the fd): without it, another JVM's start-up takes the file for
/// a dead one's. The file is gone at restore (as on another machine): it
/// is made again with its contents.
#[test]
fn java_with_threads_continues() {
    if !have("javac") || !have("java") {
        eprintln!("java/javac not installed: skipped");
        return;
    }
    let dir = TestDir::new("java");
    std::fs::write(dir.path("Wl.java"), JAVA).unwrap();
    let st = Command::new("javac")
        .arg(dir.path("Wl.java"))
        .status()
        .unwrap();
    assert!(st.success(), "javac failed");
    let mut cmd = Command::new("java");
    cmd.args(["-cp"])
        .arg(&dir.0)
        .arg("Wl")
        .arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| (2..6).all(|i| field(r, 0, i) >= 50));
    let tids_before = tasks(w.pid);
    let perf_data = std::path::PathBuf::from(format!("/tmp/hsperfdata_root/{}", w.pid));
    let flock = || {
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&perf_data).unwrap());
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("FLOCK") && l.contains(&format!(":{inode} ")))
    };
    assert!(flock(), "the JVM holds a flock on {}", perf_data.display());
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    // Gone, as on another machine or once the JVM that made it exited:
    // made again from the image.
    let saved = std::fs::read(&perf_data).unwrap();
    std::fs::remove_file(&perf_data).unwrap();
    let (pid, mut tids) = restore(&img);
    // The JVM updates a few counters in it at once: most of what it held
    // must be there (its names, its constants).
    let back = std::fs::read(&perf_data).unwrap();
    let held = saved.iter().filter(|&&b| b != 0).count();
    let kept = saved
        .iter()
        .zip(&back)
        .filter(|&(&a, &b)| a != 0 && a == b)
        .count();
    assert!(
        back.len() == saved.len() && kept * 10 >= held * 9,
        "{} of the {held} bytes the file held are back ({} bytes now)",
        kept,
        back.len()
    );
    w.restored(pid);
    tids.sort_unstable();
    assert_eq!(tids, tids_before);
    let r = w.wait_report(T, |r| {
        (2..6).all(|i| field(r, 0, i) > field(&at_dump, 0, i) + 50)
    });
    assert!(r.contains(" OK "), "{r}\n{}", w.log());
    assert!(flock(), "the restored JVM holds its flock again");
    assert_running_untraced(pid);
    w.kill();
    let _ = std::fs::remove_file(&perf_data);
}

/// Every thread `before` the dump is back (a runtime may start one more
/// before the dump, as Node's thread pool or Go's scheduler do, and never
/// ends one).
fn assert_threads_kept(before: &[i32], restored: &[i32], what: &str) {
    assert!(
        before.iter().all(|t| restored.contains(t)),
        "{what}: threads {before:?} before the dump, {restored:?} restored"
    );
}

const NODE: &str = r#"
const http = require('http'), fs = require('fs'), cp = require('child_process');
const { Worker } = require('worker_threads');
const report = process.argv[2];
let ticks = 0, fromWorker = 0, fromChild = 0;
const worker = new Worker(
  "const { parentPort } = require('worker_threads'); let i = 0;" +
  "setInterval(() => parentPort.postMessage(++i), 20);", { eval: true });
worker.on('message', m => { fromWorker = m; });
// Ping-pong over the IPC channel (a unix socket pair) with a forked child.
const child = cp.fork(process.argv[3]);
child.on('message', m => { fromChild = m; setTimeout(() => child.send(m), 20); });
child.send(0);
const server = http.createServer((req, res) => res.end(`node ${ticks} ${fromWorker} ${fromChild}\n`));
server.listen(0, '127.0.0.1', () => {
  setInterval(() => {
    ticks++;
    const line = `${process.pid} ${ticks} ${fromWorker} ${fromChild} ${server.address().port} ${child.pid}\n`;
    fs.writeFileSync(report + '.tmp', line);
    fs.renameSync(report + '.tmp', report);
  }, 50);
});
"#;

/// Node.js comes back serving: its event loop ticks on, its worker thread
/// and its forked child (over the IPC channel) keep counting, the listening
/// socket answers, with the same PIDs and threads.
#[test]
fn node_with_a_worker_and_a_child_continues() {
    if !available("node", &["--version"]) {
        return;
    }
    let dir = TestDir::new("node");
    std::fs::write(dir.path("main.js"), NODE).unwrap();
    std::fs::write(
        dir.path("child.js"),
        "process.on('message', m => process.send(m + 1));\n",
    )
    .unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(dir.path("main.js"))
        .arg(dir.path("report"))
        .arg(dir.path("child.js"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let before = w.wait_report(T, |r| (1..4).all(|i| field(r, 0, i) >= 5));
    let (port, child) = (field(&before, 0, 4) as u16, field(&before, 0, 5) as i32);
    assert_eq!(children_of(w.pid), vec![child]);
    let body = http_get(port, "/").expect("node answers before the dump");
    assert!(body.starts_with("node "), "{body}");
    let tids_before = tasks(w.pid);
    let child_tids = tasks(child);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    assert!(
        wait_gone(child, T),
        "the dumped child {child} is still there"
    );
    let (pid, tids) = restore(&img);
    w.restored(pid);
    assert_threads_kept(&tids_before, &tids, "the restored process");
    assert_eq!(children_of(pid), vec![child]);
    assert_threads_kept(&child_tids, &tasks(child), "the restored child");
    let r = w.wait_report(T, |r| {
        (1..4).all(|i| field(r, 0, i) > field(&at_dump, 0, i) + 5)
    });
    assert_eq!(field(&r, 0, 0) as i32, pid, "{r}");
    let body = http_get(port, "/").expect("the restored node answers");
    let answered: Vec<u64> = body
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        answered.len() == 3 && (0..3).all(|i| answered[i] > field(&at_dump, 0, i + 1)),
        "{body} (at the dump: {at_dump})"
    );
    assert_running_untraced(pid);
    assert_running_untraced(child);
    w.kill();
}

const GO: &str = r#"
package main

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

func digest(m map[int]string) string {
	h := sha256.New()
	for i := 0; i < len(m); i++ {
		h.Write([]byte(m[i]))
	}
	return fmt.Sprintf("%x", h.Sum(nil))[:16]
}

func main() {
	report := os.Args[1]
	var hits, churn int64
	kept := map[int]string{}
	for i := 0; i < 100000; i++ {
		kept[i] = fmt.Sprint(i * i)
	}
	expected := digest(kept)
	// Goroutines that never block: the runtime preempts them with SIGURG,
	// and what they allocate keeps the collector busy.
	for g := 0; g < 4; g++ {
		go func() {
			garbage := map[int][]byte{}
			for j := 0; ; j++ {
				garbage[j%512] = make([]byte, 1024)
				atomic.AddInt64(&churn, 1)
			}
		}()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for ticks := 1; ; ticks++ {
			ok := "OK"
			if digest(kept) != expected {
				ok = "CORRUPT"
			}
			line := fmt.Sprintf("%d %d %d %d %s %s\n", os.Getpid(), ticks, atomic.LoadInt64(&hits), port, expected, ok)
			os.WriteFile(report+".tmp", []byte(line), 0o644)
			os.Rename(report+".tmp", report)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "go %d %d\n", atomic.AddInt64(&hits, 1), atomic.LoadInt64(&churn))
	})
	http.Serve(ln, nil)
}
"#;

/// A Go HTTP server comes back: its goroutines run on (preempted by
/// signals, the collector at work), its map checksum holds, its listening
/// socket answers and its counters go on, with the same threads.
#[test]
fn go_http_server_with_busy_goroutines_continues() {
    if !available("go", &["version"]) {
        return;
    }
    let dir = TestDir::new("go");
    std::fs::write(dir.path("main.go"), GO).unwrap();
    std::fs::write(dir.path("go.mod"), "module wl\n\ngo 1.16\n").unwrap();
    let built = Command::new("go")
        .args(["build", "-o", "wl", "."])
        .current_dir(&dir.0)
        // Hermetic: nothing fetched, nothing kept outside the test's directory.
        .env("GOCACHE", dir.path("gocache"))
        .env("GOPATH", dir.path("gopath"))
        .env("HOME", &dir.0)
        .env("XDG_CONFIG_HOME", dir.path("config"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap();
    assert!(built.status.success(), "go build: {}", text(&built));
    let mut cmd = Command::new(dir.path("wl"));
    cmd.arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let before = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let port = field(&before, 0, 3) as u16;
    let served = |what: &str| -> (u64, u64) {
        let body = http_get(port, "/").unwrap_or_else(|| panic!("go answers {what}"));
        let f: Vec<u64> = body
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(f.len(), 2, "{body}");
        (f[0], f[1])
    };
    let (hits_before, churn_before) = served("before the dump");
    assert!(churn_before > 0, "the goroutines run");
    let tids_before = tasks(w.pid);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    let (pid, tids) = restore(&img);
    w.restored(pid);
    assert_threads_kept(&tids_before, &tids, "the restored process");
    let r = w.wait_report(T, |r| field(r, 0, 1) > field(&at_dump, 0, 1) + 5);
    assert!(r.trim_end().ends_with("OK"), "{r}\n{}", w.log());
    assert_eq!(
        r.split_whitespace().nth(4),
        before.split_whitespace().nth(4)
    );
    let (hits, churn) = served("after the restore");
    assert_eq!(hits, hits_before + 1, "its hit counter goes on");
    assert!(churn > churn_before, "its goroutines run on");
    assert_running_untraced(pid);
    w.kill();
}

/// A signal pending on a thread other than the leader, sent with
/// pthread_kill (SI_TKILL, which the kernel lets only that thread queue to
/// itself), is pending on that thread again after restore.
#[test]
fn a_signal_pending_on_a_thread_comes_back_on_it() {
    if !have("python3") {
        eprintln!("python3 not installed: skipped");
        return;
    }
    let dir = TestDir::new("thread-signal");
    let script = r#"
import os, sys, signal, threading, time
report = sys.argv[1]
def put(line):
    with open(report + ".tmp", "w") as f:
        f.write(line + "\n")
    os.rename(report + ".tmp", report)
got = []
ready = threading.Event()
def worker():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    ready.set()
    while not os.path.exists(report + ".go"):
        time.sleep(0.05)
    got.append(signal.sigwait({signal.SIGUSR1}))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
t = threading.Thread(target=worker)
t.start()
ready.wait()
signal.pthread_kill(t.ident, signal.SIGUSR1)
n = 0
while not os.path.exists(report + ".go"):
    n += 1
    put("%d %d waiting" % (os.getpid(), n))
    time.sleep(0.05)
t.join()
put("%d %d got %s" % (os.getpid(), n, [int(s) for s in got]))
time.sleep(600)
"#;
    let (mut w, r) = python_across_restore(&dir, script, &[], " got ");
    assert!(r.trim_end().ends_with("got [10]"), "{r}\n{}", w.log());
    w.kill();
}

/// A file under /proc/PID/task/TID of a thread other than the leader (its
/// status) and that thread's task directory, held open: they come back once
/// the thread does, naming it, the file at its offset.
#[test]
fn proc_files_of_another_thread_come_back() {
    if !have("python3") {
        eprintln!("python3 not installed: skipped");
        return;
    }
    let dir = TestDir::new("thread-proc-files");
    let script = r#"
import os, sys, threading, time
report = sys.argv[1]
def put(line):
    with open(report + ".tmp", "w") as f:
        f.write(line + "\n")
    os.rename(report + ".tmp", report)
ready = threading.Event()
tids = []
def worker():
    tids.append(threading.get_native_id())
    ready.set()
    while True:
        time.sleep(1)
threading.Thread(target=worker, daemon=True).start()
ready.wait()
tid = tids[0]
status = os.open("/proc/self/task/%d/status" % tid, os.O_RDONLY)
os.read(status, 5)
task = os.open("/proc/self/task/%d" % tid, os.O_RDONLY | os.O_DIRECTORY)
n = 0
while not os.path.exists(report + ".go"):
    n += 1
    put("%d %d waiting" % (os.getpid(), n))
    time.sleep(0.05)
at = os.lseek(status, 0, os.SEEK_CUR)
os.lseek(status, 0, os.SEEK_SET)
names_it = ("\nPid:\t%d\n" % tid) in os.read(status, 4096).decode()
link = os.readlink("/proc/self/fd/%d" % status) == "/proc/%d/task/%d/status" % (os.getpid(), tid)
in_task = "status" in os.listdir(task) and os.readlink("/proc/self/fd/%d" % task) == "/proc/%d/task/%d" % (os.getpid(), tid)
put("%d %d done %d %s %s %s" % (os.getpid(), n, at, names_it, link, in_task))
time.sleep(600)
"#;
    let (mut w, r) = python_across_restore(&dir, script, &[], " done ");
    assert!(
        r.trim_end().ends_with("done 5 True True True"),
        "{r}\n{}",
        w.log()
    );
    w.kill();
}
