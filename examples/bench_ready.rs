//! Benchmark of the time until a restored service answers its first
//! request: a Python HTTP service that imports many modules and builds a
//! large dict, and a Java HTTP service (the source launcher, with a large
//! map), each on a loopback port. For each: cold start to first answer;
//! then, from an image on a local S3 server (s3s-fs, or a file): a
//! streaming restore, a lazy restore without a recorded working set (which
//! records one, IMAGE.ws), and a lazy restore that prefetches it first.
//! Medians of --runs runs. Needs root, python3, java and s3s-fs
//! (`cargo install s3s-fs --features binary`; without it, a file).
//!
//! Usage (after `cargo build --release --examples --bin crstream`):
//!   target/release/examples/bench_ready [--runs N] [--source s3s-fs|file] [--json]

#[path = "bench_common/mod.rs"]
mod common;

use common::s3::S3;
use common::services::{JAVA, PYTHON};
use common::{free_port, gone, median, run, wait_for, wait_idle, which};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Whether the service on `port` answers a request with 200.
fn answers(port: u16) -> bool {
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    if c.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// Milliseconds from `t0` until the service answers.
fn until_ready(port: u16, t0: Instant) -> f64 {
    wait_for(WAIT, || answers(port));
    t0.elapsed().as_secs_f64() * 1e3
}

struct Service {
    name: &'static str,
    cmd: Vec<String>,
}

fn kill_and_reap(pid: i32) {
    // SAFETY: ending (and reaping: we are the subreaper) a process this
    // benchmark started or restored, by PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(WAIT, || gone(pid));
}

fn main() {
    let mut runs = 3usize;
    let mut source = if which("s3s-fs") { "s3s-fs" } else { "file" }.to_string();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).expect("--runs N"),
            "--source" => source = args.next().expect("--source s3s-fs|file"),
            "--json" => json = true,
            _ => {
                eprintln!("usage: bench_ready [--runs N] [--source s3s-fs|file] [--json]");
                std::process::exit(2);
            }
        }
    }
    let crstream = common::crstream_bin();
    // SAFETY: a plain prctl on this process: restored processes and the
    // lazy restore servers are re-parented to us, and reaped by us.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = std::env::temp_dir().join(format!("crstream-bench-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service.py"), PYTHON).unwrap();
    std::fs::write(dir.join("Server.java"), JAVA).unwrap();
    let s3 = (source == "s3s-fs").then(|| S3::start("s3s-fs", &dir, "bench-ready"));
    let env = s3.as_ref().map(S3::env).unwrap_or_default();
    let mut services = Vec::new();
    if which("python3") {
        services.push(Service {
            name: "python",
            cmd: vec![
                "python3".into(),
                dir.join("service.py").display().to_string(),
            ],
        });
    }
    if which("java") {
        services.push(Service {
            name: "java",
            cmd: vec![
                "java".into(),
                "-Xmx1g".into(),
                dir.join("Server.java").display().to_string(),
            ],
        });
    }
    if !json {
        println!(
            "crstream bench_ready: ms until a service answers its first request; image on {source}; \
medians of {runs} runs\n{:<8}  {:>9}  {:>8}  {:>9}  {:>10}  {:>12}  {:>9}",
            "service", "image MiB", "cold", "streaming", "lazy", "lazy + ws", "ws frames"
        );
    }
    for svc in &services {
        let (mut cold, mut streaming, mut lazy, mut lazy_ws) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut image_mib, mut ws_frames) = (0.0, 0usize);
        for _ in 0..runs {
            wait_idle("bench_ready", Duration::from_secs(30));
            let port = free_port();
            let t0 = Instant::now();
            let mut child = Command::new(&svc.cmd[0])
                .args(&svc.cmd[1..])
                .arg(port.to_string())
                .arg("1000000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting the service");
            let pid = child.id() as i32;
            cold.push(until_ready(port, t0));
            // Let a first answer's lazy initialisation settle, as a warm
            // service in CI would be.
            std::thread::sleep(Duration::from_millis(300));
            let (url, ws_path): (String, Option<PathBuf>) = match &s3 {
                Some(s3) => (
                    format!("s3://{}/{}.img", s3.bucket, svc.name),
                    s3.root
                        .as_ref()
                        .map(|r| r.join(&s3.bucket).join(format!("{}.img.ws", svc.name))),
                ),
                None => {
                    let p = dir.join(format!("{}.img", svc.name));
                    (p.display().to_string(), Some(p.with_extension("img.ws")))
                }
            };
            run(Command::new(&crstream)
                .args(["dump", "-t", &pid.to_string(), "-o", &url])
                .envs(env.iter().cloned()));
            // The dump killed it.
            let _ = child.wait();
            wait_for(WAIT, || gone(pid));
            image_mib = image_bytes(s3.as_ref(), svc.name, &dir) as f64 / (1 << 20) as f64;
            if let Some(p) = &ws_path {
                let _ = std::fs::remove_file(p);
            }
            let restore = |extra: &[&str]| -> f64 {
                let t0 = Instant::now();
                let out = run(Command::new(&crstream)
                    .args(["restore", "--detach", "--json", "-i", &url])
                    .args(extra)
                    .envs(env.iter().cloned()));
                let ms = until_ready(port, t0);
                let v: serde_json::Value = serde_json::from_slice(&out).expect("restore --json");
                let server = v["server_pid"].as_i64().unwrap_or(0) as i32;
                // A lazy restore's server ends once every page is in (and
                // the working set is recorded).
                if extra.contains(&"--lazy") && server > 0 {
                    wait_for(WAIT, || gone(server));
                }
                kill_and_reap(pid);
                ms
            };
            streaming.push(restore(&[]));
            lazy.push(restore(&["--lazy"]));
            ws_frames = ws_path
                .as_ref()
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["frames"].as_array().map(Vec::len))
                .unwrap_or(0);
            lazy_ws.push(restore(&["--lazy"]));
        }
        let (c, s, l, w) = (
            median(&mut cold),
            median(&mut streaming),
            median(&mut lazy),
            median(&mut lazy_ws),
        );
        if json {
            println!(
                "{}",
                serde_json::json!({"bench": "ready", "service": svc.name, "source": source,
                    "image_mib": image_mib, "cold_ms": c, "streaming_ms": s, "lazy_ms": l,
                    "lazy_working_set_ms": w, "working_set_frames": ws_frames})
            );
        } else {
            println!(
                "{:<8}  {image_mib:>9.0}  {c:>8.0}  {s:>9.0}  {l:>10.0}  {w:>12.0}  {ws_frames:>9}",
                svc.name
            );
        }
    }
    drop(s3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The size of the image just written (a file of s3s-fs's, or ours).
fn image_bytes(s3: Option<&S3>, name: &str, dir: &Path) -> u64 {
    let path = match s3.and_then(|s| s.root.as_ref().map(|r| r.join(&s.bucket))) {
        Some(bucket) => bucket.join(format!("{name}.img")),
        None => dir.join(format!("{name}.img")),
    };
    std::fs::metadata(&path).map_or(0, |m| m.len())
}
