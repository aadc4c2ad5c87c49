//! Kinds-of-state benchmark: dump and restore time of each small workload
//! that sets up one kind of process state (credentials, seccomp, locks,
//! scheduling, removed files, fanotify, ...), to a local file. Each is
//! dumped, restored (--detach) and checked to go on with status OK, `--runs`
//! times; the medians are printed: dump wall time, how long it stayed
//! frozen, image size, restore wall time (until crstream returns with the
//! tree running).
//!
//! Needs root. Usage: bench_kinds [--runs 5] [--only wl_a,wl_b]
//! (after `cargo build --release --bin crstream --examples`).

#[path = "bench_common/mod.rs"]
mod common;

use common::{gone, median, run, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest it waits for a workload to start, dump or go away.
const WAIT: Duration = Duration::from_secs(60);

/// Workload, its extra arguments ({dir}: a scratch directory, {me}: this
/// benchmark's PID).
const WORKLOADS: &[(&str, &[&str])] = &[
    ("wl_sched", &[]),
    ("wl_creds", &[]),
    ("wl_seccomp", &[]),
    ("wl_locks", &["{dir}"]),
    ("wl_fasync", &[]),
    ("wl_advice", &[]),
    ("wl_pidfd", &["{me}"]),
    ("wl_membarrier", &[]),
    ("wl_paths", &[]),
    ("wl_paths", &["chroot"]),
    ("wl_memfd_exec", &[]),
    ("wl_epoll_moved", &[]),
    ("wl_novdso", &[]),
    ("wl_fanotify", &[]),
    ("wl_cow", &[]),
    ("wl_aio", &[]),
    ("wl_lease", &[]),
];

fn main() {
    let mut runs = 5usize;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().expect("--runs N").parse().expect("count"),
            "--only" => {
                only = Some(
                    args.next()
                        .expect("--only wl_a,wl_b")
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            _ => {
                println!("usage: bench_kinds [--runs 5] [--only wl_a,wl_b]");
                return;
            }
        }
    }
    let crstream = common::crstream_bin();
    // Restored roots are re-parented to us when crstream exits.
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    common::wait_idle("bench_kinds", Duration::from_secs(30));
    println!(
        "workload              processes  image KiB  dump ms  frozen ms  restore ms  verified"
    );
    for &(name, extra) in WORKLOADS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let label = if extra == ["chroot"] {
            format!("{name} chroot")
        } else {
            name.to_string()
        };
        let mut dumps = Vec::new();
        let mut frozen = Vec::new();
        let mut restores = Vec::new();
        let (mut image_kib, mut procs, mut verified) = (0.0, 0, true);
        for _ in 0..runs {
            let dir = tempfile::tempdir().expect("temp dir");
            let report = dir.path().join("report");
            let scratch = dir.path().join("scratch");
            std::fs::create_dir_all(&scratch).unwrap();
            let me = std::process::id().to_string();
            let args: Vec<String> = extra
                .iter()
                .map(|a| {
                    a.replace("{dir}", scratch.to_str().unwrap())
                        .replace("{me}", &me)
                })
                .collect();
            let mut child = Command::new(common::example_bin(name))
                .arg(&report)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_for(WAIT, || status(&report).is_some_and(|(n, ok)| n >= 3 && ok));
            let img = dir.path().join("img");
            let t = Instant::now();
            let out = run(Command::new(&crstream)
                .args(["dump", "-t", &child.id().to_string(), "--json", "-o"])
                .arg(&img));
            dumps.push(t.elapsed().as_secs_f64() * 1e3);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("dump --json");
            frozen.push(v["frozen_ms"].as_f64().unwrap_or(0.0));
            let pids = common::dumped_pids(&v);
            procs = pids.len();
            let _ = child.wait();
            let at = status(&report).map_or(0, |(n, _)| n);
            wait_for(WAIT, || pids.iter().all(|&p| gone(p)));
            image_kib = std::fs::metadata(&img).map_or(0, |m| m.len()) as f64 / 1024.0;
            let t = Instant::now();
            run(Command::new(&crstream)
                .args(["restore", "--detach", "-i"])
                .arg(&img));
            restores.push(t.elapsed().as_secs_f64() * 1e3);
            let deadline = Instant::now() + Duration::from_secs(20);
            while status(&report).is_none_or(|(n, _)| n < at + 3) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            verified &= status(&report).is_some_and(|(n, ok)| n >= at + 3 && ok);
            common::kill_all(&pids, WAIT);
        }
        println!(
            "{label:<20}  {procs:>9}  {image_kib:>9.0}  {:>7.1}  {:>9.1}  {:>10.1}  {}",
            median(&mut dumps),
            median(&mut frozen),
            median(&mut restores),
            if verified { "yes" } else { "NO" }
        );
    }
}

/// (counter, status is OK) of a "pid counter STATUS ..." report.
fn status(report: &Path) -> Option<(u64, bool)> {
    let r = std::fs::read_to_string(report).ok()?;
    let mut it = r.lines().next()?.split_whitespace();
    let _pid = it.next()?;
    let n = it.next()?.parse().ok()?;
    Some((n, it.next() == Some("OK")))
}
