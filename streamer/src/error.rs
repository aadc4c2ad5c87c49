//! Typed errors for reading and writing streams. Each names what and where.

use std::io;

/// A failure to read or write a crstream stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("empty input: expected a crstream stream, got 0 bytes")]
    Empty,
    #[error("bad magic: expected \"CRSTREAM\", found {}", show_magic(.found))]
    BadMagic { found: [u8; 8] },
    #[error("the destination accepted no data for {} s", waited.as_secs_f64())]
    Stalled { waited: std::time::Duration },
    #[error("interrupted")]
    Interrupted,
    #[error("unsupported stream format version {found} (this crstream reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("bad stream header: {reason}")]
    BadHeader { reason: String },
    #[error("stream header checksum mismatch")]
    HeaderChecksum,
    #[error("truncated stream: {what} at offset {offset}: expected {expected} bytes, got {got}")]
    Truncated {
        what: &'static str,
        offset: u64,
        expected: u64,
        got: u64,
    },
    #[error("frame header checksum mismatch in frame at offset {offset}")]
    FrameHeaderChecksum { offset: u64 },
    #[error(
        "checksum mismatch in {kind} frame of stream {stream_id} at offset {offset}: expected {expected:#010x}, computed {actual:#010x}"
    )]
    ChecksumMismatch {
        offset: u64,
        kind: &'static str,
        stream_id: u32,
        expected: u32,
        actual: u32,
    },
    #[error("unknown codec {codec} in frame at offset {offset}")]
    UnknownCodec { offset: u64, codec: u8 },
    #[error("unknown frame kind {kind} at offset {offset}")]
    UnknownFrameKind { offset: u64, kind: u8 },
    #[error("bad frame at offset {offset}: {reason}")]
    BadFrame { offset: u64, reason: String },
    #[error("decompression failed in frame at offset {offset}: {reason}")]
    Decompress { offset: u64, reason: String },
    #[error("bad record in frame at offset {offset}: {reason}")]
    BadRecord { offset: u64, reason: String },
    #[error("bad page batch in frame at offset {offset}: {reason}")]
    BadPages { offset: u64, reason: String },
    #[error("unexpected frame at offset {offset}: {reason}")]
    UnexpectedFrame { offset: u64, reason: String },
    #[error("missing record: {what}")]
    MissingRecord { what: String },
    #[error("bad trailer: {reason}")]
    BadTrailer { reason: String },
    #[error("bad index: {reason}")]
    BadIndex { reason: String },
    #[error("trailing data after the end of the stream at offset {offset}")]
    TrailingData { offset: u64 },
    #[error("no page at {addr:#x} of process {pid} in the image")]
    NoSuchPage { pid: u32, addr: u64 },
    // The I/O error is shown, not chained as a source: a chain printer
    // (anyhow's {:#}) would show it twice.
    #[error("I/O error at offset {offset}: {err}")]
    Io { offset: u64, err: io::Error },
    #[error("invalid use of the stream writer: {0}")]
    Usage(String),
    #[error("stream writer stopped: {0}")]
    WriterGone(String),
    /// A task reading part of the stream panicked or was cancelled: a bug,
    /// not a failure of the storage that retrying could heal.
    #[error("a read task failed: {0}")]
    ReadTaskFailed(String),
}

fn show_magic(found: &[u8; 8]) -> String {
    if found.iter().all(|b| b.is_ascii_graphic()) {
        format!("\"{}\"", String::from_utf8_lossy(found))
    } else {
        found
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Io { err, .. } => err,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
