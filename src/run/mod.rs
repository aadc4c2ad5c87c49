//! `crstream run --cache URL`: start a service warm from a checkpoint of
//! an earlier run, or cold (and checkpoint it once ready for the next
//! runs). The cache never fails the job: whatever goes wrong with it ends
//! in a warning and a cold start.
//!
//! Wiring only: the service starts in a PID namespace of its own
//! (`crstream_core::start_in_new_pid_namespace`), and the checkpoint and
//! the restore are `crstream dump` and `crstream restore` run as child
//! commands (their workers and servers, their errors, their cleanup).

mod key;
mod output;
pub mod ready;

use crate::cli::RunArgs;
use crate::progress::human_bytes;
use anyhow::{Context, Result, anyhow, bail};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The label of an image that holds its `run` cache key.
const KEY_LABEL: &str = "crstream.run.key";

/// A started service: cold (our child) or restored (an orphan that comes
/// to us, the subreaper, once the restore command ends).
struct Service {
    pid: i32,
    child: Option<std::process::Child>,
    follower: output::Follower,
    outputs: [PathBuf; 2],
}

/// What `run` says it did (stderr, and --json on stdout).
#[derive(Default)]
struct Report {
    hit: bool,
    key: String,
    url: String,
    pid: i32,
    /// Cold start to ready, or restore command to ready.
    ready: Duration,
    image_bytes: Option<u64>,
    uploaded_bytes: u64,
    warning: Option<String>,
    outputs: Vec<PathBuf>,
}

pub fn run(args: RunArgs) -> Result<u8> {
    let key = match &args.key {
        Some(k) => k.clone(),
        None => key::compute(&args.command, &args.key_env).context("computing the cache key")?,
    };
    if args.print_key {
        crate::print_out(&format!("{key}\n"))?;
        return Ok(0);
    }
    let url = args.cache.replace("{key}", &key);
    // A restored service is the restore command's child: when that ends,
    // it comes to us (to wait for, with --wait).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut report = Report {
        key: key.clone(),
        url: url.clone(),
        ..Default::default()
    };
    let replace = match hit(&args, &key, &url, &mut report) {
        Ok(Some(service)) => return finish(&args, service, report),
        Ok(None) => false,
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("crstream run: warning: cache entry {url} not used ({why}); starting cold");
            report.warning = Some(why);
            true
        }
    };
    let service = cold(&args, &key, &url, replace, &mut report)?;
    finish(&args, service, report)
}

