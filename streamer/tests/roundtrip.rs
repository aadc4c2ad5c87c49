//! Round trips of synthetic images through every codec, read back by both
//! the sequential and the random-access reader; page contents compared
//! byte for byte.

use bytes::Bytes;
use crstream_proto::{Codec, record::Body};
use crstream_streamer::testing::{SynthSpec, area_start, image_bytes, page_contents, page_present};
use crstream_streamer::{Item, PAGE_SIZE, RandomReader, SequentialReader, WriterOptions};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

fn opts(codec: Codec) -> WriterOptions {
    WriterOptions {
        codec,
        workers: 3,
        page_frame_bytes: 64 << 10,
        record_frame_bytes: 1024,
        ..Default::default()
    }
}

/// Every (pid, address) → page contents the spec puts in an image.
fn expected_pages(spec: &SynthSpec) -> BTreeMap<(u32, u64), Vec<u8>> {
    let mut m = BTreeMap::new();
    for p in 0..spec.processes {
        let pid = 1000 + p;
        for a in 0..spec.areas {
            for i in (0..spec.pages_per_area).filter(|&i| page_present(i)) {
                m.insert(
                    (pid, area_start(a) + i * PAGE_SIZE as u64),
                    page_contents(pid, a, i, spec.seed),
                );
            }
        }
    }
    m
}

/// Collects pages and checks the order rules a restore relies on.
fn check_items(items: Vec<Item>, spec: &SynthSpec) {
    let mut pages = BTreeMap::new();
    let mut metadata_ended = false;
    let mut records = 0;
    let mut blob = 0usize;
    let mut threads = 0;
    for item in items {
        match item {
            Item::Record { body, .. } => {
                assert!(!metadata_ended);
                records += 1;
                if let Body::ThreadCore(_) = body {
                    threads += 1;
                }
            }
            Item::Blob { data, .. } => blob += data.len(),
            Item::MetadataEnd => metadata_ended = true,
            Item::Pages { batch, .. } => {
                assert!(metadata_ended, "pages before metadata end");
                for (run, data) in batch.runs_with_data() {
                    for (k, page) in data.chunks(PAGE_SIZE).enumerate() {
                        let addr = run.start + (k * PAGE_SIZE) as u64;
                        assert!(
                            pages.insert((batch.pid, addr), page.to_vec()).is_none(),
                            "page twice"
                        );
                    }
                }
            }
            Item::End { index } => assert_eq!(
                index.streams.len() as u32,
                spec.processes * (3 + spec.threads_per_process) - spec.processes + 1
            ),
        }
    }
    assert!(records > 0);
    assert_eq!(threads, spec.processes * spec.threads_per_process);
    assert_eq!(blob, spec.blob_bytes);
    let expected = expected_pages(spec);
    assert_eq!(pages.len(), expected.len());
    assert!(pages == expected, "page contents differ");
}

