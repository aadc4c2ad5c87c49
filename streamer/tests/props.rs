//! Property tests standing in for a fuzzer (cargo fuzz needs a nightly
//! toolchain, which this project's machines do not have): arbitrary bytes
//! and arbitrary mutations of valid streams never panic and never read as a
//! valid stream with different contents. PROPTEST_CASES raises the count.

use crstream_proto::Codec;
use crstream_streamer::testing::{SynthSpec, image_bytes, read_all_random, read_all_sequential};
use crstream_streamer::{StreamError, WriterOptions};
use proptest::prelude::*;
use std::sync::OnceLock;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn valid() -> &'static Vec<u8> {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let spec = SynthSpec {
            processes: 1,
            threads_per_process: 1,
            areas: 2,
            pages_per_area: 6,
            blob_bytes: 100,
            seed: 1,
        };
        let opts = WriterOptions {
            codec: Codec::Zstd,
            page_frame_bytes: 8192,
            record_frame_bytes: 64,
            ..Default::default()
        };
        rt().block_on(image_bytes(opts, &spec)).unwrap()
    })
}

/// A stream and its page frames: (offset, length).
type WithFrames = (Vec<u8>, Vec<(usize, usize)>);

/// A stream whose page frames all have one length (codec none, whole
/// frames), and their (offset, length).
fn uniform() -> &'static WithFrames {
    static IMG: OnceLock<WithFrames> = OnceLock::new();
    IMG.get_or_init(|| {
        let spec = SynthSpec {
            processes: 2,
            threads_per_process: 1,
            areas: 2,
            pages_per_area: 8,
            blob_bytes: 0,
            seed: 2,
        };
        let opts = WriterOptions {
            codec: Codec::None,
            page_frame_bytes: 8192,
            ..Default::default()
        };
        let bytes = rt().block_on(image_bytes(opts, &spec)).unwrap();
        let reader = rt()
            .block_on(crstream_streamer::RandomReader::open(std::sync::Arc::new(
                bytes::Bytes::from(bytes.clone()),
            )))
            .unwrap();
        let frames = reader
            .index()
            .frames
            .iter()
            .filter(|f| f.kind == crstream_streamer::format::FrameKind::Pages as u32)
            .map(|f| {
                let len = crstream_streamer::format::FRAME_HEADER_LEN + f.stored_len as usize;
                (f.offset as usize, len)
            })
            .collect::<Vec<_>>();
        (bytes, frames)
    })
}

fn read_all(bytes: Vec<u8>) -> (Result<usize, StreamError>, Result<usize, StreamError>) {
    rt().block_on(async {
        (
            read_all_sequential(bytes.clone()).await,
            read_all_random(bytes).await,
        )
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (seq, rnd) = read_all(bytes);
        prop_assert!(seq.is_err());
        prop_assert!(rnd.is_err());
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let header_len = 16 + u32::from_le_bytes(valid()[12..16].try_into().unwrap()) as usize + 4;
        let mut bytes = valid()[..header_len].to_vec();
        bytes.extend(tail);
        let (seq, rnd) = read_all(bytes);
        prop_assert!(seq.is_err());
        prop_assert!(rnd.is_err());
    }

    #[test]
    fn mutated_streams_are_rejected(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid().clone();
        let mut changed = false;
        for (at, value) in edits {
            let i = at.index(bytes.len());
            changed |= bytes[i] != value;
            bytes[i] = value;
        }
        if let Some(c) = cut {
            let n = c.index(bytes.len());
            changed |= n < bytes.len();
            bytes.truncate(n);
        }
        let (seq, rnd) = read_all(bytes);
        if changed {
            prop_assert!(seq.is_err(), "a damaged stream read as valid (sequential)");
            prop_assert!(rnd.is_err(), "a damaged stream read as valid (random access)");
        }
    }

    /// A page frame written over another, or two swapped (every checksum
    /// still valid): both readers refuse the stream.
    #[test]
    fn moved_page_frames_are_rejected(
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
        swap in any::<bool>(),
    ) {
        let (valid, frames) = uniform();
        let (a, b) = (a.index(frames.len()), b.index(frames.len()));
        prop_assume!(a != b && frames[a].1 == frames[b].1);
        let ((oa, len), (ob, _)) = (frames[a], frames[b]);
        let mut bytes = valid.clone();
        let fa = valid[oa..oa + len].to_vec();
        let fb = valid[ob..ob + len].to_vec();
        prop_assume!(fa[24..] != fb[24..]);
        bytes[ob..ob + len].copy_from_slice(&fa);
        if swap {
            bytes[oa..oa + len].copy_from_slice(&fb);
        }
        let (seq, rnd) = read_all(bytes);
        prop_assert!(seq.is_err(), "moved frames read as valid (sequential)");
        prop_assert!(rnd.is_err(), "moved frames read as valid (random access)");
    }
}
