//! Streaming restore: the image flows from a pipe or straight from the S3
//! test server into the restored process's memory; crstream never holds the
//! whole image. Peak RSS is measured with wait4 on the restore process.

mod support;

use std::process::Stdio;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(30);
const IMAGE_MIB: u64 = 192;

/// Waits for `pid` (our child) and returns (exit code, peak RSS in MiB).
fn wait_with_rss(pid: i32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for a child we spawned and never waited for otherwise.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 / 1024)
}

/// Starts the memory workload, dumps it to `dest` (killing it), and returns
/// the workload guard, the counter at dump time and its checksum.
fn dumped_workload(dir: &TestDir, dest: &str, env: &[(&str, &str)]) -> (Workload, u64, u64) {
    let mut w = Workload::spawn("wl_memory", dir.path("report"), &[&IMAGE_MIB.to_string()]);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let o = run(
        &[
            "dump",
            "-t",
            &w.pid.to_string(),
            "-o",
            dest,
            "--compress",
            "lz4",
        ],
        env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let dumped = field(&w.read_report().unwrap(), 0, 0);
    w.reap_dumped();
    (w, dumped, field(&before, 0, 1))
}

fn check_continues(w: &mut Workload, pid: i32, dumped: u64, checksum: u64) {
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 2);
    assert_eq!(field(&r, 0, 1), checksum, "checksum changed");
    assert_running_untraced(pid);
}

#[test]
// The restore process is reaped with wait4, which also gives its peak RSS.
#[allow(clippy::zombie_processes)]
fn restore_from_a_pipe_streams_with_bounded_memory() {
    let dir = TestDir::new("stream-pipe");
    let img = dir.path("img");
    let (mut w, dumped, checksum) = dumped_workload(&dir, img.to_str().unwrap(), &[]);

    // crstream download FILE | crstream restore --detach
    let mut download = crstream()
        .args(["download", img.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = crstream()
        .args(["restore", "--detach"])
        .stdin(download.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore_pid = restore.id() as i32;
    let mut out = restore.stdout.unwrap();
    let (code, rss) = wait_with_rss(restore_pid);
    assert!(download.wait().unwrap().success());
    let mut pid = String::new();
    std::io::Read::read_to_string(&mut out, &mut pid).unwrap();
    assert_eq!(code, 0);
    let pid: i32 = pid.trim().parse().unwrap();
    check_continues(&mut w, pid, dumped, checksum);
    eprintln!("restore from a pipe: peak RSS {rss} MiB for a {IMAGE_MIB} MiB image");
    assert!(
        rss < IMAGE_MIB / 4,
        "restore of a {IMAGE_MIB} MiB image peaked at {rss} MiB"
    );
}

#[test]
// The restore process is reaped with wait4, which also gives its peak RSS.
#[allow(clippy::zombie_processes)]
fn restore_from_s3_streams_with_bounded_memory() {
    let env: Vec<(String, String)> = s3_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bucket = s3_bucket("streaming");
    let url = format!("s3://{bucket}/app.img");
    let dir = TestDir::new("stream-s3");
    let (mut w, dumped, checksum) = dumped_workload(&dir, &url, &env);

    let restore = crstream()
        .args([
            "restore",
            "-i",
            &url,
            "--detach",
            "--chunk-size",
            "2",
            "--reads-in-flight",
            "4",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore_pid = restore.id() as i32;
    let mut out = restore.stdout.unwrap();
    let (code, rss) = wait_with_rss(restore_pid);
    let mut pid = String::new();
    std::io::Read::read_to_string(&mut out, &mut pid).unwrap();
    assert_eq!(code, 0);
    check_continues(&mut w, pid.trim().parse().unwrap(), dumped, checksum);
    eprintln!("restore from S3: peak RSS {rss} MiB for a {IMAGE_MIB} MiB image");
    assert!(
        rss < IMAGE_MIB / 4,
        "restore of a {IMAGE_MIB} MiB image from S3 peaked at {rss} MiB"
    );
}
