//! The random-access reader: opens a stream by its trailer and index (two
//! ranged reads), then fetches any frame with one ranged read, many in
//! parallel.

use crate::error::{Result, StreamError};
use crate::format::{
    FRAME_HEADER_LEN, FrameHeader, FrameKind, HEADER_FIXED_LEN, MAX_OPTIONS_LEN, TRAILER_LEN,
    Trailer, parse_header_fixed, parse_header_rest,
};
use crate::image::{Frame, Item};
use crate::pages::PageBatch;
use crate::pool::BufferPool;
use crate::reader::{StoredFrame, items_ending_with, items_from_frames};
use bytes::Bytes;
use crstream_proto::{FrameEntry, StreamIndex, StreamOptions};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;

/// Ranged reads of a stored stream (a file, an object).
#[async_trait::async_trait]
pub trait RangeRead: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly the bytes of `range`.
    async fn read_range(&self, range: Range<u64>) -> io::Result<Bytes>;
}

/// A stream in memory, for tests and small images.
#[async_trait::async_trait]
impl RangeRead for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }
    async fn read_range(&self, range: Range<u64>) -> io::Result<Bytes> {
        if range.end > Bytes::len(self) as u64 || range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range past the end",
            ));
        }
        Ok(self.slice(range.start as usize..range.end as usize))
    }
}

/// Random-access reader over a [`RangeRead`].
#[derive(Clone)]
pub struct RandomReader {
    src: Arc<dyn RangeRead>,
    options: StreamOptions,
    index: Arc<StreamIndex>,
    /// Page ranges sorted by (pid, start), for fault lookups.
    by_address: Arc<Vec<usize>>,
    /// What the index says each page frame holds, by offset.
    by_frame: Arc<HashMap<u64, crate::image::PageFrame>>,
    /// The CRC32C of the index frame's payload.
    index_crc: u32,
    /// The first [`HEAD_LEN`] bytes, read at open: the header and, most
    /// often, the whole metadata, then served from here.
    head: Bytes,
    /// Buffers frames are decompressed into.
    pool: BufferPool,
}

impl RandomReader {
    /// Reads header, trailer and index.
    pub async fn open(src: Arc<dyn RangeRead>) -> Result<Self> {
        let total = src.len();
        if total == 0 {
            return Err(StreamError::Empty);
        }
        let min = (HEADER_FIXED_LEN + 4 + FRAME_HEADER_LEN + TRAILER_LEN) as u64;
        let head_len = total.min(HEAD_LEN);
        // The head and the tail at once: the tail holds the trailer and,
        // most often, the whole index (one round trip for both).
        let tail_start = total.saturating_sub(TAIL_LEN);
        let (head, tail) = futures::future::try_join(
            read(&*src, 0..head_len, "stream header"),
            read(&*src, tail_start..total, "trailer"),
        )
        .await?;
        if head.len() < HEADER_FIXED_LEN {
            return Err(StreamError::Truncated {
                what: "stream header",
                offset: 0,
                expected: HEADER_FIXED_LEN as u64,
                got: head.len() as u64,
            });
        }
        let fixed: [u8; HEADER_FIXED_LEN] = head[..HEADER_FIXED_LEN].try_into().unwrap();
        let opts_len = parse_header_fixed(&fixed)?;
        let header_len = (HEADER_FIXED_LEN + opts_len + 4) as u64;
        if total < header_len {
            return Err(StreamError::Truncated {
                what: "stream header options",
                offset: HEADER_FIXED_LEN as u64,
                expected: (opts_len + 4) as u64,
                got: total - HEADER_FIXED_LEN as u64,
            });
        }
        let rest = if header_len <= head.len() as u64 {
            head.slice(HEADER_FIXED_LEN..header_len as usize)
        } else {
            debug_assert!(opts_len <= MAX_OPTIONS_LEN);
            read(
                &*src,
                HEADER_FIXED_LEN as u64..header_len,
                "stream header options",
            )
            .await?
        };
        let options = parse_header_rest(&fixed, &rest)?;
        if total < min.max(header_len + (FRAME_HEADER_LEN + TRAILER_LEN) as u64) {
            return Err(StreamError::Truncated {
                what: "stream (too short for an index and trailer)",
                offset: total,
                expected: header_len + (FRAME_HEADER_LEN + TRAILER_LEN) as u64,
                got: total,
            });
        }
        let tb = tail.slice(tail.len() - TRAILER_LEN..);
        let trailer = Trailer::decode(tb[..].try_into().unwrap())?;
        let index_end = trailer.index_offset.checked_add(trailer.index_len);
        if trailer.index_offset < header_len || index_end != Some(total - TRAILER_LEN as u64) {
            return Err(StreamError::BadTrailer {
                reason: format!(
                    "index at {} ({} bytes) does not end where the trailer begins ({})",
                    trailer.index_offset,
                    trailer.index_len,
                    total - TRAILER_LEN as u64
                ),
            });
        }
        let frame = if trailer.index_offset >= tail_start {
            let at = (trailer.index_offset - tail_start) as usize;
            let bytes = tail.slice(at..at + trailer.index_len as usize);
            frame_from_bytes(bytes, trailer.index_offset, trailer.index_len).await?
        } else {
            fetch_frame(&*src, trailer.index_offset, trailer.index_len).await?
        };
        if frame.header.kind != FrameKind::Index {
            return Err(StreamError::BadTrailer {
                reason: format!(
                    "trailer points to a {} frame at {}, not the index",
                    frame.header.kind.name(),
                    trailer.index_offset
                ),
            });
        }
        let index_crc = frame.header.payload_crc;
        let index = StreamIndex::decode(frame.raw).map_err(|e| StreamError::BadIndex {
            reason: format!("index frame at offset {}: {e}", trailer.index_offset),
        })?;
        validate_index(&index, header_len, trailer.index_offset)?;
        let mut by_address: Vec<usize> = (0..index.pages.len()).collect();
        by_address.sort_by_key(|&i| (index.pages[i].pid, index.pages[i].start));
        let by_frame = crate::image::indexed_frames(&index);
        Ok(Self {
            src,
            options,
            index: Arc::new(index),
            by_address: Arc::new(by_address),
            by_frame: Arc::new(by_frame),
            index_crc,
            head,
            pool: BufferPool::default(),
        })
    }

