//! End-to-end tests of `crstream restore --lazy` on real processes (run as
//! root: ptrace, clone3 set_tid, PR_SET_MM_MAP, userfaultfd, pidfd_getfd).
//!
//! Run with: cargo build --examples && cargo test --test engine_lazy
//! (the S3 test needs CRSTREAM_TEST_S3_ENDPOINT, as set by .ci/test; the
//! storage failure tests start their own moto_server).

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

/// Dumps wl_memory (`mib` MiB) to `dest`; returns (workload, checksum,
/// counter at dump).
fn dump_memory(dir: &TestDir, mib: &str, dest: &str, env: &[(&str, &str)]) -> (Workload, u64, u64) {
    let mut w = Workload::spawn("wl_memory", dir.path("report"), &[mib]);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 3);
    let o = run(&["dump", "-t", &w.pid.to_string(), "-o", dest], env);
    assert!(o.status.success(), "dump failed: {}", text(&o));
    let dumped = field(&w.read_report().unwrap(), 0, 0);
    w.reap_dumped();
    (w, field(&before, 0, 1), dumped)
}

/// Restores lazily from `src` and checks the process continues intact;
/// returns what crstream logged (`-v`). `slowed`: with a slowed prefetch,
/// so that most pages arrive through faults; else at full speed, the
/// process faulting on pages (it reads its memory every 100 ms) while the
/// prefetch brings them.
fn lazy_memory_round(
    w: &mut Workload,
    src: &str,
    env: &[(&str, &str)],
    checksum: u64,
    dumped: u64,
    slowed: bool,
) -> String {
    let mut env = env.to_vec();
    if slowed {
        env.push(("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "5"));
    }
    let lr = LazyRestore::start(src, &env, &["--detach", "-v"]);
    // The command returned as soon as the process ran, long before the
    // slowed prefetch can have brought every page: its server serves them.
    let server = lr.crstream_pid();
    assert!(
        !slowed || status_field(server, "State").is_some_and(|s| !s.starts_with('Z')),
        "restore --lazy --detach returned only once its server was done"
    );
    w.restored(lr.pid);
    let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 3);
    assert_eq!(field(&r, 0, 1), checksum, "checksum changed: {r}");
    assert_eq!(field(&r, 0, 2), lr.pid as u64);
    let pid = lr.pid;
    let (st, stderr) = lr.finish(T);
    assert!(st.success(), "lazy restore failed: {st:?} {stderr}");
    // After every page is in, the process runs on without crstream.
    let n = field(&w.read_report().unwrap(), 0, 0);
    let r = w.wait_report(T, |r| field(r, 0, 0) > n + 2);
    assert_eq!(field(&r, 0, 1), checksum, "checksum changed: {r}");
    assert_running_untraced(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        !std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|l| l.to_string_lossy().contains("userfaultfd")),
        "the restored process keeps a userfaultfd ({fds} fds)"
    );
    stderr
}

