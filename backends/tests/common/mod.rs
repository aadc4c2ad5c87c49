//! Helpers shared by the backend integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use crstream_backends::{Env, ReadOptions, Sink, SinkOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deterministic pseudo-random bytes (splitmix64): no zero runs, no repeats
/// at part boundaries, so misplaced parts cannot go unnoticed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A 127.0.0.1 port with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Writes `data` in uneven slices so writes straddle part boundaries.
pub async fn write_uneven(sink: &mut Sink, data: &[u8]) {
    let mut off = 0;
    let mut step = 1;
    while off < data.len() {
        let end = (off + step).min(data.len());
        sink.write_all(&data[off..end]).await.unwrap();
        off = end;
        step = step * 3 + 1;
        if step > 3 << 20 {
            step = 7;
        }
    }
}

/// Writes `data` to `url` and commits.
pub async fn put(env: &Env, url: &str, data: &[u8], opts: &SinkOptions) {
    let mut sink = env.open_sink(url, opts).await.unwrap();
    write_uneven(&mut sink, data).await;
    assert_eq!(sink.commit().await.unwrap(), data.len() as u64);
}

/// Reads the whole object at `url` through `into_async_read`.
pub async fn get(env: &Env, url: &str, opts: ReadOptions) -> Vec<u8> {
    let src = env.open_source(url).await.unwrap();
    let size = src.size().unwrap();
    let mut out = Vec::new();
    src.into_async_read(opts)
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out.len() as u64, size);
    out
}

/// Asserts equality without dumping megabytes on failure.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("first difference at byte {i}");
    }
}
