//! S3 against a real server (moto). `.ci/test` starts moto_server and sets
//! CRSTREAM_TEST_S3_ENDPOINT; without it these tests fail rather than pass
//! silently.

mod common;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{assert_same, get, put, random_bytes, write_uneven};
use crstream_backends::{BackendError, Env, ReadOptions, SinkOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;

/// 5 MiB is the smallest part S3 accepts.
const PARTS: SinkOptions = SinkOptions {
    part_size: 5 * MIB,
    parts_in_flight: 3,
};

fn endpoint() -> String {
    match std::env::var("CRSTREAM_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => e.trim_end_matches('/').to_owned(),
        _ => panic!(
            "CRSTREAM_TEST_S3_ENDPOINT is not set: run the S3 tests via .ci/test, which starts \
             moto_server; or start `moto_server -p 5055` and set \
             CRSTREAM_TEST_S3_ENDPOINT=http://127.0.0.1:5055"
        ),
    }
}

fn env() -> Env {
    Env::from_pairs([
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("CRSTREAM_MAX_RETRIES", "1".to_owned()),
    ])
}

/// A minimal HTTP/1.1 exchange with the test server (object_store cannot
/// create buckets; moto does not check signatures). Returns status and the
/// raw head and body.
async fn http(method: &str, target: &str) -> (u16, String, String) {
    let ep = endpoint();
    let host = ep.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A fresh bucket for one test.
async fn bucket() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "crstream-{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::SeqCst)
    );
    let (status, head, _) = http("PUT", &format!("/{name}")).await;
    assert_eq!(status, 200, "creating bucket {name}: {head}");
    name
}

/// Multipart uploads still open in `bucket`.
async fn open_uploads(bucket: &str) -> usize {
    let (status, _, body) = http("GET", &format!("/{bucket}?uploads")).await;
    assert_eq!(status, 200, "{body}");
    body.matches("<UploadId>").count()
}

/// Waits (a little) for a background abort to land.
async fn wait_no_uploads(bucket: &str) {
    for _ in 0..100 {
        if open_uploads(bucket).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_uploads(bucket).await, 0, "multipart uploads left open");
}

#[tokio::test]
async fn multipart_round_trip() {
    let env = env();
    let b = bucket().await;
    let url = format!("s3://{b}/images/dump 1.crs");
    let data = random_bytes(40 * MIB + 12345, 21);
    put(&env, &url, &data, &PARTS).await;

    // S3 marks multipart objects with an ETag ending in -<parts>.
    let (status, head, _) = http("HEAD", &format!("/{b}/images/dump%201.crs")).await;
    assert_eq!(status, 200, "{head}");
    let etag = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
        .unwrap_or_default();
    assert!(etag.contains("-9\""), "expected 9 parts: {etag}");
    assert_eq!(open_uploads(&b).await, 0);

    assert_same(&get(&env, &url, ReadOptions::default()).await, &data);
    let small = ReadOptions {
        chunk_size: 3 * MIB + 1,
        in_flight: 5,
    };
    assert_same(&get(&env, &url, small).await, &data);

    let r = env.open_source(&url).await.unwrap().ranged().unwrap();
    let size = data.len() as u64;
    assert_eq!(r.size(), size);
    for range in [
        0..1,
        5 * MIB as u64 - 1..5 * MIB as u64 + 1,
        size - 7..size,
        0..0,
    ] {
        let got = r.read_range(range.clone()).await.unwrap();
        assert_same(&got, &data[range.start as usize..range.end as usize]);
    }
    let e = r.read_range(size - 1..size + 1).await.unwrap_err();
    assert!(matches!(e, BackendError::InvalidRange { .. }), "{e}");

    assert!(env.exists(&url).await.unwrap());
    env.delete(&url).await.unwrap();
    assert!(!env.exists(&url).await.unwrap());
}

#[tokio::test]
async fn small_and_empty_objects() {
    let env = env();
    let b = bucket().await;
    let url = format!("s3://{b}/small");
    let data = random_bytes(777, 22);
    put(&env, &url, &data, &PARTS).await;
    assert_same(&get(&env, &url, ReadOptions::default()).await, &data);
    put(&env, &url, b"", &PARTS).await;
    assert!(get(&env, &url, ReadOptions::default()).await.is_empty());
    assert_eq!(open_uploads(&b).await, 0);
}