#[test]
fn lazy_restore_from_a_file_continues_with_pid_counter_and_checksum() {
    let dir = TestDir::new("lazy-file");
    let img = dir.path("img");
    let (mut w, checksum, dumped) = dump_memory(&dir, "128", img.to_str().unwrap(), &[]);
    let log = lazy_memory_round(&mut w, img.to_str().unwrap(), &[], checksum, dumped, true);
    // A local file is read with ranged reads, as cheap as a stream.
    assert!(log.contains("streamed=false"), "{log}");
    w.kill();
    std::fs::remove_file(&w.report).unwrap();

    // Without --detach: crstream serves the pages, then waits for the
    // process and exits with its status.
    let mut c = crstream();
    c.args(["restore", "--lazy", "-i", img.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let crs = child.id() as i32;
    let mut guard = ChildGuard(Some(child));
    let r = w.wait_report(T, |r| {
        field(r, 0, 0) > dumped + 3 && field(r, 0, 2) == w.pid as u64
    });
    assert_eq!(field(&r, 0, 1), checksum);
    assert_eq!(
        status_field(w.pid, "PPid").as_deref(),
        Some(crs.to_string().as_str())
    );
    // SAFETY: killing the restored process by PID.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    let st = guard.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(st.status.code(), Some(128 + 9), "{st:?}");
    assert!(wait_gone(w.pid, T));
}

#[test]
fn lazy_restore_from_a_pipe_is_refused() {
    let o = run(&["restore", "--lazy", "-i", "-"], &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--lazy needs a file or object, not a pipe"),
        "{}",
        text(&o)
    );
}

/// The same from the S3 test server (CRSTREAM_TEST_S3_ENDPOINT), where
/// the prefetch reads the frames as one stream: slowed (one frame per
/// request), then at full speed (the stream's read-ahead, with faults
/// taking frames it has read or is about to read).
#[test]
fn lazy_restore_from_s3() {
    let env = s3_env();
    let env = env_refs(&env);
    let bucket = s3_bucket("lazy");
    let url = format!("s3://{bucket}/memory.img");
    let dir = TestDir::new("lazy-s3");
    let (mut w, checksum, dumped) = dump_memory(&dir, "128", &url, &env);
    for slowed in [true, false] {
        let log = lazy_memory_round(&mut w, &url, &env, checksum, dumped, slowed);
        assert!(log.contains("streamed=true"), "{log}");
        assert!(
            faults_logged(&log) > 0,
            "no fault raced the prefetch: {log}"
        );
        w.kill();
        std::fs::remove_file(&w.report).unwrap();
    }
}

/// A daemon that dropped root (python3 as nobody, 64 MiB of patterned
/// memory) comes back lazily. Its userfaultfd is made while the restored
/// process is still root: made after its credentials, it was refused
/// (vm.unprivileged_userfaultfd is 0 here, and a user-mode-only one would
/// turn the kernel's own accesses to missing pages into EFAULT), once the
/// dump had killed the process.
#[test]
fn lazy_restore_of_a_process_that_dropped_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let python = system_python();
    let dir = TestDir::new("lazy-nobody");
    // nobody writes its report there.
    std::fs::set_permissions(dir.path(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    let report = dir.path("report");
    const SCRIPT: &str = "import os, sys, time\n\
        report = sys.argv[1]\n\
        mem = bytearray(64 << 20)\n\
        for i in range(0, len(mem), 4096): mem[i] = (i >> 12) % 251\n\
        n = 0\n\
        while True:\n\
        \x20   n += 1\n\
        \x20   total = sum(mem[::4096]) + (os.geteuid() << 32)\n\
        \x20   with open(report + '.new', 'w') as f: f.write('%d %d %d' % (n, total, os.getpid()))\n\
        \x20   os.replace(report + '.new', report)\n\
        \x20   time.sleep(0.05)\n";
    let mut cmd = Command::new(python);
    cmd.args(["-c", SCRIPT]).arg(&report).uid(65534).gid(65534);
    let mut w = spawn_isolated(cmd, report);
    let before = w.wait_report(T, |r| field(r, 0, 0) >= 3);
    let checksum = field(&before, 0, 1);
    assert_eq!(checksum >> 32, 65534, "{before}");
    let img = dir.path("img");
    let o = run(
        &[
            "dump",
            "-t",
            &w.pid.to_string(),
            "-o",
            img.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "dump failed: {}", text(&o));
    let dumped = field(&w.read_report().unwrap(), 0, 0);
    w.reap_dumped();
    lazy_memory_round(&mut w, img.to_str().unwrap(), &[], checksum, dumped, true);
    assert_eq!(
        status_field(w.pid, "Uid").as_deref(),
        Some("65534\t65534\t65534\t65534")
    );
}

#[test]
fn lazy_restore_of_threads_faulting_concurrently() {
    let dir = TestDir::new("lazy-threads");
    let mut w = Workload::spawn("wl_threads", dir.path("report"), &[]);
    let before = w.wait_report(T, |r| {
        r.lines().count() == 9 && (1..9).all(|l| field(r, l, 2) >= 5)
    });
    let tids_before = tasks(w.pid);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    let lr = LazyRestore::start(
        img.to_str().unwrap(),
        &[("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "50")],
        &["--detach"],
    );
    let pid = lr.pid;
    w.restored(pid);
    let r = w.wait_report(T, |r| {
        (1..9).all(|l| field(r, l, 2) > field(&at_dump, l, 2) + 10)
    });
    assert!(r.starts_with(&format!("{pid} OK")), "{r}\n{}", w.log());
    for l in 1..9 {
        assert_eq!(
            field(&r, l, 1),
            field(&before, l, 1),
            "thread {l} has another tid"
        );
    }
    let (st, stderr) = lr.finish(T);
    assert!(st.success(), "{st:?} {stderr}");
    assert_eq!(tasks(pid), tids_before);
    assert_running_untraced(pid);
}

// ---------------------------------------------------------------------------
// Storage failures during the lazy phase: a dedicated moto_server.
// ---------------------------------------------------------------------------

struct Moto {
    child: Option<Child>,
    port: u16,
    log: std::path::PathBuf,
}

impl Moto {
    fn start(port: u16, log: std::path::PathBuf) -> Moto {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let m = Moto {
            child: Some(child),
            port,
            log,
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < T,
                "moto_server did not start: {}",
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(String, String)> {
        s3_env_for(self.endpoint())
    }

    fn create_bucket(&self, name: &str) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.starts_with("HTTP/1.1 200"), "creating bucket: {raw}");
    }

    /// Stops it (SIGKILL by PID) and reaps it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Uploads a local image to `url` with a fixed part size (so that a
/// re-upload of the same bytes gets the same ETag).
fn upload(img: &std::path::Path, url: &str, env: &[(&str, &str)]) {
    let mut c = crstream();
    c.args(["upload", url, "--part-size", "5"])
        .stdin(std::fs::File::open(img).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "upload: {}", text(&o));
}

/// Dumps wl_memory to a file and uploads it to a dedicated moto server.
fn image_on_moto(dir: &TestDir, moto: &Moto) -> (Workload, std::path::PathBuf, String, u64, u64) {
    let img = dir.path("img");
    let (w, checksum, dumped) = dump_memory(dir, "128", img.to_str().unwrap(), &[]);
    moto.create_bucket("lazy-fail");
    let url = "s3://lazy-fail/memory.img".to_string();
    let env = moto.env();
    upload(&img, &url, &env_refs(&env));
    (w, img, url, checksum, dumped)
}

#[test]
fn storage_gone_during_lazy_restore_kills_the_process_with_a_clear_error() {
    let dir = TestDir::new("lazy-gone");
    let mut moto = Moto::start(free_port(), dir.path("moto.log"));
    let (mut w, _img, url, _, _) = image_on_moto(&dir, &moto);
    let env = moto.env();
    let mut env = env_refs(&env);
    env.push(("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "300"));
    env.push(("CRSTREAM_LAZY_RETRY_MS", "1500"));
    env.push(("CRSTREAM_MAX_RETRIES", "0"));
    let lr = LazyRestore::start(&url, &env, &["--detach"]);
    let pid = lr.pid;
    w.restored(pid);
    moto.stop();
    let (st, stderr) = lr.finish(T);
    eprintln!("crstream: {st:?}\n{stderr}");
    assert!(!st.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "lazy restore of pid {pid} failed: fetching frame at offset"
        )) && stderr.contains(&url)
            && stderr.contains("the process was killed"),
        "{stderr}"
    );
    assert!(wait_gone(pid, T), "pid {pid} still exists");
}

/// The server stops and comes back (with the same bytes) within the retry
/// budget: the restore completes.
#[test]
fn storage_back_within_the_retry_budget_completes_the_lazy_restore() {
    let dir = TestDir::new("lazy-back");
    let port = free_port();
    let mut moto = Moto::start(port, dir.path("moto.log"));
    let (mut w, img, url, checksum, dumped) = image_on_moto(&dir, &moto);
    let env = moto.env();
    let mut env = env_refs(&env);
    env.push(("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "300"));
    env.push(("CRSTREAM_LAZY_RETRY_MS", "30000"));
    env.push(("CRSTREAM_MAX_RETRIES", "0"));
    let lr = LazyRestore::start(&url, &env, &["--detach"]);
    let pid = lr.pid;
    w.restored(pid);
    moto.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let moto = Moto::start(port, dir.path("moto2.log"));
    moto.create_bucket("lazy-fail");
    upload(&img, &url, &env);
    let (st, stderr) = lr.finish(Duration::from_secs(90));
    assert!(st.success(), "{st:?} {stderr}");
    // The outage was seen (and survived by retrying).
    assert!(stderr.contains("retrying"), "{stderr}");
    let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 3);
    assert_eq!(field(&r, 0, 1), checksum, "checksum changed: {r}");
    assert_running_untraced(pid);
}

/// wl_sparse: a 1 GiB area, ~10 MiB written. Pages never saved are served
/// as zero pages while the lazy phase runs (the full read-back check runs
/// during it), data pages by their frames; the RSS stays small.
#[test]
fn lazy_restore_of_sparse_memory_serves_zero_pages() {
    let dir = TestDir::new("lazy-sparse");
    let mut w = Workload::spawn("wl_sparse", dir.path("report"), &[]);
    let before = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    assert!(before.contains(" OK "), "{before}\n{}", w.log());
    let checksum = field(&before, 0, 2);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = field(&w.read_report().unwrap(), 0, 1);
    w.reap_dumped();
    let lr = LazyRestore::start(
        img.to_str().unwrap(),
        &[("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "300")],
        &["--detach"],
    );
    let pid = lr.pid;
    w.restored(pid);
    // Full check while most frames are still missing.
    std::fs::write(dir.path("report.verify"), b"").unwrap();
    let r = w.wait_report(T, |r| {
        (field(r, 0, 1) > at_dump + 1 && field(r, 0, 5) >= 1) || !r.contains(" OK ")
    });
    assert!(r.contains(" OK "), "{r}\n{}", w.log());
    assert_eq!(field(&r, 0, 2), checksum, "{r}");
    let (st, stderr) = lr.finish(T);
    assert!(st.success(), "{st:?} {stderr}");
    let n = field(&w.read_report().unwrap(), 0, 1);
    let r = w.wait_report(T, |r| field(r, 0, 1) > n + 2);
    assert!(r.contains(" OK "), "{r}");
    assert_eq!(field(&r, 0, 2), checksum, "{r}");
    let rss = status_field(pid, "VmRSS")
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap();
    assert!(rss < 64 * 1024, "RSS {rss} kB after reading the zero pages");
    assert_running_untraced(pid);
}

/// SIGTERM to crstream while pages are missing: the process is killed
/// rather than left running with missing memory.
#[test]
fn sigterm_during_the_lazy_phase_kills_the_process() {
    let dir = TestDir::new("lazy-term");
    let img = dir.path("img");
    let (mut w, _, _) = dump_memory(&dir, "64", img.to_str().unwrap(), &[]);
    let lr = LazyRestore::start(
        img.to_str().unwrap(),
        &[("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "1000")],
        &["--detach"],
    );
    let pid = lr.pid;
    w.restored(pid);
    let crs = lr.crstream_pid();
    // SAFETY: signalling the crstream process this test started.
    unsafe { libc::kill(crs, libc::SIGTERM) };
    let (st, stderr) = lr.finish(T);
    assert!(!st.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "lazy restore of pid {pid} failed: crstream received signal 15"
        )) && stderr.contains("the process was killed"),
        "{stderr}"
    );
    assert!(wait_gone(pid, T), "pid {pid} still exists");
}

/// SIGKILL to crstream while pages are missing, at several moments: the
/// process dies with it (it never reads memory that was not served), and
/// never reports a wrong checksum.
#[test]
fn sigkill_during_the_lazy_phase_never_leaves_the_process_on_missing_memory() {
    let dir = TestDir::new("lazy-kill");
    let img = dir.path("img");
    let (mut w, checksum, _) = dump_memory(&dir, "64", img.to_str().unwrap(), &[]);
    for delay_ms in [0, 150, 400] {
        // Prefetch slow enough that the kill always comes before the end.
        let lr = LazyRestore::start(
            img.to_str().unwrap(),
            &[("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "1000")],
            &["--detach"],
        );
        let pid = lr.pid;
        w.restored(pid);
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signalling the crstream process this test started.
        unsafe { libc::kill(lr.crstream_pid(), libc::SIGKILL) };
        let (st, _) = lr.finish(T);
        if st.success() {
            // Its faults brought every page in before the kill: it runs
            // on complete memory.
            let r = w.wait_report(T, |r| field(r, 0, 0) > 0);
            assert_eq!(field(&r, 0, 1), checksum, "{r}");
            w.kill();
        }
        assert!(wait_gone(pid, T), "pid {pid} runs on without its server");
        if let Some(r) = w.read_report() {
            assert_eq!(
                field(&r, 0, 1),
                checksum,
                "after SIGKILL at {delay_ms} ms: {r}"
            );
        }
    }
}

/// The process killed while its server holds it frozen at the end of the
/// lazy phase (to set its parent-death signal again): the server collects
/// the threads the kill left traced, then exits, instead of waiting for
/// the leader forever; and the leader's exit status is its parent's (a
/// restore that waits for it exits with it).
#[test]
fn a_process_killed_while_its_server_holds_it_frozen_leaves_no_server() {
    for detach in [true, false] {
        let dir = TestDir::new(&format!("lazy-kill-frozen-{detach}"));
        let mut w = Workload::spawn("wl_threads", dir.path("report"), &[]);
        w.wait_report(T, |r| r.lines().count() == 9);
        let img = dir.path("img");
        dump(w.pid, &img, &[]);
        w.reap_dumped();
        let paused = dir.path("paused");
        let lr = LazyRestore::start(
            img.to_str().unwrap(),
            &[
                ("CRSTREAM_TEST_PAUSE_AT", "lazy-frozen-at-end:1"),
                ("CRSTREAM_TEST_PAUSE_FILE", paused.to_str().unwrap()),
            ],
            if detach { &["--detach"] } else { &[] },
        );
        let pid = lr.pid;
        w.restored(pid);
        let t = std::time::Instant::now();
        while !paused.exists() {
            assert!(
                t.elapsed() < T,
                "the server never froze the process at the end"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(tasks(pid).len() > 1, "a process with threads");
        // SAFETY: killing the process this test restored.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let (st, log) = lr.finish(T);
        assert!(wait_gone(pid, T), "pid {pid} still exists: {log}");
        if !detach {
            assert_eq!(st.code(), Some(128 + libc::SIGKILL), "{log}");
        }
    }
}

/// wl_churn: dumps it idle, leaves `op` in its op file, restores it lazily
/// with a slow prefetch (32 frames, 150 ms apart), so the op runs while
/// most of its memory is still missing. Returns the workload, the lazy
/// restore and the counter at dump.
fn churn_restored(dir: &TestDir, op: &str) -> (Workload, LazyRestore, u64) {
    let mut w = Workload::spawn("wl_churn", dir.path("report"), &[]);
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = field(&w.read_report().unwrap(), 0, 1);
    w.reap_dumped();
    std::fs::write(dir.path("report.op"), op).unwrap();
    let lr = LazyRestore::start(
        img.to_str().unwrap(),
        &[("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "150")],
        &["--detach"],
    );
    w.restored(lr.pid);
    (w, lr, at_dump)
}

fn churn_state(report: &str) -> &str {
    report.split_whitespace().nth(2).unwrap_or("")
}

/// munmap and madvise(MADV_DONTNEED) during the lazy phase: the released
/// ranges get no copies (they stay unmapped / read as zeros), every other
/// page still arrives intact, and the restore completes. So does every
/// page of an area the process split with mprotect (no event tells the
/// server; a copy across the split fails as a whole), and pages it freed
/// with MADV_FREE that the kernel then dropped (they read as zeros).
#[test]
fn lazy_restore_honours_munmap_and_dontneed_during_the_lazy_phase() {
    for op in ["munmap", "dontneed", "mprotect", "free"] {
        let dir = TestDir::new(&format!("lazy-{op}"));
        let (mut w, lr, at_dump) = churn_restored(&dir, op);
        let pid = lr.pid;
        let r = w.wait_report(T, |r| field(r, 0, 1) > at_dump && churn_state(r) != "idle");
        assert_eq!(churn_state(&r), format!("ok-{op}"), "{r}\n{}", w.log());
        let (st, stderr) = lr.finish(T);
        assert!(st.success(), "{op}: {st:?} {stderr}");
        let n = field(&w.read_report().unwrap(), 0, 1);
        let r = w.wait_report(T, |r| field(r, 0, 1) > n + 2);
        assert_eq!(churn_state(&r), format!("ok-{op}"), "{r}");
        assert_eq!(field(&r, 0, 0), pid as u64);
        assert_running_untraced(pid);
        w.kill();
    }
}

/// mremap and fork during the lazy phase are not supported: crstream kills
/// the process rather than let it run with memory it cannot serve, and
/// says why.
#[test]
fn lazy_restore_refuses_mremap_and_fork_during_the_lazy_phase() {
    for (op, says) in [
        ("mremap", "moved memory with mremap"),
        ("fork", "forked while it was being restored lazily"),
    ] {
        let dir = TestDir::new(&format!("lazy-{op}"));
        let (mut w, lr, _) = churn_restored(&dir, op);
        let pid = lr.pid;
        let (st, stderr) = lr.finish(T);
        assert!(!st.success(), "{op}: crstream succeeded: {stderr}");
        assert!(
            stderr.contains(&format!("lazy restore of pid {pid} failed"))
                && stderr.contains(says)
                && stderr.contains("the process was killed"),
            "{op}: {stderr}"
        );
        assert!(wait_gone(pid, T), "{op}: pid {pid} still exists");
        assert!(
            !w.read_report().unwrap().contains("ok-"),
            "{op}: the process ran on after the op"
        );
        w.kill();
    }
}

/// The `faults=N` of the "lazy restore complete" line a detached server
/// logged (CRSTREAM_LOG=info).
fn faults_logged(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("lazy restore complete"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("faults=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lazy restore summary in: {log}"))
}

/// A lazy restore records the frames the process faulted on in IMAGE.ws;
/// the next lazy restore of the image writes them before the process runs,
/// so it faults on (almost) none; a working set recorded for another image
/// is ignored with a warning and replaced.
#[test]
fn the_working_set_is_recorded_and_filled_first_by_the_next_lazy_restore() {
    let dir = TestDir::new("lazy-ws");
    let img = dir.path("img");
    let src = img.to_str().unwrap();
    let ws = dir.path("img.ws");
    let (mut w, checksum, dumped) = dump_memory(&dir, "32", src, &[]);
    // A slow prefetch: the process faults on the frames it touches.
    let env = [
        ("CRSTREAM_TEST_LAZY_PREFETCH_DELAY_MS", "50"),
        ("CRSTREAM_LOG", "info"),
    ];
    // Only faults in the process's first moments are its working set: with
    // a span of none, a restore that faults records nothing.
    let none = [env[0], env[1], ("CRSTREAM_TEST_WORKING_SET_FOR_MS", "0")];
    let lr = LazyRestore::start(src, &none, &["--detach"]);
    w.restored(lr.pid);
    let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 2);
    assert_eq!(field(&r, 0, 1), checksum, "{r}");
    let (st, log) = lr.finish(T);
    assert!(st.success(), "{log}");
    assert!(faults_logged(&log) >= 8, "{log}");
    assert!(!ws.exists(), "recorded faults after the span: {log}");
    w.kill();
    std::fs::remove_file(&w.report).unwrap();
    let mut faults = Vec::new();
    for round in 0..3 {
        if round == 2 {
            // Recorded for another image: same document, other length.
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&ws).unwrap()).unwrap();
            v["image_bytes"] = (v["image_bytes"].as_u64().unwrap() + 1).into();
            std::fs::write(&ws, v.to_string()).unwrap();
        }
        let lr = LazyRestore::start(src, &env, &["--detach"]);
        w.restored(lr.pid);
        let r = w.wait_report(T, |r| field(r, 0, 0) > dumped + 2);
        assert_eq!(field(&r, 0, 1), checksum, "round {round}: {r}");
        let (st, log) = lr.finish(T);
        assert!(st.success(), "round {round}: {log}");
        faults.push(faults_logged(&log));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ws).unwrap())
            .unwrap_or_else(|e| panic!("round {round}: no working set recorded ({e}): {log}"));
        assert_eq!(v["crstream_working_set"], 1);
        assert_eq!(
            v["image_bytes"],
            std::fs::metadata(&img).unwrap().len(),
            "{v}"
        );
        let frames = v["frames"].as_array().unwrap().len();
        assert!(frames > 0, "round {round}: {v}");
        match round {
            0 => assert!(log.contains("recorded the working set"), "{log}"),
            1 => assert!(
                log.contains("filling the recorded working set before the process runs"),
                "{log}"
            ),
            _ => assert!(
                log.contains("it was recorded for another image")
                    && log.contains("recorded the working set"),
                "{log}"
            ),
        }
        w.kill();
        std::fs::remove_file(&w.report).unwrap();
    }
    assert!(
        faults[0] >= 8,
        "the first restore faulted only {} times",
        faults[0]
    );
    assert!(
        faults[1] * 4 <= faults[0],
        "with its working set written first, the process still faulted {} times (first restore: {})",
        faults[1],
        faults[0]
    );
    assert!(faults[2] >= 8, "a stale working set was used: {faults:?}");
}
