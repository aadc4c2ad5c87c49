//! File names that are not UTF-8 (Linux allows any byte but NUL and '/')
//! come back exactly: a python3 process appending to a file named with
//! such bytes, from a working directory named likewise, is dumped and
//! restored and goes on appending to the same file at the same offset.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(30);

const SCRIPT: &str = r#"
import os, sys, time
d = os.fsencode(sys.argv[1])
log = d + b"/caf\xe9-\xff.log"
fd = os.open(log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
os.chdir(d + b"/r\xe9pertoire")
i = 0
while True:
    i += 1
    os.write(fd, b"%d\n" % i)
    time.sleep(0.05)
"#;

fn lines(log: &std::path::Path) -> Vec<u64> {
    std::fs::read(log)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn non_utf8_file_names_and_cwd_round_trip() {
    if !have("python3") {
        panic!("python3 is needed");
    }
    let dir = TestDir::new("paths");
    let raw = |b: &[u8]| -> PathBuf {
        let mut p = dir.0.as_os_str().as_bytes().to_vec();
        p.extend_from_slice(b);
        PathBuf::from(std::ffi::OsStr::from_bytes(&p))
    };
    std::fs::create_dir(raw(b"/r\xe9pertoire")).unwrap();
    let log = raw(b"/caf\xe9-\xff.log");
    let child = Command::new("python3")
        .args(["-c", SCRIPT, dir.0.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut w = Workload::from_child(child, dir.path("report"));
    let t = std::time::Instant::now();
    while lines(&log).len() < 5 {
        assert!(t.elapsed() < T, "python never wrote its log");
        std::thread::sleep(Duration::from_millis(20));
    }
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let dumped = lines(&log);
    let (pid, _) = restore(&img);
    w.restored(pid);
    let mut guard = TreeGuard(vec![pid]);
    while lines(&log).len() < dumped.len() + 5 {
        assert!(t.elapsed() < 3 * T, "the restored process never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One file, one offset: numbers go on from where they stopped.
    let all = lines(&log);
    let want: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, want, "the log goes on without a gap or a repeat");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        raw(b"/r\xe9pertoire")
    );
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(fds.contains(&log), "{fds:?}");
    guard.kill();
}
