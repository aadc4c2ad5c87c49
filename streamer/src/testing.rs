//! Synthetic images for tests and benchmarks: realistic page contents and a
//! stream shaped like a real dump (inventory, processes, threads, a blob,
//! page data across several areas).

use crate::PAGE_SIZE;
use crate::error::Result;
use crate::writer::{StreamWriter, WriteSummary, WriterOptions};
use crate::{RandomReader, SequentialReader};
use crstream_proto::{
    Inventory, MemoryMap, ProcessCore, ProcessEntry, ProcessTree, StreamKind, ThreadCore, VmArea,
    record::Body,
};
use futures::StreamExt;
use tokio::io::AsyncWrite;

/// Small deterministic PRNG (xorshift64*), so tests need no seed plumbing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Fills `out` (whole pages) with data shaped like process memory: some zero
/// pages, heap-like pages of pointers and small integers, text, and random
/// (already compressed or encrypted) data.
pub fn fill_memory_like(out: &mut [u8], seed: u64) {
    const WORDS: &[&str] = &[
        "the ",
        "process ",
        "memory ",
        "checkpoint ",
        "restore ",
        "stream ",
        "frame ",
        "{\"key\": ",
        "value",
        "}, ",
        "\n",
        "0x7ffd",
        "error: ",
        "INFO ",
        "/usr/lib/",
    ];
    let mut rng = Rng::new(seed);
    for page in out.chunks_mut(PAGE_SIZE) {
        match rng.below(100) {
            0..=19 => page.fill(0),
            20..=59 => {
                for word in page.chunks_mut(8) {
                    let v = match rng.below(4) {
                        0 => 0x0000_7f00_0000_0000 | (rng.below(1 << 32) << 4),
                        1 => rng.below(256),
                        2 => 0,
                        _ => 0x0000_5555_0000_0000 | (rng.below(1 << 24) << 3),
                    };
                    let bytes = v.to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
            }
            60..=84 => {
                let mut at = 0;
                while at < page.len() {
                    let w = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
                    let n = w.len().min(page.len() - at);
                    page[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                }
            }
            _ => {
                for word in page.chunks_mut(8) {
                    let bytes = rng.next_u64().to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
            }
        }
    }
}

/// Shape of a synthetic image.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub processes: u32,
    pub threads_per_process: u32,
    /// Memory areas per process, each `pages_per_area` pages with holes.
    pub areas: u32,
    pub pages_per_area: u64,
    pub blob_bytes: usize,
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            processes: 2,
            threads_per_process: 3,
            areas: 3,
            pages_per_area: 64,
            blob_bytes: 10_000,
            seed: 7,
        }
    }
}

/// Start address of area `a` of a synthetic process.
pub fn area_start(a: u32) -> u64 {
    0x1000_0000 + a as u64 * 0x100_0000
}

/// Whether page `i` of an area is present (a deterministic pattern with holes).
pub fn page_present(i: u64) -> bool {
    i % 7 != 3 && i % 11 != 5
}

/// Contents of page `i` of area `a` of process `pid`.
pub fn page_contents(pid: u32, a: u32, i: u64, seed: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    fill_memory_like(
        &mut page,
        seed ^ ((pid as u64) << 40) ^ ((a as u64) << 20) ^ i,
    );
    page
}