async fn roundtrip(codec: Codec, spec: SynthSpec) {
    let image = image_bytes(opts(codec), &spec).await.unwrap();

    let reader = SequentialReader::open(std::io::Cursor::new(image.clone()))
        .await
        .unwrap();
    let items: Vec<Item> = reader.items(3).map(|r| r.unwrap()).collect().await;
    check_items(items, &spec);

    let random = RandomReader::open(Arc::new(Bytes::from(image.clone())))
        .await
        .unwrap();
    let items: Vec<Item> = random.items(4).map(|r| r.unwrap()).collect().await;
    check_items(items, &spec);

    // Any page is one ranged read away.
    let expected = expected_pages(&spec);
    for (&(pid, addr), contents) in expected.iter().step_by(37) {
        let batch = random.batch_for_page(pid, addr).await.unwrap();
        assert_eq!(batch.page(addr).unwrap(), &contents[..]);
    }
    let missing = area_start(0) + 3 * PAGE_SIZE as u64; // page 3 is a hole
    assert!(random.batch_for_page(1000, missing).await.is_err());
    let n = random
        .page_batches(4)
        .fold(0u64, |n, b| async move { n + b.unwrap().page_count() })
        .await;
    assert_eq!(n, expected.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_zstd() {
    roundtrip(Codec::Zstd, SynthSpec::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_lz4() {
    roundtrip(Codec::Lz4, SynthSpec::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_none() {
    roundtrip(Codec::None, SynthSpec::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_large_frames_many_processes() {
    let spec = SynthSpec {
        processes: 5,
        threads_per_process: 1,
        areas: 2,
        pages_per_area: 700,
        blob_bytes: 3 << 20,
        seed: 99,
    };
    roundtrip(Codec::Zstd, spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_shrinks_memory_like_data() {
    let spec = SynthSpec {
        pages_per_area: 512,
        ..Default::default()
    };
    let plain = image_bytes(opts(Codec::None), &spec).await.unwrap();
    let zstd = image_bytes(opts(Codec::Zstd), &spec).await.unwrap();
    let lz4 = image_bytes(opts(Codec::Lz4), &spec).await.unwrap();
    assert!(
        zstd.len() * 2 < plain.len(),
        "zstd {} vs none {}",
        zstd.len(),
        plain.len()
    );
    assert!(
        lz4.len() < plain.len(),
        "lz4 {} vs none {}",
        lz4.len(),
        plain.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_frames_respect_the_size_bound() {
    let spec = SynthSpec {
        pages_per_area: 300,
        ..Default::default()
    };
    let image = image_bytes(opts(Codec::None), &spec).await.unwrap();
    let random = RandomReader::open(Arc::new(Bytes::from(image)))
        .await
        .unwrap();
    for f in &random.index().frames {
        if f.kind == 2 {
            assert!(
                f.raw_len as usize <= (64 << 10) + 16 + 16 * 64,
                "page frame of {} bytes",
                f.raw_len
            );
        }
    }
}

/// An output that accepts `budget` bytes, then fails every write with `kind`.
struct FailAfter {
    budget: usize,
    kind: io::ErrorKind,
    message: &'static str,
}

impl FailAfter {
    fn new(budget: usize, kind: io::ErrorKind, message: &'static str) -> Self {
        Self {
            budget,
            kind,
            message,
        }
    }
}

impl tokio::io::AsyncWrite for FailAfter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.budget < buf.len() {
            return Poll::Ready(Err(io::Error::new(self.kind, self.message)));
        }
        self.budget -= buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_reports_io_errors_with_offset() {
    let spec = SynthSpec {
        pages_per_area: 400,
        ..Default::default()
    };
    let err = crstream_streamer::testing::write_image(
        FailAfter::new(100_000, io::ErrorKind::Other, "disk full"),
        opts(Codec::None),
        &spec,
    )
    .await
    .err()
    .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("disk full") && msg.contains("offset"), "{msg}");
}

/// The blocking face (used by the engine from its own thread) reports a
/// failed output as an error, not a panic.
#[test]
fn blocking_writer_reports_a_failed_output() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut w = {
        let _in = rt.enter();
        crstream_streamer::StreamWriter::new(
            FailAfter::new(0, io::ErrorKind::BrokenPipe, "broken pipe"),
            opts(Codec::None),
        )
    };
    use crstream_streamer::ImageSink;
    let mut b = w.blocking();
    let body = Body::Inventory(Default::default());
    let mut failed = None;
    for _ in 0..10_000 {
        if let Err(e) = b.record(0, body.clone()) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("writing to a broken output must fail");
    assert!(
        e.to_string().contains("broken pipe") || e.to_string().contains("Broken"),
        "{e}"
    );
}

/// A stored stream whose reads of `bad` fail once `failing` is set (a
/// storage that cannot serve part of it any more).
struct FailingAt {
    bytes: Bytes,
    bad: u64,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl crstream_streamer::RangeRead for FailingAt {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    async fn read_range(&self, range: std::ops::Range<u64>) -> io::Result<Bytes> {
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) && range.contains(&self.bad) {
            return Err(io::Error::other("storage gone"));
        }
        Ok(self.bytes.slice(range.start as usize..range.end as usize))
    }
}

/// The prefetch of a lazy restore reads page frames ahead: every frame
/// asked for comes, in order and as a ranged read of it gives it, whatever
/// the runs the read-ahead cuts them into; a read that fails gives its
/// error in its place, after the frames before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_frames_read_ahead_come_in_order_and_fail_in_place() {
    let spec = SynthSpec {
        pages_per_area: 300,
        ..Default::default()
    };
    let image = Bytes::from(image_bytes(opts(Codec::Zstd), &spec).await.unwrap());
    let random = RandomReader::open(Arc::new(image.clone())).await.unwrap();
    let mut frames: Vec<(u64, u64)> = random
        .index()
        .pages
        .iter()
        .map(|p| (p.frame_offset, p.frame_len as u64))
        .collect();
    frames.dedup();
    // Every other frame: no two asked for follow each other.
    let asked: Vec<(u64, u64)> = frames.iter().copied().step_by(2).collect();
    assert!(asked.len() > 8, "{} frames", asked.len());
    let runtime = tokio::runtime::Handle::current();
    for (wanted, run_bytes) in [(&frames, 3 * frames[0].1), (&asked, 1 << 20)] {
        let got: Vec<_> = random
            .stored_page_frames_ahead(wanted, run_bytes, 3, &runtime)
            .collect()
            .await;
        assert_eq!(got.len(), wanted.len());
        for (stored, &(offset, len)) in got.into_iter().zip(wanted.iter()) {
            let stored = stored.unwrap();
            assert_eq!(stored.offset, offset);
            let batch = random.page_batch_from_stored(stored).unwrap();
            assert_eq!(batch, random.page_batch(offset, len).await.unwrap());
        }
    }

    let storage = Arc::new(FailingAt {
        bytes: image.clone(),
        bad: frames[frames.len() / 2].0 + 1,
        failing: false.into(),
    });
    let failing = RandomReader::open(storage.clone()).await.unwrap();
    storage
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let got: Vec<_> = failing
        .stored_page_frames_ahead(&frames, 1, 4, &runtime)
        .collect()
        .await;
    let ok = got.iter().take_while(|r| r.is_ok()).count();
    assert_eq!(ok, frames.len() / 2, "frames before the failure");
    assert!(
        got[ok]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("storage gone")),
        "{:?}",
        got[ok].as_ref().err()
    );
}
