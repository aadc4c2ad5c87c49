//! What the engine sees of a stream: a sequence of items, and the sync
//! traits through which it writes and reads them (the engine runs on its own
//! thread, driving ptrace; the stream side is async).

use crate::error::{Result, StreamError};
use crate::format::{FrameHeader, FrameKind};
use crate::pages::PageBatch;
use crate::pages::PageRun;
use bytes::{Buf, Bytes};
use crstream_proto::{Record, StreamDecl, StreamIndex, StreamKind, record};
use prost::Message;
use std::collections::{BTreeMap, HashMap};

/// A decoded (decompressed, verified) frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub offset: u64,
    pub header: FrameHeader,
    pub raw: Bytes,
}

/// One unit of image content, in stream order.
// Record bodies are a few hundred bytes and items pass one by one, at most
// one per frame for pages: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Item {
    /// A record of a logical stream. Records whose body this reader does not
    /// know are skipped, never returned.
    Record {
        stream_id: u32,
        body: record::Body,
    },
    /// Next bytes of a blob stream.
    Blob {
        stream_id: u32,
        data: Bytes,
    },
    /// All metadata has been seen; page data follows.
    MetadataEnd,
    Pages {
        stream_id: u32,
        batch: PageBatch,
    },
    /// The index frame: the last item of a stream (boxed: it can be large).
    End {
        index: Box<StreamIndex>,
    },
}

/// Where the engine writes an image.
pub trait ImageSink {
    /// Declares a logical stream and returns its id.
    fn declare(&mut self, kind: StreamKind, pid: u32, tid: u32, name: &str) -> Result<u32>;
    fn record(&mut self, stream_id: u32, body: record::Body) -> Result<()>;
    fn blob(&mut self, stream_id: u32, data: &[u8]) -> Result<()>;
    fn end_metadata(&mut self) -> Result<()>;
    /// Whole pages of area `area` of process `pid`, starting at `start`.
    fn pages(&mut self, stream_id: u32, pid: u32, area: u32, start: u64, data: &[u8])
    -> Result<()>;
    /// Room for up to `len` bytes (whole pages) of area `area` of process
    /// `pid` starting at `start`, to be filled in place by the caller: the
    /// returned slice may be shorter (the rest goes in the next call). The
    /// pages count as written; a caller that cannot fill them must abandon
    /// the stream. Saves a copy of every page on the dump path.
    fn page_room(
        &mut self,
        stream_id: u32,
        pid: u32,
        area: u32,
        start: u64,
        len: usize,
    ) -> Result<&mut [u8]>;
}

/// Where the engine reads an image from, item by item.
pub trait ImageSource {
    /// The next item, or `None` after `Item::End`.
    fn next_item(&mut self) -> Result<Option<Item>>;
}

/// Turns frames, in stream order, into items, enforcing the order rules of
/// docs/FORMAT.md. Shared by the sequential and the random-access reader.
#[derive(Default)]
pub struct ItemDecoder {
    streams: HashMap<u32, StreamDecl>,
    seen_first_record: bool,
    metadata_ended: bool,
    pub(crate) frames_seen: u64,
    /// What each page frame holds, by its offset: checked against the
    /// index once it comes.
    page_frames: Vec<(u64, PageFrame)>,
    /// Pages seen so far, by pid: start -> end.
    pages_seen: HashMap<u32, BTreeMap<u64, u64>>,
}

/// What one page frame holds: the pages of one area of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFrame {
    pub pid: u32,
    pub area: u32,
    pub runs: Vec<PageRun>,
}

impl std::fmt::Display for PageFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} area {} pages", self.pid, self.area)?;
        for (i, r) in self.runs.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{:#x}+{}", r.start, r.pages)?;
        }
        Ok(())
    }
}

