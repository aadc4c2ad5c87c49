//! Images written by crstream 0.1.0 (records version 1: one `ProcessCore`
//! per process) still restore: a checked-in image of a dash counter loop
//! and its `sleep` child (see tests/fixtures/format1/README.md) comes back
//! with its PIDs and its session and goes on counting from where it was.

mod support;

use std::time::{Duration, Instant};
use support::*;

const IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/format1/dash-counter.img"
);
const ROOT: i32 = 32001;
const CHILD: i32 = 32035;
const DIR: &str = "/tmp/crstream-format1";
/// The counter's value when the image was written.
const DUMPED_AT: u64 = 21;

fn counter() -> Option<u64> {
    std::fs::read_to_string(format!("{DIR}/counter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_format_1_image_restores_its_tree_and_runs_on() {
    let o = run(&["inspect", IMAGE, "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["inventory"]["records_version"], 1,
        "a records version 1 image"
    );

    // Its PIDs are near pid_max and rarely taken; wait for a short-lived
    // process that holds one to be gone.
    for pid in [ROOT, CHILD] {
        assert!(
            wait_gone(pid, Duration::from_secs(20)),
            "PID {pid}, which the image needs, stays taken"
        );
    }
    std::fs::create_dir_all(DIR).unwrap();
    std::fs::write(format!("{DIR}/counter"), "0\n").unwrap();
    let o = run(&["restore", "-i", IMAGE, "--detach", "--json"], &[]);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let mut guard = TreeGuard(vec![ROOT, CHILD]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pid"], ROOT);
    assert_eq!(v["processes"], serde_json::json!([ROOT, CHILD]));

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
        first > DUMPED_AT,
        "restarted from {first}, dumped at {DUMPED_AT}"
    );
    assert!(first < DUMPED_AT + 10, "jumped to {first}");
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
    assert_running_untraced(ROOT);
    let stat = std::fs::read_to_string(format!("/proc/{ROOT}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], ROOT.to_string(), "session leader: {stat}");
    assert!(stat.contains("(sh)"), "{stat}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{ROOT}/cwd")).unwrap(),
        std::path::Path::new("/")
    );

    // Stop it forking first, so that no child is left behind.
    signal(ROOT, libc::SIGSTOP);
    guard.0.extend(children_of(ROOT));
    guard.kill();
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test restored.
    unsafe { libc::kill(pid, sig) };
}
