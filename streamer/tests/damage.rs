//! Damaged streams: every kind of damage gives its specific error, never a
//! panic and never a silent success.

use bytes::Bytes;
use crstream_proto::Codec;
use crstream_streamer::format::{FRAME_HEADER_LEN, TRAILER_LEN};
use crstream_streamer::testing::{
    SynthSpec, image_bytes, read_all_mapped, read_all_random, read_all_random_mapped,
    read_all_sequential,
};
use crstream_streamer::{Item, RandomReader, SequentialReader, StreamError, WriterOptions};
use futures::StreamExt;
use std::sync::Arc;

fn small_spec() -> SynthSpec {
    SynthSpec {
        processes: 1,
        threads_per_process: 2,
        areas: 2,
        pages_per_area: 12,
        blob_bytes: 300,
        seed: 3,
    }
}

async fn image(codec: Codec) -> Vec<u8> {
    let opts = WriterOptions {
        codec,
        workers: 2,
        page_frame_bytes: 16 << 10,
        record_frame_bytes: 200,
        ..Default::default()
    };
    image_bytes(opts, &small_spec()).await.unwrap()
}

/// Read sequentially, from memory and as a mapped file (how a restore
/// reads a local image): both must come to the same end.
async fn read_seq(bytes: Vec<u8>) -> Result<usize, StreamError> {
    let mapped = read_all_mapped(bytes.clone()).await;
    same_end(mapped, read_all_sequential(bytes).await)
}

/// Read by random access, from memory and as a mapped file (how a lazy
/// restore reads a local image): both must come to the same end.
async fn read_random(bytes: Vec<u8>) -> Result<usize, StreamError> {
    let mapped = read_all_random_mapped(bytes.clone()).await;
    same_end(mapped, read_all_random(bytes).await)
}

/// `read`, once checked to end as the read of the mapped file did (if
/// there was one to map): the same item count or the same error.
fn same_end(
    mapped: Option<Result<usize, StreamError>>,
    read: Result<usize, StreamError>,
) -> Result<usize, StreamError> {
    if let Some(mapped) = mapped {
        assert_eq!(
            mapped.as_ref().map_err(|e| e.to_string()),
            read.as_ref().map_err(|e| e.to_string()),
            "a mapped file and bytes in memory read differently"
        );
    }
    read
}

