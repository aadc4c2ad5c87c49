//! dump, restore and check: wire the engine to streams and locations.
//!
//! The engine drives ptrace and must stay on this (the main) thread; the
//! stream side runs on a tokio runtime and is reached through the
//! streamer's blocking adapters, which must not be used inside the runtime.

use crate::cli::{CheckArgs, DumpArgs, RestoreArgs};
use crate::progress::human_bytes;
use anyhow::{Context, Result, bail};
use crstream_backends::{open_sink, open_source};
use crstream_streamer::{BlockingItems, SequentialReader, StreamWriter, WriterOptions};
use std::io::IsTerminal;

pub fn dump(args: DumpArgs) -> Result<u8> {
    let to_stdout = args.output == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write a binary image to a terminal: use -o FILE or redirect stdout");
    }
    let rt = crate::runtime();
    let sink = rt
        .block_on(open_sink(&args.output, &args.sink.options()))
        .with_context(|| format!("opening {}", args.output))?;
    let wopts = WriterOptions {
        codec: args.compress.codec(),
        level: args.level,
        writer_name: format!("crstream {}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let mut writer = {
        let _in_rt = rt.enter();
        StreamWriter::new(sink, wopts)
    };
    let opts = crstream_core::DumpOptions {
        pid: args.pid,
        leave_running: args.leave_running,
    };
    // Outside the runtime: blocking() uses blocking sends.
    let dumped = match crstream_core::dump(&opts, &mut writer.blocking()) {
        Ok(d) => d,
        Err(e) => {
            if let Ok((sink, _)) = rt.block_on(writer.finish()) {
                let _ = rt.block_on(sink.abort());
            }
            return Err(anyhow::Error::new(e).context(format!("dumping pid {}", args.pid)));
        }
    };
    // The process stays frozen until the image is complete and committed;
    // if that fails, dropping `dumped` lets it run on unharmed.
    let stored = rt.block_on(async {
        let (sink, summary) = writer.finish().await.context("finishing the image")?;
        let written = sink
            .commit()
            .await
            .with_context(|| format!("committing {}", args.output))?;
        anyhow::Ok(written.max(summary.bytes))
    });
    let written = match stored {
        Ok(n) => n,
        Err(e) => {
            drop(dumped);
            return Err(e.context(format!("pid {} was left running", args.pid)));
        }
    };
    let stats = dumped.finish(!args.leave_running);
    eprintln!(
        "crstream: dumped pid {} ({} threads): {} pages ({}), {} written, frozen {:.1} ms, total {:.1} ms",
        args.pid,
        stats.threads,
        stats.pages,
        human_bytes(stats.page_bytes),
        human_bytes(written),
        stats.frozen.as_secs_f64() * 1e3,
        stats.total.as_secs_f64() * 1e3,
    );
    if args.json && !to_stdout {
        let j = serde_json::json!({
            "pid": args.pid,
            "threads": stats.threads,
            "pages": stats.pages,
            "page_bytes": stats.page_bytes,
            "bytes_written": written,
            "frozen_ms": stats.frozen.as_secs_f64() * 1e3,
            "total_ms": stats.total.as_secs_f64() * 1e3,
            "leave_running": args.leave_running,
        });
        println!("{j}");
    }
    Ok(0)
}

pub fn restore(args: RestoreArgs) -> Result<u8> {
    let rt = crate::runtime();
    let ropts = args.source.options();
    let reader = rt.block_on(async {
        let source = open_source(&args.input)
            .await
            .with_context(|| format!("opening {}", args.input))?;
        SequentialReader::open(source.into_async_read(ropts))
            .await
            .with_context(|| format!("reading {}", args.input))
    })?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let items = {
        let _in_rt = rt.enter();
        reader.items(workers)
    };
    let mut source = BlockingItems::new(items, rt.handle().clone());
    let restored = crstream_core::restore(&mut source, &crstream_core::RestoreOptions::new())
        .with_context(|| format!("restoring from {}", args.input))?;
    if args.detach {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "pid": restored.pid, "tids": restored.tids })
            );
        } else {
            println!("{}", restored.pid);
        }
        return Ok(0);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "pid": restored.pid, "tids": restored.tids })
        );
    }
    drop(rt);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(restored.pid, &mut status, 0) };
        if r == restored.pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context(format!("waiting for restored pid {}", restored.pid));
        }
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status) as u8)
    } else {
        Ok((128 + libc::WTERMSIG(status)) as u8)
    }
}

pub fn check(args: CheckArgs) -> Result<u8> {
    let checks = crstream_core::check();
    let missing = checks.iter().any(|c| c.required && !c.ok);
    if args.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| serde_json::json!({ "name": c.name, "required": c.required, "ok": c.ok, "detail": c.detail }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "ok": !missing, "features": list })
        );
    } else {
        for c in &checks {
            let state = match (c.ok, c.required) {
                (true, _) => "ok",
                (false, true) => "MISSING",
                (false, false) => "missing (optional)",
            };
            println!("{:<60} {:<20} {}", c.name, state, c.detail);
        }
        if missing {
            println!("some required features are missing: dump/restore will not work here");
        }
    }
    Ok(if missing { 1 } else { 0 })
}
