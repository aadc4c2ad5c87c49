//! Per-frame compression. Every frame is compressed on its own, so frames can
//! be compressed on many cores and decoded one at a time.

use crate::error::{Result, StreamError};
use bytes::Bytes;
use crstream_proto::Codec;

/// Compresses `raw`; returns the codec actually used and the stored bytes.
/// Falls back to none, without copying, when compression does not shrink
/// the payload (memory that is already compressed or random).
pub fn compress(codec: Codec, level: i32, raw: Bytes) -> (Codec, Bytes) {
    let compressed = match codec {
        _ if raw.is_empty() => None,
        Codec::None => None,
        Codec::Zstd => zstd::bulk::compress(&raw, level).ok(),
        Codec::Lz4 => Some(lz4_flex::block::compress(&raw)),
    };
    match compressed {
        Some(c) if c.len() < raw.len() => (codec, Bytes::from(c)),
        _ => (Codec::None, raw),
    }
}

/// Decompresses a stored payload of a frame at `offset` into `out`, which
/// it must fill exactly (the frame's raw length).
pub fn decompress_into(codec: Codec, stored: &[u8], out: &mut [u8], offset: u64) -> Result<()> {
    let err = |reason: String| StreamError::Decompress { offset, reason };
    let written =
        match codec {
            Codec::None if stored.len() == out.len() => {
                out.copy_from_slice(stored);
                stored.len()
            }
            Codec::None => stored.len(),
            Codec::Zstd => zstd::bulk::decompress_to_buffer(stored, out)
                .map_err(|e| err(format!("zstd: {e}")))?,
            Codec::Lz4 => lz4_flex::block::decompress_into(stored, out)
                .map_err(|e| err(format!("lz4: {e}")))?,
        };
    if written != out.len() {
        return Err(err(format!(
            "decompressed to {written} bytes, frame header says {}",
            out.len()
        )));
    }
    Ok(())
}

/// Parses a codec name as given on the command line.
pub fn parse_codec(name: &str) -> Option<Codec> {
    match name {
        "zstd" => Some(Codec::Zstd),
        "lz4" => Some(Codec::Lz4),
        "none" => Some(Codec::None),
        _ => None,
    }
}

pub fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::None => "none",
        Codec::Zstd => "zstd",
        Codec::Lz4 => "lz4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompresses_into_a_buffer_of_exactly_the_raw_length() {
        let raw: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
        for codec in [Codec::Zstd, Codec::Lz4] {
            let (used, stored) = compress(codec, 1, Bytes::from(raw.clone()));
            assert_eq!(used, codec);
            // A reused buffer holding old bytes comes back exactly.
            let mut out = vec![0xAA; raw.len()];
            decompress_into(codec, &stored, &mut out, 0).unwrap();
            assert_eq!(out, raw);
            // A frame whose header claims another length is refused.
            let mut longer = vec![0; raw.len() + 4096];
            assert!(decompress_into(codec, &stored, &mut longer, 7).is_err());
            let mut shorter = vec![0; raw.len() - 4096];
            assert!(decompress_into(codec, &stored, &mut shorter, 7).is_err());
        }
        let mut out = vec![0; 3];
        assert!(decompress_into(Codec::None, b"abcd", &mut out, 0).is_err());
    }
}
