//! dump, restore and check: wire the engine to streams and locations.
//!
//! The engine drives ptrace and must stay on this (the main) thread; the
//! stream side runs on a tokio runtime and is reached through the
//! streamer's blocking adapters, which must not be used inside the runtime.

use crate::cli::{CheckArgs, DumpArgs, RestoreArgs};
use crate::progress::human_bytes;
use anyhow::{Context, Result, bail};
use crstream_backends::{open_sink, open_source};
use crstream_streamer::{
    BlockingItems, MappedRange, Mapping, PageBatch, RandomReader, RangeRead, SequentialReader,
    StreamWriter, WriterOptions,
};
use std::io::IsTerminal;

pub fn dump(args: DumpArgs) -> Result<u8> {
    let to_stdout = args.output == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write a binary image to a terminal: use -o FILE or redirect stdout");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = std::time::Duration::from_secs_f64(args.timeout);
    // Before any thread exists: from here on this is the worker, which a
    // signal to the crstream command interrupts instead of killing.
    let (interrupt, handoff) = crate::worker::split(args.pid)?;
    let pid = args.pid;
    let rt = crate::runtime();
    let sink = match rt.block_on(bounded(
        open_sink(&args.output, &args.sink.options()),
        timeout,
        &interrupt,
    )) {
        Ok(Ok(sink)) => sink,
        // Nothing was touched yet: the same words as any interrupted dump.
        _ if interrupt.raised() => return Err(interrupted(pid, &interrupt)),
        Ok(Err(e)) => return Err(e).with_context(|| format!("opening {}", args.output)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", args.output)),
    };
    let wopts = WriterOptions {
        codec: args.compress.codec(sink.is_local_file()),
        level: args.level,
        writer_name: format!("crstream {}", env!("CARGO_PKG_VERSION")),
        stall_timeout: Some(timeout),
        interrupt: Some(interrupt.flag()),
        ..Default::default()
    };
    let mut writer = {
        let _in_rt = rt.enter();
        StreamWriter::new(sink, wopts)
    };
    let opts = crstream_core::DumpOptions {
        pid,
        leave_running: args.leave_running,
        live: args.leave_running && !args.no_live,
        shell_job: args.shell_job,
        tcp: if args.tcp_established {
            crstream_core::TcpMode::Established
        } else if args.tcp_close {
            crstream_core::TcpMode::Close
        } else {
            crstream_core::TcpMode::Refuse
        },
        ext_unix: args.ext_unix_sk,
        external_pipes: args
            .external
            .iter()
            .filter_map(|e| match *e {
                crate::cli::External::Pipe(inode) => Some(inode),
                _ => None,
            })
            .collect(),
        external_ttys: args
            .external
            .iter()
            .filter_map(|e| match *e {
                crate::cli::External::Tty(rdev, dev) => Some((rdev, dev)),
                _ => None,
            })
            .collect(),
        skip_in_flight: args.skip_in_flight,
        interrupt: Some(interrupt.flag()),
        labels: args.label.clone(),
        handoff: Some(handoff),
    };
    // Outside the runtime: blocking() uses blocking sends.
    let dumped = match crstream_core::dump(&opts, &mut writer.blocking()) {
        Ok(d) => d,
        Err(e) => {
            discard(&rt, writer, timeout);
            let e = anyhow::Error::new(e);
            return Err(if interrupt.raised() {
                interrupted(pid, &interrupt)
            } else {
                // The engine's errors name the process at fault.
                e.context(dump_failed(pid))
            });
        }
    };
    // The process stays frozen until the image is complete and committed;
    // if that fails, dropping `dumped` lets it run on unharmed.
    let stored = rt.block_on(async {
        let (sink, summary) = match bounded(writer.finish(), timeout, &interrupt).await {
            Ok(r) => r.context("finishing the image")?,
            Err(e) => return Err(e),
        };
        let committed = if args.if_absent {
            bounded(sink.commit_if_absent(), timeout, &interrupt).await?
        } else {
            bounded(sink.commit(), timeout, &interrupt).await?.map(Some)
        }
        .with_context(|| format!("committing {}", args.output))?;
        anyhow::Ok(committed.map(|n| n.max(summary.bytes)))
    });
    let written = match stored {
        Ok(Some(n)) => n,
        Ok(None) => {
            // --if-absent: another image is there; this one is not needed
            // and the process runs on.
            let stats = dumped.finish(false);
            drop(rt);
            eprintln!(
                "crstream: {} exists already: nothing written; pid {pid} runs on",
                args.output
            );
            if args.json {
                let j = serde_json::json!({
                    "pid": pid,
                    "created": false,
                    "bytes_written": 0,
                    "frozen_ms": stats.frozen.as_secs_f64() * 1e3,
                    "total_ms": stats.total.as_secs_f64() * 1e3,
                });
                crate::print_out(&format!("{j}\n"))?;
            }
            return Ok(0);
        }
        Err(e) => {
            drop(dumped);
            // Interrupted while the image was finished or committed: said
            // as at any other moment.
            return Err(if interrupt.raised() {
                interrupted(pid, &interrupt)
            } else {
                e.context(dump_failed(pid))
            });
        }
    };
    let stats = dumped.finish(!args.leave_running);
    drop(rt);
    eprintln!(
        "crstream: dumped pid {} ({} processes, {} threads): {} pages ({}), {} written, frozen {:.1} ms{}, total {:.1} ms",
        pid,
        stats.processes,
        stats.threads,
        stats.pages,
        human_bytes(stats.page_bytes),
        human_bytes(written),
        stats.frozen.as_secs_f64() * 1e3,
        if stats.live { " (live)" } else { "" },
        stats.total.as_secs_f64() * 1e3,
    );
    if let Some(lock) = &stats.net_lock {
        eprintln!(
            "crstream: its TCP connections stay locked away (nftables table inet {lock}) until it is restored"
        );
    }
    if args.json && !to_stdout {
        let j = serde_json::json!({
            "pid": pid,
            "processes": stats.processes,
            "pids": stats.pids,
            "threads": stats.threads,
            "pages": stats.pages,
            "page_bytes": stats.page_bytes,
            "bytes_written": written,
            "frozen_ms": stats.frozen.as_secs_f64() * 1e3,
            "total_ms": stats.total.as_secs_f64() * 1e3,
            "leave_running": args.leave_running,
            "live": stats.live,
            "net_lock": stats.net_lock,
            "created": true,
        });
        crate::print_out(&format!("{j}\n"))?;
    }
    Ok(0)
}

/// `fut`, given up after `timeout` or once `interrupt` is raised.
fn interrupted(pid: i32, interrupt: &crate::worker::Interrupt) -> anyhow::Error {
    anyhow::anyhow!(
        "dump of pid {pid} interrupted ({}); it runs on",
        interrupt.why()
    )
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = T>,
    timeout: std::time::Duration,
    interrupt: &crate::worker::Interrupt,
) -> Result<T> {
    let watch = async {
        while !interrupt.raised() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, fut) => {
            r.map_err(|_| anyhow::anyhow!("the destination did not answer for {} s", timeout.as_secs_f64()))
        }
        () = watch => Err(anyhow::anyhow!("interrupted ({})", interrupt.why())),
    }
}

