//! A dump that dies harms nothing: `crstream dump` of a large process is
//! killed with SIGKILL, SIGTERM and SIGINT at many points, including while
//! a syscall of its runs inside the target; each time the target runs on
//! untraced, with its own signal mask, the same memory (its checksum) and
//! its counter going on, and nothing is left at the destination.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);
const MIB: &str = "512";

/// A wl_memory target and what it must keep.
struct Target {
    w: Workload,
    checksum: u64,
    sigblk: String,
}

impl Target {
    fn start(dir: &TestDir) -> Self {
        Self::start_with(dir, MIB)
    }

    fn start_with(dir: &TestDir, mib: &str) -> Self {
        let w = Workload::spawn("wl_memory", dir.path("report"), &[mib]);
        let r = w.wait_report(T, |r| field(r, 0, 0) >= 2);
        let sigblk = status_field(w.pid, "SigBlk").expect("SigBlk");
        Target {
            checksum: field(&r, 0, 1),
            w,
            sigblk,
        }
    }

    fn counter(&self) -> u64 {
        field(&self.w.read_report().unwrap_or_default(), 0, 0)
    }

    /// Running, untraced, with its own mask and no child (wl_memory has
    /// none: a memory snapshot left behind would be one), counting on with
    /// the same memory.
    fn assert_unharmed(&self, what: &str) {
        let pid = self.w.pid;
        assert!(proc_exists(pid), "{what}: pid {pid} is gone");
        assert_running_untraced(pid);
        assert_eq!(children_of(pid), Vec::<i32>::new(), "{what}: children");
        assert_mask_comes_back(pid, &self.sigblk, what);
        let before = self.counter();
        let r = self.w.wait_report(T, |r| field(r, 0, 0) >= before + 2);
        assert_eq!(field(&r, 0, 1), self.checksum, "{what}: memory checksum");
    }
}

/// Files of `dir` other than the target's own.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            (!name.starts_with("report")).then_some(name)
        })
        .collect()
}

fn spawn_dump(pid: i32, dest: &str, env: &[(&str, &str)]) -> Child {
    spawn_dump_with(pid, dest, &[], env)
}

fn spawn_dump_with(pid: i32, dest: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = crstream();
    c.args([
        "dump",
        "-t",
        &pid.to_string(),
        "-o",
        dest,
        "--leave-running",
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid, sig) };
}

