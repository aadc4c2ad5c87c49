//! TCP benchmark: what established connections add to a dump and a
//! restore. A server with N connections to a child of its own (wl_conns,
//! both ends in the tree) is dumped with --tcp-established to a local file
//! and restored; for N = 0, 100 and 1000 it prints dump time (and how long
//! the tree stayed frozen), restore time, and how long the network stayed
//! locked: from the start of the dump to the end of the restore here, an
//! upper bound (the lock is taken once the tree is frozen and its fds are
//! read, and lifted as the restored tree starts). Then the same with Q
//! connections waiting in the server's accept queue instead (Q = 100 and
//! 1000), each with a byte its client sent, which the restored server then
//! accepts and checks.
//!
//! Needs root and nft. Usage: bench_tcp [--conns 0,100,1000]
//! [--queued 100,1000] [--runs 3] (after `cargo build --release --bin
//! crstream --examples`).

#[path = "bench_common/mod.rs"]
mod common;

use common::{gone, median, run, wait_for};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// (counter, OK, bytes, accepted) of a wl_conns report.
fn report(path: &std::path::Path) -> Option<(u64, bool, u64, u64)> {
    let r = std::fs::read_to_string(path).ok()?;
    let f: Vec<&str> = r.split_whitespace().collect();
    Some((
        f.get(1)?.parse().ok()?,
        *f.get(2)? == "OK",
        f.get(3)?.parse().ok()?,
        f.get(5)?.parse().ok()?,
    ))
}

fn list(arg: Option<String>, what: &str) -> Vec<usize> {
    arg.unwrap_or_else(|| panic!("{what} N,N"))
        .split(',')
        .map(|s| s.parse().expect("count"))
        .collect()
}

fn main() {
    let mut counts = vec![0usize, 100, 1000];
    let mut queued = vec![100usize, 1000];
    let mut runs = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--conns" => counts = list(args.next(), "--conns"),
            "--queued" => queued = list(args.next(), "--queued"),
            "--runs" => runs = args.next().expect("--runs N").parse().expect("runs"),
            _ => {
                println!("usage: bench_tcp [--conns 0,100,1000] [--queued 100,1000] [--runs 3]");
                return;
            }
        }
    }
    let (crstream, wl) = (common::crstream_bin(), common::example_bin("wl_conns"));
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    common::wait_idle("bench_tcp", Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("temp dir");
    println!("established  queued  dump ms  frozen ms  restore ms  locked ms  verified");
    let rows = counts
        .iter()
        .map(|&n| (n, 0))
        .chain(queued.iter().map(|&q| (0, q)));
    for (n, q) in rows {
        let (mut dumps, mut frozen, mut restores, mut locked) = (vec![], vec![], vec![], vec![]);
        let mut verified = true;
        for _ in 0..runs {
            let rep = dir.path().join(format!("report-{n}"));
            let img = dir.path().join(format!("img-{n}"));
            let _ = std::fs::remove_file(&rep);
            let mut child = Command::new(&wl)
                .arg(&rep)
                .arg(n.to_string())
                .arg(q.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Should anything below fail: the tree (or its restored copy,
            // with the same PIDs) does not outlive the benchmark.
            let _tree = common::KillTreeOnDrop(child.id() as i32);
            wait_for(WAIT, || {
                report(&rep).is_some_and(|(c, ok, _, _)| c >= 3 && ok)
            });
            // The queued connections are in (their clients wrote first).
            std::thread::sleep(Duration::from_millis(if q > 0 { 200 } else { 0 }));
            let t = Instant::now();
            let out = run(Command::new(&crstream)
                .args([
                    "dump",
                    "--tcp-established",
                    "--json",
                    "-t",
                    &child.id().to_string(),
                    "-o",
                ])
                .arg(&img));
            dumps.push(t.elapsed().as_secs_f64() * 1e3);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("dump --json");
            frozen.push(v["frozen_ms"].as_f64().unwrap_or(0.0));
            let pids = common::dumped_pids(&v);
            let _ = child.wait();
            let (at, _, bytes, _) = report(&rep).unwrap();
            wait_for(WAIT, || pids.iter().all(|&p| gone(p)));
            let r = Instant::now();
            run(Command::new(&crstream)
                .args(["restore", "--detach", "-i"])
                .arg(&img));
            restores.push(r.elapsed().as_secs_f64() * 1e3);
            locked.push(t.elapsed().as_secs_f64() * 1e3);
            // Runs on, bytes keep arriving on the connections, and the
            // queued ones are accepted with their byte.
            std::fs::write(format!("{}.accept", rep.display()), b"").expect("trigger");
            wait_for(WAIT, || {
                report(&rep).is_some_and(|(c, ok, b, a)| {
                    c > at + 3 && (n == 0 || b > bytes) && (a == q as u64 || !ok)
                })
            });
            verified &= report(&rep).is_some_and(|(_, ok, _, a)| ok && a == q as u64);
            let _ = std::fs::remove_file(format!("{}.accept", rep.display()));
            common::kill_all(&pids, WAIT);
        }
        println!(
            "{n:>11}  {q:>6}  {:>7.1}  {:>9.1}  {:>10.1}  {:>9.1}  {}",
            median(&mut dumps),
            median(&mut frozen),
            median(&mut restores),
            median(&mut locked),
            if verified { "yes" } else { "NO" }
        );
    }
}