/// A dump that will not be finished: its stream is abandoned (no index, no
/// trailer) and its destination discarded (a temporary file removed, a
/// multipart upload aborted), each step bounded by `timeout`.
fn discard(
    rt: &tokio::runtime::Runtime,
    writer: StreamWriter<crstream_backends::Sink>,
    timeout: std::time::Duration,
) {
    rt.block_on(async {
        if let Ok(Some(sink)) = tokio::time::timeout(timeout, writer.abandon()).await
            && let Ok(Err(e)) = tokio::time::timeout(timeout, sink.abort()).await
        {
            tracing::warn!("discarding the unfinished image: {e}");
        }
    });
}

/// Ranged reads of a file or object, for the random-access reader.
struct ObjectRange(crstream_backends::ObjectReader);

impl RangeRead for ObjectRange {
    fn len(&self) -> u64 {
        self.0.size()
    }
    // The expansion of #[async_trait] (the binary does not depend on the
    // async-trait crate).
    fn read_range<'a, 'b>(
        &'a self,
        range: std::ops::Range<u64>,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<bytes::Bytes>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { self.0.read_range(range).await.map_err(Into::into) })
    }
}

/// Fetches page frames for the lazy phase from the engine's worker threads.
struct Fetcher {
    reader: RandomReader,
    handle: tokio::runtime::Handle,
    url: String,
    /// How the prefetch reads ahead, as one stream (an object store); None:
    /// it reads runs of frames with ranged reads (a local file, where those
    /// cost as little).
    read_ahead: Option<crstream_backends::ReadOptions>,
}

/// A storage failure (the network, the server, a timeout; even an object
/// missing while a server is replaced) is worth retrying, and names what
/// failed itself; a damaged or wrong frame does not heal.
fn fetch_error(url: &str, e: crstream_streamer::StreamError) -> crstream_core::FetchError {
    match e {
        crstream_streamer::StreamError::Io { err, .. } => {
            let s = err.to_string();
            crstream_core::FetchError {
                message: s
                    .strip_prefix(&format!("{url}: "))
                    .map_or(s.clone(), str::to_owned),
                retryable: true,
            }
        }
        e => crstream_core::FetchError {
            message: e.to_string(),
            retryable: false,
        },
    }
}

