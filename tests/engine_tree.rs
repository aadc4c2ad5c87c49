//! End-to-end tests of process trees (run as root): dump a process with
//! all its descendants, restore the whole tree with its PIDs, parent links,
//! process groups, sessions, zombies and shared memory.
//!
//! Run with: cargo build --bin crstream --examples && .ci/test
//! (the S3 tests need CRSTREAM_TEST_S3_ENDPOINT, as set by .ci/test).

mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(30);

/// The pids wl_tree reports (A A1 B B1 C C1 Z).
fn tree_pids(report: &str) -> Vec<i32> {
    report
        .lines()
        .nth(2)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Slot counters of wl_tree.
fn slots(report: &str) -> Vec<u64> {
    report
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn ppid(pid: i32) -> i32 {
    status_field(pid, "PPid")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// Waits until every process of the tree has counted past `after`.
fn wait_all_counting(w: &Workload, after: &[u64]) -> String {
    w.wait_report(T, |r| {
        let s = slots(r);
        s.len() == 7 && s.iter().zip(after).all(|(n, a)| n > a) || status(r).starts_with("BAD")
    })
}

/// Restores `src`, checks the tree continues as dumped, returns its guard.
fn restore_and_check(
    w: &mut Workload,
    src: &str,
    env: &[(&str, &str)],
    pids: &[i32],
    parents: &[(i32, i32)],
    at_dump: &[u64],
) -> TreeGuard {
    let o = run(&["restore", "-i", src, "--detach", "--json"], env);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let mut restored: Vec<i32> = v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    restored.sort_unstable();
    let mut want = pids.to_vec();
    want.push(w.pid);
    want.sort_unstable();
    assert_eq!(restored, want, "restored processes");
    w.restored(v["pid"].as_i64().unwrap() as i32);
    let guard = TreeGuard(want);
    // Every counter moves on from where it stopped (not from zero), and the
    // root's own checks (groups, sessions, zombie, parents) pass.
    let r = wait_all_counting(w, at_dump);
    assert_eq!(status(&r), "OK", "{r}");
    for (s, d) in slots(&r).iter().zip(at_dump) {
        assert!(
            s > d && *s < d + 200,
            "counter restarted: {r} vs {at_dump:?}"
        );
    }
    for &(pid, parent) in parents {
        assert_eq!(ppid(pid), parent, "parent of {pid}");
    }
    let z = pids[6];
    assert_eq!(
        status_field(z, "State").unwrap_or_default().chars().next(),
        Some('Z'),
        "pid {z} is not a zombie"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{z}/comm"))
            .unwrap()
            .trim(),
        "wl_tree",
        "the zombie's name"
    );
    for &pid in &pids[..6] {
        assert_running_untraced(pid);
    }
    guard
}

/// The whole wl_tree (7 processes and a zombie, 3 groups, 2 sessions, two
/// shared pages) through the S3 test server, restored twice.
#[test]
fn tree_with_groups_sessions_zombie_and_shared_memory_restores_twice_from_s3() {
    let dir = TestDir::new("tree-s3");
    let mut w = Workload::spawn("wl_tree", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    assert_eq!(status(&r), "OK", "{r}\n{}", w.log());
    let pids = tree_pids(&r);
    assert_eq!(pids.len(), 7, "{r}");
    let (a, a1, b, b1, c, c1, z) = (
        pids[0], pids[1], pids[2], pids[3], pids[4], pids[5], pids[6],
    );
    let parents = [
        (a, w.pid),
        (a1, a),
        (b, w.pid),
        (b1, b),
        (c, w.pid),
        (c1, c),
        (z, w.pid),
    ];
    let env = s3_env();
    let env = env_refs(&env);
    let bucket = s3_bucket("tree");
    let url = format!("s3://{bucket}/tree.img");
    let dumped = dump_tree(&mut w, &url, &env);
    assert_eq!(dumped.len(), 8, "{dumped:?}");
    assert!(
        pids.iter().all(|p| dumped.contains(p)),
        "{dumped:?} vs {pids:?}"
    );
    let at_dump = slots(&w.read_report().unwrap());
    for round in 0..2 {
        put_back_report_tmp(&w.report);
        let mut g = restore_and_check(&mut w, &url, &env, &pids, &parents, &at_dump);
        g.kill();
        assert!(round < 2);
    }
}

/// A restore that fails late (after every process exists) leaves none of
/// them behind; a dump that fails leaves the whole tree running.
#[test]
fn failed_tree_dump_and_restore_leave_nothing_behind() {
    let dir = TestDir::new("tree-fail");
    let mut w = Workload::spawn("wl_tree", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let pids = tree_pids(&r);
    let img = dir.path("img");
    dump_refused(w.pid, &img, &[], &[("CRSTREAM_TEST_FAIL_AT", "memory")]);
    let before = slots(&w.read_report().unwrap());
    let r = wait_all_counting(&w, &before);
    assert_eq!(status(&r), "OK", "after a failed dump: {r}");
    for &pid in &pids[..6] {
        assert_running_untraced(pid);
    }

    dump(w.pid, &img, &[]);
    w.reap_dumped();
    for &pid in &pids {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
    restore_refused(
        img.to_str().unwrap(),
        &[("CRSTREAM_TEST_FAIL_AT", "restore")],
    );
    for &pid in pids.iter().chain([w.pid].iter()) {
        assert!(
            wait_gone(pid, T),
            "pid {pid} left behind by a failed restore"
        );
    }
    // And the image still restores.
    let o = run(&["restore", "-i", img.to_str().unwrap(), "--detach"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let mut all = pids.clone();
    all.push(w.pid);
    let _g = TreeGuard(all);
    w.restored(w.pid);
    let r = wait_all_counting(&w, &slots(&w.read_report().unwrap()));
    assert_eq!(status(&r), "OK", "{r}");
}

/// --lazy restores one process: a tree is refused before anything runs.
#[test]
fn lazy_restore_of_a_tree_is_refused() {
    let dir = TestDir::new("tree-lazy");
    let mut w = Workload::spawn("wl_tree", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let pids = tree_pids(&r);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    for &pid in &pids {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
    let o = run(&["restore", "--lazy", "-i", img.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            "--lazy restores a single process; this image holds a tree of 8 processes \
             (restore it without --lazy)"
        ) && !text(&o).contains("incompatible with this machine"),
        "{}",
        text(&o)
    );
    assert!(!proc_exists(w.pid));
}

/// A real shell script nobody here wrote for crstream: bash running a
/// `while` loop with a subshell and a `sleep` child in every round, and an
/// external `mv` writing its report. Dumped mid-loop (bash waits for a
/// child), restored twice: the loop goes on from its count with the same
/// pid.
#[test]
fn bash_loop_with_subshells_and_sleep_children_continues() {
    if !have("bash") {
        panic!("bash is needed for this test");
    }
    let dir = TestDir::new("tree-bash");
    let report = dir.path("report");
    let script = format!(
        r#"i=0
while true; do
  i=$((i+1))
  ( j=$i; sleep 0.05; : $j )
  sleep 0.1 &
  wait $!
  echo "$$ $i" > {r}.tmp
  mv {r}.tmp {r}
done"#,
        r = report.display()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script]);
    let mut w = spawn_isolated(cmd, report);
    w.wait_report(T, |r| field(r, 0, 1) >= 5);
    let img = dir.path("img");
    dump_tree(&mut w, img.to_str().unwrap(), &[]);
    let at_dump = field(&w.read_report().unwrap(), 0, 1);
    for _ in 0..2 {
        let mut g = restore_tree(img.to_str().unwrap(), &[], &mut w);
        let r = w.wait_report(T, |r| field(r, 0, 1) > at_dump + 3);
        assert_eq!(field(&r, 0, 0), w.pid as u64, "{r}");
        let n = field(&r, 0, 1);
        assert!(
            n < at_dump + 100,
            "the loop restarted or jumped: {n} vs {at_dump}"
        );
        assert_running_untraced(w.pid);
        // The children bash started after the restore are its own.
        g.0.extend(support::children_of(w.pid));
        g.kill();
    }
}

/// producer | filter | consumer with both pipes full at dump time, a
/// shared eventfd, a timerfd, a unix datagram socketpair and an epoll loop
/// over them: after restore (from S3, twice) the sequences go on with no
/// gap and no repetition, and every source keeps firing.
#[test]
fn pipeline_with_full_pipes_eventfd_timerfd_socketpair_and_epoll_continues() {
    let dir = TestDir::new("tree-pipeline");
    let mut w = Workload::spawn("wl_pipeline", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 3) >= 20);
    assert!(r.contains(" OK "), "{r}\n{}", w.log());
    let env = s3_env();
    let env = env_refs(&env);
    let url = format!("s3://{}/pipeline.img", s3_bucket("pipeline"));
    let pids = dump_tree(&mut w, &url, &env);
    assert_eq!(pids.len(), 3, "{pids:?}");
    let at_dump = w.read_report().unwrap();
    // Inspect shows what the pipes held: both were full (64 KiB each).
    let o = run(&["inspect", "--json", &url], &env);
    assert!(o.status.success(), "{}", text(&o));
    restore_twice(&url, &env, &mut w, |w| {
        let r = w.wait_report(T, |r| {
            (field(r, 0, 1) > field(&at_dump, 0, 1) + 10_000
                && field(r, 0, 3) > field(&at_dump, 0, 3) + 5
                && field(r, 0, 4) > field(&at_dump, 0, 4) + 5
                && field(r, 0, 5) > field(&at_dump, 0, 5) + 2)
                || r.contains("BAD")
        });
        assert!(r.contains(" OK "), "after restore: {r}\nat dump: {at_dump}");
    });
}

/// One GET to 127.0.0.1:port; returns the response (empty on failure).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `python3 -m http.server` (a listening TCP socket nobody here wrote)
/// keeps serving on its port after restore, from S3, twice.
#[test]
fn python_http_server_keeps_answering_on_its_port_after_restore() {
    if !have("python3") {
        panic!("python3 is needed for this test");
    }
    let dir = TestDir::new("tree-http");
    let root = dir.path("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from before the dump\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(&root);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let t = std::time::Instant::now();
    while !http_get(port, "/hello.txt").contains("hello from before") {
        assert!(t.elapsed() < T, "http.server did not start: {}", w.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = s3_env();
    let env = env_refs(&env);
    let url = format!("s3://{}/http.img", s3_bucket("http"));
    dump_tree(&mut w, &url, &env);
    assert_eq!(
        http_get(port, "/hello.txt"),
        "",
        "the port answers while dumped"
    );
    restore_twice(&url, &env, &mut w, |_| {
        for _ in 0..3 {
            let r = http_get(port, "/hello.txt");
            assert!(
                r.starts_with("HTTP/1.0 200") && r.contains("hello from before the dump"),
                "{r}"
            );
        }
    });
}

/// Waits until the counter of the report at `path` passes `n`, and checks
/// its status is OK.
fn ok_after(path: &str, n: u64) -> String {
    let t = std::time::Instant::now();
    loop {
        let r = std::fs::read_to_string(path).unwrap_or_default();
        if field(&r, 0, 1) > n {
            assert_eq!(status(&r), "OK", "{path}: {r}");
            return r;
        }
        assert!(t.elapsed() < T, "{path} stuck: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sid_pgid(pid: i32) -> (i32, i32) {
    // SAFETY: plain queries about another process.
    unsafe { (libc::getsid(pid), libc::getpgid(pid)) }
}

/// wl_orphans: B lives in session A and group A, D in group C, and A and
/// C have exited. Restored (from S3, twice), both are back in those
/// sessions and groups under their subreaper R, led by helpers that are
/// gone again once the tree runs.
#[test]
fn gone_session_and_group_leaders_are_stood_in_for_by_helpers() {
    let dir = TestDir::new("tree-orphans");
    let report = dir.path("report");
    let mut w = Workload::spawn("wl_orphans", report.clone(), &[]);
    let b_report = format!("{}.b", report.display());
    let d_report = format!("{}.d", report.display());
    let (b_at, d_at) = (ok_after(&b_report, 3), ok_after(&d_report, 3));
    let (b, d) = (field(&b_at, 0, 0) as i32, field(&d_at, 0, 0) as i32);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let (a, c) = (field(&r, 0, 2) as i32, field(&r, 0, 3) as i32);
    assert_eq!(sid_pgid(b), (a, a), "B before the dump");
    assert_eq!(sid_pgid(d).1, c, "D before the dump");
    assert!(!proc_exists(a) && !proc_exists(c), "A and C exited");
    let env = s3_env();
    let env = env_refs(&env);
    let url = format!("s3://{}/orphans.img", s3_bucket("orphans"));
    let mut pids = dump_tree(&mut w, &url, &env);
    pids.sort_unstable();
    let mut want = vec![w.pid, b, d];
    want.sort_unstable();
    assert_eq!(pids, want);
    let (b_n, d_n) = (
        field(&std::fs::read_to_string(&b_report).unwrap(), 0, 1),
        field(&std::fs::read_to_string(&d_report).unwrap(), 0, 1),
    );
    let root = w.pid;
    restore_twice(&url, &env, &mut w, |_| {
        let b_now = ok_after(&b_report, b_n + 3);
        ok_after(&d_report, d_n + 3);
        assert!(field(&b_now, 0, 1) < b_n + 200, "B restarted: {b_now}");
        assert_eq!(sid_pgid(b), (a, a), "B's session and group");
        assert_eq!(sid_pgid(d), (sid_pgid(root).0, c), "D's session and group");
        assert_eq!((ppid(b), ppid(d)), (root, root), "parents");
        assert!(
            !proc_exists(a) && !proc_exists(c),
            "a helper was left behind"
        );
    });
}

/// A daemon (B of wl_orphans) dumped on its own: its session leader is
/// gone, so restore recreates the session around it with a helper, and it
/// continues in session A and group A instead of the restorer's.
#[test]
fn daemon_is_restored_in_its_own_session_though_its_leader_is_gone() {
    let dir = TestDir::new("tree-daemon");
    let report = dir.path("report");
    let _w = Workload::spawn("wl_orphans", report.clone(), &[]);
    let b_report = format!("{}.b", report.display());
    let b = field(&ok_after(&b_report, 3), 0, 0) as i32;
    let (a, _) = sid_pgid(b);
    assert!(!proc_exists(a), "A exited");
    let img = dir.path("img");
    let o = run(
        &["dump", "-t", &b.to_string(), "-o", img.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "dump failed: {}", text(&o));
    assert!(wait_gone(b, T), "B survived its dump");
    let b_n = field(&std::fs::read_to_string(&b_report).unwrap(), 0, 1);
    for _ in 0..2 {
        let o = run(&["restore", "-i", img.to_str().unwrap(), "--detach"], &[]);
        assert!(o.status.success(), "restore failed: {}", text(&o));
        let mut g = TreeGuard(vec![b]);
        let now = ok_after(&b_report, b_n + 3);
        assert!(field(&now, 0, 1) < b_n + 200, "B restarted: {now}");
        assert_eq!(sid_pgid(b), (a, a), "B's session and group");
        assert!(!proc_exists(a), "the helper was left behind");
        assert_running_untraced(b);
        g.kill();
    }
}

fn kcmp(a: i32, b: i32, kind: i32) -> bool {
    // SAFETY: kcmp with integer arguments.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, 0, 0) == 0 }
}

const KCMP_FILES: i32 = 2;
const KCMP_FS: i32 = 3;

/// A child cloned with CLONE_FILES | CLONE_FS (not a thread) comes back
/// sharing its parent's fd table and fs state: fds the parent opens after
/// the restore are in the child's table too, and kcmp says they share.
#[test]
fn processes_sharing_their_fd_table_and_fs_state_share_them_again() {
    let dir = TestDir::new("tree-clone-files");
    let mut w = Workload::spawn("wl_clone", dir.path("report"), &["files-fs"]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 5);
    assert_eq!(status(&r), "OK", "{r}\n{}", w.log());
    let child = field(&r, 1, 0) as i32;
    assert!(kcmp(w.pid, child, KCMP_FILES) && kcmp(w.pid, child, KCMP_FS));
    let img = dir.path("img");
    let pids = dump_tree(&mut w, img.to_str().unwrap(), &[]);
    assert_eq!(pids.len(), 2, "{pids:?}");
    let at_dump = field(&w.read_report().unwrap(), 0, 1);
    restore_twice(img.to_str().unwrap(), &[], &mut w, |w| {
        let r = w.wait_report(T, |r| field(r, 0, 1) > at_dump + 5 || status(r) != "OK");
        assert_eq!(status(&r), "OK", "{r}");
        assert!(kcmp(w.pid, child, KCMP_FILES), "fd table shared again");
        assert!(kcmp(w.pid, child, KCMP_FS), "fs state shared again");
    });
}

/// A child sharing its parent's memory without being a thread (CLONE_VM,
/// as vfork) is refused by name, and both run on untraced.
#[test]
fn dump_refuses_processes_sharing_memory_without_being_threads() {
    let dir = TestDir::new("tree-clone-vm");
    let w = Workload::spawn("wl_clone", dir.path("report"), &["vm"]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let child = field(&r, 1, 0) as i32;
    let msg = dump_refused(w.pid, &dir.path("img"), &[], &[]);
    assert!(
        msg.contains(&format!("pid {child}"))
            && msg.contains(&format!("shares its memory with process {}", w.pid)),
        "{msg}"
    );
    let n = field(&w.read_report().unwrap(), 0, 1);
    w.wait_report(T, |r| field(r, 0, 1) > n + 2);
    assert_running_untraced(w.pid);
    assert_running_untraced(child);
    let _g = TreeGuard(vec![child]);
}

/// python3 with a zombie child whose parent then set SIGCHLD to SIG_IGN
/// (the zombie stays until waited for) or to a handler that counts: after
/// restore the zombie is still there with its exit status, and the handler
/// was not called by the making of the zombie.
#[test]
fn zombies_stay_whatever_their_parent_set_for_sigchld() {
    const SCRIPT: &str = r#"
import os, signal, sys, time
calls = [0]
def count(s, f): calls[0] += 1
kid = os.fork()
if kid == 0:
    os._exit(7)
while open("/proc/%d/stat" % kid).read().split()[2] != "Z":
    time.sleep(0.01)
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
else:
    signal.signal(signal.SIGCHLD, count)
    signal.siginterrupt(signal.SIGCHLD, False)
n = 0
while True:
    n += 1
    state = open("/proc/%d/stat" % kid).read().split()[2]
    info = os.waitid(os.P_PID, kid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    ok = state == "Z" and info is not None and info.si_status == 7 and calls[0] == 0
    status = "OK" if ok else "BAD-%s-%s-%d" % (state, info and info.si_status, calls[0])
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("%d %d %s\n" % (os.getpid(), n, status))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.1)
"#;
    if !have("python3") {
        panic!("python3 is needed for this test");
    }
    for action in ["ignore", "handler"] {
        let dir = TestDir::new(&format!("zombie-{action}"));
        let report = dir.path("report");
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", SCRIPT, report.to_str().unwrap(), action]);
        let mut w = spawn_isolated(cmd, report);
        let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
        assert!(r.contains(" OK"), "{action}, before the dump: {r}");
        let img = dir.path("img");
        dump_tree(&mut w, img.to_str().unwrap(), &[]);
        for round in 0..2 {
            let at = field(&w.read_report().unwrap(), 0, 1);
            put_back_report_tmp(&w.report);
            let mut g = restore_tree(img.to_str().unwrap(), &[], &mut w);
            let r = w.wait_report(T, |r| field(r, 0, 1) > at + 3 || !r.contains(" OK"));
            assert!(r.contains(" OK"), "{action}, restore {round}: {r}");
            g.kill();
        }
    }
}
