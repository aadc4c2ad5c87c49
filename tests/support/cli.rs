//! Running the crstream binary on streams: its commands, synthetic images,
//! temporary files.

use super::engine::crstream_bin;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// The crstream binary under test, quiet (no CRSTREAM_LOG from outside).
pub fn crstream() -> Command {
    let mut c = Command::new(crstream_bin());
    c.env_remove("CRSTREAM_LOG");
    c
}

/// Runs crstream with `stdin` as input; returns its output.
pub fn run_with_input(args: &[&str], stdin: &[u8], env: &[(String, String)]) -> Output {
    let mut child = crstream()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = crstream_streamer::testing::Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes a synthetic image (see crstream_streamer::testing) to a file.
pub fn synthetic_image(
    path: &std::path::Path,
    spec: &crstream_streamer::testing::SynthSpec,
) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt
        .block_on(crstream_streamer::testing::image_bytes(
            Default::default(),
            spec,
        ))
        .unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A child process killed (by PID) and reaped when the guard drops.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crstream"))
        .parent()
        .unwrap()
        .to_path_buf()
}
