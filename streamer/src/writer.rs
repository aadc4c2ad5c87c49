//! The stream writer: records and pages in, frames out.
//!
//! Pipeline: the front end (`StreamWriter`, called from async or blocking
//! code) batches records per logical stream and pages per memory area into
//! raw frames; a bounded channel feeds them to compression on the blocking
//! thread pool, up to `2 * workers` at a time (so a finished frame waiting
//! behind a slower one does not leave a core idle); results are written
//! strictly in order by one task, which also builds the index. Memory in
//! flight is bounded by about `3 * workers` frames.

use crate::codec;
use crate::error::{Result, StreamError};
use crate::format::{FRAME_HEADER_LEN, FrameHeader, FrameKind, Trailer, encode_header};
use crate::pages::{PAGE_SHIFT, PAGE_SIZE, PageBatch, PageRun};
use crate::pool::BufferPool;
use bytes::{Bytes, BytesMut};
use crstream_proto::{
    Codec, FrameEntry, PageRange, Record, StreamDecl, StreamIndex, StreamKind, StreamOptions,
    record,
};
use futures::StreamExt;
use prost::Message;
use std::collections::{BTreeMap, VecDeque};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a stream is written.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub codec: Codec,
    /// Codec level (zstd: 1 is fast, 19 is small; ignored by lz4 and none).
    pub level: i32,
    /// Frames compressed at the same time; also bounds frames in flight.
    pub workers: usize,
    /// Raw size at which a stream's batched records are cut into a frame.
    pub record_frame_bytes: usize,
    /// Bound on the raw size of a page or blob frame.
    pub page_frame_bytes: usize,
    /// Name and version of the writer, recorded in the header.
    pub writer_name: String,
    /// Blocking writes (the engine's): how long one may wait for the
    /// pipeline, that is for the destination, before it fails with
    /// [`StreamError::Stalled`]. None: as long as it takes.
    pub stall_timeout: Option<std::time::Duration>,
    /// Blocking writes: raised from elsewhere, makes every write waiting
    /// for the pipeline, and every later one, fail with
    /// [`StreamError::Interrupted`].
    pub interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            codec: Codec::Zstd,
            level: 1,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            record_frame_bytes: 256 << 10,
            page_frame_bytes: 1 << 20,
            writer_name: format!("crstream-streamer {}", env!("CARGO_PKG_VERSION")),
            stall_timeout: None,
            interrupt: None,
        }
    }
}

/// What a finished stream holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Bytes written, header to trailer.
    pub bytes: u64,
    /// Sum of raw (uncompressed) payload bytes.
    pub raw_bytes: u64,
    pub frames: u64,
    pub records: u64,
    pub pages: u64,
}

/// A raw frame on its way to compression.
struct Job {
    kind: FrameKind,
    stream_id: u32,
    raw: Bytes,
    records: u32,
    pages: Option<(u32, u32, Vec<PageRun>)>,
}

struct Encoded {
    header: FrameHeader,
    stored: Bytes,
    records: u32,
    pages: Option<(u32, u32, Vec<PageRun>)>,
}

enum Msg {
    Frame(Job),
    Finish(Vec<StreamDecl>),
}

#[derive(Default)]
struct RecordBuf {
    bytes: Vec<u8>,
    count: u32,
}

/// Pages being gathered into the next page frame of one area. `buf` starts
/// with room for the largest possible batch header, so the header is put in
/// front of the pages at flush time without copying them again; the pages
/// so far end at `len`.
struct PendingPages {
    stream_id: u32,
    pid: u32,
    area: u32,
    runs: Vec<PageRun>,
    buf: Vec<u8>,
    len: usize,
    header_room: usize,
}