#[tokio::test]
async fn abort_leaves_no_object_and_keeps_previous() {
    let env = env();
    let b = bucket().await;
    let fresh = format!("s3://{b}/fresh");
    let mut sink = env.open_sink(&fresh, &PARTS).await.unwrap();
    write_uneven(&mut sink, &random_bytes(12 * MIB, 23)).await;
    sink.flush().await.unwrap();
    sink.abort().await.unwrap();
    assert!(!env.exists(&fresh).await.unwrap());
    assert_eq!(open_uploads(&b).await, 0);

    let existing = format!("s3://{b}/existing");
    let old = random_bytes(6 * MIB, 24);
    put(&env, &existing, &old, &PARTS).await;
    let mut sink = env.open_sink(&existing, &PARTS).await.unwrap();
    write_uneven(&mut sink, &random_bytes(11 * MIB, 25)).await;
    sink.flush().await.unwrap();
    assert_same(&get(&env, &existing, ReadOptions::default()).await, &old);
    sink.abort().await.unwrap();
    assert_same(&get(&env, &existing, ReadOptions::default()).await, &old);
    assert_eq!(open_uploads(&b).await, 0);
}

#[tokio::test]
async fn dropped_sink_is_aborted() {
    let env = env();
    let b = bucket().await;
    let url = format!("s3://{b}/dropped");
    let mut sink = env.open_sink(&url, &PARTS).await.unwrap();
    write_uneven(&mut sink, &random_bytes(11 * MIB, 26)).await;
    assert_eq!(open_uploads(&b).await, 1);
    drop(sink);
    wait_no_uploads(&b).await;
    assert!(!env.exists(&url).await.unwrap());
}

#[tokio::test]
async fn not_found() {
    let env = env();
    let b = bucket().await;
    let url = format!("s3://{b}/nope");
    let e = env.open_source(&url).await.err().unwrap();
    assert_eq!(e.to_string(), format!("{url}: not found"));
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    assert!(!env.exists(&url).await.unwrap());
}

#[tokio::test]
async fn no_such_bucket() {
    let env = env();
    let url = format!("s3://crstream-missing-{}/key", std::process::id());
    let e = env.open_source(&url).await.err().unwrap();
    assert_eq!(e.to_string(), format!("{url}: no such bucket"));
    let e = env.open_sink(&url, &PARTS).await.err().unwrap();
    assert_eq!(e.to_string(), format!("{url}: no such bucket"));
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    let e = env.exists(&url).await.unwrap_err();
    assert!(matches!(e, BackendError::NoSuchBucket { .. }), "{e}");
}

#[tokio::test]
async fn virtual_host_style_is_not_needed_for_a_custom_endpoint() {
    // Path-style requests (the default with an endpoint) and the explicit
    // AWS_S3_FORCE_PATH_STYLE both work against a local server.
    let b = bucket().await;
    let env = Env::from_pairs([
        ("AWS_ENDPOINT", endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_S3_FORCE_PATH_STYLE", "true".to_owned()),
    ]);
    let url = format!("s3://{b}/k");
    put(&env, &url, b"hello", &PARTS).await;
    assert_eq!(get(&env, &url, ReadOptions::default()).await, b"hello");
}

/// commit_if_absent: an object that appeared while the upload ran stays,
/// the upload is dropped; with none there, the upload lands.
#[tokio::test]
async fn commit_if_absent_keeps_an_existing_object() {
    let env = env();
    let b = bucket().await;
    let url = format!("s3://{b}/entry");
    let first = random_bytes(7 * MIB, 31);
    let mut sink = env.open_sink(&url, &PARTS).await.unwrap();
    write_uneven(&mut sink, &first).await;
    assert_eq!(
        sink.commit_if_absent().await.unwrap(),
        Some(first.len() as u64)
    );
    let mut sink = env.open_sink(&url, &PARTS).await.unwrap();
    write_uneven(&mut sink, &random_bytes(6 * MIB, 32)).await;
    assert_eq!(sink.commit_if_absent().await.unwrap(), None);
    assert_same(&get(&env, &url, ReadOptions::default()).await, &first);
    assert_eq!(open_uploads(&b).await, 0);
}
