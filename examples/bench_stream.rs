//! Benchmark of the stream and storage path: the writer with each codec, the
//! sequential and random-access readers, `crstream inspect`, and `crstream
//! upload`/`download` to a file and to a local S3 server (moto), with the
//! peak RSS of the crstream processes.
//!
//! Usage (after `cargo build --release --examples --bin crstream`):
//!   target/release/examples/bench_stream [--size-mib 512] [--transfer-mib 256]
//!       [--workers N] [--chunk-kib 1024] [--codecs zstd,lz4,none] [--dir DIR]
//!       [--cold] [--no-s3] [--json]
//!
//! MB/s is 10^6 bytes per second of raw (uncompressed) page data for the
//! writer and readers, and of bytes copied for upload and download.

use bytes::Bytes;
use crstream_backends::{ObjectReader, ReadOptions, SinkOptions, open_sink, open_source};
use crstream_proto::{Codec, Inventory, StreamKind, record::Body};
use crstream_streamer::testing::fill_memory_like;
use crstream_streamer::{
    Item, PAGE_SIZE, RandomReader, RangeRead, SequentialReader, StreamWriter, WriteSummary,
    WriterOptions, codec::codec_name,
};
use futures::StreamExt;
#[path = "bench_common/mod.rs"]
mod common;

use common::{cpu_time, crstream_bin, machine_busy, others_pct, proc_cpu, tv, wait_idle};
use std::future::Future;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;

/// Synthetic pid and address of the one memory area the bench image holds.
const PID: u32 = 4242;
const BASE: u64 = 0x7f00_0000_0000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

struct Opts {
    size_mib: usize,
    transfer_mib: usize,
    workers: usize,
    chunk_kib: usize,
    codecs: Vec<Codec>,
    dir: Option<PathBuf>,
    cold: bool,
    s3: bool,
    json: bool,
    wait_idle: u64,
}

const USAGE: &str = "usage: bench_stream [--size-mib N] [--transfer-mib N] [--workers N] \
[--chunk-kib N] [--codecs zstd,lz4,none] [--dir DIR] [--cold] [--no-s3] [--wait-idle SECS] [--json]";

