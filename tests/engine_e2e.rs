//! End-to-end tests of dump and restore on real processes (run as root:
//! they need ptrace, clone3 set_tid and PR_SET_MM_MAP).
//!
//! Run with: cargo build --examples && cargo test --test engine_e2e

#[path = "engine_support/mod.rs"]
mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);

/// wl_memory: dump kills it, restore continues with the same PID, counter
/// and checksum; restore twice from one image; dump the restored process
/// again and restore that.
#[test]
fn memory_dump_restore_restore_again_and_redump() {
    let dir = TestDir::new("memory");
    let mut w = Workload::spawn("wl_memory", dir.path("report"), &["64"]);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 3);
    let checksum = field(&before, 0, 1);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let dumped = field(&w.read_report().unwrap(), 0, 0);
    w.reap_dumped();

    for round in 0..2 {
        let (pid, tids) = restore(&img);
        w.restored(pid);
        assert_eq!(tids, vec![pid]);
        let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 3);
        assert_eq!(
            field(&r, 0, 1),
            checksum,
            "round {round}: checksum changed: {r}"
        );
        assert_eq!(field(&r, 0, 2), pid as u64);
        assert_running_untraced(pid);
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap()
                .trim(),
            "wl_memory"
        );
        if round == 0 {
            w.kill();
        }
    }

    // Dump the restored process again, and restore that image.
    let img2 = dir.path("img2");
    dump(w.pid, &img2, &[]);
    let dumped2 = field(&w.read_report().unwrap(), 0, 0);
    assert!(wait_gone(w.pid, T));
    let (pid, _) = restore(&img2);
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 0) > dumped2 + 2);
    assert_eq!(field(&r, 0, 1), checksum);
    assert_running_untraced(pid);
}

#[test]
fn leave_running_keeps_the_process_and_pid_in_use_fails_cleanly() {
    let dir = TestDir::new("leave");
    let w = Workload::spawn("wl_memory", dir.path("report"), &["8"]);
    w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let img = dir.path("img");
    let o = dump(w.pid, &img, &["--leave-running", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    assert!(summary["pages"].as_u64().unwrap() >= 2048, "{summary}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("pages") && stderr.contains("frozen"),
        "{stderr}"
    );
    let n = field(&w.read_report().unwrap(), 0, 0);
    w.wait_report(T, |r| field(r, 0, 0) > n + 2);
    assert_running_untraced(w.pid);

    let o = run(&["restore", "-i", img.to_str().unwrap(), "--detach"], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("PID {} is in use", w.pid)), "{err}");
    // The original is untouched and keeps running.
    let n = field(&w.read_report().unwrap(), 0, 0);
    w.wait_report(T, |r| field(r, 0, 0) > n + 1);
    assert_running_untraced(w.pid);
}

#[test]
fn dump_of_a_pipe_fails_naming_the_fd_and_the_target_runs_on() {
    let dir = TestDir::new("pipe");
    let report = dir.path("report");
    let child = std::process::Command::new(example("wl_memory"))
        .arg(&report)
        .arg("4")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let w = Workload::from_child(child, report);
    w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let img = dir.path("img");
    let o = run(
        &[
            "dump",
            "-t",
            &w.pid.to_string(),
            "-o",
            img.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("pid {} fd 0: unsupported file kind pipe:[", w.pid)),
        "{err}"
    );
    assert!(!img.exists(), "a failed dump must not leave an image");
    let n = field(&w.read_report().unwrap(), 0, 0);
    w.wait_report(T, |r| field(r, 0, 0) > n + 1);
    assert_running_untraced(w.pid);
}

#[test]
fn failure_while_reading_memory_leaves_the_target_running_untraced() {
    let dir = TestDir::new("safety");
    let w = Workload::spawn("wl_memory", dir.path("report"), &["32"]);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let img = dir.path("img");
    let o = run(
        &[
            "dump",
            "-t",
            &w.pid.to_string(),
            "-o",
            img.to_str().unwrap(),
        ],
        &[("CRSTREAM_TEST_FAIL_AT", "memory")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("injected test failure at memory"),
        "{}",
        text(&o)
    );
    assert_running_untraced(w.pid);
    let n = field(&w.read_report().unwrap(), 0, 0);
    let r = w.wait_report(T, |r| field(r, 0, 0) > n + 2);
    assert_eq!(field(&r, 0, 1), field(&before, 0, 1), "checksum changed");
}

#[test]
fn threads_keep_tids_counters_and_fpu_state() {
    let dir = TestDir::new("threads");
    let mut w = Workload::spawn("wl_threads", dir.path("report"), &[]);
    let before = w.wait_report(T, |r| {
        r.lines().count() == 9 && (1..9).all(|l| field(r, l, 2) >= 5)
    });
    let tids_before = tasks(w.pid);
    assert_eq!(tids_before.len(), 9);
    let img = dir.path("img");
    let o = dump(w.pid, &img, &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("9 threads"),
        "{}",
        text(&o)
    );
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    let (pid, mut tids) = restore(&img);
    w.restored(pid);
    tids.sort_unstable();
    assert_eq!(tids, tids_before);
    assert_eq!(tasks(pid), tids_before);
    let r = w.wait_report(T, |r| {
        (1..9).all(|l| field(r, l, 2) > field(&at_dump, l, 2) + 10)
    });
    assert!(r.starts_with(&format!("{pid} OK")), "{r}\n{}", w.log());
    for l in 1..9 {
        assert_eq!(
            field(&r, l, 1),
            field(&before, l, 1),
            "thread {l} has another tid"
        );
    }
    assert_running_untraced(pid);
}

#[test]
fn sleeping_and_waiting_threads_resume_without_early_wakeups() {
    let dir = TestDir::new("sleep");
    let mut w = Workload::spawn("wl_sleep", dir.path("report"), &[]);
    // Dump while the long sleep is in progress.
    w.wait_report(T, |r| field(r, 0, 2) >= 3 && field(r, 0, 4) >= 3);
    std::thread::sleep(Duration::from_millis(1200));
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    let (pid, tids) = restore(&img);
    w.restored(pid);
    assert_eq!(tids.len(), 5);
    let r = w.wait_report(T, |r| {
        field(r, 0, 2) >= field(&at_dump, 0, 2) + 3
            && field(r, 0, 3) > field(&at_dump, 0, 3)
            && field(r, 0, 4) >= field(&at_dump, 0, 4) + 3
    });
    assert_eq!(field(&r, 0, 1), 0, "early wakeups: {r}\n{}", w.log());
    assert_running_untraced(pid);
}

#[test]
fn signal_handlers_altstack_mask_and_pending_signal_survive() {
    let dir = TestDir::new("signals");
    let mut w = Workload::spawn("wl_signals", dir.path("report"), &[]);
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let (pid, _) = restore(&img);
    w.restored(pid);
    assert_eq!(
        status_field(pid, "SigBlk").unwrap(),
        "0000000000000800",
        "SIGUSR2 blocked"
    );
    assert_eq!(
        status_field(pid, "ShdPnd").unwrap(),
        "0000000000000800",
        "SIGUSR2 pending"
    );
    // SAFETY: signalling the restored workload.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let r = w.wait_report(T, |r| field(r, 0, 2) == 1);
    assert_eq!(field(&r, 0, 3), 0, "SIGUSR2 delivered while blocked");
    std::fs::write(format!("{}.unblock", w.report.display()), b"").unwrap();
    let r = w.wait_report(T, |r| field(r, 0, 3) == 1);
    assert_eq!(field(&r, 0, 4), pid as u64, "SIGUSR2 sender");
    assert_eq!(field(&r, 0, 5), 0, "SIGUSR1 handler ran off its altstack");
    assert_running_untraced(pid);
}

#[test]
fn files_offsets_append_log_and_deleted_file_survive() {
    let dir = TestDir::new("files");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path("data"), &data).unwrap();
    let mut w = Workload::spawn("wl_files", dir.path("report"), &[dir.0.to_str().unwrap()]);
    w.wait_report(T, |r| field(r, 0, 1) >= 5);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = field(&w.read_report().unwrap(), 0, 1);
    w.reap_dumped();
    let (pid, _) = restore(&img);
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= at_dump + 5);
    assert!(r.trim_end().ends_with(" OK"), "{r}");
    let log = std::fs::read_to_string(dir.path("log")).unwrap();
    let nums: Vec<u64> = log.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "log lines are not consecutive: {log}"
    );
    let link = std::fs::read_link(format!("/proc/{pid}/fd/5")).unwrap();
    assert!(
        link.to_string_lossy().ends_with("(deleted)"),
        "{}",
        link.display()
    );
    assert_running_untraced(pid);
}