/// Writes a synthetic image described by `spec`.
pub async fn write_image<W: AsyncWrite + Unpin + Send + 'static>(
    out: W,
    opts: WriterOptions,
    spec: &SynthSpec,
) -> Result<(W, WriteSummary)> {
    let mut w = StreamWriter::new(out, opts);
    w.record(
        0,
        Body::Inventory(Inventory {
            format_version: crstream_proto::FORMAT_VERSION as u32,
            crstream_version: "test".into(),
            kernel_release: "6.18.0-test".into(),
            arch: "x86_64".into(),
            page_size: PAGE_SIZE as u32,
            root_pid: 1000,
            ..Default::default()
        }),
    )
    .await?;
    let pids: Vec<u32> = (0..spec.processes).map(|p| 1000 + p).collect();
    w.record(
        0,
        Body::ProcessTree(ProcessTree {
            processes: pids
                .iter()
                .map(|&pid| ProcessEntry {
                    pid,
                    ppid: 1,
                    ..Default::default()
                })
                .collect(),
        }),
    )
    .await?;
    let mut page_streams = Vec::new();
    for &pid in &pids {
        let ps = w
            .declare(StreamKind::Process, pid, 0, &format!("process {pid}"))
            .await?;
        w.record(
            ps,
            Body::ProcessCore(ProcessCore {
                pid,
                comm: "synth".into(),
                ..Default::default()
            }),
        )
        .await?;
        let areas = (0..spec.areas)
            .map(|a| VmArea {
                start: area_start(a),
                end: area_start(a) + spec.pages_per_area * PAGE_SIZE as u64,
                prot: 3,
                has_pages: true,
                ..Default::default()
            })
            .collect();
        w.record(
            ps,
            Body::MemoryMap(MemoryMap {
                pid,
                areas,
                pages_total: 0,
            }),
        )
        .await?;
        for t in 0..spec.threads_per_process {
            let tid = pid * 100 + t;
            let ts = w
                .declare(StreamKind::Thread, pid, tid, &format!("thread {tid}"))
                .await?;
            w.record(
                ts,
                Body::ThreadCore(ThreadCore {
                    tid,
                    gp_regs: vec![t as u8; 216],
                    ..Default::default()
                }),
            )
            .await?;
        }
        page_streams.push(
            w.declare(StreamKind::Pages, pid, 0, &format!("pages {pid}"))
                .await?,
        );
    }
    if spec.blob_bytes > 0 {
        let bs = w.declare(StreamKind::Blob, pids[0], 0, "blob").await?;
        let mut blob = vec![0u8; spec.blob_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE];
        fill_memory_like(&mut blob, spec.seed);
        blob.truncate(spec.blob_bytes);
        w.blob(bs, &blob).await?;
    }
    w.end_metadata().await?;
    for (p, &pid) in pids.iter().enumerate() {
        for a in 0..spec.areas {
            let mut run: Vec<u8> = Vec::new();
            let mut run_start = 0u64;
            for i in 0..=spec.pages_per_area {
                if i < spec.pages_per_area && page_present(i) {
                    if run.is_empty() {
                        run_start = i;
                    }
                    run.extend_from_slice(&page_contents(pid, a, i, spec.seed));
                } else if !run.is_empty() {
                    let addr = area_start(a) + run_start * PAGE_SIZE as u64;
                    w.pages(page_streams[p], pid, a, addr, &run).await?;
                    run.clear();
                }
            }
        }
    }
    w.finish().await
}

/// Writes a synthetic image into memory.
pub async fn image_bytes(opts: WriterOptions, spec: &SynthSpec) -> Result<Vec<u8>> {
    let (out, _) = write_image(Vec::new(), opts, spec).await?;
    Ok(out)
}

/// Reads a whole stream sequentially; the number of items, or the first error.
pub async fn read_all_sequential(bytes: Vec<u8>) -> Result<usize> {
    let reader = SequentialReader::open(std::io::Cursor::new(bytes)).await?;
    count_items(reader.items(2)).await
}

/// `bytes` as a mapped file; `None` when there is nothing to map (empty).
fn mapped(bytes: &[u8]) -> Option<std::sync::Arc<crate::Mapping>> {
    use std::io::Write;
    let fd = rustix::fs::memfd_create("crstream-image", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd for a mapped image");
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).expect("memfd for a mapped image");
    crate::Mapping::of(&file)
}

/// Reads a whole stream as a mapped file, as a restore reads a local
/// image; `None` when there is nothing to map (an empty stream).
pub async fn read_all_mapped(bytes: Vec<u8>) -> Option<Result<usize>> {
    let map = mapped(&bytes)?;
    Some(async { count_items(SequentialReader::open_mapped(map).await?.items(2)).await }.await)
}

/// Reads a whole stream by random access from a mapped file, as a lazy
/// restore reads a local image; `None` when there is nothing to map.
pub async fn read_all_random_mapped(bytes: Vec<u8>) -> Option<Result<usize>> {
    let range = std::sync::Arc::new(crate::MappedRange(mapped(&bytes)?));
    Some(async { count_items(RandomReader::open(range).await?.items(3)).await }.await)
}

/// Opens a stream by random access and reads every item; the number of
/// items, or the first error.
pub async fn read_all_random(bytes: Vec<u8>) -> Result<usize> {
    let reader = RandomReader::open(std::sync::Arc::new(bytes::Bytes::from(bytes))).await?;
    count_items(reader.items(3)).await
}

async fn count_items(
    mut items: impl futures::Stream<Item = Result<crate::Item>> + Unpin,
) -> Result<usize> {
    let mut n = 0;
    while let Some(item) = items.next().await {
        item?;
        n += 1;
    }
    Ok(n)
}