    pub fn options(&self) -> &StreamOptions {
        &self.options
    }

    pub fn index(&self) -> &StreamIndex {
        &self.index
    }

    /// Length of the stream in bytes.
    pub fn stream_len(&self) -> u64 {
        self.src.len()
    }

    /// What tells this image from another: its length and the CRC32C of
    /// its index, which lists the position and size of every frame and
    /// every page range (for sidecar data such as a recorded working set).
    pub fn identity(&self) -> (u64, u32) {
        (self.src.len(), self.index_crc)
    }

    /// Fetches one frame with one ranged read, verifies and decodes it.
    pub async fn read_frame(&self, offset: u64, len: u64) -> Result<Frame> {
        fetch_frame(&*self.src, offset, len).await
    }

    /// All frames but the index, in stream order, `in_flight` fetched at once.
    pub fn frames(
        &self,
        in_flight: usize,
    ) -> impl Stream<Item = Result<Frame>> + Send + Unpin + 'static {
        self.frames_of(self.index.frames.clone(), in_flight)
    }

    /// Items of the metadata only (every frame before the end of
    /// metadata, `in_flight` fetched at once, checked like a sequential
    /// read): for a restore that fetches the pages later, frame by frame
    /// ([`page_batch`](Self::page_batch)).
    pub fn metadata_items(
        &self,
        in_flight: usize,
    ) -> impl Stream<Item = Result<Item>> + Send + Unpin + 'static {
        let end = self.index.metadata_end;
        let entries = self
            .index
            .frames
            .iter()
            .filter(|f| f.offset < end)
            .cloned()
            .collect();
        items_from_frames(self.frames_of(entries, in_flight))
    }

    /// The frames of `entries` in order. Frames that follow each other in
    /// the stream are read together, up to [`RUN_BYTES`] per request: a
    /// request per frame would pay a round trip for each small record
    /// frame of the metadata.
    fn frames_of(
        &self,
        entries: Vec<FrameEntry>,
        in_flight: usize,
    ) -> impl Stream<Item = Result<Frame>> + Send + Unpin + 'static {
        let frames: Vec<(u64, u64)> = entries
            .iter()
            .map(|e| (e.offset, FRAME_HEADER_LEN as u64 + e.stored_len as u64))
            .collect();
        let runs = consecutive_runs(&frames, usize::MAX, RUN_BYTES);
        let this = self.clone();
        Box::pin(
            futures::stream::iter(runs)
                .map(move |run| {
                    let this = this.clone();
                    async move { this.read_frames(&run).await }
                })
                .buffered(in_flight.max(1))
                .flat_map(one_by_one),
        )
    }

    /// Consecutive frames (`(offset, len)`, each starting where the
    /// previous one ends) with one ranged read, each checked and decoded.
    async fn read_frames(&self, run: &[(u64, u64)]) -> Result<Vec<Frame>> {
        let mut frames = Vec::with_capacity(run.len());
        for stored in self.read_stored_frames(run).await? {
            frames.push(decode_stored(stored, &self.pool).await?);
        }
        Ok(frames)
    }

    /// Consecutive frames with one ranged read, their headers checked
    /// against the index but not yet their payloads.
    async fn read_stored_frames(&self, run: &[(u64, u64)]) -> Result<Vec<StoredFrame>> {
        let (Some(&(start, _)), Some(&(last, last_len))) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let end = last.saturating_add(last_len);
        if run.windows(2).any(|w| w[0].0 + w[0].1 != w[1].0)
            || run.iter().any(|&(_, l)| l < FRAME_HEADER_LEN as u64)
            || end > self.src.len()
        {
            return Err(StreamError::BadIndex {
                reason: format!("frames from {start} to {end} are not one run of the stream"),
            });
        }
        // Frames within the head read at open cost no round trip.
        let bytes = if end <= self.head.len() as u64 {
            self.head.slice(start as usize..end as usize)
        } else {
            read(&*self.src, start..end, "frames").await?
        };
        run.iter()
            .map(|&(offset, len)| {
                let at = (offset - start) as usize;
                stored_from_bytes(bytes.slice(at..at + len as usize), offset, len)
            })
            .collect()
    }

    /// Items in stream order (metadata, then pages), fetched in parallel and
    /// checked like a sequential read; the last one is `Item::End`.
    pub fn items(
        &self,
        in_flight: usize,
    ) -> impl Stream<Item = Result<Item>> + Send + Unpin + 'static {
        let index = Box::new(self.index.as_ref().clone());
        items_ending_with(self.frames(in_flight), Some(index))
    }

    /// Page frames in index order, `in_flight` fetched at once.
    pub fn page_batches(
        &self,
        in_flight: usize,
    ) -> impl Stream<Item = Result<PageBatch>> + Send + Unpin + 'static {
        let mut frames: Vec<(u64, u32)> = self
            .index
            .pages
            .iter()
            .map(|p| (p.frame_offset, p.frame_len))
            .collect();
        frames.dedup();
        let this = self.clone();
        Box::pin(
            futures::stream::iter(frames)
                .map(move |(offset, len)| {
                    let this = this.clone();
                    async move { this.page_batch(offset, len as u64).await }
                })
                .buffered(in_flight.max(1)),
        )
    }

    /// The page batch holding page `addr` of process `pid` (one ranged read).
    pub async fn batch_for_page(&self, pid: u32, addr: u64) -> Result<PageBatch> {
        let pages = &self.index.pages;
        let pos = self
            .by_address
            .partition_point(|&i| (pages[i].pid, pages[i].start) <= (pid, addr));
        let hit = pos
            .checked_sub(1)
            .map(|p| &pages[self.by_address[p]])
            .filter(|r| r.pid == pid && addr < r.start + (r.pages << crate::pages::PAGE_SHIFT));
        let range = hit.ok_or(StreamError::NoSuchPage { pid, addr })?;
        self.page_batch(range.frame_offset, range.frame_len as u64)
            .await
    }

    /// The page batch of the page frame at `offset` (`len` bytes with its
    /// header, as the index gives them), with one ranged read.
    pub async fn page_batch(&self, offset: u64, len: u64) -> Result<PageBatch> {
        let frame = self.read_frame(offset, len).await?;
        self.batch_of(frame, offset)
    }

    /// Consecutive page frames (`(offset, len)` as the index gives them,
    /// each starting where the previous one ends) with one ranged read:
    /// fewer, larger requests for a prefetch. They come back as read, to be
    /// checked and decompressed with
    /// [`page_batch_from_stored`](Self::page_batch_from_stored) on the
    /// caller's own thread, which pays no hand-over to the runtime's
    /// blocking pool per frame.
    pub async fn stored_page_frames_at(&self, frames: &[(u64, u64)]) -> Result<Vec<StoredFrame>> {
        self.read_stored_frames(frames).await
    }

    /// Page frames (`(offset, len)` as the index gives them, sorted by
    /// offset) read ahead of the caller, in order: runs of consecutive
    /// frames of up to `run_bytes`, `in_flight` of them at once, each read
    /// by a task of its own on `runtime` so that reading goes on while the
    /// caller is busy with what it got. A sequential read like this is what
    /// an object store serves most cheaply. They come stored, for
    /// [`page_batch_from_stored`](Self::page_batch_from_stored); the reads
    /// still running stop when the stream is dropped.
    pub fn stored_page_frames_ahead(
        &self,
        frames: &[(u64, u64)],
        run_bytes: u64,
        in_flight: usize,
        runtime: &tokio::runtime::Handle,
    ) -> impl Stream<Item = Result<StoredFrame>> + Send + Unpin + 'static {
        let runs = consecutive_runs(frames, usize::MAX, run_bytes);
        let (this, runtime) = (self.clone(), runtime.clone());
        Box::pin(
            futures::stream::iter(runs)
                .map(move |run| {
                    let this = this.clone();
                    let task = runtime.spawn(async move { this.read_stored_frames(&run).await });
                    ReadTask(task)
                })
                .buffered(in_flight.max(1))
                .flat_map(one_by_one),
        )
    }

    /// The page batch of a frame [`stored_page_frames_at`] read, its
    /// checksum checked and its payload decompressed here (blocking).
    ///
    /// [`stored_page_frames_at`]: Self::stored_page_frames_at
    pub fn page_batch_from_stored(&self, stored: StoredFrame) -> Result<PageBatch> {
        let offset = stored.offset;
        self.batch_of(stored.decode(&self.pool)?, offset)
    }

    /// The page batch a page frame holds, checked against the index.
    fn batch_of(&self, frame: Frame, offset: u64) -> Result<PageBatch> {
        if frame.header.kind != FrameKind::Pages {
            return Err(StreamError::BadIndex {
                reason: format!(
                    "index points to a {} frame at {offset}, not pages",
                    frame.header.kind.name()
                ),
            });
        }
        // Only headers are parsed: cheap enough for any thread.
        let batch = PageBatch::decode(frame.raw, offset)?;
        // The frame must hold what the index says it does: a frame moved
        // or written twice would put pages where they do not belong.
        let held = crate::image::PageFrame {
            pid: batch.pid,
            area: batch.area,
            runs: batch.runs.clone(),
        };
        crate::image::check_frame(&self.by_frame, offset, &held)?;
        Ok(batch)
    }

    /// Reads every frame and checks every checksum (for `inspect`).
    pub async fn verify_all(&self, in_flight: usize) -> Result<u64> {
        self.frames(in_flight)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await
    }
}

