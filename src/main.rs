//! The crstream command: argument parsing, progress and logging; wires the
//! engine (crstream-core), the stream format (crstream-streamer) and the
//! storage backends (crstream-backends) together. No engine logic here.

mod cli;
mod detach;
mod engine_cmd;
mod pipe_cmd;
mod progress;
mod run;
mod worker;
mod working_set;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        // The engine drives ptrace from one thread; it builds its own runtime
        // for the stream side so that thread stays the tracer.
        Command::Dump(args) => engine_cmd::dump(args),
        Command::Restore(args) => engine_cmd::restore(args),
        Command::Check(args) => engine_cmd::check(args),
        Command::Upload(args) => run_async(pipe_cmd::upload(args)),
        Command::Download(args) => run_async(pipe_cmd::download(args)),
        Command::Inspect(args) => run_async(pipe_cmd::inspect(args)),
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("crstream: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes `text` to stdout at once. A reader that stopped reading (`| head`)
/// is no failure: the output is only for it.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits for our child `pid` to end; its exit code as a shell shows it
/// (128 + the signal that killed it).
pub fn exit_code_of(pid: i32) -> std::io::Result<u8> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        (128 + libc::WTERMSIG(status)) as u8
    })
}

/// Runs a command on a fresh runtime. The runtime is shut down without
/// waiting for blocking reads of stdin, which never end while the writer on
/// the other side of the pipe keeps it open (after Ctrl-C, for example).
fn run_async<T>(fut: impl std::future::Future<Output = T>) -> T {
    let rt = runtime();
    let out = rt.block_on(fut);
    rt.shutdown_background();
    out
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