impl Fetcher {
    fn error(&self, e: crstream_streamer::StreamError) -> crstream_core::FetchError {
        fetch_error(&self.url, e)
    }
}

impl crstream_core::PageFetcher for Fetcher {
    fn fetch_run(
        &self,
        frames: &[(u64, u64)],
    ) -> std::result::Result<Vec<PageBatch>, crstream_core::FetchError> {
        // Only the read runs on the runtime; each frame is checked and
        // decompressed here, on the engine's fetch thread.
        let stored = self
            .handle
            .block_on(self.reader.stored_page_frames_at(frames))
            .map_err(|e| self.error(e))?;
        stored
            .into_iter()
            .map(|s| {
                self.reader
                    .page_batch_from_stored(s)
                    .map_err(|e| self.error(e))
            })
            .collect()
    }
    fn stream(
        &self,
        frames: &[(u64, u64)],
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Option<crstream_core::FrameStream> {
        let read = self.read_ahead?;
        let mut frames = self.reader.stored_page_frames_ahead(
            frames,
            read.chunk_size as u64,
            read.in_flight,
            &self.handle,
        );
        let (handle, url) = (self.handle.clone(), self.url.clone());
        // The lazy phase may end while a read is under way (the last
        // frames came through faults): it does not wait for it.
        Some(Box::new(std::iter::from_fn(move || {
            use futures::StreamExt;
            let stopped = async {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            handle.block_on(async {
                tokio::select! {
                    r = frames.next() => r.map(|r| r.map_err(|e| fetch_error(&url, e))),
                    () = stopped => None,
                }
            })
        })))
    }
    fn decode(
        &self,
        stored: crstream_streamer::StoredFrame,
    ) -> std::result::Result<PageBatch, crstream_core::FetchError> {
        self.reader
            .page_batch_from_stored(stored)
            .map_err(|e| self.error(e))
    }
    fn describe(&self) -> String {
        self.url.clone()
    }
}

fn env_ms(name: &str) -> Option<std::time::Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(std::time::Duration::from_millis)
}

fn lazy_options() -> crstream_core::LazyOptions {
    let mut o = crstream_core::LazyOptions::default();
    if let Some(d) = env_ms("CRSTREAM_LAZY_RETRY_MS") {
        o.retry_for = d;
    }
    // For tests only: slow the prefetch down so that faults are served
    // while most of the memory is still missing.
    if cfg!(debug_assertions)
        && let Some(d) = env_ms("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS")
    {
        o.prefetch_delay = d;
    }
    if cfg!(debug_assertions)
        && let Some(d) = env_ms("CRSTREAM_TEST_WORKING_SET_FOR_MS")
    {
        o.record_for = d;
    }
    o
}

fn restored_json(args: &RestoreArgs, restored: &crstream_core::Restored) -> serde_json::Value {
    // A detached restore that is not lazy leaves nothing behind: its PID
    // would soon name another process.
    let server = (args.lazy || !args.detach).then(std::process::id);
    serde_json::json!({
        "pid": restored.pid,
        "tids": restored.tids,
        "processes": restored.processes,
        // As the processes see themselves (inside the new PID namespace).
        "saved_pids": restored.saved_pids,
        "ns_init": restored.ns_init,
        // The crstream process the restored one depends on until it ends
        // (a lazy restore's server, or the restore waiting for it); null
        // when there is none.
        "server_pid": server,
    })
}

/// Prints the restored PID (or the JSON summary). An error means nobody
/// reads it any more (the command that started a detached restore is gone).
fn print_restored(args: &RestoreArgs, restored: &crstream_core::Restored) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", restored_json(args, restored))?;
    } else if args.detach {
        writeln!(out, "{}", restored.pid)?;
    }
    out.flush().context("printing the restored PID")
}

/// Waits for the restored process (our child) and returns its status;
/// then for the init of its PID namespace (our child too), which exits
/// with it.
fn wait_restored(restored: &crstream_core::Restored) -> Result<u8> {
    let pid = restored.pid;
    let code =
        crate::exit_code_of(pid).with_context(|| format!("waiting for restored pid {pid}"))?;
    if let Some(init) = restored.ns_init {
        crate::exit_code_of(init)
            .with_context(|| format!("waiting for the PID namespace's init {init}"))?;
    }
    Ok(code)
}

