//! Helpers shared by the end-to-end tests of the crstream binary.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

pub fn crstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crstream"));
    c.env_remove("CRSTREAM_LOG");
    c
}

/// Runs crstream with `stdin` as input; returns its output.
pub fn run_with_input(args: &[&str], stdin: &[u8], env: &[(String, String)]) -> Output {
    let mut child = crstream()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = crstream_streamer::testing::Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The S3 test server from `.ci/test`; fails loudly when it is not set.
pub fn s3_endpoint() -> String {
    match std::env::var("CRSTREAM_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => e.trim_end_matches('/').to_string(),
        _ => panic!(
            "CRSTREAM_TEST_S3_ENDPOINT is not set: run the tests with .ci/test, which starts a local S3 server"
        ),
    }
}

/// Environment for crstream to talk to the S3 test server.
pub fn s3_env() -> Vec<(String, String)> {
    s3_env_for(s3_endpoint())
}

/// Environment for crstream to talk to the S3 server at `endpoint`.
pub fn s3_env_for(endpoint: String) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One HTTP/1.1 request to the S3 test server (moto checks no signatures).
/// Returns the status and body.
pub fn s3_http(method: &str, target: &str) -> (u16, Vec<u8>) {
    let ep = s3_endpoint();
    let host = ep.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    write!(s, "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw[(split + 4).min(raw.len())..].to_vec())
}

/// Creates a fresh bucket on the S3 test server.
pub fn s3_bucket(prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let (status, body) = s3_http("PUT", &format!("/{name}"));
    assert_eq!(
        status,
        200,
        "creating bucket {name}: {}",
        String::from_utf8_lossy(&body)
    );
    name
}

/// Whether an object exists on the S3 test server.
pub fn s3_object_exists(bucket: &str, key: &str) -> bool {
    match s3_http("HEAD", &format!("/{bucket}/{key}")).0 {
        200 => true,
        404 => false,
        other => panic!("HEAD /{bucket}/{key}: HTTP {other}"),
    }
}

/// Writes a synthetic image (see crstream_streamer::testing) to a file.
pub fn synthetic_image(
    path: &std::path::Path,
    spec: &crstream_streamer::testing::SynthSpec,
) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt
        .block_on(crstream_streamer::testing::image_bytes(
            Default::default(),
            spec,
        ))
        .unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A child process killed (by PID) and reaped when the guard drops.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crstream"))
        .parent()
        .unwrap()
        .to_path_buf()
}