/// Offsets of every frame, from the index.
async fn frame_offsets(bytes: &[u8]) -> Vec<(u64, u64)> {
    let reader = RandomReader::open(Arc::new(Bytes::copy_from_slice(bytes)))
        .await
        .unwrap();
    let mut v: Vec<(u64, u64)> = reader
        .index()
        .frames
        .iter()
        .map(|f| (f.offset, FRAME_HEADER_LEN as u64 + f.stored_len as u64))
        .collect();
    let len = bytes.len() as u64;
    v.push((len - TRAILER_LEN as u64, 0)); // where the trailer starts
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intact_stream_reads() {
    let img = image(Codec::Zstd).await;
    let n = read_seq(img.clone()).await.unwrap();
    assert_eq!(read_random(img).await.unwrap(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_input() {
    assert!(matches!(
        read_seq(Vec::new()).await,
        Err(StreamError::Empty)
    ));
    assert!(matches!(
        read_random(Vec::new()).await,
        Err(StreamError::Empty)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_magic() {
    let mut img = image(Codec::None).await;
    img[0..8].copy_from_slice(b"NOTCRSTR");
    let e = read_seq(img.clone()).await.unwrap_err();
    assert!(matches!(e, StreamError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("NOTCRSTR"), "{e}");
    assert!(matches!(
        read_random(img).await,
        Err(StreamError::BadMagic { .. })
    ));
    let e = read_seq(b"#!/bin/sh\necho hello\n".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, StreamError::BadMagic { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_version() {
    let mut img = image(Codec::None).await;
    img[8..10].copy_from_slice(&7u16.to_le_bytes());
    let e = read_seq(img.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            StreamError::UnsupportedVersion {
                found: 7,
                supported: 1
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("version 7"), "{e}");
    assert!(matches!(
        read_random(img).await,
        Err(StreamError::UnsupportedVersion { found: 7, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_at_every_frame_boundary_and_inside_frames() {
    let img = image(Codec::Zstd).await;
    let frames = frame_offsets(&img).await;
    let mut cuts = vec![1, 8, 15, 16, 20];
    for &(off, len) in &frames {
        cuts.extend([
            off,
            off + 1,
            off + 12,
            off + FRAME_HEADER_LEN as u64,
            off + len / 2,
            (off + len).saturating_sub(1),
        ]);
    }
    cuts.push(img.len() as u64 - 1);
    cuts.push(img.len() as u64 - TRAILER_LEN as u64 + 5);
    cuts.sort();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|&c| c > 0 && c < img.len() as u64) {
        let short = img[..cut as usize].to_vec();
        match read_seq(short.clone()).await {
            Err(StreamError::Truncated {
                offset,
                expected,
                got,
                ..
            }) => {
                assert!(
                    got < expected && offset <= cut,
                    "cut {cut}: offset {offset} expected {expected} got {got}"
                );
            }
            other => panic!(
                "sequential read of a stream cut at {cut} of {}: {other:?}",
                img.len()
            ),
        }
        let e = read_random(short).await.unwrap_err();
        assert!(
            matches!(
                e,
                StreamError::Truncated { .. }
                    | StreamError::BadTrailer { .. }
                    | StreamError::BadMagic { .. }
            ),
            "random read of a stream cut at {cut}: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_single_byte_flip_is_detected() {
    for (codec, stride) in [(Codec::Zstd, 1), (Codec::None, 3)] {
        let img = image(codec).await;
        for at in (0..img.len()).step_by(stride) {
            let mut bad = img.clone();
            bad[at] ^= 0x10;
            // Mapping a file per flip would take a minute: every 16th.
            let seq = match at % 16 {
                0 => read_seq(bad.clone()).await,
                _ => read_all_sequential(bad.clone()).await,
            };
            assert!(
                seq.is_err(),
                "flip at {at} of {} ({codec:?}) read fine sequentially",
                img.len()
            );
            let rnd = match at % 16 {
                0 => read_random(bad).await,
                _ => read_all_random(bad).await,
            };
            assert!(
                rnd.is_err(),
                "flip at {at} ({codec:?}) read fine by random access"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_give_the_error_of_the_damaged_part() {
    let img = image(Codec::Zstd).await;
    let frames = frame_offsets(&img).await;
    // Header options.
    let mut bad = img.clone();
    bad[18] ^= 1;
    assert!(matches!(
        read_seq(bad).await,
        Err(StreamError::HeaderChecksum)
    ));
    // A frame header.
    let (off, len) = frames[2];
    let mut bad = img.clone();
    bad[off as usize + 5] ^= 1;
    assert!(
        matches!(read_seq(bad).await, Err(StreamError::FrameHeaderChecksum { offset }) if offset == off)
    );
    // A payload: names the frame.
    let mut bad = img.clone();
    bad[(off + len - 1) as usize] ^= 1;
    match read_seq(bad.clone()).await {
        Err(StreamError::ChecksumMismatch { offset, .. }) => assert_eq!(offset, off),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(read_random(bad).await, Err(StreamError::ChecksumMismatch { offset, .. }) if offset == off)
    );
    // The index payload.
    let n = img.len();
    let ioff = u64::from_le_bytes(img[n - 24..n - 16].try_into().unwrap());
    let ilen = u64::from_le_bytes(img[n - 16..n - 8].try_into().unwrap());
    let mut bad = img.clone();
    bad[(ioff + ilen - 2) as usize] ^= 1;
    assert!(matches!(
        read_seq(bad.clone()).await,
        Err(StreamError::ChecksumMismatch { kind: "index", .. })
    ));
    assert!(matches!(
        read_random(bad).await,
        Err(StreamError::ChecksumMismatch { kind: "index", .. })
    ));
    // The trailer.
    let mut bad = img.clone();
    bad[n - 20] ^= 1;
    assert!(matches!(
        read_seq(bad.clone()).await,
        Err(StreamError::BadTrailer { .. })
    ));
    assert!(matches!(
        read_random(bad).await,
        Err(StreamError::BadTrailer { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_garbage() {
    let mut img = image(Codec::None).await;
    img.extend_from_slice(b"junk");
    assert!(matches!(
        read_seq(img.clone()).await,
        Err(StreamError::TrailingData { .. })
    ));
    assert!(read_random(img).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_codec_and_kind_are_named() {
    use crstream_streamer::format::FrameHeader;
    let img = image(Codec::None).await;
    let (off, _) = frame_offsets(&img).await[1];
    for (byte, value) in [(1usize, 9u8), (0usize, 42u8)] {
        let mut bad = img.clone();
        let at = off as usize;
        bad[at + byte] = value;
        // Re-seal the frame header so only the value itself is wrong.
        let crc = crc32c::crc32c(&bad[at..at + 20]);
        bad[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
        let e = read_seq(bad).await.unwrap_err();
        match byte {
            1 => assert!(
                matches!(e, StreamError::UnknownCodec { codec: 9, offset } if offset == off),
                "{e}"
            ),
            _ => assert!(
                matches!(e, StreamError::UnknownFrameKind { kind: 42, offset } if offset == off),
                "{e}"
            ),
        }
        let _ = FrameHeader::decode;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inventory_is_a_missing_record() {
    use crstream_proto::{ProcessTree, record::Body};
    use crstream_streamer::StreamWriter;
    let mut w = StreamWriter::new(Vec::new(), WriterOptions::default());
    w.record(0, Body::ProcessTree(ProcessTree::default()))
        .await
        .unwrap();
    let (img, _) = w.finish().await.unwrap();
    let e = read_seq(img).await.unwrap_err();
    assert!(matches!(e, StreamError::MissingRecord { .. }), "{e}");
    assert!(e.to_string().contains("Inventory"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_end_with_the_index() {
    let img = image(Codec::Lz4).await;
    let reader = SequentialReader::open(std::io::Cursor::new(img))
        .await
        .unwrap();
    let items: Vec<_> = reader.items(2).collect().await;
    assert!(matches!(items.last(), Some(Ok(Item::End { .. }))));
}

/// The page frames the index lists: (offset, length).
async fn page_frames(img: &[u8]) -> Vec<(u64, u64)> {
    let reader = RandomReader::open(Arc::new(Bytes::copy_from_slice(img)))
        .await
        .unwrap();
    reader
        .index()
        .frames
        .iter()
        .filter(|f| f.kind == crstream_streamer::format::FrameKind::Pages as u32)
        .map(|f| (f.offset, FRAME_HEADER_LEN as u64 + f.stored_len as u64))
        .collect()
}

/// Two page frames of the same length, from the index: (offset, length).
async fn two_page_frames(img: &[u8]) -> ((u64, u64), (u64, u64)) {
    let frames = page_frames(img).await;
    for (i, a) in frames.iter().enumerate() {
        if let Some(b) = frames[i + 1..].iter().find(|b| b.1 == a.1) {
            return (*a, *b);
        }
    }
    panic!("no two page frames of one length in {frames:?}");
}

/// Every reader of a damaged stream fails: sequential, random, and the
/// fetch of the page frame at `frame` (offset, length) alone, both as one
/// batch and as the lazy restore fetches it (read on the runtime, checked
/// on its own thread).
async fn every_reader_refuses(img: Vec<u8>, frame: (u64, u64)) -> Vec<String> {
    let mut errors = vec![
        read_seq(img.clone()).await.unwrap_err().to_string(),
        read_random(img.clone()).await.unwrap_err().to_string(),
    ];
    let reader = RandomReader::open(Arc::new(Bytes::from(img)))
        .await
        .unwrap();
    errors.push(
        reader
            .page_batch(frame.0, frame.1)
            .await
            .unwrap_err()
            .to_string(),
    );
    let as_lazy = match reader.stored_page_frames_at(&[frame]).await {
        Ok(stored) => stored
            .into_iter()
            .map(|s| reader.page_batch_from_stored(s))
            .collect::<Result<Vec<_>, _>>()
            .map(|_| ()),
        Err(e) => Err(e),
    };
    errors.push(as_lazy.unwrap_err().to_string());
    errors
}

/// A page frame written twice (checksums valid): never read as the pages
/// the index puts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_page_frame() {
    let mut img = image(Codec::None).await;
    let (a, b) = two_page_frames(&img).await;
    let copy = img[a.0 as usize..(a.0 + a.1) as usize].to_vec();
    img[b.0 as usize..(b.0 + b.1) as usize].copy_from_slice(&copy);
    let errors = every_reader_refuses(img, b).await;
    assert!(errors[0].contains("earlier frame"), "{}", errors[0]);
    for e in &errors[1..] {
        assert!(
            e.contains("earlier frame") || e.contains(&format!("frame at offset {}", b.0)),
            "{e}"
        );
    }
}

/// Two page frames swapped (checksums valid): each is where the index
/// says the other is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_page_frames() {
    let mut img = image(Codec::None).await;
    let (a, b) = two_page_frames(&img).await;
    let fa = img[a.0 as usize..(a.0 + a.1) as usize].to_vec();
    let fb = img[b.0 as usize..(b.0 + b.1) as usize].to_vec();
    img[a.0 as usize..(a.0 + a.1) as usize].copy_from_slice(&fb);
    img[b.0 as usize..(b.0 + b.1) as usize].copy_from_slice(&fa);
    for e in every_reader_refuses(img, b).await {
        assert!(e.contains("the index says"), "{e}");
    }
}

/// A bit flipped in a page frame's payload: every reader names the
/// checksum of that frame, the lazy restore's fetch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_in_a_page_frame() {
    for codec in [Codec::None, Codec::Zstd] {
        let mut img = image(codec).await;
        let a = page_frames(&img).await[0];
        img[(a.0 + a.1 / 2) as usize] ^= 0x10;
        for e in every_reader_refuses(img, a).await {
            assert!(
                e.contains("checksum") && e.contains(&a.0.to_string()),
                "{codec:?}: {e}"
            );
        }
    }
}
