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
}