/// The frames of one read, one by one (its error in their place).
fn one_by_one<T>(read: Result<Vec<T>>) -> futures::stream::Iter<std::vec::IntoIter<Result<T>>> {
    futures::stream::iter(match read {
        Ok(frames) => frames.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(e) => vec![Err(e)],
    })
}

/// A read running as a task of its own, stopped when dropped.
struct ReadTask(tokio::task::JoinHandle<Result<Vec<StoredFrame>>>);

impl std::future::Future for ReadTask {
    type Output = Result<Vec<StoredFrame>>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|e| Err(StreamError::ReadTaskFailed(e.to_string()))))
    }
}

impl Drop for ReadTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bytes a request for consecutive frames takes at most.
const RUN_BYTES: u64 = 16 << 20;

/// Splits frames (`(offset, len)`, sorted by offset) into runs of frames
/// that follow each other in the stream, each of at most `max_frames`
/// frames and `max_bytes` bytes: what one ranged read fetches.
pub fn consecutive_runs(
    frames: &[(u64, u64)],
    max_frames: usize,
    max_bytes: u64,
) -> Vec<Vec<(u64, u64)>> {
    let mut runs: Vec<Vec<(u64, u64)>> = Vec::new();
    for &f in frames {
        match runs.last_mut() {
            Some(run)
                if run.len() < max_frames
                    && run.last().is_some_and(|&(o, l)| o + l == f.0)
                    && f.0 + f.1 - run[0].0 <= max_bytes =>
            {
                run.push(f)
            }
            _ => runs.push(vec![f]),
        }
    }
    runs
}