fn parse_args() -> Opts {
    let mut o = Opts {
        size_mib: 512,
        transfer_mib: 256,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        chunk_kib: 1024,
        codecs: vec![Codec::Zstd, Codec::Lz4, Codec::None],
        dir: None,
        cold: false,
        s3: true,
        json: false,
        wait_idle: 60,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        let num = |v: String| -> usize { v.parse().unwrap_or_else(|_| die(&format!("bad {v}"))) };
        match name.as_str() {
            "--size-mib" => o.size_mib = num(value()),
            "--transfer-mib" => o.transfer_mib = num(value()),
            "--workers" => o.workers = num(value()).max(1),
            "--chunk-kib" => o.chunk_kib = num(value()).max(4),
            "--codecs" => {
                o.codecs = value()
                    .split(',')
                    .map(|c| {
                        crstream_streamer::codec::parse_codec(c.trim())
                            .unwrap_or_else(|| die(&format!("unknown codec {c}")))
                    })
                    .collect()
            }
            "--dir" => o.dir = Some(PathBuf::from(value())),
            "--wait-idle" => o.wait_idle = num(value()) as u64,
            "--cold" => o.cold = true,
            "--no-s3" => o.s3 = false,
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("bench_stream: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// A table printed at the end of a section, or JSON lines with `--json`.
struct Table {
    title: &'static str,
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    json: bool,
}

impl Table {
    fn new(title: &'static str, headers: &[&'static str], json: bool) -> Self {
        Self {
            title,
            headers: headers.to_vec(),
            rows: Vec::new(),
            json,
        }
    }

    fn add(&mut self, row: Vec<String>, record: serde_json::Value) {
        if self.json {
            println!("{record}");
        } else {
            self.rows.push(row);
        }
    }

    fn print(&self) {
        if self.json {
            return;
        }
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        println!("\n{}", self.title);
        let line = |cells: Vec<&str>| {
            let s: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // First column left-aligned (a label), figures right-aligned.
                    if i == 0 {
                        format!("{c:<w$}", w = w[i])
                    } else {
                        format!("{c:>w$}", w = w[i])
                    }
                })
                .collect();
            println!("  {}", s.join("  "));
        };
        line(self.headers.clone());
        for r in &self.rows {
            line(r.iter().map(|s| s.as_str()).collect());
        }
        let _ = std::io::stdout().flush();
    }
}

/// Memory counters of this process, from /proc/self/status, in KiB.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Cores kept busy on average: CPU time over wall time.
fn cores(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

/// Resets VmHWM to the current RSS (Linux >= 4.0), so the peak of one phase
/// can be read without the peaks of earlier ones.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Pages grown above the resident input buffer during a phase, in MiB. The
/// allocator may keep freed memory mapped, so this is an approximation.
fn extra_peak_mib(rss_before_kib: u64) -> f64 {
    status_kib("VmHWM").saturating_sub(rss_before_kib) as f64 / 1024.0
}

/// Writes `data` as the page data of one process, the way a dump does:
/// inventory and declarations, end of metadata, then pages in chunks.
async fn write_stream<W: AsyncWrite + Unpin + Send + 'static>(
    out: W,
    opts: WriterOptions,
    data: &[u8],
    chunk: usize,
) -> Res<(W, WriteSummary)> {
    let mut w = StreamWriter::new(out, opts);
    w.record(
        0,
        Body::Inventory(Inventory {
            format_version: crstream_proto::FORMAT_VERSION as u32,
            crstream_version: "bench".into(),
            arch: "x86_64".into(),
            page_size: PAGE_SIZE as u32,
            root_pid: PID,
            ..Default::default()
        }),
    )
    .await?;
    let ps = w.declare(StreamKind::Pages, PID, 0, "pages").await?;
    w.end_metadata().await?;
    for (i, c) in data.chunks(chunk).enumerate() {
        w.pages(ps, PID, 0, BASE + (i * chunk) as u64, c).await?;
    }
    Ok(w.finish().await?)
}

/// Ranged reads of a file through crstream's file backend (the path a lazy
/// restore would take). `RangeRead` is an async-trait trait: this is the
/// signature its macro produces.
struct Ranged(ObjectReader);

impl RangeRead for Ranged {
    fn len(&self) -> u64 {
        self.0.size()
    }
    fn read_range<'a, 'b>(
        &'a self,
        range: Range<u64>,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Bytes>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { self.0.read_range(range).await.map_err(std::io::Error::from) })
    }
}

/// Checks that a decoded batch holds the input bytes at its address (first
/// word only: cheap enough not to weigh on the figures).
fn check_batch(data: &[u8], runs: &[crstream_streamer::PageRun], bytes: &[u8]) -> u64 {
    let mut pages = 0;
    let mut at = 0usize;
    for r in runs {
        let off = (r.start - BASE) as usize;
        assert_eq!(
            &bytes[at..at + 8],
            &data[off..off + 8],
            "page {:#x} differs from the input",
            r.start
        );
        at += (r.pages as usize) * PAGE_SIZE;
        pages += r.pages;
    }
    pages
}

/// Drops a file from the page cache, so the next read comes from the disk.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
        // SAFETY: a plain advice call on an fd we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// A crstream child run to completion, with its resource usage.
struct Run {
    ok: bool,
    wall: Duration,
    cpu: Duration,
    maxrss_kib: i64,
    stderr: String,
}

/// Waits for a child with wait4: (wait status, its peak RSS in KiB, its CPU time).
fn wait4(pid: i32) -> (i32, i64, Duration) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return (status, ru.ru_maxrss, tv(ru.ru_utime) + tv(ru.ru_stime));
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
}