/// What a failed dump left: the process runs on, unless it ended meanwhile
/// (killed by someone else during the dump).
fn dump_failed(pid: i32) -> &'static str {
    match crstream_core::process_alive(pid) {
        true => "dump failed; the process was left running",
        false => "dump failed; the process ended during the dump",
    }
}

/// `restore --lazy`: metadata from a random-access reader, then the process
/// runs while its memory is served by userfaultfd.
fn restore_lazy(args: RestoreArgs) -> Result<u8> {
    // Before any thread exists. A shell job stays in the shell's session,
    // in the foreground: it keeps crstream until every page is in.
    let server = if args.detach && !args.shell_job {
        Some(crate::detach::split()?)
    } else {
        None
    };
    // Until every page is in, crstream must not die of Ctrl-C or SIGTERM
    // (the process would run on with missing memory): the lazy phase reads
    // these signals and kills the process instead. Blocked before the
    // runtime's threads exist, so that all of them inherit the mask.
    crstream_core::lazy::block_termination_signals();
    // One malloc arena for every thread: the fetch threads' large reads,
    // freed by other threads, would otherwise stay in arenas of their own
    // (a 1 GiB lazy restore from a file peaked at 175-203 MiB, with one
    // arena 113 MiB: what is in flight and no more). Before any thread.
    // SAFETY: mallopt only tunes this process's allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let rt = crate::runtime();
    let (opened, sidecar) = rt.block_on(async {
        let image = async {
            let source = open_source(&args.input)
                .await
                .with_context(|| format!("opening {}", args.input))?;
            let Some(ranged) = source.ranged() else {
                bail!("--lazy needs a file or object, not a pipe");
            };
            // A local file: its frames are views of its mapping (see
            // `restore`).
            let range: std::sync::Arc<dyn RangeRead> =
                match source.local_file().and_then(Mapping::of) {
                    Some(map) => std::sync::Arc::new(MappedRange(map)),
                    None => std::sync::Arc::new(ObjectRange(ranged.clone())),
                };
            let reader = RandomReader::open(range)
                .await
                .with_context(|| format!("reading {}", args.input))?;
            Ok((reader, ranged))
        };
        // The working set at the same time: no round trip of its own.
        let sidecar = async {
            match args.no_working_set {
                true => None,
                false => crate::working_set::fetch(&args.input).await,
            }
        };
        tokio::join!(image, sidecar)
    });
    let (reader, object) = opened?;
    // Only the metadata: pages come later, by frame.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let items = {
        let _in_rt = rt.enter();
        reader.metadata_items(workers)
    };
    let mut source = BlockingItems::new(items, rt.handle().clone());
    let mut lopts = lazy_options();
    let read_ahead = if object.is_local_file() {
        // Reads have no round trip to hide: half the window fills as fast
        // (measured: a 1 GiB lazy restore completes in the same time) and
        // keeps crstream's peak at ~70 MiB instead of ~120 MiB.
        lopts.window = 32 << 20;
        None
    } else if !lopts.prefetch_delay.is_zero() {
        // Tests slow the prefetch down: one frame per request, asked for
        // when it is due, so that a storage outage is met when it happens.
        Some(crstream_backends::ReadOptions {
            chunk_size: 1,
            in_flight: 1,
        })
    } else {
        // As a streaming restore reads an object (the same request size
        // and read-ahead): the lazy phase's throughput is held to it. It
        // costs about 20% less CPU than ranged reads of the same frames
        // waited for by worker threads.
        Some(crstream_backends::ReadOptions::default())
    };
    let fetcher = std::sync::Arc::new(Fetcher {
        reader: reader.clone(),
        handle: rt.handle().clone(),
        url: args.input.clone(),
        read_ahead,
    });
    let identity = reader.identity();
    if let Some(frames) = sidecar
        .as_deref()
        .and_then(|text| crate::working_set::parse(&args.input, text, identity))
    {
        tracing::info!(
            frames = frames.len(),
            "filling the recorded working set before the process runs"
        );
        lopts.working_set = frames;
    }
    let t0 = std::time::Instant::now();
    let (restored, session) = crstream_core::restore_lazy(
        &mut source,
        &restore_options(&args),
        &reader.index().pages,
        fetcher,
        &lopts,
    )
    .with_context(|| format!("restoring from {}", args.input))?;
    let resumed = t0.elapsed();
    print_restored(&args, &restored)?;
    if let Some(server) = &server {
        server.running(args.log.as_deref())?;
    }
    let mut served = session.serve(&lopts);
    if let Err(e) = &mut served
        && args.remove_if_damaged
        && e.frame_failed
        && let Some(removed) = rt.block_on(remove_if_damaged(&reader, &object))
    {
        e.reason.push_str(&format!("; {removed}"));
    }
    if let Ok(stats) = &served
        && !args.no_working_set
        && !stats.exited_early
    {
        rt.block_on(crate::working_set::record(
            &args.input,
            identity,
            &lopts.working_set,
            &stats.working_set,
        ));
    }
    drop(rt);
    crstream_core::lazy::unblock_termination_signals();
    let stats = match (served, &server) {
        (Ok(stats), _) => stats,
        (Err(e), Some(server)) => {
            server.report(&e.to_string());
            return Err(e.into());
        }
        (Err(e), None) => return Err(e.into()),
    };
    tracing::info!(
        pid = restored.pid,
        resumed_ms = resumed.as_secs_f64() * 1e3,
        all_in_ms = (resumed + stats.elapsed).as_secs_f64() * 1e3,
        frames = stats.frames,
        streamed = stats.streamed,
        pages = stats.pages_copied,
        faults = stats.faults,
        zero_pages = stats.zero_pages,
        "lazy restore complete"
    );
    if args.detach {
        return Ok(0);
    }
    wait_restored(&restored)
}

