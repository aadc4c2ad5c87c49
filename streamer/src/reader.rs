//! The sequential reader: reads a stream front to back from any `AsyncRead`
//! (a pipe, stdin, a download), never seeking; frames are decompressed on
//! several cores while the next ones are read.

use crate::codec;
use crate::error::{Result, StreamError};
use crate::format::{
    FRAME_HEADER_LEN, FrameHeader, FrameKind, HEADER_FIXED_LEN, TRAILER_LEN, Trailer,
    parse_header_fixed, parse_header_rest,
};
use crate::image::{Frame, Item, ItemDecoder};
use crate::mapped::Mapping;
use crate::pool::BufferPool;
use bytes::Bytes;
use crstream_proto::StreamOptions;
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads exactly `buf.len()` bytes; a short read is a typed truncation.
async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = r
            .read(&mut buf[got..])
            .await
            .map_err(|err| StreamError::Io {
                offset: offset + got as u64,
                err,
            })?;
        if n == 0 {
            if offset == 0 && got == 0 {
                return Err(StreamError::Empty);
            }
            return Err(StreamError::Truncated {
                what,
                offset,
                expected: buf.len() as u64,
                got: got as u64,
            });
        }
        got += n;
    }
    Ok(())
}

/// Reads and checks the stream header; returns the options and header length.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(StreamOptions, u64)> {
    let mut fixed = [0u8; HEADER_FIXED_LEN];
    read_exact_or_truncated(r, &mut fixed, 0, "stream header").await?;
    let opts_len = parse_header_fixed(&fixed)?;
    let mut rest = vec![0u8; opts_len + 4];
    read_exact_or_truncated(
        r,
        &mut rest,
        HEADER_FIXED_LEN as u64,
        "stream header options",
    )
    .await?;
    let options = parse_header_rest(&fixed, &rest)?;
    Ok((options, (HEADER_FIXED_LEN + opts_len + 4) as u64))
}

/// A frame as read, before its checksum is checked and it is decompressed.
pub struct StoredFrame {
    pub offset: u64,
    pub header: FrameHeader,
    pub stored: Bytes,
}

impl StoredFrame {
    /// Checks the payload checksum and decompresses, into a buffer of
    /// `pool` (memory already faulted in: a fresh buffer per frame costs
    /// more in page faults than the decompression itself).
    pub(crate) fn decode(self, pool: &BufferPool) -> Result<Frame> {
        let h = self.header;
        let actual = crc32c::crc32c(&self.stored);
        if actual != h.payload_crc {
            return Err(StreamError::ChecksumMismatch {
                offset: self.offset,
                kind: h.kind.name(),
                stream_id: h.stream_id,
                expected: h.payload_crc,
                actual,
            });
        }
        let raw = if h.codec == crstream_proto::Codec::None {
            self.stored
        } else {
            let len = h.raw_len as usize;
            let mut buf = pool.take(len);
            codec::decompress_into(h.codec, &self.stored, &mut buf, self.offset)?;
            pool.share(buf, 0..len)
        };
        Ok(Frame {
            offset: self.offset,
            header: h,
            raw,
        })
    }
}

/// Where stored frames come from: any reader, or a mapped local file.
enum Input {
    Read {
        r: Box<dyn AsyncRead + Send + Unpin>,
        pool: BufferPool,
    },
    Mapped(Arc<Mapping>),
}

/// Reads stored frames one after the other, and the trailer after the index.
struct FrameSource {
    input: Input,
    offset: u64,
    done: bool,
}

impl FrameSource {
    /// Payloads at least this long are read into pooled buffers.
    const POOLED_FROM: usize = 64 << 10;

