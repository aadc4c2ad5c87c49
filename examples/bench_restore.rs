//! Restore benchmark: how soon a restored process runs, and how soon the
//! restore is complete, for images on a local file and on a local S3 server
//! (moto), restored three ways:
//! - staged: `crstream download` to a local file first, then restore it;
//! - streaming: `crstream restore -i SRC` (pages stream in as they arrive);
//! - lazy: `crstream restore --lazy -i SRC` (runs first, pages follow).
//!
//! "runs after" is when `restore --detach --json` prints the PID: for the
//! eager modes that is after all memory is in; for lazy, right after resume.
//! "complete after" is when crstream exits. RSS is crstream's peak (wait4).
//! Needs root. Usage: bench_restore [--sizes 64,256,1024] [--no-s3]
//! [--s3-server moto|s3s-fs] (s3s-fs: `cargo install s3s-fs --features binary`,
//! much faster than moto, so closer to what a real object store gives)
//! [--idle]: the workload checks its memory every 2 s instead of every
//! 100 ms, so a lazy restore fills it without the process faulting every
//! page in order and taking a CPU meanwhile. For an object store, a
//! `download` row gives `crstream download`'s own time to a local file.
//! [--compress CODEC]: how the image is dumped (default auto: raw frames
//! in a local file; `crstream dump | crstream upload` stores zstd).
//! [--runs N]: each row is the median of N runs (default 1), the modes and
//! the download taking turns so that each sees the machine as the others
//! do; for an object store, a last row per size gives the lazy restore's
//! throughput as a fraction of the download's (medians).

#[path = "bench_common/mod.rs"]
mod common;

use common::s3::S3;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut sizes = vec![64u64, 256, 1024];
    let mut use_s3 = true;
    let mut server = "moto".to_string();
    let mut idle = false;
    let mut codec = "auto".to_string();
    let mut runs = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes N,N")
                    .split(',')
                    .map(|s| s.parse().expect("size in MiB"))
                    .collect()
            }
            "--no-s3" => use_s3 = false,
            "--idle" => idle = true,
            "--compress" => codec = args.next().expect("--compress CODEC"),
            "--s3-server" => server = args.next().expect("--s3-server moto|s3s-fs"),
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--runs N")
            }
            "--help" | "-h" => {
                println!(
                    "usage: bench_restore [--sizes 64,256,1024] [--no-s3] [--s3-server moto|s3s-fs] [--idle] [--compress CODEC] [--runs N]"
                );
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let (crstream, wl) = (common::crstream_bin(), common::example_bin("wl_memory"));
    // Detached restored processes are re-parented to us, so we reap them.
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = use_s3.then(|| S3::start(&server, dir.path(), "bench-restore"));

    println!("size MiB  source  mode       runs after  complete after  peak RSS MiB  verified");
    for &size in &sizes {
        let img = dir.path().join(format!("img-{size}"));
        let report = dir.path().join(format!("report-{size}"));
        let (pid, checksum, dumped) =
            dumped_workload(&crstream, &wl, &img, &report, size, idle, &codec);
        let mut sources = vec![("file", img.to_str().unwrap().to_string())];
        if let Some(s3) = &s3 {
            let url = format!("s3://{}/img-{size}", s3.bucket);
            let up = Command::new(&crstream)
                .args(["upload", &url])
                .envs(s3.env())
                .stdin(std::fs::File::open(&img).unwrap())
                .status()
                .unwrap();
            assert!(up.success(), "upload to the local S3 server");
            sources.push((if s3.name == "moto" { "moto" } else { "s3s-fs" }, url));
        }
        for (source, url) in &sources {
            let env = s3.as_ref().map(S3::env).unwrap_or_default();
            let modes: &[&str] = if *source == "file" {
                &["streaming", "lazy"] // a local file is already staged
            } else {
                &["download", "staged", "streaming", "lazy"]
            };
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
            for _ in 0..runs {
                for (i, mode) in modes.iter().enumerate() {
                    samples[i].push(if *mode == "download" {
                        let to = dir.path().join("downloaded");
                        let t0 = Instant::now();
                        download(&crstream, url, env.clone(), &to);
                        let took = t0.elapsed();
                        let bytes = std::fs::metadata(&to).unwrap().len();
                        let _ = std::fs::remove_file(&to);
                        Sample {
                            runs: took,
                            complete: took,
                            rss_kib: 0,
                            verified: true,
                            bytes,
                        }
                    } else {
                        let r = restore_once(&crstream, url, mode, &env, dir.path(), pid, source);
                        let verified = continues(&report, dumped, checksum);
                        kill_and_reap(pid);
                        Sample { verified, ..r }
                    });
                }
            }
            let mut download_ms = None;
            for (mode, samples) in modes.iter().zip(&samples) {
                let ms = |f: fn(&Sample) -> Duration| {
                    let mut v: Vec<f64> =
                        samples.iter().map(|s| f(s).as_secs_f64() * 1e3).collect();
                    common::median(&mut v)
                };
                let (runs_ms, complete_ms) = (ms(|s| s.runs), ms(|s| s.complete));
                if *mode == "download" {
                    let mb = samples[0].bytes as f64 / 1e6;
                    println!(
                        "{size:>8}  {source:<6}  download   {runs_ms:>8.1} ms  ({mb:.0} MB at {:.0} MB/s)",
                        mb / runs_ms * 1e3
                    );
                    download_ms = Some(runs_ms);
                    continue;
                }
                let mut rss: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64).collect();
                println!(
                    "{size:>8}  {source:<6}  {mode:<9}  {runs_ms:>8.1} ms  {complete_ms:>11.1} ms  {:>12.1}  {}",
                    common::median(&mut rss) / 1024.0,
                    if samples.iter().all(|s| s.verified) {
                        "yes"
                    } else {
                        "NO"
                    }
                );
                if *mode == "lazy"
                    && let Some(d) = download_ms
                {
                    println!(
                        "{size:>8}  {source:<6}  lazy fill at {:.0}% of the download's throughput",
                        d / complete_ms * 100.0
                    );
                }
            }
        }
    }
}