/// Writes one crstream stream to an `AsyncWrite`.
pub struct StreamWriter<W> {
    tx: mpsc::Sender<Msg>,
    /// The frame-writing task: the output, what was written, and whether
    /// the stream was finished (index and trailer written).
    task: Option<JoinHandle<Result<(W, WriteSummary, bool)>>>,
    /// The runtime the pipeline runs on, for the blocking face.
    runtime: tokio::runtime::Handle,
    opts: WriterOptions,
    decls: Vec<StreamDecl>,
    next_stream: u32,
    records: BTreeMap<u32, RecordBuf>,
    pages: Option<PendingPages>,
    metadata_ended: bool,
    outbox: VecDeque<Msg>,
    pool: BufferPool,
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamWriter<W> {
    /// Starts a stream on `out`. Must be called within a tokio runtime.
    pub fn new(out: W, opts: WriterOptions) -> Self {
        // Frames stored raw need no compression workers, only a frame
        // ready behind the one being written: every frame in flight is a
        // buffer whose fresh pages cost more to fault in than to fill.
        let workers = match opts.codec {
            Codec::None => 1,
            _ => opts.workers.max(1),
        };
        let (tx, rx) = mpsc::channel(2);
        let options = StreamOptions {
            writer: opts.writer_name.clone(),
            default_codec: opts.codec as i32,
            codec_level: opts.level,
            max_page_frame_bytes: opts.page_frame_bytes as u32,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let pool = BufferPool::default();
        let task = tokio::spawn(write_frames(rx, out, options, opts.clone(), workers));
        Self {
            tx,
            task: Some(task),
            runtime: tokio::runtime::Handle::current(),
            opts: WriterOptions {
                page_frame_bytes: opts.page_frame_bytes.max(PAGE_SIZE),
                ..opts
            },
            decls: Vec::new(),
            next_stream: 1,
            records: BTreeMap::new(),
            pages: None,
            metadata_ended: false,
            outbox: VecDeque::new(),
            pool,
        }
    }

    /// Declares a logical stream and returns its id.
    pub async fn declare(
        &mut self,
        kind: StreamKind,
        pid: u32,
        tid: u32,
        name: &str,
    ) -> Result<u32> {
        let id = self.queue_declare(kind, pid, tid, name)?;
        self.flush_outbox().await?;
        Ok(id)
    }

    /// Appends a record to a logical stream.
    pub async fn record(&mut self, stream_id: u32, body: record::Body) -> Result<()> {
        self.queue_record(stream_id, body)?;
        self.flush_outbox().await
    }

    /// Appends bytes to a blob stream.
    pub async fn blob(&mut self, stream_id: u32, data: &[u8]) -> Result<()> {
        self.queue_blob(stream_id, data)?;
        self.flush_outbox().await
    }

    /// Ends the metadata section: everything after is page data.
    pub async fn end_metadata(&mut self) -> Result<()> {
        self.queue_end_metadata()?;
        self.flush_outbox().await
    }

    /// Adds the contents of pages starting at `start` (`data` is whole pages)
    /// of memory area `area` of process `pid`, through its pages stream.
    pub async fn pages(
        &mut self,
        stream_id: u32,
        pid: u32,
        area: u32,
        start: u64,
        data: &[u8],
    ) -> Result<()> {
        self.queue_pages(stream_id, pid, area, start, data)?;
        self.flush_outbox().await
    }

    /// Writes the index and trailer and returns the output with a summary.
    pub async fn finish(mut self) -> Result<(W, WriteSummary)> {
        self.queue_finish()?;
        self.flush_outbox().await?;
        match self.join().await? {
            (out, summary, true) => Ok((out, summary)),
            (_, _, false) => Err(StreamError::WriterGone(
                "the frame writer ended early".into(),
            )),
        }
    }

    /// Stops writing without finishing the stream: what is queued may still
    /// be written, but never an index or a trailer, so no reader takes it
    /// for a whole stream. Returns the output, for the caller to discard
    /// (None if the pipeline failed; the output was dropped with it).
    pub async fn abandon(mut self) -> Option<W> {
        self.outbox.clear();
        self.pages = None;
        self.records.clear();
        // Closing the channel ends the pipeline before any Finish.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        match self.join().await {
            Ok((out, _, _)) => Some(out),
            Err(_) => None,
        }
    }

    async fn flush_outbox(&mut self) -> Result<()> {
        while let Some(msg) = self.outbox.pop_front() {
            if self.tx.send(msg).await.is_err() {
                return Err(self.writer_failure().await);
            }
        }
        Ok(())
    }

    /// Blocking variants for synchronous producers (the engine runs on its
    /// own thread). They must not be called from an async context.
    pub fn blocking(&mut self) -> BlockingWriter<'_, W> {
        BlockingWriter { w: self }
    }