    async fn next(&mut self) -> Result<Option<StoredFrame>> {
        if self.done {
            return Ok(None);
        }
        let offset = self.offset;
        let (header, stored) = match &mut self.input {
            Input::Read { r, pool } => {
                let mut hb = [0u8; FRAME_HEADER_LEN];
                read_exact_or_truncated(r, &mut hb, offset, "frame header").await?;
                let header = FrameHeader::decode(&hb, offset)?;
                let len = header.stored_len as usize;
                // Large payloads (page frames) are read into reused buffers.
                let pooled = len >= Self::POOLED_FROM;
                let mut stored = match pooled {
                    true => pool.take(len),
                    false => vec![0u8; len],
                };
                read_exact_or_truncated(
                    r,
                    &mut stored,
                    offset + FRAME_HEADER_LEN as u64,
                    "frame payload",
                )
                .await?;
                let stored = match pooled {
                    true => pool.share(stored, 0..len),
                    false => Bytes::from(stored),
                };
                (header, stored)
            }
            Input::Mapped(map) => {
                let at = mapped_range(map, offset, FRAME_HEADER_LEN as u64, "frame header")?;
                let hb: &[u8; FRAME_HEADER_LEN] =
                    map.bytes()[at].try_into().expect("header length");
                let header = FrameHeader::decode(hb, offset)?;
                let payload = offset + FRAME_HEADER_LEN as u64;
                let at = mapped_range(map, payload, header.stored_len as u64, "frame payload")?;
                (header, map.view(at))
            }
        };
        self.offset += header.frame_len();
        if header.kind == FrameKind::Index {
            self.done = true;
            self.check_trailer(offset, header.frame_len()).await?;
        }
        Ok(Some(StoredFrame {
            offset,
            header,
            stored,
        }))
    }

    async fn check_trailer(&mut self, index_offset: u64, index_len: u64) -> Result<()> {
        let mut tb = [0u8; TRAILER_LEN];
        match &mut self.input {
            Input::Read { r, .. } => {
                read_exact_or_truncated(r, &mut tb, self.offset, "trailer").await?
            }
            Input::Mapped(map) => {
                let at = mapped_range(map, self.offset, TRAILER_LEN as u64, "trailer")?;
                tb.copy_from_slice(&map.bytes()[at]);
            }
        }
        let trailer = Trailer::decode(&tb)?;
        if trailer.index_offset != index_offset || trailer.index_len != index_len {
            return Err(StreamError::BadTrailer {
                reason: format!(
                    "trailer points to an index at {} ({} bytes), the index frame is at {index_offset} ({index_len} bytes)",
                    trailer.index_offset, trailer.index_len
                ),
            });
        }
        self.offset += TRAILER_LEN as u64;
        let more = match &mut self.input {
            Input::Read { r, .. } => {
                let mut probe = [0u8; 1];
                r.read(&mut probe).await.map_err(|err| StreamError::Io {
                    offset: self.offset,
                    err,
                })? > 0
            }
            Input::Mapped(map) => (map.len() as u64) > self.offset,
        };
        match more {
            true => Err(StreamError::TrailingData {
                offset: self.offset,
            }),
            false => Ok(()),
        }
    }
}