/// Waits for a dump; true if it completed, false if it was interrupted:
/// killed outright (a signal before crstream set up its handling, or
/// SIGKILL), or stopped with a one-line error saying so.
fn outcome(child: Child, sig: i32) -> bool {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if out.status.success() {
        return true;
    }
    let killed = std::os::unix::process::ExitStatusExt::signal(&out.status).is_some();
    if !killed {
        assert!(
            err.contains("interrupted") && err.contains("runs on"),
            "after signal {sig}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    false
}

#[test]
fn killed_at_any_point_of_a_dump_the_target_runs_on_unharmed() {
    let dir = TestDir::new("crash-sweep");
    let mut t = Target::start(&dir);
    let img = dir.path("img");
    let dest = img.to_str().unwrap();
    // How long a whole dump takes here (the faster of two), to spread the
    // kill points over it.
    let mut whole = Duration::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        assert!(outcome(spawn_dump(t.w.pid, dest, &[]), 0), "a plain dump");
        whole = whole.min(started.elapsed());
        std::fs::remove_file(&img).unwrap();
        t.assert_unharmed("after a whole dump");
    }

    let mut interrupted = 0;
    for sig in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT] {
        for tenth in [0, 1, 2, 3, 4, 5, 6, 8] {
            // A dump that ended before the signal (this one ran faster, the
            // machine is busy) is tried again, the signal sooner.
            for attempt in 0..3 {
                let child = spawn_dump(t.w.pid, dest, &[]);
                std::thread::sleep(whole * tenth / 10 / (1 << attempt));
                signal(child.id() as i32, sig);
                let what = format!("signal {sig} at {tenth}/10 of a dump (attempt {attempt})");
                let completed = outcome(child, sig);
                if completed {
                    std::fs::remove_file(&img).unwrap();
                } else {
                    interrupted += 1;
                    // SIGKILL leaves the worker nobody to tell: one that had
                    // committed the image by then leaves it, whole.
                    if sig == libc::SIGKILL && img.exists() {
                        let o = run(&["inspect", dest], &[]);
                        assert!(o.status.success(), "{what}: a partial image: {}", text(&o));
                        std::fs::remove_file(&img).unwrap();
                    }
                }
                assert_eq!(leftovers(&dir.0), Vec::<String>::new(), "{what}");
                t.assert_unharmed(&what);
                if !completed {
                    break;
                }
            }
        }
    }
    assert!(
        interrupted >= 12,
        "only {interrupted} of 24 dumps were interrupted"
    );

    // The worker itself (the supervisor's child) asked to stop.
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let child = spawn_dump(t.w.pid, dest, &[]);
        let worker = loop {
            if let Some(&w) = children_of(child.id() as i32).first() {
                break w;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(whole / 3);
        signal(worker, sig);
        let completed = outcome(child, sig);
        if completed {
            std::fs::remove_file(&img).unwrap();
        }
        assert_eq!(leftovers(&dir.0), Vec::<String>::new());
        t.assert_unharmed(&format!("signal {sig} to the worker"));
    }
    t.w.kill();
}

/// The worst moments: a syscall of crstream's is under way inside the
/// target, which holds registers of crstream's and blocks every signal.
#[test]
fn killed_while_a_syscall_runs_in_the_target_it_stays_unharmed() {
    let dir = TestDir::new("crash-syscall");
    let mut t = Target::start(&dir);
    let paused = dir.path("paused");
    let img = dir.path("img");
    // A live dump injects a dozen calls into the target, and reads the
    // signal actions in its snapshot once it runs again; `--no-live`
    // injects those 62 into the target itself.
    for (sig, nth, args) in [
        (libc::SIGKILL, 1, &[][..]),
        (libc::SIGKILL, 30, &["--no-live"][..]),
        (libc::SIGTERM, 5, &[]),
        (libc::SIGINT, 60, &["--no-live"]),
        (libc::SIGKILL, 72, &["--no-live"]),
    ] {
        let at = format!("syscall:{nth}");
        let child = spawn_dump_with(
            t.w.pid,
            img.to_str().unwrap(),
            args,
            &[
                ("CRSTREAM_TEST_PAUSE_AT", &at),
                ("CRSTREAM_TEST_PAUSE_FILE", paused.to_str().unwrap()),
            ],
        );
        let started = Instant::now();
        while !paused.exists() {
            assert!(
                started.elapsed() < T,
                "the dump never reached syscall {nth}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_file(&paused).unwrap();
        let what = format!("signal {sig} during injected syscall {nth}");
        // The dangerous moment indeed: every signal of the target blocked.
        assert_eq!(
            status_field(t.w.pid, "SigBlk").as_deref(),
            Some("fffffffffffbfeff"),
            "{what}"
        );
        signal(child.id() as i32, sig);
        assert!(!outcome(child, sig), "{what}: the dump completed");
        assert_eq!(leftovers(&dir.0), Vec::<String>::new(), "{what}");
        t.assert_unharmed(&what);
    }
    t.w.kill();
}

/// Waits until `pid` no longer traces `target` (the kernel detaches a
/// dead tracer's tracees as the tracer exits).
/// Untraced, a target left inside a syscall of crstream's finishes it and
/// only then returns through the escape frame that gives its mask back: on
/// a busy machine that takes a moment, but it must happen.
fn assert_mask_comes_back(pid: i32, mask: &str, what: &str) {
    let started = Instant::now();
    while status_field(pid, "SigBlk").as_deref() != Some(mask) && started.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        status_field(pid, "SigBlk").as_deref(),
        Some(mask),
        "{what}: signal mask"
    );
}

fn wait_untraced(target: i32) {
    let started = Instant::now();
    while status_field(target, "TracerPid").as_deref() != Some("0") {
        assert!(started.elapsed() < T, "pid {target} stays traced");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a dump that pauses at `point` (e.g. "syscall:5"); returns it and
/// its worker once the pause is reached.
fn dump_paused_at(pid: i32, img: &Path, paused: &Path, point: &str) -> (Child, i32) {
    let child = spawn_dump(
        pid,
        img.to_str().unwrap(),
        &[
            ("CRSTREAM_TEST_PAUSE_AT", point),
            ("CRSTREAM_TEST_PAUSE_FILE", paused.to_str().unwrap()),
        ],
    );
    let started = Instant::now();
    while !paused.exists() {
        assert!(started.elapsed() < T, "the dump never reached {point}");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_file(paused).unwrap();
    let worker = children_of(child.id() as i32)[0];
    (child, worker)
}

/// SIGKILL of the worker itself (as the OOM killer would) at the worst
/// moments, a syscall of crstream's under way in the target, at its entry
/// and at its exit: the target comes back to its own registers, vector
/// and floating-point state, and signal mask, whether it was stopped in
/// user code (wl_fpu: state that lives only in registers, checked at every
/// iteration) or inside a syscall of its own (wl_memory, sleeping).
#[test]
fn sigkill_of_the_worker_during_an_injected_syscall_harms_nothing() {
    let dir = TestDir::new("crash-worker");
    let paused = dir.path("paused");
    let img = dir.path("img");
    let points = [
        "syscall:1",
        "syscall-exit:2",
        "syscall:8",
        "syscall-exit:20",
        "syscall:40",
    ];

    let mut spin = Workload::spawn("wl_fpu", dir.path("report-fpu"), &[]);
    let r = spin.wait_report(T, |r| field(r, 0, 1) > 0);
    assert!(r.contains(" OK"), "{r}");
    let sigblk = status_field(spin.pid, "SigBlk").unwrap();
    assert_ne!(sigblk, "0000000000000000");
    for point in points {
        let (child, worker) = dump_paused_at(spin.pid, &img, &paused, point);
        signal(worker, libc::SIGKILL);
        assert!(
            !outcome(child, libc::SIGKILL),
            "{point}: the dump completed"
        );
        wait_untraced(spin.pid);
        assert_running_untraced(spin.pid);
        assert_mask_comes_back(spin.pid, &sigblk, point);
        let before = field(&spin.read_report().unwrap(), 0, 1);
        let r = spin.wait_report(T, |r| field(r, 0, 1) > before + 1000 || !r.contains(" OK"));
        assert!(r.contains(" OK"), "{point}: {r}");
        assert_eq!(leftovers(&dir.0), Vec::<String>::new(), "{point}");
    }
    spin.kill();

    let mut sleeper = Target::start_with(&dir, "64");
    for point in points {
        let (child, worker) = dump_paused_at(sleeper.w.pid, &img, &paused, point);
        signal(worker, libc::SIGKILL);
        assert!(
            !outcome(child, libc::SIGKILL),
            "{point}: the dump completed"
        );
        wait_untraced(sleeper.w.pid);
        assert_eq!(leftovers(&dir.0), Vec::<String>::new(), "{point}");
        sleeper.assert_unharmed(&format!("SIGKILL of the worker at {point}"));
    }
    sleeper.w.kill();
}

/// SIGKILL of the worker while the escape frames dump writes for each
/// thread, and the buffers of its calls, are in place: they lie on the
/// threads' alternate signal stacks, where the kernel writes signal frames,
/// not below their stack pointers, where a runtime like Go keeps other
/// goroutines' stacks (wl_small_stack checks its data 64 bytes below a
/// thread's: a second thread's, then the main thread's, whose stack the
/// buffers would be below). Only a thread's first call runs with its frame
/// below.
#[test]
fn sigkill_of_the_worker_leaves_memory_below_a_threads_stack_as_it_was() {
    for mode in [&[][..], &["leader"]] {
        sigkill_of_the_worker_leaves_memory_below_the_small_stack(mode);
    }
}

fn sigkill_of_the_worker_leaves_memory_below_the_small_stack(mode: &[&str]) {
    let dir = TestDir::new("crash-small-stack");
    let paused = dir.path("paused");
    let img = dir.path("img");
    let mut w = Workload::spawn("wl_small_stack", dir.path("report"), mode);
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    // The leader's frame is placed first, then the other thread's, with
    // calls of the leader's using the buffers between.
    for point in ["escape-placed:2", "escape-placed:1"] {
        let (child, worker) = dump_paused_at(w.pid, &img, &paused, point);
        signal(worker, libc::SIGKILL);
        assert!(
            !outcome(child, libc::SIGKILL),
            "{point}: the dump completed"
        );
        wait_untraced(w.pid);
        assert_eq!(leftovers(&dir.0), Vec::<String>::new(), "{point}");
        let at = field(&w.read_report().unwrap(), 0, 1);
        let r = w.wait_report(T, |r| field(r, 0, 1) > at + 2 || !r.contains(" OK"));
        assert!(
            r.contains(" OK"),
            "{mode:?}: SIGKILL of the worker at {point}: {r}"
        );
    }
    w.kill();
}

/// The target killed by someone else while a call of the dump runs in it:
/// the dump ends at once with one line saying so (no stray errors about
/// the registers it could not give back), and leaves no image.
#[test]
fn a_target_killed_during_the_dump_ends_it_with_one_line() {
    let dir = TestDir::new("crash-target-killed");
    let paused = dir.path("paused");
    let img = dir.path("img");
    let mut w = Workload::spawn("wl_small_stack", dir.path("report"), &[]);
    w.wait_report(T, |r| field(r, 0, 1) >= 1);
    let (child, _) = dump_paused_at(w.pid, &img, &paused, "syscall:5");
    w.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the process ended during the dump"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(leftovers(&dir.0), Vec::<String>::new());
}

/// SIGKILL of the worker of a live dump while it writes the pages of the
/// memory snapshot, a child of the target that reports no exit: the
/// supervisor has the target reap it (it stayed a zombie child of the
/// target for as long as the target ran).
#[test]
fn sigkill_of_the_worker_during_a_live_dump_leaves_no_snapshot_behind() {
    let dir = TestDir::new("crash-live");
    let paused = dir.path("paused");
    let img = dir.path("img");
    let mut t = Target::start_with(&dir, "64");
    let (child, worker) = dump_paused_at(t.w.pid, &img, &paused, "snapshot-pages:1");
    assert_eq!(children_of(t.w.pid).len(), 1, "the snapshot is a child");
    signal(worker, libc::SIGKILL);
    assert!(!outcome(child, libc::SIGKILL), "the dump completed");
    wait_untraced(t.w.pid);
    assert_eq!(leftovers(&dir.0), Vec::<String>::new());
    t.assert_unharmed("SIGKILL of the worker of a live dump");
    t.w.kill();
}

/// SIGTERM to a dump to S3: the multipart upload is aborted, no object
/// appears, the target runs on.
#[test]
fn sigterm_to_a_dump_to_s3_leaves_no_upload_behind() {
    let dir = TestDir::new("crash-s3");
    let mut t = Target::start(&dir);
    let bucket = s3_bucket("crash");
    let dest = format!("s3://{bucket}/app.img");
    let env = s3_env();
    let child = spawn_dump(t.w.pid, &dest, &env_refs(&env));
    std::thread::sleep(Duration::from_millis(400));
    signal(child.id() as i32, libc::SIGTERM);
    assert!(!outcome(child, libc::SIGTERM), "the dump completed first");
    assert!(!s3_object_exists(&bucket, "app.img"));
    let (status, body) = s3_http("GET", &format!("/{bucket}?uploads"));
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains("<Upload>"), "an upload is left: {body}");
    t.assert_unharmed("SIGTERM to a dump to S3");
    t.w.kill();
}

/// A TCP proxy to `to` that passes the first `budget` bytes the client
/// sends, then stops reading (a storage server that hangs mid-upload).
/// Answers from the server pass freely.
fn hanging_proxy(to: String, budget: u64) -> String {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let left = std::sync::Arc::new(AtomicU64::new(budget));
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let server = std::net::TcpStream::connect(to.trim_start_matches("http://")).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            let left = left.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let allowed = left.fetch_sub(n as u64, Ordering::SeqCst);
                    if allowed < n as u64 {
                        // Hold the connection, read no more.
                        std::thread::sleep(Duration::from_secs(600));
                        return;
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
            });
        }
    });
    format!("http://{addr}")
}

/// A destination that stops taking data while the target is frozen: the
/// dump gives up after --timeout and the target runs on, instead of
/// staying frozen as long as the storage client keeps waiting.
#[test]
fn a_hung_destination_is_given_up_after_the_timeout() {
    let dir = TestDir::new("crash-hung");
    let mut t = Target::start(&dir);
    let bucket = s3_bucket("hung");
    let env = s3_env_for(hanging_proxy(s3_endpoint(), 256 << 10));
    let mut env = env_refs(&env);
    env.push(("CRSTREAM_MAX_RETRIES", "0"));
    let started = Instant::now();
    let mut c = crstream();
    c.args([
        "dump",
        "-t",
        &t.w.pid.to_string(),
        "-o",
        &format!("s3://{bucket}/app.img"),
        "--timeout",
        "2",
        "--part-size",
        "5",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in &env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        took < Duration::from_secs(20),
        "gave up only after {took:?}: {err}"
    );
    assert!(
        err.contains("accepted no data for 2 s") || err.contains("did not answer for 2 s"),
        "{err}"
    );
    assert!(err.contains("left running"), "{err}");
    t.assert_unharmed("a hung destination");
    assert!(!s3_object_exists(&bucket, "app.img"));
    t.w.kill();
}
