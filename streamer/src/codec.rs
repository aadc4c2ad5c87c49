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

/// Decompresses a stored payload of a frame at `offset` to exactly `raw_len` bytes.
pub fn decompress(codec: Codec, stored: &[u8], raw_len: usize, offset: u64) -> Result<Vec<u8>> {
    let out = match codec {
        Codec::None => stored.to_vec(),
        Codec::Zstd => {
            zstd::bulk::decompress(stored, raw_len).map_err(|e| StreamError::Decompress {
                offset,
                reason: format!("zstd: {e}"),
            })?
        }
        Codec::Lz4 => {
            lz4_flex::block::decompress(stored, raw_len).map_err(|e| StreamError::Decompress {
                offset,
                reason: format!("lz4: {e}"),
            })?
        }
    };
    if out.len() != raw_len {
        return Err(StreamError::Decompress {
            offset,
            reason: format!(
                "decompressed to {} bytes, frame header says {raw_len}",
                out.len()
            ),
        });
    }
    Ok(out)
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
