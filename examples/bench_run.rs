//! Benchmark of `crstream run --cache`: the time until a service is ready,
//! started cold (a miss) and restored from the cache (a hit), for a Python
//! HTTP service that imports many modules and builds a large dict, a Java
//! HTTP service with a large map (the source launcher, as bench_ready) and a
//! Node.js HTTP service with a heap of ~480 MB. The cache is a local directory (or, with --source s3s-fs, a
//! local S3 server). Medians of --runs runs each.
//!
//! Cold: the `ready_ms` of a miss (start to ready; the checkpoint taken
//! after that is timed apart). Hit: the whole `crstream run` command, from
//! its start until it returns with the service ready (key, cache lookup,
//! restore, readiness check).
//!
//! Usage (after `cargo build --release --examples --bin crstream`):
//!   target/release/examples/bench_run [--runs N] [--source file|s3s-fs] [--eager] [--json]
//!
//! --eager: hits are restored eagerly (`crstream run --eager`; by default lazily).

#[path = "bench_common/mod.rs"]
mod common;

use common::s3::S3;
use common::services::{JAVA, NODE, PYTHON};
use common::{free_port, gone, median, wait_for, which};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// `crstream run --json ...`: (its summary, its wall time).
fn run_once(args: &[String], env: &[(String, String)]) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let o = Command::new(common::crstream_bin())
        .arg("run")
        .arg("--json")
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .expect("crstream run");
    let wall = t0.elapsed();
    assert!(
        o.status.success(),
        "crstream run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (serde_json::from_slice(&o.stdout).expect("json"), wall)
}

fn stop(v: &serde_json::Value) {
    let pid = v["pid"].as_i64().unwrap() as i32;
    // SAFETY: ending a service this benchmark had crstream start, by PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(WAIT, || gone(pid));
    for k in ["stdout", "stderr"] {
        if let Some(p) = v[k].as_str() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes the cache entry, for the next run to miss.
fn remove_entry(url: &str, env: &[(String, String)]) {
    let env = crstream_backends::Env::from_pairs(env.iter().cloned());
    let rt = tokio::runtime::Runtime::new().unwrap();
    if rt.block_on(env.exists(url)).unwrap_or(false) {
        rt.block_on(env.delete(url))
            .expect("removing the cache entry");
    }
}

fn main() {
    let mut runs = 3usize;
    let mut source = "file".to_string();
    let mut json = false;
    let mut eager = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).expect("--runs N"),
            "--source" => source = args.next().expect("--source file|s3s-fs"),
            "--json" => json = true,
            "--eager" => eager = true,
            _ => {
                eprintln!("usage: bench_run [--runs N] [--source file|s3s-fs] [--eager] [--json]");
                std::process::exit(2);
            }
        }
    }
    // SAFETY: a plain prctl: the services come to us when crstream ends.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = std::env::temp_dir().join(format!("crstream-bench-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service.py"), PYTHON).unwrap();
    std::fs::write(dir.join("Server.java"), JAVA).unwrap();
    std::fs::write(dir.join("service.js"), NODE).unwrap();
    let s3 = (source == "s3s-fs").then(|| S3::start("s3s-fs", &dir, "bench-run"));
    let env = s3.as_ref().map(S3::env).unwrap_or_default();
    // (name, command line before the port, entries of its map after it)
    let mut services: Vec<(&str, Vec<String>, &str)> = Vec::new();
    if which("python3") {
        let script = dir.join("service.py").display().to_string();
        services.push(("python", vec!["python3".into(), script], "1000000"));
    }
    if which("java") {
        // The source launcher, as bench_ready: compiled at each cold start.
        let source = dir.join("Server.java").display().to_string();
        let cmd = vec!["java".into(), "-Xmx1g".into(), source];
        services.push(("java", cmd, "1000000"));
    }
    if which("node") {
        // ~480 MB of heap.
        let script = dir.join("service.js").display().to_string();
        let cmd = vec!["node".into(), "--max-old-space-size=2048".into(), script];
        services.push(("node", cmd, "6000000"));
    }
    let mut results = Vec::new();
    for (name, cmd, entries) in &services {
        common::wait_idle("bench_run", Duration::from_secs(20));
        let port = free_port();
        let key = format!("bench-{name}-{}", std::process::id());
        let url = match &s3 {
            Some(s) => format!("s3://{}/{key}.img", s.bucket),
            None => dir.join(format!("{key}.img")).display().to_string(),
        };
        let mut args: Vec<String> = vec![
            "--cache".into(),
            url.clone(),
            "--key".into(),
            key.clone(),
            "--ready-when".into(),
            format!("tcp:127.0.0.1:{port}"),
            "--timeout".into(),
            "120".into(),
        ];
        if eager {
            args.push("--eager".into());
        }
        args.push("--".into());
        args.extend(cmd.iter().cloned());
        args.push(port.to_string());
        args.push(entries.to_string());
        let (mut cold, mut hit, mut hit_ready) = (Vec::new(), Vec::new(), Vec::new());
        let mut image = 0u64;
        let mut checkpoint = Vec::new();
        for _ in 0..runs {
            remove_entry(&url, &env);
            let (v, wall) = run_once(&args, &env);
            assert_eq!(v["cache"], "miss", "{v}");
            if v["uploaded_bytes"].as_u64() == Some(0) {
                eprintln!("bench_run: {name}: the checkpoint was not stored ({v})");
            }
            let ready = v["ready_ms"].as_f64().unwrap();
            cold.push(ready);
            checkpoint.push(wall.as_secs_f64() * 1e3 - ready);
            image = v["image_bytes"].as_u64().unwrap_or(0);
            stop(&v);
            let (v, wall) = run_once(&args, &env);
            if v["cache"] != "hit" {
                eprintln!("bench_run: {name}: no hit ({v})");
                stop(&v);
                continue;
            }
            hit.push(wall.as_secs_f64() * 1e3);
            hit_ready.push(v["ready_ms"].as_f64().unwrap());
            stop(&v);
        }
        if hit.is_empty() {
            continue;
        }
        let (c, h, hr, ck) = (
            median(&mut cold),
            median(&mut hit),
            median(&mut hit_ready),
            median(&mut checkpoint),
        );
        results.push(serde_json::json!({
            "service": name,
            "cold_ready_ms": c,
            "hit_ms": h,
            "hit_restore_to_ready_ms": hr,
            "speedup": c / h,
            "image_mib": image as f64 / (1 << 20) as f64,
            "checkpoint_ms": ck,
        }));
        if !json {
            println!(
                "{name:<7} cold start to ready {c:>7.0} ms | hit: run returns ready in {h:>6.0} ms \
                 (restore to ready {hr:>5.0} ms) | {:>5.1}x | image {:>6.1} MiB, checkpoint {ck:>5.0} ms after ready",
                c / h,
                image as f64 / (1 << 20) as f64
            );
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "source": source, "runs": runs, "services": results })
        );
    }
    drop(s3);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