/// Argument that turns this program into the launcher of one measured child.
const MEASURE_FLAG: &str = "--exec-measured";

/// Launcher mode: `bench_stream --exec-measured RESULT PROGRAM ARGS...` runs
/// PROGRAM and writes "status maxrss_kib wall_ns cpu_ns" to RESULT.
///
/// Why: exec records the peak RSS of the mm it replaces in the new program's
/// ru_maxrss, and a child spawned from this bench starts on the bench's mm
/// (vfork) or a copy of it (fork), which holds the whole input buffer. So
/// children are started from this small, freshly exec'd launcher instead.
fn exec_measured(args: &[std::ffi::OsString]) -> ! {
    let [result, program, rest @ ..] = args else {
        die("--exec-measured RESULT PROGRAM [ARGS...]")
    };
    let started = Instant::now();
    let child = Command::new(program)
        .args(rest)
        .spawn()
        .unwrap_or_else(|e| die(&format!("starting {program:?}: {e}")));
    let (status, maxrss, cpu) = wait4(child.id() as i32);
    let wall = started.elapsed().as_nanos();
    let cpu = cpu.as_nanos();
    std::fs::write(result, format!("{status} {maxrss} {wall} {cpu}")).expect("writing the result");
    std::process::exit(0)
}

/// Runs a command through the launcher (see [`exec_measured`]) to get its
/// own peak RSS and wall time.
fn run_measured(cmd: Command, stdin: Stdio, stdout: Stdio, scratch: &Path) -> Run {
    let err_path = scratch.join("child.stderr");
    let result = scratch.join("child.result");
    let _ = std::fs::remove_file(&result);
    let mut launcher = Command::new(std::env::current_exe().expect("current_exe"));
    launcher
        .arg(MEASURE_FLAG)
        .arg(&result)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => launcher.env(k, v),
            None => launcher.env_remove(k),
        };
    }
    launcher
        .stdin(stdin)
        .stdout(stdout)
        .stderr(std::fs::File::create(&err_path).unwrap());
    let child = launcher
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    wait4(child.id() as i32);
    drop(child);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let text = std::fs::read_to_string(&result)
        .unwrap_or_else(|e| panic!("no result from the launcher ({e}): {stderr}"));
    let f: Vec<i64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("launcher result"))
        .collect();
    let status = f[0] as i32;
    Run {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        wall: Duration::from_nanos(f[2] as u64),
        cpu: Duration::from_nanos(f[3] as u64),
        maxrss_kib: f[1],
        stderr,
    }
}

fn dev_null_out() -> Stdio {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null")
        .into()
}