    fn blocking_flush_outbox(&mut self) -> Result<()> {
        while let Some(msg) = self.outbox.pop_front() {
            let runtime = self.runtime.clone();
            match runtime.block_on(self.send_bounded(msg)) {
                Ok(()) => {}
                Err(None) => return Err(runtime.block_on(self.writer_failure())),
                Err(Some(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends one message to the pipeline, waiting for room no longer than
    /// `stall_timeout` and until `interrupt` is raised. Err(None): the
    /// pipeline is gone.
    async fn send_bounded(&self, msg: Msg) -> std::result::Result<(), Option<StreamError>> {
        /// How often a wait for room looks at the interrupt flag.
        const TICK: std::time::Duration = std::time::Duration::from_millis(50);
        let interrupted = || {
            self.opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
        };
        let started = std::time::Instant::now();
        loop {
            if interrupted() {
                return Err(Some(StreamError::Interrupted));
            }
            match tokio::time::timeout(TICK, self.tx.reserve()).await {
                Ok(Ok(permit)) => {
                    permit.send(msg);
                    return Ok(());
                }
                Ok(Err(_)) => return Err(None),
                Err(_) => {
                    if let Some(limit) = self.opts.stall_timeout
                        && started.elapsed() >= limit
                    {
                        return Err(Some(StreamError::Stalled { waited: limit }));
                    }
                }
            }
        }
    }

    /// The error that stopped the frame-writing task.
    async fn writer_failure(&mut self) -> StreamError {
        match self.join().await {
            Err(e) => e,
            Ok(_) => StreamError::WriterGone("the frame writer ended early".into()),
        }
    }

    async fn join(&mut self) -> Result<(W, WriteSummary, bool)> {
        let task = self
            .task
            .take()
            .ok_or_else(|| StreamError::WriterGone("the frame writer already failed".into()))?;
        match task.await {
            Ok(r) => r,
            Err(e) => Err(StreamError::WriterGone(format!("frame writer task: {e}"))),
        }
    }

    // --- the front end: turns calls into frames, without I/O ---

    fn queue_declare(&mut self, kind: StreamKind, pid: u32, tid: u32, name: &str) -> Result<u32> {
        let id = self.next_stream;
        self.next_stream += 1;
        let decl = StreamDecl {
            id,
            kind: kind as i32,
            pid,
            tid,
            name: name.to_string(),
        };
        self.decls.push(decl.clone());
        self.queue_record(0, record::Body::StreamDecl(decl))?;
        Ok(id)
    }

    fn check_declared(&self, stream_id: u32) -> Result<()> {
        if stream_id != 0 && !self.decls.iter().any(|d| d.id == stream_id) {
            return Err(StreamError::Usage(format!(
                "stream {stream_id} was not declared"
            )));
        }
        Ok(())
    }

    fn queue_record(&mut self, stream_id: u32, body: record::Body) -> Result<()> {
        if self.metadata_ended {
            return Err(StreamError::Usage(
                "record after the end of metadata".into(),
            ));
        }
        self.check_declared(stream_id)?;
        let rec = Record { body: Some(body) };
        let buf = self.records.entry(stream_id).or_default();
        rec.encode_length_delimited(&mut buf.bytes)
            .expect("Vec<u8> grows as needed");
        buf.count += 1;
        if buf.bytes.len() >= self.opts.record_frame_bytes {
            self.flush_records(stream_id);
        }
        Ok(())
    }

    /// Cuts the batched records of `stream_id` into a frame. Declarations
    /// (stream 0) always go first so a stream is declared before its frames.
    fn flush_records(&mut self, stream_id: u32) {
        if stream_id != 0 {
            self.flush_records(0);
        }
        if let Some(buf) = self.records.remove(&stream_id).filter(|b| b.count > 0) {
            self.outbox.push_back(Msg::Frame(Job {
                kind: FrameKind::Records,
                stream_id,
                raw: Bytes::from(buf.bytes),
                records: buf.count,
                pages: None,
            }));
        }
    }

    fn queue_blob(&mut self, stream_id: u32, data: &[u8]) -> Result<()> {
        if self.metadata_ended {
            return Err(StreamError::Usage("blob after the end of metadata".into()));
        }
        self.check_declared(stream_id)?;
        // Records before the blob keep their order relative to it.
        let ids: Vec<u32> = self.records.keys().copied().collect();
        for id in ids {
            self.flush_records(id);
        }
        for chunk in data.chunks(self.opts.page_frame_bytes) {
            self.outbox.push_back(Msg::Frame(Job {
                kind: FrameKind::Blob,
                stream_id,
                raw: Bytes::copy_from_slice(chunk),
                records: 0,
                pages: None,
            }));
        }
        Ok(())
    }

    fn queue_end_metadata(&mut self) -> Result<()> {
        if self.metadata_ended {
            return Err(StreamError::Usage("metadata ended twice".into()));
        }
        let ids: Vec<u32> = self.records.keys().copied().collect();
        for id in ids {
            self.flush_records(id);
        }
        self.metadata_ended = true;
        self.outbox.push_back(Msg::Frame(Job {
            kind: FrameKind::MetadataEnd,
            stream_id: 0,
            raw: Bytes::new(),
            records: 0,
            pages: None,
        }));
        Ok(())
    }

    fn queue_pages(
        &mut self,
        stream_id: u32,
        pid: u32,
        area: u32,
        start: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut done = 0;
        while done < data.len() {
            let room =
                self.page_room(stream_id, pid, area, start + done as u64, data.len() - done)?;
            let n = room.len();
            room.copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Room at the end of the pending page frame for up to `len` bytes of
    /// pages of `area` starting at `start`, flushing the pending frame first
    /// if it cannot take them. The pages count as written once filled: a
    /// producer that fails to fill them must abandon the stream.
    fn page_room(
        &mut self,
        stream_id: u32,
        pid: u32,
        area: u32,
        start: u64,
        len: usize,
    ) -> Result<&mut [u8]> {
        if !self.metadata_ended {
            return Err(StreamError::Usage(
                "pages before the end of metadata".into(),
            ));
        }
        self.check_declared(stream_id)?;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || !start.is_multiple_of(PAGE_SIZE as u64) {
            return Err(StreamError::Usage(format!(
                "pages at {start:#x}: {len} bytes is not a whole number of aligned pages"
            )));
        }
        let frame_bytes = self.opts.page_frame_bytes;
        let same_area = matches!(&self.pages, Some(p) if p.stream_id == stream_id
            && p.pid == pid && p.area == area
            && p.runs.last().is_some_and(|r| r.end() <= start));
        let full = self
            .pages
            .as_ref()
            .is_some_and(|p| p.len - p.header_room >= frame_bytes);
        if !same_area || full {
            self.flush_pages();
        }
        let pool = &self.pool;
        let pending = self.pages.get_or_insert_with(|| {
            // Each run holds at least one page.
            let header_room = PageBatch::header_len(frame_bytes / PAGE_SIZE);
            PendingPages {
                stream_id,
                pid,
                area,
                runs: Vec::new(),
                buf: pool.take(header_room + frame_bytes),
                len: header_room,
                header_room,
            }
        });
        let n = len.min(frame_bytes - (pending.len - pending.header_room));
        let pages = (n >> PAGE_SHIFT) as u64;
        match pending.runs.last_mut() {
            Some(run) if run.end() == start => run.pages += pages,
            _ => pending.runs.push(PageRun { start, pages }),
        }
        let at = pending.len;
        pending.len += n;
        Ok(&mut pending.buf[at..at + n])
    }

    fn flush_pages(&mut self) {
        if let Some(mut p) = self.pages.take() {
            let mut header = BytesMut::with_capacity(PageBatch::header_len(p.runs.len()));
            PageBatch::encode_header_into(p.pid, p.area, &p.runs, &mut header);
            let start = p.header_room - header.len();
            p.buf[start..p.header_room].copy_from_slice(&header);
            self.outbox.push_back(Msg::Frame(Job {
                kind: FrameKind::Pages,
                stream_id: p.stream_id,
                raw: self.pool.share(p.buf, start..p.len),
                records: 0,
                pages: Some((p.pid, p.area, p.runs)),
            }));
        }
    }

    fn queue_finish(&mut self) -> Result<()> {
        if !self.metadata_ended {
            self.queue_end_metadata()?;
        }
        self.flush_pages();
        self.outbox
            .push_back(Msg::Finish(std::mem::take(&mut self.decls)));
        Ok(())
    }
}

/// Synchronous face of a [`StreamWriter`] for producers on their own thread.
pub struct BlockingWriter<'a, W> {
    w: &'a mut StreamWriter<W>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> crate::image::ImageSink for BlockingWriter<'_, W> {
    fn declare(&mut self, kind: StreamKind, pid: u32, tid: u32, name: &str) -> Result<u32> {
        let id = self.w.queue_declare(kind, pid, tid, name)?;
        self.w.blocking_flush_outbox()?;
        Ok(id)
    }

    fn record(&mut self, stream_id: u32, body: record::Body) -> Result<()> {
        self.w.queue_record(stream_id, body)?;
        self.w.blocking_flush_outbox()
    }

    fn blob(&mut self, stream_id: u32, data: &[u8]) -> Result<()> {
        self.w.queue_blob(stream_id, data)?;
        self.w.blocking_flush_outbox()
    }

    fn end_metadata(&mut self) -> Result<()> {
        self.w.queue_end_metadata()?;
        self.w.blocking_flush_outbox()
    }

    fn pages(
        &mut self,
        stream_id: u32,
        pid: u32,
        area: u32,
        start: u64,
        data: &[u8],
    ) -> Result<()> {
        self.w.queue_pages(stream_id, pid, area, start, data)?;
        self.w.blocking_flush_outbox()
    }

    fn page_room(
        &mut self,
        stream_id: u32,
        pid: u32,
        area: u32,
        start: u64,
        len: usize,
    ) -> Result<&mut [u8]> {
        // Frames completed by earlier calls go out first, so at most one
        // frame waits here.
        self.w.blocking_flush_outbox()?;
        self.w.page_room(stream_id, pid, area, start, len)
    }
}

/// Compresses and checksums one frame (runs on the blocking pool).
fn encode_job(job: Job, codec: Codec, level: i32) -> Encoded {
    let raw_len = job.raw.len() as u32;
    // A page buffer goes back to its pool once the frame is compressed or,
    // stored raw, written.
    let (codec, stored) = codec::compress(codec, level, job.raw);
    let header = FrameHeader {
        kind: job.kind,
        codec,
        stream_id: job.stream_id,
        raw_len,
        stored_len: stored.len() as u32,
        payload_crc: crc32c::crc32c(&stored),
    };
    Encoded {
        header,
        stored,
        records: job.records,
        pages: job.pages,
    }
}

/// Writes a frame header and its payload, in one write where the output
/// takes several buffers at once (see `Sink::poll_write_vectored`).
async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    header: &[u8],
    payload: &[u8],
) -> std::io::Result<()> {
    let (mut header, mut payload) = (header, payload);
    while !header.is_empty() {
        let bufs = [
            std::io::IoSlice::new(header),
            std::io::IoSlice::new(payload),
        ];
        let n = out.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let in_header = n.min(header.len());
        header = &header[in_header..];
        payload = &payload[n - in_header..];
    }
    out.write_all(payload).await
}

/// The back end: compresses up to `2 * workers` frames at a time, writes them in
/// order, then the index and trailer.
async fn write_frames<W: AsyncWrite + Unpin + Send + 'static>(
    rx: mpsc::Receiver<Msg>,
    mut out: W,
    options: StreamOptions,
    opts: WriterOptions,
    workers: usize,
) -> Result<(W, WriteSummary, bool)> {
    let io_err = |offset: u64| move |err| StreamError::Io { offset, err };
    let header = encode_header(&options);
    out.write_all(&header).await.map_err(io_err(0))?;
    let mut offset = header.len() as u64;
    let mut summary = WriteSummary::default();
    let mut index = StreamIndex::default();

    let (codec, level) = (opts.codec, opts.level);
    let messages =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut encoded = std::pin::pin!(
        messages
            .map(|msg| {
                async move {
                    match msg {
                        Msg::Frame(job) => {
                            tokio::task::spawn_blocking(move || encode_job(job, codec, level))
                                .await
                                .map(Ok)
                                .map_err(|e| {
                                    StreamError::WriterGone(format!("compression worker: {e}"))
                                })
                        }
                        Msg::Finish(decls) => Ok(Err(decls)),
                    }
                }
            })
            // Twice as many frames in flight as workers: a finished frame
            // waiting behind a slower one does not leave a core idle.
            .buffered(workers * 2)
    );

    let mut finished = false;
    while let Some(item) = encoded.next().await {
        let frame = match item? {
            Ok(frame) => frame,
            Err(decls) => {
                index.streams = decls;
                finished = true;
                break;
            }
        };
        let h = frame.header;
        write_frame(&mut out, &h.encode(), &frame.stored)
            .await
            .map_err(io_err(offset))?;
        index.frames.push(FrameEntry {
            offset,
            kind: h.kind as u32,
            stream_id: h.stream_id,
            codec: h.codec as u32,
            raw_len: h.raw_len,
            stored_len: h.stored_len,
            records: frame.records,
        });
        if let Some((pid, area, runs)) = frame.pages {
            for run in runs {
                summary.pages += run.pages;
                index.pages.push(PageRange {
                    pid,
                    start: run.start,
                    pages: run.pages,
                    frame_offset: offset,
                    frame_len: h.frame_len() as u32,
                    area,
                });
            }
        }
        offset += h.frame_len();
        summary.frames += 1;
        summary.records += frame.records as u64;
        summary.raw_bytes += h.raw_len as u64;
        if h.kind == FrameKind::MetadataEnd {
            index.metadata_end = offset;
        }
    }
    if !finished {
        // Abandoned (or the writer dropped): no index, no trailer.
        out.flush().await.map_err(io_err(offset))?;
        summary.bytes = offset;
        return Ok((out, summary, false));
    }
    index.total_raw_bytes = summary.raw_bytes;

    let raw = Bytes::from(index.encode_to_vec());
    let raw_len = raw.len() as u32;
    let (icodec, stored) = codec::compress(codec, level, raw);
    let h = FrameHeader {
        kind: FrameKind::Index,
        codec: icodec,
        stream_id: 0,
        raw_len,
        stored_len: stored.len() as u32,
        payload_crc: crc32c::crc32c(&stored),
    };
    let trailer = Trailer {
        index_offset: offset,
        index_len: (FRAME_HEADER_LEN + stored.len()) as u64,
    };
    out.write_all(&h.encode()).await.map_err(io_err(offset))?;
    out.write_all(&stored).await.map_err(io_err(offset))?;
    offset += h.frame_len();
    out.write_all(&trailer.encode())
        .await
        .map_err(io_err(offset))?;
    offset += trailer.encode().len() as u64;
    out.flush().await.map_err(io_err(offset))?;
    summary.bytes = offset;
    summary.frames += 1;
    Ok((out, summary, true))
}

#[cfg(test)]
mod tests {
    use super::write_frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most 7 bytes per call, across buffers.
    struct Trickle(Vec<u8>);

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = 7;
            for b in bufs {
                let n = b.len().min(room);
                self.0.extend_from_slice(&b[..n]);
                room -= n;
            }
            Poll::Ready(Ok(7 - room))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_frame_written_in_short_vectored_writes_is_whole() {
        let header: Vec<u8> = (0..24).collect();
        let payload: Vec<u8> = (100..200).collect();
        let mut out = Trickle(Vec::new());
        write_frame(&mut out, &header, &payload).await.unwrap();
        assert_eq!(out.0, [header, payload].concat());
    }
}