/// Bytes read from the end of a stream when it is opened: the trailer and,
/// unless the image is very large, its index.
const TAIL_LEN: u64 = 256 << 10;

/// Bytes read from the start of a stream when it is opened, with the tail:
/// the header and, for most processes, the whole metadata (a lazy restore
/// then waits one round trip less before the process runs).
const HEAD_LEN: u64 = 256 << 10;

async fn read(src: &dyn RangeRead, range: Range<u64>, what: &'static str) -> Result<Bytes> {
    let expected = range.end - range.start;
    let offset = range.start;
    let bytes = src
        .read_range(range)
        .await
        .map_err(|err| StreamError::Io { offset, err })?;
    if (bytes.len() as u64) != expected {
        return Err(StreamError::Truncated {
            what,
            offset,
            expected,
            got: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

async fn fetch_frame(src: &dyn RangeRead, offset: u64, len: u64) -> Result<Frame> {
    if len < FRAME_HEADER_LEN as u64 || offset.checked_add(len).is_none_or(|end| end > src.len()) {
        return Err(StreamError::BadIndex {
            reason: format!(
                "frame at {offset} of {len} bytes lies outside the stream of {} bytes",
                src.len()
            ),
        });
    }
    let bytes = read(src, offset..offset + len, "frame").await?;
    frame_from_bytes(bytes, offset, len).await
}

/// Checks and decodes the frame at `offset` from its `len` bytes.
async fn frame_from_bytes(bytes: Bytes, offset: u64, len: u64) -> Result<Frame> {
    // One frame alone (the index, a frame asked for by offset): nothing
    // to reuse its buffer for.
    decode_stored(
        stored_from_bytes(bytes, offset, len)?,
        &BufferPool::default(),
    )
    .await
}

/// The frame at `offset` from its `len` bytes, its header checked.
fn stored_from_bytes(bytes: Bytes, offset: u64, len: u64) -> Result<StoredFrame> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(StreamError::BadIndex {
            reason: format!("frame at {offset} of {len} bytes is shorter than a frame header"),
        });
    }
    let header = FrameHeader::decode(bytes[..FRAME_HEADER_LEN].try_into().unwrap(), offset)?;
    if header.frame_len() != len {
        return Err(StreamError::BadIndex {
            reason: format!(
                "frame at {offset} is {} bytes, the index says {len}",
                header.frame_len()
            ),
        });
    }
    Ok(StoredFrame {
        offset,
        header,
        stored: bytes.slice(FRAME_HEADER_LEN..),
    })
}

/// Checks and decompresses a frame, off the runtime's threads if large.
async fn decode_stored(stored: StoredFrame, pool: &BufferPool) -> Result<Frame> {
    if stored.header.raw_len as usize > 256 << 10 {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || stored.decode(&pool))
            .await
            .map_err(|e| StreamError::WriterGone(format!("decode worker: {e}")))?
    } else {
        stored.decode(pool)
    }
}

/// Checks that the index describes a well-formed stream before anything trusts it.
fn validate_index(index: &StreamIndex, header_len: u64, index_offset: u64) -> Result<()> {
    let bad = |reason: String| Err(StreamError::BadIndex { reason });
    let mut expected = header_len;
    for f in &index.frames {
        if f.offset != expected {
            return bad(format!(
                "frame listed at {} but the previous frame ends at {expected}",
                f.offset
            ));
        }
        expected = f.offset + FRAME_HEADER_LEN as u64 + f.stored_len as u64;
    }
    if expected != index_offset {
        return bad(format!(
            "frames end at {expected}, the index frame is at {index_offset}"
        ));
    }
    for p in &index.pages {
        let in_frames = index
            .frames
            .binary_search_by_key(&p.frame_offset, |f| f.offset)
            .ok()
            .map(|i| &index.frames[i])
            .filter(|f| {
                f.kind == FrameKind::Pages as u32
                    && FRAME_HEADER_LEN as u64 + f.stored_len as u64 == p.frame_len as u64
            });
        if in_frames.is_none() || p.pages == 0 {
            return bad(format!(
                "page range {:#x}+{} of pid {} points to no page frame (offset {})",
                p.start, p.pages, p.pid, p.frame_offset
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::consecutive_runs;

    #[test]
    fn runs_are_consecutive_frames_within_the_limits() {
        let frames = [(0, 10), (10, 10), (20, 10), (40, 10), (50, 10), (60, 100)];
        assert_eq!(
            consecutive_runs(&frames, 2, 1000),
            vec![
                vec![(0, 10), (10, 10)],
                vec![(20, 10)],
                vec![(40, 10), (50, 10)],
                vec![(60, 100)]
            ]
        );
        assert_eq!(
            consecutive_runs(&frames, 16, 30),
            vec![
                vec![(0, 10), (10, 10), (20, 10)],
                vec![(40, 10), (50, 10)],
                vec![(60, 100)]
            ]
        );
        assert!(consecutive_runs(&[], 4, 4).is_empty());
    }
}