/// A local S3 server (moto) this bench started; stopped by PID on drop,
/// even when the bench panics.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start(log: &Path) -> Res<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(log)?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting moto_server: {e}"))?;
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let t = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Some(st) = server.child.try_wait()? {
                return Err(format!("moto_server exited: {st}").into());
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err("moto_server did not listen within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// One raw HTTP request (moto checks no signatures); returns the status.
    fn http(&self, method: &str, target: &str) -> Res<u16> {
        let host = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host)?;
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let head = String::from_utf8_lossy(&raw);
        Ok(head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling the server this guard started, by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; it ignored SIGTERM.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where upload and download go.
struct Target {
    loc: &'static str,
    url: String,
    env: Vec<(&'static str, String)>,
    /// The server behind the URL, whose CPU time is part of the work.
    server_pid: i32,
}

/// One measured phase: wall time, CPU time of this process, and busy CPU
/// time of the whole machine.
struct Meter {
    started: Instant,
    cpu: Duration,
    busy: Duration,
}

struct Measured {
    wall: Duration,
    /// Cores this process kept busy on average.
    cores: f64,
    /// Share (%) of all CPUs used by anything else meanwhile.
    others: f64,
}

impl Meter {
    fn start() -> Self {
        Self {
            cpu: cpu_time(),
            busy: machine_busy(),
            started: Instant::now(),
        }
    }

    /// `children`: CPU time of processes that are part of the measured work.
    fn stop(&self, children: Duration) -> Measured {
        let wall = self.started.elapsed();
        let ours = cpu_time() - self.cpu;
        Measured {
            wall,
            cores: cores(ours, wall),
            others: others_pct(machine_busy() - self.busy, ours + children, wall),
        }
    }
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == MEASURE_FLAG) {
        exec_measured(&args[1..]);
    }
    let o = parse_args();
    let crstream = crstream_bin();
    let idle = || {
        if o.wait_idle > 0 {
            wait_idle("bench_stream", Duration::from_secs(o.wait_idle));
        }
    };
    let base = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("crstream-bench-stream-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).expect("scratch directory");
    let dir = scratch.0.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // The input is generated once, outside any timing.
    let size = (o.size_mib << 20).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    eprintln!(
        "bench_stream: generating {} MiB of memory-like pages",
        o.size_mib
    );
    let mut data = vec![0u8; size];
    fill_memory_like(&mut data, 0x5eed);
    let data = data;
    let chunk = (o.chunk_kib << 10).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    if !o.json {
        println!(
            "crstream bench_stream: {} MiB of memory-like pages, {} workers, {} KiB per pages() call.\n\
MB/s: 10^6 B/s of raw data; cores: CPU time / wall time of the measured process; \
others %: CPU share used by anything else meanwhile (high = figures not trustworthy).",
            o.size_mib, o.workers, o.chunk_kib
        );
    }

    // --- writer ---
    let mut t = Table::new(
        "writer (StreamWriter, in process; +RSS: peak RSS above the input buffer)",
        &[
            "codec", "dest", "secs", "MB/s", "cores", "others %", "out MiB", "ratio", "frames",
            "+RSS MiB",
        ],
        o.json,
    );
    let mut images: Vec<(Codec, PathBuf, u64)> = Vec::new();
    for &codec in &o.codecs {
        let wopts = WriterOptions {
            codec,
            level: 1,
            workers: o.workers,
            writer_name: "crstream bench_stream".into(),
            ..Default::default()
        };
        for dest in ["discard", "file"] {
            idle();
            eprintln!("bench_stream: writer {} -> {dest}", codec_name(codec));
            let path = dir.join(format!("image-{}.crs", codec_name(codec)));
            let rss0 = status_kib("VmRSS");
            reset_peak_rss();
            let meter = Meter::start();
            let summary = rt.block_on(async {
                if dest == "discard" {
                    write_stream(tokio::io::sink(), wopts.clone(), &data, chunk)
                        .await
                        .map(|(_, s)| s)
                } else {
                    // crstream's file sink, as `crstream dump -o FILE` uses it.
                    let sink = open_sink(path.to_str().unwrap(), &SinkOptions::default()).await?;
                    let (sink, s) = write_stream(sink, wopts.clone(), &data, chunk).await?;
                    sink.commit().await?;
                    Ok::<WriteSummary, BoxError>(s)
                }
            });
            let m = meter.stop(Duration::ZERO);
            let extra = extra_peak_mib(rss0);
            let s = summary.unwrap_or_else(|e| panic!("writer {}: {e}", codec_name(codec)));
            assert_eq!(s.pages as usize, size / PAGE_SIZE, "pages written");
            let ratio = size as f64 / s.bytes as f64;
            t.add(
                vec![
                    codec_name(codec).into(),
                    dest.into(),
                    format!("{:.3}", m.wall.as_secs_f64()),
                    format!("{:.0}", mb_s(size as u64, m.wall)),
                    format!("{:.2}", m.cores),
                    format!("{:.0}", m.others),
                    format!("{:.1}", mib(s.bytes)),
                    format!("{ratio:.2}"),
                    s.frames.to_string(),
                    format!("{extra:.0}"),
                ],
                serde_json::json!({
                    "bench": "writer", "codec": codec_name(codec), "dest": dest,
                    "raw_bytes": size, "out_bytes": s.bytes, "secs": m.wall.as_secs_f64(),
                    "mb_per_s": mb_s(size as u64, m.wall), "ratio": ratio, "frames": s.frames,
                    "workers": o.workers, "extra_peak_rss_mib": extra, "cores": m.cores,
                    "others_pct": m.others,
                }),
            );
            if dest == "file" {
                images.push((codec, path, s.bytes));
            }
        }
    }
    t.print();

    // --- readers ---
    let mut t = Table::new(
        if o.cold {
            "readers (in process; file evicted from the page cache before each read)"
        } else {
            "readers (in process; file in the page cache)"
        },
        &[
            "codec", "reader", "secs", "MB/s", "cores", "others %", "pages", "+RSS MiB",
        ],
        o.json,
    );
    for (codec, path, _) in &images {
        for reader in [
            "sequential/file-source",
            "sequential/tokio-file",
            "random/batches",
        ] {
            idle();
            eprintln!("bench_stream: reader {} {reader}", codec_name(*codec));
            if o.cold {
                evict(path);
            }
            let p = path.to_str().unwrap().to_string();
            let workers = o.workers;
            let rss0 = status_kib("VmRSS");
            reset_peak_rss();
            let meter = Meter::start();
            let pages = rt.block_on(async {
                let mut pages = 0u64;
                if reader.starts_with("sequential") {
                    let r: Box<dyn tokio::io::AsyncRead + Send + Unpin> =
                        if reader.ends_with("file-source") {
                            // What `crstream restore -i FILE` reads through.
                            open_source(&p)
                                .await?
                                .into_async_read(ReadOptions::default())
                        } else {
                            Box::new(tokio::io::BufReader::with_capacity(
                                1 << 20,
                                tokio::fs::File::open(&p).await?,
                            ))
                        };
                    let mut items = SequentialReader::open(r).await?.items(workers);
                    while let Some(item) = items.next().await {
                        if let Item::Pages { batch, .. } = item? {
                            pages += check_batch(&data, &batch.runs, &batch.data);
                        }
                    }
                } else {
                    let src = open_source(&p).await?.ranged().expect("a file is ranged");
                    let rr = RandomReader::open(Arc::new(Ranged(src))).await?;
                    let mut batches = rr.page_batches(workers * 2);
                    while let Some(b) = batches.next().await {
                        let b = b?;
                        pages += check_batch(&data, &b.runs, &b.data);
                    }
                }
                Ok::<u64, BoxError>(pages)
            });
            let m = meter.stop(Duration::ZERO);
            let extra = extra_peak_mib(rss0);
            let pages = pages.unwrap_or_else(|e| panic!("{reader} {p}: {e}"));
            assert_eq!(pages as usize, size / PAGE_SIZE, "pages read");
            t.add(
                vec![
                    codec_name(*codec).into(),
                    reader.into(),
                    format!("{:.3}", m.wall.as_secs_f64()),
                    format!("{:.0}", mb_s(size as u64, m.wall)),
                    format!("{:.2}", m.cores),
                    format!("{:.0}", m.others),
                    pages.to_string(),
                    format!("{extra:.0}"),
                ],
                serde_json::json!({
                    "bench": "reader", "codec": codec_name(*codec), "reader": reader,
                    "raw_bytes": size, "secs": m.wall.as_secs_f64(),
                    "mb_per_s": mb_s(size as u64, m.wall), "pages": pages, "cold": o.cold,
                    "workers": workers, "extra_peak_rss_mib": extra, "cores": m.cores,
                    "others_pct": m.others,
                }),
            );
        }
    }
    t.print();

    // --- the crstream binary: inspect, upload, download ---
    let mut t = Table::new(
        "crstream binary (separate process; peak RSS from wait4; S3 cores include moto's)",
        &[
            "command",
            "location",
            "secs",
            "MB/s",
            "cores",
            "others %",
            "MiB",
            "peak RSS MiB",
        ],
        o.json,
    );
    // `helper`: CPU time of a server the command talked to (moto).
    let run = |t: &mut Table, cmd: Command, stdin: Stdio, what: (&str, &str, u64), helper: i32| {
        let (name, loc, bytes) = what;
        idle();
        eprintln!("bench_stream: crstream {name} {loc}");
        let helper_cpu = || {
            if helper > 0 {
                proc_cpu(helper)
            } else {
                Duration::ZERO
            }
        };
        let h0 = helper_cpu();
        let meter = Meter::start();
        let r = run_measured(cmd, stdin, dev_null_out(), &dir);
        let h = helper_cpu() - h0;
        let m = meter.stop(r.cpu + h);
        assert!(r.ok, "crstream {name} {loc} failed: {}", r.stderr);
        let busy = cores(r.cpu + h, r.wall);
        t.add(
            vec![
                name.into(),
                loc.into(),
                format!("{:.3}", r.wall.as_secs_f64()),
                format!("{:.0}", mb_s(bytes, r.wall)),
                format!("{busy:.2}"),
                format!("{:.0}", m.others),
                format!("{:.1}", mib(bytes)),
                format!("{:.1}", r.maxrss_kib as f64 / 1024.0),
            ],
            serde_json::json!({
                "bench": "crstream", "command": name, "location": loc, "bytes": bytes,
                "secs": r.wall.as_secs_f64(), "mb_per_s": mb_s(bytes, r.wall),
                "peak_rss_kib": r.maxrss_kib, "cores": busy, "others_pct": m.others,
            }),
        );
    };
    for (codec, path, bytes) in &images {
        if o.cold {
            evict(path);
        }
        let mut cmd = Command::new(&crstream);
        cmd.args(["inspect", "--json"]).arg(path);
        let name = format!("inspect ({})", codec_name(*codec));
        run(&mut t, cmd, Stdio::null(), (&name, "file", *bytes), 0);
    }
    for (_, path, _) in images.drain(..) {
        let _ = std::fs::remove_file(path);
    }

    // Upload and download copy bytes: any content does; use the input.
    let tsize = (o.transfer_mib << 20).min(size) as u64;
    let src = dir.join("transfer.bin");
    std::fs::write(&src, &data[..tsize as usize]).expect("writing the transfer file");
    drop(data);
    let mut targets = vec![Target {
        loc: "file",
        url: dir.join("uploaded.bin").to_str().unwrap().into(),
        env: Vec::new(),
        server_pid: 0,
    }];
    let server = if o.s3 {
        match S3Server::start(&dir.join("moto.log")) {
            Ok(s) => {
                let status = s.http("PUT", "/bench").expect("creating the bucket");
                assert_eq!(status, 200, "creating bucket: HTTP {status}");
                let pid = s.child.id() as i32;
                targets.push(Target {
                    loc: "s3 (moto)",
                    url: "s3://bench/image.bin".into(),
                    env: s.env(),
                    server_pid: pid,
                });
                Some(s)
            }
            Err(e) => {
                eprintln!("bench_stream: skipping S3: {e}");
                None
            }
        }
    } else {
        None
    };
    for Target {
        loc,
        url,
        env,
        server_pid,
    } in &targets
    {
        if o.cold {
            evict(&src);
        }
        let mut cmd = Command::new(&crstream);
        cmd.args(["upload", url]).envs(env.iter().cloned());
        let input = std::fs::File::open(&src).expect("transfer file");
        run(
            &mut t,
            cmd,
            input.into(),
            ("upload", loc, tsize),
            *server_pid,
        );
        if *loc == "file" && o.cold {
            evict(Path::new(url));
        }
        let mut cmd = Command::new(&crstream);
        cmd.args(["download", url]).envs(env.iter().cloned());
        run(
            &mut t,
            cmd,
            Stdio::null(),
            ("download", loc, tsize),
            *server_pid,
        );
    }
    drop(server);
    t.print();
}