/// What the index says each page frame holds, by frame offset. A frame
/// whose ranges name more than one area cannot match any frame (one frame
/// holds one area).
pub fn indexed_frames(index: &StreamIndex) -> HashMap<u64, PageFrame> {
    let mut frames: HashMap<u64, PageFrame> = HashMap::new();
    for p in &index.pages {
        let run = PageRun {
            start: p.start,
            pages: p.pages,
        };
        let f = frames.entry(p.frame_offset).or_insert_with(|| PageFrame {
            pid: p.pid,
            area: p.area,
            runs: Vec::new(),
        });
        if (f.pid, f.area) != (p.pid, p.area) {
            f.area = u32::MAX;
        }
        f.runs.push(run);
    }
    for f in frames.values_mut() {
        f.runs.sort_by_key(|r| r.start);
    }
    frames
}

/// Checks that the page frame at `offset` holds what the index says
/// (`indexed`, from [`indexed_frames`]).
pub fn check_frame(indexed: &HashMap<u64, PageFrame>, offset: u64, held: &PageFrame) -> Result<()> {
    let mut held = held.clone();
    held.runs.sort_by_key(|r| r.start);
    match indexed.get(&offset) {
        Some(listed) if *listed == held => Ok(()),
        Some(listed) => Err(StreamError::BadIndex {
            reason: format!(
                "the page frame at offset {offset} holds {held}; the index says {listed}"
            ),
        }),
        None => Err(StreamError::BadIndex {
            reason: format!("the page frame at offset {offset} ({held}) is not in the index"),
        }),
    }
}