/// One restore's figures (a download's: runs = complete, its bytes).
#[derive(Clone)]
struct Sample {
    runs: Duration,
    complete: Duration,
    rss_kib: i64,
    verified: bool,
    bytes: u64,
}

/// One `crstream restore --detach --json` of `url` in `mode` (staged: a
/// download to a local file first, counted in the time), which must give
/// back `pid`; the restored process is left running.
fn restore_once(
    crstream: &Path,
    url: &str,
    mode: &str,
    env: &[(String, String)],
    dir: &Path,
    pid: i32,
    source: &str,
) -> Sample {
    let t0 = Instant::now();
    let input = if mode == "staged" {
        let staged = dir.join("staged");
        download(crstream, url, env.to_vec(), &staged);
        staged.to_str().unwrap().to_string()
    } else {
        url.to_string()
    };
    let mut cmd = Command::new(crstream);
    cmd.args(["restore", "--detach", "--json", "-i", &input])
        .envs(env.iter().cloned());
    if mode == "lazy" {
        cmd.arg("--lazy");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("crstream restore");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let runs = t0.elapsed();
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("restore --json");
    let (mut code, mut rss_kib) = wait_rss(child.id() as i32);
    if mode == "lazy" {
        // The command returned at once; its server (ours now: we are the
        // subreaper) serves the pages.
        assert_eq!(code, 0, "restore ({source}, {mode}) failed");
        (code, rss_kib) = wait_rss(v["server_pid"].as_i64().expect("server_pid") as i32);
    }
    drop(child);
    let complete = t0.elapsed();
    assert_eq!(code, 0, "restore ({source}, {mode}) failed");
    assert_eq!(v["pid"].as_i64(), Some(pid as i64));
    if mode == "staged" {
        let _ = std::fs::remove_file(dir.join("staged"));
    }
    Sample {
        runs,
        complete,
        rss_kib,
        verified: false,
        bytes: 0,
    }
}

/// `crstream download URL > to`.
fn download(crstream: &Path, url: &str, env: Vec<(String, String)>, to: &Path) {
    let ok = Command::new(crstream)
        .args(["download", url])
        .envs(env)
        .stdout(std::fs::File::create(to).unwrap())
        .status()
        .unwrap();
    assert!(ok.success(), "download of {url}");
}

/// Starts wl_memory with `size` MiB, dumps it to `img` (which kills it),
/// reaps it and waits until its PID is free. Returns (pid, checksum, counter).
fn dumped_workload(
    crstream: &Path,
    wl: &Path,
    img: &Path,
    report: &Path,
    size: u64,
    idle: bool,
    codec: &str,
) -> (i32, u64, u64) {
    let mut child = Command::new(wl)
        .arg(report)
        .arg(size.to_string())
        .env("WL_PERIOD_MS", if idle { "2000" } else { "100" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = Instant::now();
    let (checksum, _) = loop {
        if let Some((c, sum)) = read_report(report).filter(|&(c, _)| c >= 2) {
            break (sum, c);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "workload never reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let ok = Command::new(crstream)
        .args(["dump", "-t", &pid.to_string(), "--compress", codec, "-o"])
        .arg(img)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "dump");
    let dumped = read_report(report).unwrap().0;
    let _ = child.wait();
    wait_gone(pid);
    (pid, checksum, dumped)
}

/// (counter, checksum) from a wl_memory report.
fn read_report(report: &Path) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(report).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Whether the restored workload counts on with the same checksum.
fn continues(report: &Path, dumped: u64, checksum: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some((c, sum)) = read_report(report) {
            if c > dumped + 1 {
                return sum == checksum;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits for a child; returns its exit code and peak RSS in KiB.
/// Waits for our child (or orphan: we are the subreaper) `pid`; returns
/// its exit code and peak RSS in KiB.
fn wait_rss(pid: i32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; the child is ours.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, not waited for elsewhere.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// Kills a restored process (by PID) and reaps it: as subreaper it is ours.
fn kill_and_reap(pid: i32) {
    // SAFETY: signalling and reaping the process this benchmark restored.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    wait_gone(pid);
}

fn wait_gone(pid: i32) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pid {pid} never went away"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
