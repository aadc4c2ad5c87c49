//! Process-tree benchmark: dump and restore time of a tree of 1, 10 and 100
//! processes of 16 MiB each (wl_memory with children), to a local file.
//! Prints, per tree: processes, image size, dump time (and how long the
//! tree stayed frozen), restore time, and crstream's peak RSS for each.
//!
//! Needs root. Usage: bench_tree [--sizes 1,10,100] [--mib 16]
//! (after `cargo build --release --bin crstream --examples`).

#[path = "bench_common/mod.rs"]
mod common;

use common::{gone, wait_for};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a benchmark waits for a tree to start, dump or go away.
const WAIT: Duration = Duration::from_secs(120);

fn main() {
    let mut sizes = vec![1usize, 10, 100];
    let mut mib = 16u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes N,N")
                    .split(',')
                    .map(|s| s.parse().expect("count"))
                    .collect()
            }
            "--mib" => mib = args.next().expect("--mib N").parse().expect("MiB"),
            _ => {
                println!("usage: bench_tree [--sizes 1,10,100] [--mib 16]");
                return;
            }
        }
    }
    let (crstream, wl) = (common::crstream_bin(), common::example_bin("wl_memory"));
    // The restored root is re-parented to us when crstream exits.
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "processes  MiB each  image MiB  dump ms  frozen ms  dump RSS MiB  restore ms  restore RSS MiB  verified"
    );
    for &n in &sizes {
        let report = dir.path().join(format!("report-{n}"));
        let img = dir.path().join(format!("img-{n}"));
        let mut child = Command::new(&wl)
            .arg(&report)
            .arg(mib.to_string())
            .arg(n.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let root = child.id() as i32;
        wait_for(WAIT, || {
            counter(&report) >= 2
                && std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
                    .map_or(0, |c| c.split_whitespace().count())
                    == n - 1
        });
        // Let every child finish filling its memory.
        std::thread::sleep(Duration::from_millis(300 + 20 * n as u64));
        let t = Instant::now();
        let (out, dump_rss) = run_measured(
            Command::new(&crstream)
                .args(["dump", "-t", &root.to_string(), "--json", "-o"])
                .arg(&img),
        );
        let dump_ms = t.elapsed().as_secs_f64() * 1e3;
        let v: serde_json::Value = serde_json::from_slice(&out).expect("dump --json");
        let frozen_ms = v["frozen_ms"].as_f64().unwrap_or(0.0);
        let pids = common::dumped_pids(&v);
        assert_eq!(pids.len(), n, "processes dumped");
        let _ = child.wait();
        let at_dump = counter(&report);
        wait_for(WAIT, || pids.iter().all(|&p| gone(p)));
        let t = Instant::now();
        let (_, restore_rss) = run_measured(
            Command::new(&crstream)
                .args(["restore", "--detach", "-i"])
                .arg(&img),
        );
        let restore_ms = t.elapsed().as_secs_f64() * 1e3;
        wait_for(WAIT, || counter(&report) > at_dump + 1);
        let verified = pids.iter().all(|&p| !gone(p));
        common::kill_all(&pids, WAIT);
        let image_mib = std::fs::metadata(&img).map_or(0, |m| m.len()) as f64 / 1048576.0;
        println!(
            "{n:>9}  {mib:>8}  {image_mib:>9.1}  {dump_ms:>7.0}  {frozen_ms:>9.0}  {:>12.1}  {restore_ms:>10.0}  {:>15.1}  {}",
            dump_rss as f64 / 1024.0,
            restore_rss as f64 / 1024.0,
            if verified { "yes" } else { "NO" }
        );
        let _ = std::fs::remove_file(&img);
    }
}

fn counter(report: &std::path::Path) -> u64 {
    std::fs::read_to_string(report)
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs a command; returns its stdout and peak RSS in KiB (wait4).
// The child is reaped by the wait4 below, which std does not see.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (Vec<u8>, i64) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crstream");
    let pid = child.id() as i32;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.expect("stdout"), &mut out).unwrap();
    let mut st = 0;
    // SAFETY: zeroed rusage filled by wait4 for our child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child.
    unsafe { libc::wait4(pid, &mut st, 0, &mut ru) };
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "crstream failed"
    );
    (out, ru.ru_maxrss)
}
