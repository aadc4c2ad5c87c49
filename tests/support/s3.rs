//! The local S3 test server that `.ci/test` starts (moto): its endpoint,
//! the environment crstream needs to reach it, buckets and objects.

use std::io::{Read, Write};

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