/// Where `len` bytes at `offset` are in a mapped file; past its end, the
/// same truncation a reader meets.
fn mapped_range(
    map: &Mapping,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<std::ops::Range<usize>> {
    let size = map.len() as u64;
    if offset.saturating_add(len) > size {
        return Err(StreamError::Truncated {
            what,
            offset,
            expected: len,
            got: size.saturating_sub(offset),
        });
    }
    Ok(offset as usize..(offset + len) as usize)
}

/// Sequential reader over any `AsyncRead`, or a mapped local file.
pub struct SequentialReader {
    options: StreamOptions,
    header_len: u64,
    source: FrameSource,
}

impl SequentialReader {
    /// Reads and checks the header.
    pub async fn open<R: AsyncRead + Unpin + Send + 'static>(mut r: R) -> Result<Self> {
        let (options, header_len) = read_header(&mut r).await?;
        Ok(Self::at_first_frame(
            options,
            header_len,
            Input::Read {
                r: Box::new(r),
                pool: BufferPool::default(),
            },
        ))
    }

    /// Reads a mapped file: page frames are views of its page cache.
    pub async fn open_mapped(map: Arc<Mapping>) -> Result<Self> {
        let (options, header_len) = read_header(&mut map.bytes()).await?;
        Ok(Self::at_first_frame(
            options,
            header_len,
            Input::Mapped(map),
        ))
    }

    fn at_first_frame(options: StreamOptions, header_len: u64, input: Input) -> Self {
        Self {
            options,
            header_len,
            source: FrameSource {
                input,
                offset: header_len,
                done: false,
            },
        }
    }

    pub fn options(&self) -> &StreamOptions {
        &self.options
    }

    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Decoded frames in order, `workers` decompressing at once.
    pub fn frames(self, workers: usize) -> impl Stream<Item = Result<Frame>> + Send + Unpin {
        let stored = futures::stream::unfold(Some(self.source), |state| async move {
            let mut source = state?;
            match source.next().await {
                Ok(Some(f)) => Some((Ok(f), Some(source))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        let pool = BufferPool::default();
        Box::pin(
            stored
                .map(move |r| {
                    let pool = pool.clone();
                    async move {
                        let f = r?;
                        tokio::task::spawn_blocking(move || f.decode(&pool))
                            .await
                            .map_err(|e| {
                                StreamError::WriterGone(format!("decompression worker: {e}"))
                            })?
                    }
                })
                .buffered(workers.max(1)),
        )
    }

    /// Items in order; the last one is `Item::End`.
    pub fn items(self, workers: usize) -> impl Stream<Item = Result<Item>> + Send + Unpin {
        items_from_frames(self.frames(workers))
    }
}

/// Runs frames through an [`ItemDecoder`]; stops at the first error.
pub fn items_from_frames(
    frames: impl Stream<Item = Result<Frame>> + Send + Unpin,
) -> impl Stream<Item = Result<Item>> + Send + Unpin {
    items_ending_with(frames, None)
}

/// Like [`items_from_frames`]; when the frames end, `index` (read apart,
/// by a random-access reader) ends the items, checked like an index frame.
pub(crate) fn items_ending_with(
    frames: impl Stream<Item = Result<Frame>> + Send + Unpin,
    index: Option<Box<crstream_proto::StreamIndex>>,
) -> impl Stream<Item = Result<Item>> + Send + Unpin {
    let state = (
        frames,
        ItemDecoder::new(),
        VecDeque::<Item>::new(),
        false,
        index,
    );
    Box::pin(futures::stream::unfold(
        state,
        |(mut frames, mut decoder, mut queue, failed, mut index)| async move {
            if failed {
                return None;
            }
            loop {
                if let Some(item) = queue.pop_front() {
                    return Some((Ok(item), (frames, decoder, queue, false, index)));
                }
                let frame = match frames.next().await {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Some((Err(e), (frames, decoder, queue, true, index))),
                    None => {
                        let index = index.take()?;
                        let end = decoder.end_with_index(*index);
                        let failed = end.is_err();
                        return Some((end, (frames, decoder, queue, failed, None)));
                    }
                };
                match decoder.decode(frame) {
                    Ok(items) => queue.extend(items),
                    Err(e) => return Some((Err(e), (frames, decoder, queue, true, index))),
                }
            }
        },
    ))
}

/// An [`crate::image::ImageSource`] over an item stream, for the engine's
/// thread. A task on the runtime reads ahead (up to [`Self::AHEAD`] items),
/// so the next frames are read and checked while the engine writes the
/// current one into a process. Must not be used from an async context.
pub struct BlockingItems {
    rx: tokio::sync::mpsc::Receiver<Result<Item>>,
    pump: tokio::task::JoinHandle<()>,
}

impl BlockingItems {
    /// Items read ahead: about as many MiB of pages.
    const AHEAD: usize = 8;

    pub fn new<S>(mut items: S, handle: tokio::runtime::Handle) -> Self
    where
        S: Stream<Item = Result<Item>> + Send + Unpin + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::AHEAD);
        let pump = handle.spawn(async move {
            while let Some(item) = items.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Self { rx, pump }
    }
}

impl Drop for BlockingItems {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl crate::image::ImageSource for BlockingItems {
    fn next_item(&mut self) -> Result<Option<Item>> {
        self.rx.blocking_recv().transpose()
    }
}
