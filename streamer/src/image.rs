//! What the engine sees of a stream: a sequence of items, and the sync
//! traits through which it writes and reads them (the engine runs on its own
//! thread, driving ptrace; the stream side is async).

use crate::error::{Result, StreamError};
use crate::format::{FrameHeader, FrameKind};
use crate::pages::PageBatch;
use bytes::{Buf, Bytes};
use crstream_proto::{Record, StreamDecl, StreamIndex, StreamKind, record};
use prost::Message;
use std::collections::HashMap;

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
                Ok(vec![Item::End {
                    index: Box::new(index),
                }])
            }
        }
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