#[path = "support/mod.rs"]
mod s3;

/// Writing the image fails half way (stdout is a pipe nobody reads): the
/// target was frozen all along and runs on, untraced, as if nothing happened.
#[test]
fn failed_image_write_leaves_the_target_running() {
    let dir = TestDir::new("brokenpipe");
    let w = Workload::spawn("wl_memory", dir.path("report"), &["32"]);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = std::process::Command::new(crstream())
        .args(["dump", "-t", &w.pid.to_string()])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pipe") || err.contains("Broken"), "{err}");
    assert!(
        err.contains("left running") || err.contains("dumping pid"),
        "{err}"
    );
    assert_running_untraced(w.pid);
    let n = field(&w.read_report().unwrap(), 0, 0);
    let r = w.wait_report(T, |r| field(r, 0, 0) > n + 2);
    assert_eq!(field(&r, 0, 1), field(&before, 0, 1), "checksum changed");
}

/// Dump straight to the S3 test server and restore straight from it.
#[test]
fn dump_to_s3_and_restore_from_s3() {
    let env: Vec<(String, String)> = s3::s3_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bucket = s3::s3_bucket("engine");
    let url = format!("s3://{bucket}/memory.img");
    let dir = TestDir::new("s3");
    let mut w = Workload::spawn("wl_memory", dir.path("report"), &["48"]);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 3);
    let o = run(&["dump", "-t", &w.pid.to_string(), "-o", &url], &env);
    assert!(o.status.success(), "{}", text(&o));
    let dumped = field(&w.read_report().unwrap(), 0, 0);
    w.reap_dumped();
    assert!(s3::s3_object_exists(&bucket, "memory.img"));
    for round in 0..2 {
        let o = run(&["restore", "-i", &url, "--detach"], &env);
        assert!(o.status.success(), "{}", text(&o));
        let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        w.restored(pid);
        let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 2);
        assert_eq!(
            field(&r, 0, 1),
            field(&before, 0, 1),
            "round {round}: checksum changed"
        );
        assert_running_untraced(pid);
        w.kill();
    }
}
