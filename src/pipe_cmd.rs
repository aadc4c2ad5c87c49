//! upload, download and inspect: byte-transparent copies between stdio and
//! locations, and a verifying summary of a stream.

use crate::cli::{DownloadArgs, InspectArgs, SinkArgs, SourceArgs, UploadArgs};
use crate::progress::{self, CountingReader, CountingWriter, human_bytes};
use anyhow::{Context, Result};
use crstream_backends::{ReadOptions, SinkOptions, open_sink, open_source};
use crstream_streamer::SequentialReader;
use crstream_streamer::inspect::{Inspector, Report};
use futures::StreamExt;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Exit codes of a copy ended by a signal, as a shell reports them.
const EXIT_SIGINT: u8 = 130;
const EXIT_SIGTERM: u8 = 143;

impl SinkArgs {
    pub fn options(&self) -> SinkOptions {
        SinkOptions {
            part_size: self.part_size.max(1) << 20,
            parts_in_flight: self.parts_in_flight.max(1),
        }
    }
}

impl SourceArgs {
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            chunk_size: self.chunk_size.max(1) << 20,
            in_flight: self.reads_in_flight.max(1),
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives, with the exit code to use.
pub async fn interrupted() -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = int.recv() => EXIT_SIGINT,
        _ = term.recv() => EXIT_SIGTERM,
    }
}

/// Copies `from` into `to` with a large buffer; returns bytes copied.
async fn copy(
    from: impl AsyncRead + Unpin,
    to: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<u64> {
    let mut from = BufReader::with_capacity(1 << 20, from);
    tokio::io::copy_buf(&mut from, to).await
}

pub async fn upload(args: UploadArgs) -> Result<u8> {
    let started = Instant::now();
    let sink = open_sink(&args.dest, &args.sink.options()).await?;
    let bar = progress::bar("upload", None, false);
    let mut out = CountingWriter {
        inner: sink,
        bar: bar.clone(),
    };
    // A signal or an error aborts the upload: nothing partial stays at DEST.
    let outcome = tokio::select! {
        r = copy(tokio::io::stdin(), &mut out) => Ok(r),
        code = interrupted() => Err(code),
    };
    bar.finish_and_clear();
    let sink = out.inner;
    match outcome {
        Ok(Ok(_)) => {
            let bytes = sink.commit().await?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                "uploaded {} to {} in {secs:.2}s",
                human_bytes(bytes),
                args.dest
            );
            if args.json {
                crate::print_out(&format!(
                    "{}\n",
                    serde_json::json!({ "url": args.dest, "bytes": bytes, "seconds": secs })
                ))?;
            }
            Ok(0)
        }
        Ok(Err(e)) => {
            let url = sink.url().to_string();
            if let Err(abort) = sink.abort().await {
                tracing::warn!("aborting the upload to {url}: {abort}");
            }
            Err(anyhow::Error::new(e).context(format!("uploading to {url}")))
        }
        Err(code) => {
            let url = sink.url().to_string();
            sink.abort()
                .await
                .with_context(|| format!("aborting the upload to {url}"))?;
            eprintln!("crstream: upload to {url} interrupted; nothing was written there");
            Ok(code)
        }
    }
}

pub async fn download(args: DownloadArgs) -> Result<u8> {
    let source = open_source(&args.src).await?;
    let bar = progress::bar("download", source.size(), false);
    let reader = CountingReader {
        inner: source.into_async_read(args.source.options()),
        bar: bar.clone(),
    };
    let mut stdout = tokio::io::stdout();
    let outcome = tokio::select! {
        r = copy(reader, &mut stdout) => Ok(r),
        code = interrupted() => Err(code),
    };
    bar.finish_and_clear();
    match outcome {
        Ok(r) => {
            r.with_context(|| format!("downloading {}", args.src))?;
            stdout.flush().await.context("writing to stdout")?;
            Ok(0)
        }
        Err(code) => Ok(code),
    }
}

pub async fn inspect(args: InspectArgs) -> Result<u8> {
    let source = open_source(&args.src).await?;
    let reader = source.into_async_read(args.source.options());
    let report = inspect_stream(reader)
        .await
        .with_context(|| format!("inspecting {}", args.src))?;
    let text = match args.json {
        true => serde_json::to_string_pretty(&report)? + "\n",
        false => report_text(&report),
    };
    crate::print_out(&text)?;
    Ok(0)
}

/// Reads a whole stream, verifying it, into a report.
async fn inspect_stream(reader: impl AsyncRead + Unpin + Send + 'static) -> Result<Report> {
    let seq = SequentialReader::open(reader).await?;
    let mut inspector = Inspector::new(seq.options().clone(), seq.header_len());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut frames = seq.frames(workers);
    while let Some(frame) = frames.next().await {
        inspector.feed(frame?)?;
    }
    Ok(inspector.finish()?)
}

/// The report as `inspect` prints it.
fn report_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "crstream image, format {}, written by {} on {}",
        r.format_version,
        r.writer,
        progress::utc_time(r.created_unix_ms)
    );
    let _ = writeln!(
        out,
        "  {} stored, {} raw (ratio {:.2}), {} frames; codec {} level {}, page frames up to {}",
        human_bytes(r.total_bytes),
        human_bytes(r.raw_bytes),
        r.compression_ratio,
        r.frames,
        r.default_codec,
        r.codec_level,
        human_bytes(r.max_page_frame_bytes as u64)
    );
    if let Some(inv) = &r.inventory {
        let _ = writeln!(
            out,
            "  dumped by crstream {} on {} ({} {}), root pid {}, records version {}",
            inv.crstream_version,
            inv.hostname,
            inv.kernel_release,
            inv.arch,
            inv.root_pid,
            inv.records_version
        );
        if inv.pid_namespace {
            let _ = writeln!(
                out,
                "  from a PID namespace of its own: PIDs as seen inside it"
            );
        }
        for (name, value) in &inv.labels {
            let _ = writeln!(out, "  label {name}={value}");
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>5}  {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>6}  NAME",
        "ID", "KIND", "PID", "TID", "FRAMES", "RECORDS", "RAW", "STORED", "RATIO"
    );
    for s in &r.streams {
        let _ = writeln!(
            out,
            "{:>5}  {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>6.2}  {}",
            s.id,
            s.kind,
            s.pid,
            s.tid,
            s.frames,
            s.records,
            human_bytes(s.raw_bytes),
            human_bytes(s.stored_bytes),
            s.compression_ratio,
            s.name
        );
    }
    let p = &r.pages;
    out.push('\n');
    let _ = writeln!(
        out,
        "pages: {} pages ({}) in {} ranges, {} frames, {} process(es)",
        p.pages,
        human_bytes(p.bytes),
        p.ranges,
        p.frames,
        p.processes.len()
    );
    for proc_pages in &p.processes {
        let _ = writeln!(
            out,
            "  pid {:>7}: {:>9} pages in {:>6} ranges, {:#x}..{:#x}",
            proc_pages.pid,
            proc_pages.pages,
            proc_pages.ranges,
            proc_pages.lowest_address,
            proc_pages.highest_address
        );
    }
    out
}
