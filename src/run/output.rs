//! The output of a service `crstream run` starts: its stdout and stderr go
//! to two files, which crstream follows onto its own stdout and stderr
//! (and scans for `--ready-when log:REGEX`) while it waits. Files, not
//! pipes: the service outlives crstream, and a checkpoint of it names them
//! by path, so a restore hands in fresh ones in their place.

use regex::Regex;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where a service with cache key `key` writes its stdout and stderr when
/// started cold: the same names on every machine, as its checkpoint holds
/// them.
pub fn saved_paths(key: &str) -> [PathBuf; 2] {
    ["out", "err"].map(|s| PathBuf::from(format!("/tmp/crstream-run-{key}.{s}")))
}

/// The files a restored copy writes instead (this run's own).
pub fn restored_paths(key: &str) -> [PathBuf; 2] {
    let me = std::process::id();
    ["out", "err"].map(|s| PathBuf::from(format!("/tmp/crstream-run-{key}.{me}.{s}")))
}

/// Creates (empties) the service's two output files, to append to.
pub fn create_all(paths: &[PathBuf; 2]) -> anyhow::Result<[std::fs::File; 2]> {
    use anyhow::Context;
    let [out, err] = paths;
    Ok([
        create(out).with_context(|| format!("creating {}", out.display()))?,
        create(err).with_context(|| format!("creating {}", err.display()))?,
    ])
}

/// Creates (empties) an output file for the service to append to.
fn create(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    drop(f);
    std::fs::OpenOptions::new().append(true).open(path)
}

/// Copies what the service writes to crstream's stdout and stderr (both
/// to stderr with `to_stderr`: stdout then carries only --json).
pub struct Follower {
    stop: Arc<AtomicBool>,
    logged: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    pub fn start(paths: &[PathBuf; 2], regex: Option<Regex>, to_stderr: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let logged = Arc::new(AtomicBool::new(false));
        let (s, l, paths) = (stop.clone(), logged.clone(), paths.clone());
        let thread = std::thread::spawn(move || follow(&paths, regex.as_ref(), to_stderr, &s, &l));
        Self {
            stop,
            logged,
            thread: Some(thread),
        }
    }

    /// A line matched the readiness regex.
    pub fn logged(&self) -> bool {
        self.logged.load(Ordering::Relaxed)
    }

    /// Copies what is there and stops following.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn follow(
    paths: &[PathBuf; 2],
    regex: Option<&Regex>,
    to_stderr: bool,
    stop: &AtomicBool,
    logged: &AtomicBool,
) {
    let mut files: Vec<Option<std::fs::File>> = vec![None, None];
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let last = stop.load(Ordering::Relaxed);
        for i in 0..2 {
            if files[i].is_none() {
                files[i] = std::fs::File::open(&paths[i]).ok();
            }
            let Some(f) = files[i].as_mut() else { continue };
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                let _ = if i == 0 && !to_stderr {
                    std::io::stdout().write_all(chunk)
                } else {
                    std::io::stderr().write_all(chunk)
                };
                if let Some(re) = regex {
                    partial[i].extend_from_slice(chunk);
                    while let Some(nl) = partial[i].iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial[i].drain(..=nl).collect();
                        if re.is_match(String::from_utf8_lossy(&line).trim_end()) {
                            logged.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        let _ = std::io::stdout().flush();
        if last {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
