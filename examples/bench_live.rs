//! Benchmark of the live dump (`dump --leave-running`): wl_sweep, which
//! writes every page of its memory over and over, dumped to a file while
//! it runs on, at several sizes, live and with `--no-live` (frozen until
//! every page is written). Prints the frozen time, the whole dump, MB/s,
//! how many sweeps the process made during the dump, and checks each
//! image by restoring it (the copy sweeps on without a page out of step).
//! Needs root, like the engine tests.
//!
//! Usage (after `cargo build --release --examples --bin crstream`):
//!   target/release/examples/bench_live [--sizes 64,256,1024] [--runs N] [--json]

#[path = "bench_common/mod.rs"]
mod common;

use common::{gone, kill_all, median, run, wait_for, wait_idle};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The sweep a wl_sweep report shows (None: none yet, or TORN).
fn sweep(report: &Path) -> Option<u64> {
    let r = std::fs::read_to_string(report).ok()?;
    r.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut sizes = vec![64usize, 256, 1024];
    let mut runs = 3usize;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes needs a value")
                    .split(',')
                    .map(|s| s.trim().parse().expect("size in MiB"))
                    .collect()
            }
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).expect("--runs N"),
            "--json" => json = true,
            _ => {
                eprintln!("usage: bench_live [--sizes 64,256,1024] [--runs N] [--json]");
                std::process::exit(2);
            }
        }
    }
    let crstream = common::crstream_bin();
    let wl = common::example_bin("wl_sweep");
    // Restored processes are re-parented to us, so we reap them at once.
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = std::env::temp_dir().join(format!("crstream-bench-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    if !json {
        println!(
            "crstream bench_live: wl_sweep (writes every page, all the time) dumped with \
`crstream dump --leave-running` to a file; medians of {runs} runs\n\
{:>8}  {:>7}  {:>9}  {:>8}  {:>8}  {:>14}  {:>8}",
            "size MiB", "mode", "frozen ms", "dump ms", "MB/s", "sweeps in dump", "verified"
        );
    }
    for &size in &sizes {
        for mode in ["live", "no-live"] {
            let (mut frozen, mut total, mut swept) = (Vec::new(), Vec::new(), Vec::new());
            let mut verified = true;
            for _ in 0..runs {
                wait_idle("bench_live", Duration::from_secs(30));
                let report = dir.join("report");
                let _ = std::fs::remove_file(&report);
                let mut child = Command::new(&wl)
                    .arg(&report)
                    .arg(size.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting wl_sweep");
                let pid = child.id() as i32;
                wait_for(WAIT, || sweep(&report).is_some_and(|s| s >= 3));
                let img = dir.join("img");
                let mut cmd = Command::new(&crstream);
                cmd.args(["dump", "-t", &pid.to_string(), "--leave-running", "--json"]);
                if mode == "no-live" {
                    cmd.arg("--no-live");
                }
                let before = sweep(&report).unwrap_or(0);
                let t = Instant::now();
                let out = run(cmd.arg("-o").arg(&img));
                total.push(t.elapsed().as_secs_f64() * 1e3);
                swept.push(sweep(&report).unwrap_or(0).saturating_sub(before) as f64);
                let v: serde_json::Value = serde_json::from_slice(&out).expect("dump --json");
                frozen.push(v["frozen_ms"].as_f64().unwrap_or(0.0));
                // The image, restored in place of the original.
                // SAFETY: ending the process this benchmark started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.wait();
                wait_for(WAIT, || gone(pid));
                let _ = std::fs::remove_file(&report);
                run(Command::new(&crstream)
                    .args(["restore", "--detach", "-i"])
                    .arg(&img));
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut first = None;
                while Instant::now() < deadline {
                    match (first, sweep(&report)) {
                        (None, Some(s)) => first = Some(s),
                        (Some(f), Some(s)) if s >= f + 3 => break,
                        _ => {}
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                verified &= first.is_some_and(|f| sweep(&report).is_some_and(|s| s >= f + 3));
                kill_all(&[pid], WAIT);
                let _ = std::fs::remove_file(&img);
            }
            let (f, t, s) = (median(&mut frozen), median(&mut total), median(&mut swept));
            let mb_s = (size << 20) as f64 / (t / 1e3) / 1e6;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "live", "size_mib": size, "mode": mode,
                        "frozen_ms": f, "dump_ms": t, "dump_mb_per_s": mb_s,
                        "sweeps_during_dump": s, "verified": verified})
                );
            } else {
                println!(
                    "{size:>8}  {mode:>7}  {f:>9.1}  {t:>8.0}  {mb_s:>8.0}  {s:>14.0}  {:>8}",
                    if verified { "yes" } else { "NO" }
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