/// After a failed lazy restore: if the image itself is damaged (every frame
/// read again and checked), removes it unless it was replaced meanwhile, so
/// that the next `run --cache` stores a whole one. Says what it did.
async fn remove_if_damaged(
    reader: &RandomReader,
    object: &crstream_backends::ObjectReader,
) -> Option<String> {
    let damage = match reader.verify_all(4).await {
        Ok(_) | Err(crstream_streamer::StreamError::Io { .. }) => return None,
        Err(e) => e,
    };
    Some(match object.remove_if_unchanged().await {
        Ok(true) => format!("the image is damaged ({damage}) and was removed"),
        Ok(false) => format!("the image is damaged ({damage}); it was replaced meanwhile"),
        Err(e) => format!("the image is damaged ({damage}); removing it failed: {e}"),
    })
}

pub fn restore(args: RestoreArgs) -> Result<u8> {
    if args.lazy {
        return restore_lazy(args);
    }
    let rt = crate::runtime();
    let ropts = args.source.options();
    let reader = rt.block_on(async {
        let source = open_source(&args.input)
            .await
            .with_context(|| format!("opening {}", args.input))?;
        // A local file is read through a mapping: each page is then copied
        // once, from the page cache into the process.
        match source.local_file().and_then(Mapping::of) {
            Some(map) => SequentialReader::open_mapped(map).await,
            None => SequentialReader::open(source.into_async_read(ropts)).await,
        }
        .with_context(|| format!("reading {}", args.input))
    })?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let items = {
        let _in_rt = rt.enter();
        reader.items(workers)
    };
    let mut source = BlockingItems::new(items, rt.handle().clone());
    let restored = crstream_core::restore(&mut source, &restore_options(&args))
        .with_context(|| format!("restoring from {}", args.input))?;
    let _ = print_restored(&args, &restored);
    if args.detach {
        return Ok(0);
    }
    drop(rt);
    wait_restored(&restored)
}

fn restore_options(args: &RestoreArgs) -> crstream_core::RestoreOptions {
    let opts = args.inherit_fd.iter().fold(
        crstream_core::RestoreOptions::new()
            .with_shell_job(args.shell_job)
            .with_tcp_close(args.tcp_close)
            .with_skip_validation(args.skip_validation)
            .with_pidns(args.pidns)
            .with_detached(args.detach),
        |o, (fd, key)| o.with_inherit_fd(*fd, key.clone()),
    );
    args.require_label
        .iter()
        .fold(opts, |o, (name, value)| o.with_required_label(name, value))
}

pub fn check(args: CheckArgs) -> Result<u8> {
    let checks = crstream_core::check();
    let missing = checks.iter().any(|c| c.required && !c.ok);
    let mut text = String::new();
    if args.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| serde_json::json!({ "name": c.name, "required": c.required, "ok": c.ok, "detail": c.detail }))
            .collect();
        text = format!(
            "{}\n",
            serde_json::json!({ "ok": !missing, "features": list })
        );
    } else {
        for c in &checks {
            let state = match (c.ok, c.required) {
                (true, _) => "ok",
                (false, true) => "MISSING",
                (false, false) => "missing (optional)",
            };
            text += &format!("{:<60} {:<20} {}\n", c.name, state, c.detail);
        }
        if missing {
            text += "some required features are missing: dump/restore will not work here\n";
        }
    }
    crate::print_out(&text)?;
    Ok(if missing { 1 } else { 0 })
}
