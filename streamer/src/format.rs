//! Fixed binary layouts of docs/FORMAT.md: header, frame header, trailer,
//! page batch. Pure functions over byte slices; no I/O.

use crate::error::{Result, StreamError};
use crstream_proto::{Codec, FORMAT_VERSION, StreamOptions};
use prost::Message;

pub const MAGIC: &[u8; 8] = b"CRSTREAM";
pub const TRAILER_MAGIC: &[u8; 8] = b"CRSTRAIL";
/// Fixed part of the header before the options message.
pub const HEADER_FIXED_LEN: usize = 16;
pub const MAX_OPTIONS_LEN: usize = 64 * 1024;
pub const FRAME_HEADER_LEN: usize = 24;
pub const TRAILER_LEN: usize = 32;
pub const MAX_RAW_LEN: u32 = 64 << 20;
pub const MAX_STORED_LEN: u32 = MAX_RAW_LEN + (64 << 10);
pub const PAGE_BATCH_HEADER_LEN: usize = 16;
pub const PAGE_RUN_LEN: usize = 16;

/// Frame kinds (docs/FORMAT.md, "Frame kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameKind {
    Records = 1,
    Pages = 2,
    Blob = 3,
    MetadataEnd = 4,
    Index = 5,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Records,
            2 => Self::Pages,
            3 => Self::Blob,
            4 => Self::MetadataEnd,
            5 => Self::Index,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Pages => "pages",
            Self::Blob => "blob",
            Self::MetadataEnd => "metadata-end",
            Self::Index => "index",
        }
    }
}

pub fn codec_from_u8(v: u8) -> Option<Codec> {
    Codec::try_from(v as i32).ok()
}

/// Encodes the stream header.
pub fn encode_header(options: &StreamOptions) -> Vec<u8> {
    let opts = options.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_FIXED_LEN + opts.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(opts.len() as u32).to_le_bytes());
    out.extend_from_slice(&opts);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the fixed part of the header; returns the options length.
pub fn parse_header_fixed(fixed: &[u8; HEADER_FIXED_LEN]) -> Result<usize> {
    let magic: [u8; 8] = fixed[0..8].try_into().unwrap();
    if &magic != MAGIC {
        return Err(StreamError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version != FORMAT_VERSION {
        return Err(StreamError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes([fixed[10], fixed[11]]);
    if flags != 0 {
        return Err(StreamError::BadHeader {
            reason: format!("unknown header flags {flags:#06x}"),
        });
    }
    let len = u32::from_le_bytes(fixed[12..16].try_into().unwrap()) as usize;
    if len > MAX_OPTIONS_LEN {
        return Err(StreamError::BadHeader {
            reason: format!("options length {len} exceeds {MAX_OPTIONS_LEN}"),
        });
    }
    Ok(len)
}

/// Checks the header CRC and decodes the options. `rest` is the options
/// followed by the 4-byte CRC.
pub fn parse_header_rest(fixed: &[u8; HEADER_FIXED_LEN], rest: &[u8]) -> Result<StreamOptions> {
    let (opts, crc) = rest.split_at(rest.len() - 4);
    let mut hasher = crc32c::crc32c(fixed);
    hasher = crc32c::crc32c_append(hasher, opts);
    if hasher != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(StreamError::HeaderChecksum);
    }
    StreamOptions::decode(opts).map_err(|e| StreamError::BadHeader {
        reason: format!("options: {e}"),
    })
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub codec: Codec,
    pub stream_id: u32,
    pub raw_len: u32,
    pub stored_len: u32,
    pub payload_crc: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0] = self.kind as u8;
        h[1] = self.codec as i32 as u8;
        h[4..8].copy_from_slice(&self.stream_id.to_le_bytes());
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and validates a frame header found at `offset`.
    pub fn decode(h: &[u8; FRAME_HEADER_LEN], offset: u64) -> Result<Self> {
        let crc = u32::from_le_bytes(h[20..24].try_into().unwrap());
        if crc32c::crc32c(&h[..20]) != crc {
            return Err(StreamError::FrameHeaderChecksum { offset });
        }
        let kind =
            FrameKind::from_u8(h[0]).ok_or(StreamError::UnknownFrameKind { offset, kind: h[0] })?;
        let codec = codec_from_u8(h[1]).ok_or(StreamError::UnknownCodec {
            offset,
            codec: h[1],
        })?;
        let flags = u16::from_le_bytes([h[2], h[3]]);
        if flags != 0 {
            return Err(StreamError::BadFrame {
                offset,
                reason: format!("unknown frame flags {flags:#06x}"),
            });
        }
        let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let header = Self {
            kind,
            codec,
            stream_id: word(4),
            raw_len: word(8),
            stored_len: word(12),
            payload_crc: word(16),
        };
        if header.raw_len > MAX_RAW_LEN || header.stored_len > MAX_STORED_LEN {
            return Err(StreamError::BadFrame {
                offset,
                reason: format!(
                    "payload length {} (raw {}) exceeds the limit of {MAX_STORED_LEN}",
                    header.stored_len, header.raw_len
                ),
            });
        }
        if codec == Codec::None && header.raw_len != header.stored_len {
            return Err(StreamError::BadFrame {
                offset,
                reason: format!(
                    "uncompressed frame with raw length {} != stored length {}",
                    header.raw_len, header.stored_len
                ),
            });
        }
        Ok(header)
    }

    /// Header plus payload.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.stored_len as u64
    }
}

/// The fixed trailer at the very end of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub index_offset: u64,
    pub index_len: u64,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.index_offset.to_le_bytes());
        t[16..24].copy_from_slice(&self.index_len.to_le_bytes());
        let crc = crc32c::crc32c(&t[..28]);
        t[28..32].copy_from_slice(&crc.to_le_bytes());
        t
    }

    pub fn decode(t: &[u8; TRAILER_LEN]) -> Result<Self> {
        if &t[0..8] != TRAILER_MAGIC {
            return Err(StreamError::BadTrailer {
                reason: "trailer magic \"CRSTRAIL\" not found at the end of the stream".into(),
            });
        }
        let crc = u32::from_le_bytes(t[28..32].try_into().unwrap());
        if crc32c::crc32c(&t[..28]) != crc {
            return Err(StreamError::BadTrailer {
                reason: "trailer checksum mismatch".into(),
            });
        }
        let flags = u32::from_le_bytes(t[24..28].try_into().unwrap());
        if flags != 0 {
            return Err(StreamError::BadTrailer {
                reason: format!("unknown trailer flags {flags:#x}"),
            });
        }
        Ok(Self {
            index_offset: u64::from_le_bytes(t[8..16].try_into().unwrap()),
            index_len: u64::from_le_bytes(t[16..24].try_into().unwrap()),
        })
    }
}
