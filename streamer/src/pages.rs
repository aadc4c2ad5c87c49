//! Page batches: the payload of a page frame (docs/FORMAT.md, "Page batch").

use crate::error::{Result, StreamError};
use crate::format::{PAGE_BATCH_HEADER_LEN, PAGE_RUN_LEN};
use bytes::{Bytes, BytesMut};

pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// A run of contiguous pages starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub start: u64,
    pub pages: u64,
}

impl PageRun {
    pub fn end(&self) -> u64 {
        self.start + (self.pages << PAGE_SHIFT)
    }
}

/// Pages of one memory area of one process, with their contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBatch {
    pub pid: u32,
    /// Index of the area in the process's `MemoryMap`.
    pub area: u32,
    pub runs: Vec<PageRun>,
    /// Contents of all runs, run after run.
    pub data: Bytes,
}

impl PageBatch {
    pub fn page_count(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }

    /// Contents of the page at `addr`, if this batch holds it.
    pub fn page(&self, addr: u64) -> Option<&[u8]> {
        let mut offset = 0usize;
        for run in &self.runs {
            if addr >= run.start && addr < run.end() {
                let at = offset + (addr - run.start) as usize;
                return self.data.get(at..at + PAGE_SIZE);
            }
            offset += (run.pages as usize) << PAGE_SHIFT;
        }
        None
    }

    /// Iterates over the runs with their contents.
    pub fn runs_with_data(&self) -> impl Iterator<Item = (PageRun, &[u8])> {
        let mut offset = 0usize;
        self.runs.iter().map(move |run| {
            let len = (run.pages as usize) << PAGE_SHIFT;
            let slice = &self.data[offset..offset + len];
            offset += len;
            (*run, slice)
        })
    }

    /// Encoded size of the batch header (before the page contents).
    pub fn header_len(runs: usize) -> usize {
        PAGE_BATCH_HEADER_LEN + runs * PAGE_RUN_LEN
    }

    /// Checks that the runs are well formed and match the data length.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.runs.is_empty() {
            return Err("no page runs".into());
        }
        let mut prev_end = 0u64;
        let mut total: u64 = 0;
        for run in &self.runs {
            if run.pages == 0 {
                return Err(format!("empty run at {:#x}", run.start));
            }
            if run.start % PAGE_SIZE as u64 != 0 {
                return Err(format!("run start {:#x} is not page-aligned", run.start));
            }
            let end = run
                .pages
                .checked_shl(PAGE_SHIFT)
                .and_then(|len| run.start.checked_add(len))
                .filter(|_| run.pages < (1 << 40))
                .ok_or_else(|| {
                    format!("run at {:#x} of {} pages overflows", run.start, run.pages)
                })?;
            if run.start < prev_end {
                return Err(format!(
                    "run at {:#x} overlaps or precedes the previous run",
                    run.start
                ));
            }
            prev_end = end;
            total += run.pages;
        }
        if total.checked_shl(PAGE_SHIFT) != Some(self.data.len() as u64) {
            return Err(format!(
                "runs hold {total} pages but the batch carries {} bytes",
                self.data.len()
            ));
        }
        Ok(())
    }

    /// Encodes the batch as a raw frame payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(Self::header_len(self.runs.len()) + self.data.len());
        Self::encode_header_into(self.pid, self.area, &self.runs, &mut out);
        out.extend_from_slice(&self.data);
        out.freeze()
    }

    /// Writes the batch header; the caller appends the page contents.
    pub fn encode_header_into(pid: u32, area: u32, runs: &[PageRun], out: &mut BytesMut) {
        out.extend_from_slice(&pid.to_le_bytes());
        out.extend_from_slice(&area.to_le_bytes());
        out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        out.extend_from_slice(&PAGE_SHIFT.to_le_bytes());
        for run in runs {
            out.extend_from_slice(&run.start.to_le_bytes());
            out.extend_from_slice(&run.pages.to_le_bytes());
        }
    }

    /// Decodes a raw page frame payload found in the frame at `offset`.
    pub fn decode(raw: Bytes, offset: u64) -> Result<Self> {
        let bad = |reason: String| StreamError::BadPages { offset, reason };
        if raw.len() < PAGE_BATCH_HEADER_LEN {
            return Err(bad(format!(
                "payload of {} bytes is shorter than a batch header",
                raw.len()
            )));
        }
        let word = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().unwrap());
        let (pid, area, run_count, page_shift) = (word(0), word(4), word(8) as usize, word(12));
        if page_shift != PAGE_SHIFT {
            return Err(bad(format!(
                "page shift {page_shift}, this crstream supports {PAGE_SHIFT}"
            )));
        }
        let header_len = run_count
            .checked_mul(PAGE_RUN_LEN)
            .and_then(|n| n.checked_add(PAGE_BATCH_HEADER_LEN))
            .filter(|&n| n <= raw.len())
            .ok_or_else(|| {
                bad(format!(
                    "{run_count} runs do not fit in {} bytes",
                    raw.len()
                ))
            })?;
        let runs = raw[PAGE_BATCH_HEADER_LEN..header_len]
            .chunks_exact(PAGE_RUN_LEN)
            .map(|c| PageRun {
                start: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                pages: u64::from_le_bytes(c[8..16].try_into().unwrap()),
            })
            .collect();
        let batch = PageBatch {
            pid,
            area,
            runs,
            data: raw.slice(header_len..),
        };
        batch.validate().map_err(bad)?;
        Ok(batch)
    }
}
