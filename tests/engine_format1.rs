//! Images written by crstream 0.1.0 (records version 1: one `ProcessCore`
//! per process) still restore: checked-in images of a dash counter loop
//! and its `sleep` child (see tests/fixtures/format1/README.md) come back
//! with their PIDs and their session and go on counting from where they were.
//! One was written on a CPU with AVX-512 and AMX, one on a CPU with AVX2
//! only: the first is refused by name on a CPU without AVX-512 (its C
//! library chose AVX-512 code at start-up), the second restores anywhere.

mod support;

use std::time::{Duration, Instant};
use support::*;

/// A checked-in image of the counter loop.
struct Fixture {
    file: &'static str,
    root: i32,
    child: i32,
    /// The counter's value when the image was written.
    dumped_at: u64,
    /// The CPU flags (/proc/cpuinfo) of the state the image holds or its C
    /// library relies on, each with what a refusal calls it.
    needs_flags: &'static [(&'static str, &'static str)],
}

const FIXTURES: [Fixture; 2] = [
    Fixture {
        file: "dash-counter.img",
        root: 32001,
        child: 32035,
        dumped_at: 21,
        // Dumped on a CPU with AMX: its XSAVE area holds AMX state.
        needs_flags: &[("avx512f", "AVX-512"), ("amx_tile", "AMX")],
    },
    Fixture {
        file: "dash-counter-avx2.img",
        root: 32000,
        child: 32023,
        dumped_at: 22,
        // Dumped on a CPU with protection keys: it holds PKRU.
        needs_flags: &[("avx2", "AVX2"), ("ospke", "PKRU")],
    },
];

const DIR: &str = "/tmp/crstream-format1";

fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == flag))
}

fn counter() -> Option<u64> {
    std::fs::read_to_string(format!("{DIR}/counter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_format_1_image_restores_its_tree_and_runs_on() {
    assert!(cpu_has("avx2"), "this test needs a CPU with AVX2");
    for f in &FIXTURES {
        restores_and_runs_on(f);
    }
    // The images name this directory: made for them, removed after.
    let _ = std::fs::remove_dir_all(DIR);
}

fn restores_and_runs_on(f: &Fixture) {
    let image = format!(
        "{}/tests/fixtures/format1/{}",
        env!("CARGO_MANIFEST_DIR"),
        f.file
    );
    let (root, child) = (f.root, f.child);
    let o = run(&["inspect", &image, "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["inventory"]["records_version"], 1,
        "a records version 1 image"
    );

    // Its PIDs are near pid_max and rarely taken; wait for a short-lived
    // process that holds one to be gone.
    for pid in [root, child] {
        assert!(
            wait_gone(pid, Duration::from_secs(20)),
            "PID {pid}, which the image needs, stays taken"
        );
    }
    std::fs::create_dir_all(DIR).unwrap();
    std::fs::write(format!("{DIR}/counter"), "0\n").unwrap();
    let o = run(&["restore", "-i", &image, "--detach", "--json"], &[]);
    let lacking: Vec<&(&str, &str)> = f
        .needs_flags
        .iter()
        .filter(|(flag, _)| !cpu_has(flag))
        .collect();
    if !lacking.is_empty() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && err.contains("image is incompatible with this machine: this CPU lacks")
                && lacking.iter().all(|(_, name)| err.contains(name))
                && err.contains("--skip-validation"),
            "{} on a CPU without {:?}: {}",
            f.file,
            lacking,
            text(&o)
        );
        return;
    }
    assert!(
        o.status.success(),
        "restore of {} failed: {}",
        f.file,
        text(&o)
    );
    let mut guard = TreeGuard(vec![root, child]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pid"], root);
    assert_eq!(v["processes"], serde_json::json!([root, child]));

    // The shell's own variable carries on: the first value it writes comes
    // after the one it had at the dump.
    let t = Instant::now();
    let first = loop {
        match counter() {
            Some(n) if n > 0 => break n,
            _ if t.elapsed() > Duration::from_secs(10) => panic!("the restored shell never counts"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(
        first > f.dumped_at,
        "restarted from {first}, dumped at {}",
        f.dumped_at
    );
    assert!(first < f.dumped_at + 10, "jumped to {first}");
    std::thread::sleep(Duration::from_millis(800));
    // The shell empties the file before each value: read until it holds one.
    let later = loop {
        if let Some(n) = counter() {
            break n;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(later >= first + 2, "stuck at {later} (first {first})");

    // Its session, name and working directory (from ProcessCore) are back.
    assert_running_untraced(root);
    let stat = std::fs::read_to_string(format!("/proc/{root}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], root.to_string(), "session leader: {stat}");
    assert!(stat.contains("(sh)"), "{stat}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{root}/cwd")).unwrap(),
        std::path::Path::new("/")
    );

    // Stop it forking first, so that no child is left behind.
    signal(root, libc::SIGSTOP);
    guard.0.extend(children_of(root));
    guard.kill();
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test restored.
    unsafe { libc::kill(pid, sig) };
}
