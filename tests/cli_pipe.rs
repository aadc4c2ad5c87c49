//! End-to-end tests of `crstream upload`, `download` and `inspect`.

mod support;

use crstream_streamer::testing::SynthSpec;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;
use support::*;

#[test]
fn upload_download_file_is_byte_transparent() {
    let dir = tempdir();
    let data = random_bytes(21 << 20 | 12345, 1);
    for dest in [
        path_str(&dir.path().join("a.bin")),
        format!("file://{}", path_str(&dir.path().join("b.bin"))),
    ] {
        let out = run_with_input(&["upload", &dest, "--part-size", "1"], &data, &[]);
        assert!(
            out.status.success(),
            "upload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "nothing extra on stderr when piped: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let down = crstream()
            .args(["download", &dest, "--chunk-size", "1"])
            .output()
            .unwrap();
        assert!(
            down.status.success(),
            "download: {}",
            String::from_utf8_lossy(&down.stderr)
        );
        assert!(
            down.stdout == data,
            "downloaded bytes differ ({} vs {})",
            down.stdout.len(),
            data.len()
        );
    }
    // Empty input is a valid (empty) object.
    let empty = path_str(&dir.path().join("empty"));
    assert!(
        run_with_input(&["upload", &empty], b"", &[])
            .status
            .success()
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
}

#[test]
fn upload_download_s3_is_byte_transparent() {
    let bucket = s3_bucket("pipe");
    let url = format!("s3://{bucket}/dir/obj.bin");
    let data = random_bytes(23 << 20 | 777, 2);
    let out = run_with_input(
        &[
            "upload",
            &url,
            "--part-size",
            "5",
            "--parts-in-flight",
            "3",
            "--json",
        ],
        &data,
        &s3_env(),
    );
    assert!(
        out.status.success(),
        "upload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["bytes"], data.len() as u64);
    let down = crstream()
        .args(["download", &url, "--chunk-size", "3"])
        .envs(s3_env())
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "download: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(down.stdout == data, "downloaded bytes differ");
}

#[test]
fn download_missing_object_names_url_and_cause() {
    let bucket = s3_bucket("missing");
    let url = format!("s3://{bucket}/nope.img");
    let out = crstream()
        .args(["download", &url])
        .envs(s3_env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url) && err.contains("not found"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one readable line: {err}");

    let out = crstream()
        .args(["download", "/nonexistent/dir/x.img"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/dir/x.img") && err.contains("not found"),
        "{err}"
    );

    let out = crstream()
        .args(["download", "ftp://host/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported URL scheme"));
}

/// Starts an upload fed through a pipe we hold open, sends `bytes`, waits,
/// and sends `signal` mid-upload. Returns the exit status.
fn interrupted_upload(
    dest: &str,
    env: &[(String, String)],
    bytes: usize,
    signal: i32,
) -> std::process::ExitStatus {
    let mut child = crstream()
        .args(["upload", dest, "--part-size", "5"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(bytes, 5)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Signal the upload we started, by its PID, while its input is still open.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    drop(stdin);
    status
}

#[test]
fn interrupted_upload_to_s3_leaves_nothing() {
    let bucket = s3_bucket("atomic");
    for (i, signal) in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let key = format!("big-{i}.img");
        let status =
            interrupted_upload(&format!("s3://{bucket}/{key}"), &s3_env(), 17 << 20, signal);
        assert!(!status.success(), "signal {signal}");
        assert!(
            !s3_object_exists(&bucket, &key),
            "a partial object exists after signal {signal}"
        );
    }
    // A pre-existing object stays intact.
    let url = format!("s3://{bucket}/keep.img");
    let old = random_bytes(1000, 9);
    assert!(
        run_with_input(&["upload", &url], &old, &s3_env())
            .status
            .success()
    );
    interrupted_upload(&url, &s3_env(), 17 << 20, libc::SIGTERM);
    let down = crstream()
        .args(["download", &url])
        .envs(s3_env())
        .output()
        .unwrap();
    assert!(down.stdout == old, "the old object changed");
}

#[test]
fn interrupted_upload_to_file_leaves_nothing() {
    let dir = tempdir();
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        let dest = dir.path().join(format!("x-{signal}.img"));
        let status = interrupted_upload(&path_str(&dest), &[], 12 << 20, signal);
        assert!(!status.success());
        assert!(
            !dest.exists(),
            "{} exists after signal {signal}",
            dest.display()
        );
    }
    let dest = dir.path().join("keep.img");
    std::fs::write(&dest, b"old contents").unwrap();
    let status = interrupted_upload(&path_str(&dest), &[], 12 << 20, libc::SIGTERM);
    assert_eq!(status.code(), Some(143));
    assert_eq!(std::fs::read(&dest).unwrap(), b"old contents");
}

#[test]
fn inspect_reports_streams_and_pages() {
    let dir = tempdir();
    let path = dir.path().join("img");
    let spec = SynthSpec {
        processes: 2,
        threads_per_process: 2,
        areas: 2,
        pages_per_area: 100,
        blob_bytes: 5000,
        seed: 4,
    };
    synthetic_image(&path, &spec);
    let out = crstream()
        .args(["inspect", &path_str(&path), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let present = (0..100u64)
        .filter(|&i| crstream_streamer::testing::page_present(i))
        .count() as u64;
    assert_eq!(r["pages"]["pages"], 2 * 2 * present);
    assert_eq!(r["pages"]["processes"].as_array().unwrap().len(), 2);
    assert_eq!(r["format_version"], 1);
    assert_eq!(r["default_codec"], "zstd");
    assert_eq!(r["inventory"]["root_pid"], 1000);
    let streams = r["streams"].as_array().unwrap();
    let threads: Vec<_> = streams.iter().filter(|s| s["kind"] == "thread").collect();
    assert_eq!(threads.len(), 4);
    assert!(threads.iter().all(|t| t["records"] == 1));
    let pages: Vec<_> = streams.iter().filter(|s| s["kind"] == "pages").collect();
    assert!(
        pages
            .iter()
            .all(|p| p["compression_ratio"].as_f64().unwrap() > 1.2),
        "{pages:?}"
    );
    assert_eq!(r["total_bytes"], std::fs::metadata(&path).unwrap().len());

    // Human output, read from stdin.
    let bytes = std::fs::read(&path).unwrap();
    let out = run_with_input(&["inspect"], &bytes, &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("format 1")
            && text.contains("thread 100001")
            && text.contains("2 process(es)"),
        "{text}"
    );
}

/// `crstream inspect IMG | head -1`: a reader that stops early is no
/// failure (it panicked on the broken pipe before).
#[test]
fn inspect_into_a_closed_pipe_succeeds_quietly() {
    let dir = tempdir();
    let path = dir.path().join("img");
    let spec = SynthSpec {
        processes: 2,
        threads_per_process: 2,
        areas: 2,
        pages_per_area: 10,
        blob_bytes: 100,
        seed: 5,
    };
    synthetic_image(&path, &spec);
    for json in [false, true] {
        let (read, write) = std::io::pipe().unwrap();
        drop(read);
        let mut c = crstream();
        c.args(["inspect", &path_str(&path)]);
        if json {
            c.arg("--json");
        }
        let out = c
            .stdout(write)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "json {json}: {:?} {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "json {json}: {stderr}");
    }
}

#[test]
fn inspect_damaged_streams_fails_with_the_specific_error() {
    let dir = tempdir();
    let path = dir.path().join("img");
    let good = synthetic_image(&path, &SynthSpec::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("bad magic", [b"XXXXXXXX".as_slice(), &good[8..]].concat()),
        ("checksum mismatch", {
            let mut b = good.clone();
            let n = b.len();
            b[n / 2] ^= 0x40;
            b
        }),
        ("empty input", Vec::new()),
        ("unsupported stream format version 2", {
            let mut b = good.clone();
            b[8] = 2;
            b
        }),
    ];
    for (expect, bytes) in cases {
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).unwrap();
        let out = crstream()
            .args(["inspect", &path_str(&bad)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{expect}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn inspect_from_s3() {
    let dir = tempdir();
    let path = dir.path().join("img");
    let bytes = synthetic_image(
        &path,
        &SynthSpec {
            pages_per_area: 300,
            ..Default::default()
        },
    );
    let bucket = s3_bucket("inspect");
    let url = format!("s3://{bucket}/app.img");
    assert!(
        run_with_input(&["upload", &url], &bytes, &s3_env())
            .status
            .success()
    );
    let out = crstream()
        .args(["inspect", &url, "--json"])
        .envs(s3_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["total_bytes"], bytes.len() as u64);
}

#[test]
fn help_is_complete() {
    let out = crstream().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["dump", "restore", "check", "upload", "download", "inspect"] {
        assert!(text.contains(cmd), "--help lacks {cmd}");
    }
    let out = crstream().args(["upload", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Memory used is about"),
        "upload --help must state the memory bound: {text}"
    );
}