/// Restores the service from the cache if an entry is there: Ok(None) if
/// none is, Err if one is but cannot be used (nothing is left running).
fn hit(args: &RunArgs, key: &str, url: &str, report: &mut Report) -> Result<Option<Service>> {
    let size = crate::runtime().block_on(async {
        match crstream_backends::open_source(url).await {
            Ok(source) => Ok(Some(source.size())),
            Err(crstream_backends::BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    let Some(size) = size else {
        return Ok(None);
    };
    report.image_bytes = size;
    let t0 = Instant::now();
    let saved = output::saved_paths(key);
    let outputs = output::restored_paths(key);
    let files = output::create_all(&outputs);
    // No copy runs to write them unless the restore succeeds.
    let unused = RemoveOnDrop(outputs.to_vec());
    let files = files?;
    let mut cmd = Command::new(std::env::current_exe().context("crstream's executable")?);
    cmd.args(["restore", "-i", url, "--detach", "--json"])
        .arg("--require-label")
        .arg(format!("{KEY_LABEL}={key}"));
    for (f, saved) in files.iter().zip(&saved) {
        // The restored service writes to this run's files instead.
        cmd.arg("--inherit-fd").arg(format!(
            "fd[{}]:{}",
            std::os::fd::AsRawFd::as_raw_fd(f),
            saved.display()
        ));
    }
    let mut out = child_command(
        {
            let mut lazy = clone_command(&cmd);
            if !args.eager {
                // A frame found damaged once the service runs kills it (it
                // never runs on wrong memory); the entry then goes, so that
                // the next run starts cold and stores a whole one.
                lazy.args(["--lazy", "--remove-if-damaged"]);
                // Its server's errors, if any, go where the service's own do.
                lazy.arg("--log").arg(&outputs[1]);
            }
            lazy
        },
        &files,
    )?;
    // Lazy where possible: a tree (refused before anything is created) is
    // restored eagerly.
    if !args.eager
        && !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("--lazy restores a single process")
    {
        out = child_command(cmd, &files)?;
    }
    drop(files);
    if !out.status.success() {
        bail!("{}", last_line(&out.stderr, "restore failed"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the restore summary")?;
    let pid = v["pid"]
        .as_i64()
        .context("the restore summary names no pid")? as i32;
    let follower = output::Follower::start(&outputs, args.ready().regex().cloned(), args.json);
    // A log line was seen before the checkpoint: the copy is ready as it.
    let logged = matches!(args.ready(), ready::Ready::Log(_));
    let waited = ready::wait(
        args.ready(),
        args.timeout(),
        || logged,
        || Ok(std::path::Path::new(&format!("/proc/{pid}")).exists()),
    );
    if let Err(e) = waited {
        kill(pid);
        follower.stop();
        return Err(e.context("after restoring it"));
    }
    report.hit = true;
    report.ready = t0.elapsed();
    std::mem::forget(unused);
    Ok(Some(Service {
        pid,
        child: None,
        follower,
        outputs,
    }))
}

/// Starts the service cold in a PID namespace of its own, waits until it
/// is ready and checkpoints it into the cache (without stopping it).
fn cold(
    args: &RunArgs,
    key: &str,
    url: &str,
    replace: bool,
    report: &mut Report,
) -> Result<Service> {
    let outputs = output::saved_paths(key);
    let [out, err] = output::create_all(&outputs)?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let t0 = Instant::now();
    let (mut child, _init) = crstream_core::start_in_new_pid_namespace(&mut cmd)
        .with_context(|| format!("starting {}", args.command[0]))?;
    let pid = child.id() as i32;
    let follower = output::Follower::start(&outputs, args.ready().regex().cloned(), args.json);
    let waited = ready::wait(
        args.ready(),
        args.timeout(),
        || follower.logged(),
        || Ok(child.try_wait()?.is_none()),
    );
    if let Err(e) = waited {
        kill(pid);
        let _ = child.wait();
        follower.stop();
        return Err(e);
    }
    report.ready = t0.elapsed();
    let stored = checkpoint(pid, key, url, replace);
    match stored {
        Ok((created, bytes)) => {
            report.image_bytes = Some(bytes);
            report.uploaded_bytes = if created { bytes } else { 0 };
        }
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("crstream run: warning: no checkpoint stored in {url} ({why})");
            report.warning = Some(why);
        }
    }
    Ok(Service {
        pid,
        child: Some(child),
        follower,
        outputs,
    })
}

/// A live dump of the running service into the cache: Ok((created, bytes));
/// created is false when another run stored an entry first.
fn checkpoint(pid: i32, key: &str, url: &str, replace: bool) -> Result<(bool, u64)> {
    let mut cmd = Command::new(std::env::current_exe().context("crstream's executable")?);
    // --skip-in-flight: a connection still in the accept queue at this
    // moment is most likely our own readiness probe's. --tcp-close: the
    // service's connections (that probe, still open on its side, or one to
    // a database) are stored closed, since their peers will not be there
    // when a later run restores it: the service's next call on one fails
    // with ECONNABORTED and it connects again, as after any dropped link.
    cmd.args(["dump", "-t", &pid.to_string(), "--leave-running", "--json"])
        .args(["--skip-in-flight", "--tcp-close"])
        .args(["-o", url])
        .arg("--label")
        .arg(format!("{KEY_LABEL}={key}"));
    if !replace {
        cmd.arg("--if-absent");
    }
    let out = child_command(cmd, &[])?;
    if !out.status.success() {
        bail!("{}", last_line(&out.stderr, "dump failed"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the dump summary")?;
    Ok((
        v["created"].as_bool().unwrap_or(true),
        v["bytes_written"].as_u64().unwrap_or(0),
    ))
}

/// Runs a crstream command with `keep` inherited (everything else of ours
/// stays ours) and -v passed on; its stdout and stderr are captured.
fn child_command(mut cmd: Command, keep: &[std::fs::File]) -> Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    let fds: Vec<i32> = keep.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // SAFETY: fcntl on fds of ours, in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .output()
        .context("running crstream")
}

/// Files removed when dropped (unless forgotten).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A copy of `cmd` (program and arguments) to run again.
fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    c
}

/// The last line of a command's stderr, without our "crstream: error: ".
fn last_line(stderr: &[u8], otherwise: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("crstream: error: ").to_string())
        .unwrap_or_else(|| otherwise.to_string())
}

fn kill(pid: i32) {
    // SAFETY: signalling the service this run started or restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Says what happened; then either returns (the service runs on) or, with
/// --wait, follows it to its end and returns its status.
fn finish(args: &RunArgs, service: Service, mut report: Report) -> Result<u8> {
    report.pid = service.pid;
    report.outputs = service.outputs.to_vec();
    let how = if report.hit { "hit" } else { "miss" };
    let mut line = format!(
        "crstream run: cache {how} ({}): pid {} ready in {:.0} ms ({})",
        report.url,
        report.pid,
        report.ready.as_secs_f64() * 1e3,
        if report.hit { "restored" } else { "cold start" }
    );
    if !report.hit && report.uploaded_bytes > 0 {
        line += &format!(
            "; checkpoint stored ({})",
            human_bytes(report.uploaded_bytes)
        );
    } else if !report.hit && report.warning.is_none() {
        line += "; an entry was stored by another run first";
    }
    let follower = match args.wait {
        false => {
            service.follower.stop();
            eprintln!(
                "{line}; its output goes on in {}",
                report.outputs[0].display()
            );
            None
        }
        true => {
            eprintln!("{line}");
            Some(service.follower)
        }
    };
    if args.json {
        crate::print_out(&format!(
            "{}\n",
            serde_json::json!({
                "cache": how,
                "key": report.key,
                "url": report.url,
                "pid": report.pid,
                "ready_ms": report.ready.as_secs_f64() * 1e3,
                "image_bytes": report.image_bytes,
                "uploaded_bytes": report.uploaded_bytes,
                "warning": report.warning,
                "stdout": report.outputs[0],
                "stderr": report.outputs[1],
            })
        ))?;
    } else if !args.wait {
        crate::print_out(&format!("{}\n", report.pid))?;
    }
    if !args.wait {
        return Ok(0);
    }
    let code = match service.child {
        Some(mut child) => {
            let status = child.wait().context("waiting for the service")?;
            std::os::unix::process::ExitStatusExt::signal(&status)
                .map_or(status.code().unwrap_or(1) as u8, |s| 128 + s as u8)
        }
        None => wait_orphan(service.pid)?,
    };
    if let Some(f) = follower {
        f.stop();
    }
    Ok(code)
}

/// Waits for a process that becomes our child (we are a subreaper) when
/// the command that restored it ends; reaps whatever else comes to us.
fn wait_orphan(pid: i32) -> Result<u8> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for any child of ours.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            return Ok(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else {
                (128 + libc::WTERMSIG(status)) as u8
            });
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ECHILD) {
                // Not ours yet: its restorer still runs (a lazy server).
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(anyhow!("the service {pid} ended, its status unknown"));
                }
                std::thread::sleep(Duration::from_millis(50));
            } else if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("waiting for the service");
            }
        }
    }
}
