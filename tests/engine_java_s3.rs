//! Dump of the multi-threaded Java program (as in engine_programs.rs) to the
//! S3 test server, then restore from it, once without and once with
//! `--lazy`: same PID and TIDs, counters continue past their dumped values.
//! Skipped (with a message) when java / javac are not installed.
//!
//! Run with: cargo build --examples && cargo test --test engine_java_s3
//! (needs CRSTREAM_TEST_S3_ENDPOINT, as set by .ci/test).

mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

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
    let env = s3_env();
    let env = env_refs(&env);
    let bucket = s3_bucket("java");
    let url = format!("s3://{bucket}/java.img");

    let dir = TestDir::new("java-s3");
    let mut w = start_java(&dir);
    w.wait_report(T, |r| (2..6).all(|i| field(r, 0, i) >= 50));
    let tids_before = tasks(w.pid);
    let o = run(&["dump", "-t", &w.pid.to_string(), "-o", &url], &env);
    assert!(o.status.success(), "dump failed: {}", text(&o));
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    assert!(s3_object_exists(&bucket, "java.img"), "no object {url}");

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
    let lr = LazyRestore::start(&url, &env, &["--detach"]);
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
