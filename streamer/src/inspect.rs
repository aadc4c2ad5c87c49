//! What a stream holds: per logical stream counts and sizes, the page index
//! summary. Built from a full pass over the frames, so inspecting a stream
//! also verifies every checksum and every ordering rule.

use crate::codec::codec_name;
use crate::error::{Result, StreamError};
use crate::format::FrameKind;
use crate::image::{Frame, Item, ItemDecoder};
use crstream_proto::{Codec, StreamIndex, StreamKind, StreamOptions, record};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format_version: u16,
    pub writer: String,
    pub default_codec: String,
    pub codec_level: i32,
    pub created_unix_ms: u64,
    pub max_page_frame_bytes: u32,
    pub total_bytes: u64,
    pub frames: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub compression_ratio: f64,
    pub inventory: Option<InventorySummary>,
    pub streams: Vec<StreamReport>,
    pub pages: PageSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct InventorySummary {
    pub crstream_version: String,
    /// Version of the record layout (`Inventory.format_version`).
    pub records_version: u32,
    pub kernel_release: String,
    pub arch: String,
    pub hostname: String,
    pub page_size: u32,
    pub root_pid: u32,
    pub created_unix_ms: u64,
    /// Dumped from a PID namespace of its own: PIDs are those inside it.
    pub pid_namespace: bool,
    /// `dump --label` names and values, sorted by name.
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StreamReport {
    pub id: u32,
    pub kind: String,
    pub pid: u32,
    pub tid: u32,
    pub name: String,
    pub frames: u64,
    pub records: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub compression_ratio: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PageSummary {
    pub frames: u64,
    pub ranges: u64,
    pub pages: u64,
    pub bytes: u64,
    pub processes: Vec<ProcessPages>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessPages {
    pub pid: u32,
    pub ranges: u64,
    pub pages: u64,
    pub lowest_address: u64,
    pub highest_address: u64,
}

fn ratio(raw: u64, stored: u64) -> f64 {
    if stored == 0 {
        1.0
    } else {
        (raw as f64 / stored as f64 * 100.0).round() / 100.0
    }
}

pub fn stream_kind_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Unknown => "unknown",
        StreamKind::Control => "control",
        StreamKind::Process => "process",
        StreamKind::Thread => "thread",
        StreamKind::Pages => "pages",
        StreamKind::Blob => "blob",
        StreamKind::Files => "files",
    }
}

/// Accumulates a [`Report`] from frames in stream order.
pub struct Inspector {
    options: StreamOptions,
    header_len: u64,
    decoder: ItemDecoder,
    streams: BTreeMap<u32, StreamReport>,
    inventory: Option<InventorySummary>,
    index: Option<StreamIndex>,
    stored_bytes: u64,
    raw_bytes: u64,
    frames: u64,
    end_offset: u64,
}

impl Inspector {
    pub fn new(options: StreamOptions, header_len: u64) -> Self {
        let mut streams = BTreeMap::new();
        streams.insert(
            0,
            StreamReport {
                id: 0,
                kind: "control".into(),
                name: "control".into(),
                ..Default::default()
            },
        );
        Self {
            options,
            header_len,
            decoder: ItemDecoder::new(),
            streams,
            inventory: None,
            index: None,
            stored_bytes: 0,
            raw_bytes: 0,
            frames: 0,
            end_offset: header_len,
        }
    }

    /// Checks and counts one frame.
    pub fn feed(&mut self, frame: Frame) -> Result<()> {
        let h = frame.header;
        self.frames += 1;
        self.stored_bytes += h.stored_len as u64;
        self.raw_bytes += h.raw_len as u64;
        self.end_offset = frame.offset + h.frame_len();
        let offset = frame.offset;
        let items = self.decoder.decode(frame)?;
        if h.kind != FrameKind::Index {
            let s = self
                .streams
                .entry(h.stream_id)
                .or_insert_with(|| StreamReport {
                    id: h.stream_id,
                    ..Default::default()
                });
            s.frames += 1;
            s.raw_bytes += h.raw_len as u64;
            s.stored_bytes += h.stored_len as u64;
        }
        for item in items {
            match item {
                Item::Record { stream_id, body } => {
                    if let Some(s) = self.streams.get_mut(&stream_id) {
                        s.records += 1;
                    }
                    match body {
                        record::Body::StreamDecl(d) => {
                            let s = self.streams.entry(d.id).or_default();
                            s.id = d.id;
                            s.kind = stream_kind_name(d.kind()).into();
                            s.pid = d.pid;
                            s.tid = d.tid;
                            s.name = d.name;
                        }
                        record::Body::Inventory(inv) => {
                            self.inventory = Some(InventorySummary {
                                crstream_version: inv.crstream_version,
                                records_version: inv.format_version,
                                kernel_release: inv.kernel_release,
                                arch: inv.arch,
                                hostname: inv.hostname,
                                page_size: inv.page_size,
                                root_pid: inv.root_pid,
                                created_unix_ms: inv.created_unix_ms,
                                pid_namespace: inv.pid_namespace,
                                labels: inv.labels.into_iter().collect(),
                            })
                        }
                        _ => {}
                    }
                }
                Item::End { index } => self.index = Some(*index),
                _ => {}
            }
        }
        let _ = offset;
        Ok(())
    }

    /// The report; fails if the stream ended before its index.
    pub fn finish(self) -> Result<Report> {
        let total_bytes = self.end_offset + crate::format::TRAILER_LEN as u64;
        let index = self.index.ok_or(StreamError::Truncated {
            what: "stream (no index frame)",
            offset: self.end_offset,
            expected: 1,
            got: 0,
        })?;
        let mut pages = PageSummary::default();
        let mut per_pid: BTreeMap<u32, ProcessPages> = BTreeMap::new();
        let mut last_frame = None;
        for r in &index.pages {
            pages.ranges += 1;
            pages.pages += r.pages;
            if last_frame != Some(r.frame_offset) {
                pages.frames += 1;
                last_frame = Some(r.frame_offset);
            }
            let p = per_pid.entry(r.pid).or_insert(ProcessPages {
                pid: r.pid,
                lowest_address: u64::MAX,
                ..Default::default()
            });
            p.ranges += 1;
            p.pages += r.pages;
            p.lowest_address = p.lowest_address.min(r.start);
            p.highest_address = p
                .highest_address
                .max(r.start + r.pages * crate::PAGE_SIZE as u64);
        }
        pages.bytes = pages.pages * crate::PAGE_SIZE as u64;
        pages.processes = per_pid.into_values().collect();
        let streams = self
            .streams
            .into_values()
            .map(|mut s| {
                s.compression_ratio = ratio(s.raw_bytes, s.stored_bytes);
                s
            })
            .collect();
        let default_codec = Codec::try_from(self.options.default_codec).unwrap_or(Codec::None);
        let _ = self.header_len;
        Ok(Report {
            format_version: crstream_proto::FORMAT_VERSION,
            writer: self.options.writer,
            default_codec: codec_name(default_codec).into(),
            codec_level: self.options.codec_level,
            created_unix_ms: self.options.created_unix_ms,
            max_page_frame_bytes: self.options.max_page_frame_bytes,
            total_bytes,
            frames: self.frames,
            raw_bytes: self.raw_bytes,
            stored_bytes: self.stored_bytes,
            compression_ratio: ratio(self.raw_bytes, self.stored_bytes),
            inventory: self.inventory,
            streams,
            pages,
        })
    }
}