impl ItemDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declared streams so far.
    pub fn streams(&self) -> &HashMap<u32, StreamDecl> {
        &self.streams
    }

    /// Decodes one frame into the items it holds.
    pub fn decode(&mut self, frame: Frame) -> Result<Vec<Item>> {
        let offset = frame.offset;
        let unexpected = |reason: String| StreamError::UnexpectedFrame { offset, reason };
        self.frames_seen += 1;
        let sid = frame.header.stream_id;
        match frame.header.kind {
            FrameKind::Records | FrameKind::Blob if self.metadata_ended => {
                return Err(unexpected(format!(
                    "{} frame after the end of metadata",
                    frame.header.kind.name()
                )));
            }
            FrameKind::Pages if !self.metadata_ended => {
                return Err(unexpected("page frame before the end of metadata".into()));
            }
            FrameKind::MetadataEnd if self.metadata_ended => {
                return Err(unexpected("a second metadata end frame".into()));
            }
            FrameKind::Index if !self.metadata_ended => {
                return Err(unexpected("index before the end of metadata".into()));
            }
            _ => {}
        }
        let declared_kind = |streams: &HashMap<u32, StreamDecl>| {
            streams.get(&sid).map(|d| d.kind()).ok_or_else(|| {
                unexpected(format!(
                    "{} frame of undeclared stream {sid}",
                    frame.header.kind.name()
                ))
            })
        };
        match frame.header.kind {
            FrameKind::Records => {
                if sid != 0 {
                    declared_kind(&self.streams)?;
                }
                self.decode_records(sid, frame.raw, offset)
            }
            FrameKind::Blob => {
                if declared_kind(&self.streams)? != StreamKind::Blob {
                    return Err(unexpected(format!(
                        "blob frame in stream {sid}, which is not a blob stream"
                    )));
                }
                Ok(vec![Item::Blob {
                    stream_id: sid,
                    data: frame.raw,
                }])
            }
            FrameKind::MetadataEnd => {
                if !self.seen_first_record {
                    return Err(StreamError::MissingRecord {
                        what: "Inventory (the first record of every image)".into(),
                    });
                }
                self.metadata_ended = true;
                Ok(vec![Item::MetadataEnd])
            }
            FrameKind::Pages => {
                let decl = self
                    .streams
                    .get(&sid)
                    .ok_or_else(|| unexpected(format!("page frame of undeclared stream {sid}")))?;
                if decl.kind() != StreamKind::Pages {
                    return Err(unexpected(format!(
                        "page frame in stream {sid}, which is not a pages stream"
                    )));
                }
                let batch = PageBatch::decode(frame.raw, offset)?;
                if batch.pid != decl.pid {
                    return Err(StreamError::BadPages {
                        offset,
                        reason: format!(
                            "pages of pid {} in the pages stream of pid {}",
                            batch.pid, decl.pid
                        ),
                    });
                }
                self.note_pages(offset, &batch)?;
                Ok(vec![Item::Pages {
                    stream_id: sid,
                    batch,
                }])
            }
            FrameKind::Index => {
                let index = StreamIndex::decode(frame.raw).map_err(|e| StreamError::BadIndex {
                    reason: format!("index frame at offset {offset}: {e}"),
                })?;
                let listed = index.frames.len() as u64;
                if listed != self.frames_seen - 1 {
                    return Err(StreamError::BadIndex {
                        reason: format!(
                            "index lists {listed} frames, the stream has {}",
                            self.frames_seen - 1
                        ),
                    });
                }
                Ok(vec![self.end_with_index(index)?])
            }
        }
    }

    /// Records what the page frame at `offset` holds; refuses pages an
    /// earlier frame held already (a frame written twice, or damaged).
    fn note_pages(&mut self, offset: u64, batch: &PageBatch) -> Result<()> {
        let seen = self.pages_seen.entry(batch.pid).or_default();
        for run in &batch.runs {
            let (s, e) = (run.start, run.end());
            if let Some((&ps, &pe)) = seen.range(..e).next_back()
                && pe > s
            {
                return Err(StreamError::BadPages {
                    offset,
                    reason: format!(
                        "pages {s:#x}-{e:#x} of pid {} overlap pages {ps:#x}-{pe:#x} of an \
                         earlier frame (a frame written twice?)",
                        batch.pid
                    ),
                });
            }
            seen.insert(s, e);
        }
        self.page_frames.push((
            offset,
            PageFrame {
                pid: batch.pid,
                area: batch.area,
                runs: batch.runs.clone(),
            },
        ));
        Ok(())
    }

    /// The end of the stream, once the index is known: every page frame
    /// seen holds what the index says, and the index names no other.
    pub fn end_with_index(&mut self, index: StreamIndex) -> Result<Item> {
        let indexed = indexed_frames(&index);
        for (offset, held) in &self.page_frames {
            check_frame(&indexed, *offset, held)?;
        }
        if indexed.len() != self.page_frames.len() {
            let missing = indexed
                .keys()
                .filter(|o| !self.page_frames.iter().any(|f| f.0 == **o))
                .min()
                .copied()
                .unwrap_or(0);
            return Err(StreamError::BadIndex {
                reason: format!(
                    "the index names {} page frames, the stream holds {} (none at offset {missing})",
                    indexed.len(),
                    self.page_frames.len()
                ),
            });
        }
        Ok(Item::End {
            index: Box::new(index),
        })
    }

    fn decode_records(&mut self, sid: u32, mut raw: Bytes, offset: u64) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        if raw.is_empty() {
            return Err(StreamError::BadRecord {
                offset,
                reason: "empty record frame".into(),
            });
        }
        while raw.has_remaining() {
            let record =
                Record::decode_length_delimited(&mut raw).map_err(|e| StreamError::BadRecord {
                    offset,
                    reason: format!("record {} of stream {sid}: {e}", items.len()),
                })?;
            if !self.seen_first_record {
                if sid != 0 || !matches!(record.body, Some(record::Body::Inventory(_))) {
                    return Err(StreamError::MissingRecord {
                        what: "Inventory (the first record of every image)".into(),
                    });
                }
                self.seen_first_record = true;
            }
            let Some(body) = record.body else { continue };
            if let record::Body::StreamDecl(decl) = &body {
                if sid != 0 {
                    return Err(StreamError::BadRecord {
                        offset,
                        reason: format!(
                            "stream declaration in stream {sid} (only stream 0 declares)"
                        ),
                    });
                }
                if decl.id == 0 || self.streams.contains_key(&decl.id) {
                    return Err(StreamError::BadRecord {
                        offset,
                        reason: format!("stream {} declared twice or reserved", decl.id),
                    });
                }
                self.streams.insert(decl.id, decl.clone());
            }
            items.push(Item::Record {
                stream_id: sid,
                body,
            });
        }
        Ok(items)
    }
}
