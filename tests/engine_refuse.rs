//! What dump cannot freeze, or restore could not bring back here, is
//! refused before anything is changed, with one line naming the process
//! and why; the process runs on.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// Dumps `pid` with `flags` expecting it to fail, with no image written;
/// returns what it printed.
fn dump_fails(pid: i32, flags: &[&str]) -> String {
    let dir = TestDir::new(&format!("dump-fails-{pid}"));
    let img = dir.path("img");
    let o = crstream()
        .args(["dump", "-t", &pid.to_string(), "-o", img.to_str().unwrap()])
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!img.exists(), "an image was written");
    text(&o)
}

/// Dumps `pid` expecting a refusal; returns the error line.
fn refused(pid: i32, prefix: &[&str]) -> String {
    let dir = TestDir::new(&format!("refuse-{pid}"));
    let img = dir.path("img");
    let mut cmd = if prefix.is_empty() {
        crstream()
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(crstream_bin());
        c
    };
    let o = cmd
        .args(["dump", "-t", &pid.to_string(), "-o", img.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!img.exists(), "an image was written");
    // One line of error (warnings aside: a pipe fd the test runner leaked
    // into the process, say).
    let err = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains(" WARN "))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    err
}

fn sleeper() -> ChildGuard {
    ChildGuard(Some(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ))
}

fn pid_of(g: &ChildGuard) -> i32 {
    g.0.as_ref().unwrap().id() as i32
}

#[test]
fn a_kernel_thread_is_refused_by_name() {
    let err = refused(2, &[]);
    assert!(
        err.contains("kernel thread") && err.contains("kthreadd"),
        "{err}"
    );
}

#[test]
fn a_traced_process_is_refused_naming_its_tracer() {
    let g = sleeper();
    let pid = pid_of(&g);
    // SAFETY: the test process becomes the tracer of its own child.
    let r = unsafe {
        libc::ptrace(0x4206 /* PTRACE_SEIZE */, pid, 0, 0)
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let tracer = status_field(pid, "TracerPid").unwrap();
    assert_ne!(tracer, "0");
    let err = refused(pid, &[]);
    assert!(
        err.contains(&format!("pid {tracer} (")) && err.contains("traces it"),
        "{err}"
    );
}

/// A process that traces another outside the tree (a debugger attached
/// to a running program) is refused naming its tracee: the attachment
/// would end with the dump, and the restored tracer would go on believing
/// it holds it. Both run on, still attached.
#[test]
fn a_process_tracing_one_outside_the_tree_is_refused_naming_its_tracee() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("refuse-tracer");
    let g = sleeper();
    let tracee = pid_of(&g);
    let script = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(0x4206, int(sys.argv[2]), 0, 0) != 0:  # PTRACE_SEIZE
    sys.exit("seize: " + os.strerror(ctypes.get_errno()))
open(sys.argv[1], "w").write(f"{os.getpid()} ready\n")
while True:
    time.sleep(0.1)
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(dir.path("report"))
        .arg(tracee.to_string());
    let w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(Duration::from_secs(20), |r| r.contains("ready"));
    let err = refused(w.pid, &[]);
    assert!(
        err.contains("tracer") && err.contains(&format!("traces pid {tracee} (sleep")),
        "{err}"
    );
    assert_running_untraced(w.pid);
    assert_eq!(
        status_field(tracee, "TracerPid").as_deref(),
        Some(w.pid.to_string().as_str()),
        "the tracee lost its tracer"
    );
}

/// Landlock sandboxes, which no interface reads back: a process that
/// restricted itself (and closed its ruleset) is refused naming Landlock,
/// and so is one where only a worker thread did; each runs on, still
/// confined, and no probe of crstream's is left behind.
#[test]
fn a_landlock_sandbox_is_refused_by_thread() {
    if !available("python3", &["--version"]) {
        return;
    }
    // SAFETY: landlock_create_ruleset asking the ABI version only.
    if unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u64) } < 1 {
        eprintln!("this kernel enforces no Landlock: skipped");
        return;
    }
    let script = r#"
import ctypes, os, struct, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def restrict():
    # Writing files is handled (and so denied), nothing is allowed.
    attr = ctypes.create_string_buffer(struct.pack("QQQ", 1 << 1, 0, 0))
    rs = libc.syscall(444, attr, 8, 0)
    if rs < 0 or libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(446, rs, 0) != 0:
        sys.exit("landlock: " + os.strerror(ctypes.get_errno()))
    os.close(rs)
def denied():
    try:
        open(sys.argv[1] + ".probe", "w")
        return "writable"
    except PermissionError:
        return "denied"
state = {}
def worker():
    restrict()
    while True:
        state["worker"] = denied()
        time.sleep(0.05)
if sys.argv[2] == "process":
    restrict()
    threading.Thread(target=worker, daemon=True).start()
else:
    threading.Thread(target=worker, daemon=True).start()
while True:
    time.sleep(0.1)
    line = f"{threading.get_native_id()} {len(threading.enumerate())} {state.get('worker')}\n"
    if sys.argv[2] == "thread":
        open(sys.argv[1] + ".main", "w").write("ok\n")
    sys.stdout.write(line)
    sys.stdout.flush()
"#;
    // Also in a PID namespace of its own (as `crstream run` starts
    // services): its second process, the probe made in there.
    for scope in ["process", "thread", "pidns"] {
        let dir = TestDir::new(&format!("refuse-landlock-{scope}"));
        let report = dir.path("report");
        let mut cmd = match scope {
            "pidns" => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "/bin/sh", "-c"])
                    .arg(r#"python3 -c "$0" "$1" process & wait"#)
                    .arg(script)
                    .arg(&report);
                c
            }
            _ => {
                let mut c = Command::new("python3");
                c.args(["-c", script]).arg(&report).arg(scope);
                c
            }
        };
        cmd.stdin(Stdio::null());
        let mut w = spawn_isolated(cmd, report.clone());
        let log = report.with_extension("log");
        wait_for_log(&log, "denied");
        if scope == "pidns" {
            // The python below unshare and its sh.
            let python = descendants_of(w.pid)
                .into_iter()
                .find(|&p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.starts_with("python"))
                })
                .expect("python in the namespace");
            let err = refused(python, &[]);
            assert!(err.contains("Landlock sandbox"), "{scope}: {err}");
            assert_running_untraced(python);
            w.kill();
            continue;
        }
        let err = refused(w.pid, &[]);
        assert!(
            err.contains("Landlock sandbox") && err.contains("landlock_restrict_self"),
            "{scope}: {err}"
        );
        // The thread named is the one confined.
        let tid: i32 = err
            .split("thread ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{err}"));
        assert_eq!(tid == w.pid, scope == "process", "{scope}: {err}");
        assert_running_untraced(w.pid);
        // Still confined where it was, and (by thread) free elsewhere.
        let lines = std::fs::read_to_string(&log).unwrap().lines().count();
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log).unwrap().lines().count() > lines + 2
        }));
        let last = std::fs::read_to_string(&log).unwrap();
        assert!(last.trim_end().ends_with("denied"), "{scope}: {last}");
        assert_eq!(dir.path("report.main").exists(), scope == "thread");
        // No probe is left: none runs with this dump's command line.
        let dumped = format!("dump\0-t\0{}\0", w.pid);
        for pid in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(pid.path().join("cmdline")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&dumped),
                "a probe of the dump is left: {}",
                pid.file_name().to_string_lossy()
            );
        }
    }
}

/// A process of another user, unconfined, is not taken for a sandboxed
/// one: the probe is used only once it has that user's ids (it starts as
/// root, with every capability).
#[test]
fn an_unconfined_process_of_another_user_is_dumped() {
    let python = system_python();
    for _ in 0..5 {
        let dir = TestDir::new("landlock-unconfined");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-c",
        ])
        .arg("import time\nprint('up', flush=True)\ntime.sleep(600)");
        let mut w = spawn_isolated(cmd, dir.path("report"));
        wait_for_log(&dir.path("report").with_extension("log"), "up");
        dump(w.pid, &dir.path("img"), &["--leave-running"]);
        assert_running_untraced(w.pid);
        w.kill();
    }
}

/// One PID namespace inside crstream's is dumped with its PIDs there
/// (engine_pidns); a process two namespaces deep is refused, and runs on.
#[test]
fn a_process_two_pid_namespaces_deep_is_refused() {
    let g = ChildGuard(Some(
        Command::new("unshare")
            .args([
                "--pid", "--fork", "unshare", "--pid", "--fork", "sleep", "600",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let outer = pid_of(&g);
    let child_of = |pid: i32| loop {
        if let Some(&c) = children_of(pid).first() {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // unshare → its child, PID 1 of the first namespace, which runs the
    // second unshare → its child, PID 1 of the second, which runs sleep.
    let first = child_of(outer);
    let sleeper = child_of(first);
    let err = refused(sleeper, &[]);
    assert!(
        err.contains("PID namespace") && err.contains("2 PID namespaces inside"),
        "{err}"
    );
    assert_running_untraced(sleeper);
    // SAFETY: the first namespace's PID 1, which this test started; the
    // rest of that namespace goes with it.
    unsafe { libc::kill(first, libc::SIGKILL) };
}

/// A tree that made a PID namespace inside for some of its processes
/// (`unshare --pid --fork`, dumped from the unshare) is refused, naming
/// the first process in it: restored, that one came back in the root's
/// namespace, no longer PID 1 of its own.
#[test]
fn a_pid_namespace_made_inside_the_tree_is_refused() {
    let g = ChildGuard(Some(
        Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let outer = pid_of(&g);
    let inner = loop {
        if let Some(&c) = children_of(outer).first() {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = dump_fails(outer, &[]);
    assert!(
        err.contains(&format!("pid {inner}"))
            && err.contains("a PID namespace made inside the tree"),
        "{err}"
    );
    assert_running_untraced(outer);
    assert_running_untraced(inner);
    // SAFETY: the namespace's PID 1, which this test started; unshare
    // exits with it.
    unsafe { libc::kill(inner, libc::SIGKILL) };
}

/// Namespaces crstream does not save are refused by name, and the process
/// runs on: its own network and UTS namespaces (restored, it would have
/// the host's network and hostname); its own mount namespace with a tmpfs
/// of its own (restored, it would see crstream's mounts).
#[test]
fn a_process_in_namespaces_crstream_does_not_save_is_refused() {
    let dir = TestDir::new("namespaces");
    let mnt = dir.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount_then_sleep = format!("mount -t tmpfs none {} && exec sleep 600", mnt.display());
    let cases = [
        (
            vec!["--net", "--uts", "sleep", "600"],
            "network namespace of its own",
        ),
        (
            vec!["--mount", "sh", "-c", &mount_then_sleep],
            "mount namespace of its own",
        ),
    ];
    for (args, what) in cases {
        let g = ChildGuard(Some(
            Command::new("unshare")
                .args(&args)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let pid = pid_of(&g);
        // Until unshare has execed sleep (the namespaces are then made).
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        }));
        let err = refused(pid, &[]);
        assert!(
            err.contains(&format!("pid {pid}: namespace")) && err.contains(what),
            "{err}"
        );
        assert_running_untraced(pid);
    }
}

/// io_uring (a ring fd with its rings mapped) is refused by name, and the
/// process runs on.
#[test]
fn an_io_uring_instance_is_refused_by_name() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("io_uring");
    let script = "import ctypes, mmap, os, sys, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         fd = libc.syscall(425, 4, ctypes.create_string_buffer(120))\n\
         assert fd >= 0, ctypes.get_errno()\n\
         ring = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)\n\
         open(sys.argv[1], 'w').write('%d ready\\n' % os.getpid())\n\
         time.sleep(600)\n";
    python_refused(&dir, script, &["anon_inode:[io_uring]", "not supported"]);
}

/// python3 running `script` (its argument: DIR/report, where it writes
/// "PID ready"), refused with an error naming everything in `names`; it
/// runs on.
fn python_refused(dir: &TestDir, script: &str, names: &[&str]) {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(dir.path("report"));
    let w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(Duration::from_secs(20), |r| r.contains("ready"));
    let err = refused(w.pid, &[]);
    assert!(names.iter().all(|n| err.contains(n)), "{err}");
    assert_running_untraced(w.pid);
}

/// Memory of hugetlbfs huge pages (mmap MAP_HUGETLB) is refused, naming
/// it, and the process runs on. The test reserves two huge pages for it
/// and gives them back.
#[test]
fn huge_pages_of_hugetlbfs_are_refused_by_name() {
    if !available("python3", &["--version"]) {
        return;
    }
    const RESERVED: &str = "/proc/sys/vm/nr_hugepages";
    struct Reserve(String);
    impl Drop for Reserve {
        fn drop(&mut self) {
            let _ = std::fs::write(RESERVED, &self.0);
        }
    }
    let before = std::fs::read_to_string(RESERVED).unwrap();
    let _reserve = Reserve(before.clone());
    let want = before.trim().parse::<u64>().unwrap() + 2;
    std::fs::write(RESERVED, want.to_string()).unwrap();
    let got: u64 = std::fs::read_to_string(RESERVED)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if got < want {
        // Memory too fragmented for two more 2 MiB pages.
        eprintln!("skipping: {got} of {want} huge pages could be reserved");
        return;
    }
    let dir = TestDir::new("hugetlb");
    let script = "import mmap, os, sys, time\n\
         m = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)\n\
         m[0:5] = b'hello'\n\
         open(sys.argv[1], 'w').write('%d ready\\n' % os.getpid())\n\
         time.sleep(600)\n";
    python_refused(&dir, script, &["MAP_HUGETLB", "not supported"]);
}

/// crstream inside a PID namespace, asked to dump the namespace's first
/// process (whose SIGKILL from inside the kernel ignores): refused at
/// once, never a hang.
#[test]
fn the_first_process_of_a_pid_namespace_is_refused_from_inside_it() {
    let err = refused(
        1,
        &[
            "timeout",
            "60",
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            "\"$@\"; exit $?",
            "sh",
        ],
    );
    assert!(err.contains("first process (PID 1)"), "{err}");
}

/// Without the capabilities restore needs here, dump writes no image and
/// kills nothing.
#[test]
fn dump_without_what_restore_needs_is_refused() {
    let g = sleeper();
    let pid = pid_of(&g);
    let err = refused(
        pid,
        &[
            "setpriv",
            "--bounding-set",
            "-sys_admin,-checkpoint_restore",
            "--",
        ],
    );
    assert!(
        err.contains("CAP_CHECKPOINT_RESTORE") && err.contains("crstream check"),
        "{err}"
    );
    assert_running_untraced(pid);
}

/// python3 with an epoll registration whose fd was closed while its file
/// lives on elsewhere (here in its child): no fd of the process holds the
/// file to register it again, so the dump is refused naming the epoll fd;
/// both run on.
#[test]
fn an_epoll_registration_of_a_file_no_fd_holds_is_refused_by_name() {
    // It reports its epoll fd in a file: a pipe to us would be refused
    // first (its reader is outside the tree).
    let dir = TestDir::new("refuse-epoll");
    let report = dir.path("epfd");
    let g = ChildGuard(Some(
        Command::new("python3")
            .args([
                "-c",
                "import os, select, sys, time\n\
                 ep = select.epoll()\n\
                 r, w = os.pipe()\n\
                 ep.register(r, select.EPOLLIN)\n\
                 if os.fork() == 0:\n\
                 \x20   ep.close()\n\
                 \x20   time.sleep(600)\n\
                 os.close(r)\n\
                 open('/dev/null').close()\n\
                 open(sys.argv[1] + '.tmp', 'w').write(str(ep.fileno()))\n\
                 os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n\
                 time.sleep(600)\n",
            ])
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = pid_of(&g);
    let epfd: i32 = loop {
        if let Ok(s) = std::fs::read_to_string(&report) {
            break s.trim().parse().expect("epoll fd");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = refused(pid, &[]);
    let kids = support::children_of(pid);
    assert!(
        err.contains(&format!("fd {epfd}")) && err.contains("registered fd was closed"),
        "{err}"
    );
    assert_running_untraced(pid);
    for kid in kids {
        assert_running_untraced(kid);
        // SAFETY: ending the child of the process this test started.
        unsafe { libc::kill(kid, libc::SIGKILL) };
    }
}

/// python3 writing a counter into a pipe that `cat`, outside the tree,
/// reads: it would come back with nobody reading and die of SIGPIPE at its
/// next line. Refused, naming cat; both run on. The whole pipeline (both
/// ends inside) is dumped. With `--external pipe:[INODE]` it is dumped,
/// refused at restore without a pipe handed in, and with one
/// (`--inherit-fd`) writes on into it from where it stopped.
#[test]
fn a_pipe_whose_other_end_is_outside_the_tree_is_refused_by_name() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("refuse-pipe");
    let line = format!(
        "python3 -c 'import time\ni = 0\nwhile True: print(i, flush=True); i += 1; time.sleep(0.05)' | cat > {}",
        dir.path("out").display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &line]);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let (python, cat) = loop {
        let kids = children_of(w.pid);
        let named = |n: &str| {
            kids.iter().copied().find(|&k| {
                std::fs::read_to_string(format!("/proc/{k}/comm")).is_ok_and(|c| c.trim() == n)
            })
        };
        if let (Some(p), Some(c)) = (named("python3"), named("cat")) {
            break (p, c);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A few lines through cat first: the test reads where python was.
    let counted = || -> Vec<u64> {
        std::fs::read_to_string(dir.path("out"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    while counted().len() < 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = refused(python, &[]);
    assert!(
        err.contains(&format!("read end pid {cat} (cat)"))
            && err.contains(&format!("pid {python} fd 1")),
        "{err}"
    );
    assert_running_untraced(python);
    assert_running_untraced(cat);
    dump(w.pid, &dir.path("whole"), &["--leave-running"]);
    assert_running_untraced(python);

    // --external: dumped (and killed); restored only with a pipe handed in.
    let pipe = std::fs::read_link(format!("/proc/{python}/fd/1"))
        .unwrap()
        .display()
        .to_string();
    let img = dir.path("img");
    dump(python, &img, &["--external", &pipe]);
    let last = *counted().last().expect("cat's copy");
    w.kill();
    assert!(wait_gone(python, Duration::from_secs(10)));
    let err = restore_refused(img.to_str().unwrap(), &[]);
    assert!(err.contains(&pipe) && err.contains("--inherit-fd"), "{err}");
    let (r, wfd) = rustix::pipe::pipe().unwrap(); // not close-on-exec: crstream gets it
    let o = run(
        &[
            "restore",
            "-i",
            img.to_str().unwrap(),
            "--detach",
            "--json",
            "--inherit-fd",
            &format!("fd[{}]:{pipe}", std::os::fd::AsRawFd::as_raw_fd(&wfd)),
        ],
        &[],
    );
    drop(wfd);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let restored = v["pid"].as_i64().unwrap() as i32;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::from(r)));
    let first: u64 = lines.next().unwrap().unwrap().parse().unwrap();
    let second: u64 = lines.next().unwrap().unwrap().parse().unwrap();
    // SAFETY: ending the process this test restored.
    unsafe { libc::kill(restored, libc::SIGKILL) };
    assert!(
        first > last && second == first + 1,
        "{last} then {first}, {second}"
    );
}

/// A process whose main thread has exited while its other threads run
/// (pthread_exit in main) is refused, as the root of the tree and as a
/// child in it, and runs on untouched. It was taken for a zombie, so its
/// threads were never frozen: as a child, it ran on, orphaned, while the
/// dump killed its parent, and the restore then found its PID in use.
#[test]
fn a_process_whose_main_thread_has_exited_is_refused() {
    let t = Duration::from_secs(30);
    let dir = TestDir::new("main-exits");
    // Counting, untraced, in every thread but the main one.
    let runs_on = |pid: i32, report: &std::path::Path| {
        let count = || {
            let r = std::fs::read_to_string(report).unwrap_or_default();
            field(&r, 1, 2)
        };
        let n = count();
        assert!(
            wait_until(t, || count() > n + 2),
            "pid {pid} stopped counting"
        );
        for tid in tasks(pid).into_iter().filter(|&tid| tid != pid) {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            assert!(s.contains("TracerPid:\t0"), "tid {tid} is traced");
            assert!(
                !s.contains("State:\tt") && !s.contains("State:\tT"),
                "tid {tid} is stopped"
            );
        }
    };
    let mut w = Workload::spawn("wl_threads", dir.path("report"), &["main-exits"]);
    w.wait_report(t, |r| field(r, 1, 2) > 2);
    assert!(wait_until(t, || proc_state(w.pid) == Some('Z')));
    let err = refused(w.pid, &[]);
    assert!(err.contains("its main thread has exited"), "{err}");
    // Its main thread shows Z and exiting, but the process runs on.
    assert!(err.contains("the process was left running"), "{err}");
    runs_on(w.pid, &w.report);
    w.kill();

    // As a child of the tree.
    let report = dir.path("child-report");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!(
            "'{}' '{}' main-exits & wait",
            example("wl_threads").display(),
            report.display()
        ))
        .stdin(Stdio::null());
    let mut parent = Workload::from_child(sh.spawn().unwrap(), dir.path("unused"));
    assert!(wait_until(t, || {
        std::fs::read_to_string(&report).is_ok_and(|r| field(&r, 1, 2) > 2)
    }));
    let child = descendants_of(parent.pid)[0];
    let err = dump_fails(parent.pid, &[]);
    assert!(
        err.contains(&format!("pid {child}")) && err.contains("its main thread has exited"),
        "{err}"
    );
    assert_running_untraced(parent.pid);
    runs_on(child, &report);
    parent.kill();
}

/// The state letter of /proc/PID/stat.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// memfd_secret memory, whose pages nothing outside the process can read,
/// is refused by name, mapped or only open (the errors spoke of a file
/// "removed under that name but linked under another").
#[test]
fn memfd_secret_memory_is_refused_by_name() {
    if !available("python3", &["--version"]) {
        return;
    }
    let script = "import ctypes, mmap, os, sys, time\n\
        fd = ctypes.CDLL(None, use_errno=True).syscall(447, 0)\n\
        if fd < 0: print('unsupported', ctypes.get_errno(), flush=True); time.sleep(600)\n\
        os.ftruncate(fd, 4096); m = mmap.mmap(fd, 4096); m[:6] = b'secret'\n\
        if sys.argv[1] == 'fd': m.close()\n\
        print(fd, flush=True)\n\
        time.sleep(600)\n";
    for how in ["mapped", "fd"] {
        let dir = TestDir::new(&format!("refuse-secretmem-{how}"));
        let (mut w, _, first) = python_reporting(&dir, script, &[how]);
        if first[0] == "unsupported" {
            // No memfd_secret here (secretmem off, or an older kernel).
            w.kill();
            return;
        }
        let err = refused(w.pid, &[]);
        assert!(err.contains("memfd_secret memory"), "{how}: {err}");
        assert_running_untraced(w.pid);
        w.kill();
    }
}

/// A file whose path no longer leads to it is refused by name, since
/// restore reopens files by path: a POSIX message queue (its path is in a
/// filesystem only mq_open reaches: the dump saved it as a regular file and
/// the restore failed on it, or opened whatever file had that path), and a
/// file a mount has covered since it was opened (restore would have opened
/// the file now there).
#[test]
fn a_file_its_path_does_not_lead_to_is_refused_by_name() {
    if !available("python3", &["--version"]) {
        return;
    }
    let name = format!("/crstream-test-{}", std::process::id());
    let script = "import ctypes, os, sys, time\n\
        rt = ctypes.CDLL('librt.so.1', use_errno=True)\n\
        fd = rt.mq_open(sys.argv[1].encode(), os.O_CREAT | os.O_RDWR, 0o600, None)\n\
        assert fd >= 0, ctypes.get_errno()\n\
        print(fd, flush=True)\n\
        time.sleep(600)\n";
    let dir = TestDir::new("refuse-unreachable");
    let (mut w, _, first) = python_reporting(&dir, script, &[&name]);
    let fd: i32 = first[0].parse().unwrap();
    let unlink = || {
        let unlinked = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import ctypes; assert ctypes.CDLL('librt.so.1').mq_unlink(b'{name}') == 0"
            ))
            .status()
            .unwrap();
        assert!(unlinked.success());
    };
    // Under its name, then once unlinked (its path then shows "(deleted)").
    for round in ["linked", "unlinked"] {
        let err = refused(w.pid, &[]);
        assert!(
            err.contains(&format!("fd {fd}")) && err.contains("a POSIX message queue (mq_open)"),
            "{round}: {err}"
        );
        assert_running_untraced(w.pid);
        if round == "linked" {
            unlink();
        }
    }
    w.kill();

    // A file covered by a mount, with a file of the same name on top.
    let sub = dir.path("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("f"), "under").unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec 3<\"$0\"; exec sleep 600"])
        .arg(sub.join("f"));
    let mut w = spawn_isolated(cmd, dir.path("report2"));
    let pid = w.pid;
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "crstream-test", sub.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(sub.clone());
    std::fs::write(sub.join("f"), "on top").unwrap();
    let err = refused(pid, &[]);
    assert!(
        err.contains("fd 3") && err.contains("its path leads to another file"),
        "{err}"
    );
    assert_running_untraced(pid);
    w.kill();
}

/// A TCP listener a process shares with its parent outside the tree (a
/// supervisor that hands its workers the listener, socket activation) is
/// refused, naming the parent: the dump saved it as the worker's own, and
/// the restore then failed to bind the port the parent still held, after
/// the dump had killed the worker. Both run on, and the listener answers.
#[test]
fn a_socket_shared_with_a_process_outside_the_tree_is_refused_by_name() {
    if !available("python3", &["--version"]) {
        return;
    }
    let script = "import os, socket, sys, time\n\
        s = socket.socket()\n\
        s.bind(('127.0.0.1', 0))\n\
        s.listen(8)\n\
        child = os.fork()\n\
        if child == 0:\n\
        \x20   time.sleep(600)\n\
        print(child, s.getsockname()[1], s.fileno(), flush=True)\n\
        time.sleep(600)\n";
    let dir = TestDir::new("refuse-shared-socket");
    let (mut w, _, first) = python_reporting(&dir, script, &[]);
    let v: Vec<i32> = first.iter().map(|x| x.parse().unwrap()).collect();
    let (child, port, fd) = (v[0], v[1], v[2]);
    let err = refused(child, &[]);
    assert!(
        err.contains(&format!("fd {fd}"))
            && err.contains(&format!(
                "pid {} (python3) outside the tree holds too",
                w.pid
            )),
        "{err}"
    );
    assert_running_untraced(child);
    assert_running_untraced(w.pid);
    std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("the listener answers");
    w.kill();
}

/// A process waiting for its vfork child (posix_spawn's child, blocked on
/// a FIFO of its file actions before it execs) is refused at once, naming
/// the child: the freeze waited silently, with SIGTERM ignored, until the
/// child exec'd or exited. Both run on.
#[test]
fn a_process_waiting_for_its_vfork_child_is_refused_at_once() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("refuse-vfork");
    let fifo = dir.path("fifo");
    make_fifo(&fifo);
    let script = "import os, sys\n\
        pid = os.posix_spawn('/bin/true', ['true'], os.environ,\n\
        \x20   file_actions=[(os.POSIX_SPAWN_OPEN, 3, sys.argv[1], os.O_RDONLY, 0)])\n\
        print('spawned', pid, flush=True)\n\
        os.waitpid(pid, 0)\n\
        import time; time.sleep(600)\n";
    // Not through a wrapper (pyenv's shims run helpers of their own).
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script]).arg(&fifo);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let t = Duration::from_secs(30);
    // The child exists, and the parent waits for it (uninterruptibly).
    let in_vfork_wait = || {
        std::fs::read_to_string(format!("/proc/{}/stat", w.pid)).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|f| f.trim_start().starts_with('D'))
        })
    };
    assert!(wait_until(t, || !children_of(w.pid).is_empty() && in_vfork_wait()));
    let child = children_of(w.pid)[0];
    let img = dir.path("img");
    let mut dump = crstream()
        .args([
            "dump",
            "-t",
            &w.pid.to_string(),
            "-o",
            img.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let ended = loop {
        if dump.try_wait().unwrap().is_some() {
            break true;
        }
        if started.elapsed() > t {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !ended {
        let _ = dump.kill();
    }
    let o = dump.wait_with_output().unwrap();
    assert!(ended, "the dump waited for the vfork child");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&format!("its memory with process {}", w.pid))
            && err.contains("a vfork child that has not exec'd yet"),
        "{err}"
    );
    assert!(!children_of(w.pid).is_empty() && child > 0);
    assert!(!img.exists());
    // Unblocked, the child execs and the parent goes on.
    let _writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    wait_for_log(&dir.path("report").with_extension("log"), "spawned");
    assert_running_untraced(w.pid);
    w.kill();
}

/// A TCP connection holding urgent data (MSG_OOB) the server has not read
/// is refused by name with --tcp-established: repair mode reads the
/// receive queue up to the urgent mark, so the urgent byte and all after
/// it were lost, silently. The server runs on and reads them all.
#[test]
fn a_tcp_connection_with_urgent_data_pending_is_refused() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    if !available("python3", &["--version"]) {
        return;
    }
    let script = "import socket, sys, time\n\
        s = socket.socket()\n\
        s.bind(('127.0.0.1', 0))\n\
        s.listen(1)\n\
        print(s.getsockname()[1], flush=True)\n\
        c, _ = s.accept()\n\
        sys.stdin = open(sys.argv[1])\n\
        sys.stdin.read()\n\
        data = c.recv(100)\n\
        oob = c.recv(1, socket.MSG_OOB)\n\
        while len(data) < 20:\n\
        \x20   data += c.recv(100)\n\
        print(data.decode(), oob.decode(), flush=True)\n\
        time.sleep(600)\n";
    let dir = TestDir::new("refuse-urgent");
    let go = dir.path("go");
    make_fifo(&go);
    let (mut w, log, first) = python_reporting(&dir, script, &[go.to_str().unwrap()]);
    let port: u16 = first[0].parse().unwrap();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"AAAAAAAAAA").unwrap();
    // SAFETY: send of a local byte on the client's socket.
    let sent = unsafe { libc::send(client.as_raw_fd(), b"T".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(sent, 1);
    client.write_all(b"BBBBBBBBBB").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let err = dump_fails(w.pid, &["--tcp-established"]);
    assert!(err.contains("urgent data (MSG_OOB)"), "{err}");
    assert_running_untraced(w.pid);
    // The server reads everything, the urgent byte apart.
    std::fs::write(&go, b"").unwrap();
    wait_for_log(&log, "AAAAAAAAAABBBBBBBBBB T");
    w.kill();
}

/// A TCP connection with zero-copy sends (SO_ZEROCOPY) is refused by name
/// with --tcp-established: the kernel's count of zero-copy sends, which
/// numbers their completions, would start again at 0. With --tcp-close it
/// is saved (it sends nothing more). The server runs on.
#[test]
fn a_tcp_connection_with_zero_copy_sends_is_refused_established() {
    if !available("python3", &["--version"]) {
        return;
    }
    let script = "import socket, time\n\
        s = socket.socket()\n\
        s.bind(('127.0.0.1', 0))\n\
        s.listen(1)\n\
        print(s.getsockname()[1], flush=True)\n\
        c, _ = s.accept()\n\
        c.setsockopt(socket.SOL_SOCKET, 60, 1)\n\
        c.send(b'zero-copy', 0x4000000)\n\
        print('sent', flush=True)\n\
        time.sleep(600)\n";
    let dir = TestDir::new("refuse-zerocopy");
    let (mut w, log, first) = python_reporting(&dir, script, &[]);
    let port: u16 = first[0].parse().unwrap();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_for_log(&log, "sent");
    let err = dump_fails(w.pid, &["--tcp-established"]);
    assert!(err.contains("zero-copy sends (SO_ZEROCOPY)"), "{err}");
    assert_running_untraced(w.pid);
    let img = dir.path("img-closed");
    dump(w.pid, &img, &["--tcp-close", "--leave-running"]);
    assert_running_untraced(w.pid);
    w.kill();
}

/// A unix stream socket holding an out-of-band byte not read yet is
/// refused by name: it came back as ordinary data in the stream (MSG_OOB
/// then failed with EINVAL). The process runs on and reads it apart.
#[test]
fn a_unix_socket_with_an_out_of_band_byte_pending_is_refused() {
    if !available("python3", &["--version"]) {
        return;
    }
    let script = "import socket, sys, time\n\
        a, b = socket.socketpair()\n\
        a.send(b'normal')\n\
        a.send(b'U', socket.MSG_OOB)\n\
        a.send(b'after')\n\
        print('ready', b.fileno(), flush=True)\n\
        open(sys.argv[1]).read()\n\
        time.sleep(0.2)\n\
        first = b.recv(100)\n\
        oob = b.recv(1, socket.MSG_OOB)\n\
        rest = b.recv(100)\n\
        print(first.decode(), oob.decode(), rest.decode(), flush=True)\n\
        time.sleep(600)\n";
    let dir = TestDir::new("refuse-unix-oob");
    let go = dir.path("go");
    make_fifo(&go);
    let (mut w, log, first) = python_reporting(&dir, script, &[go.to_str().unwrap()]);
    let fd: i32 = first[1].parse().unwrap();
    let err = refused(w.pid, &[]);
    assert!(
        err.contains(&format!("fd {fd}")) && err.contains("out-of-band byte (MSG_OOB)"),
        "{err}"
    );
    assert_running_untraced(w.pid);
    std::fs::write(&go, b"").unwrap();
    wait_for_log(&log, "normal U after");
    w.kill();
}

/// A listener with TCP_DEFER_ACCEPT holding a connection whose client has
/// sent nothing yet (a handshake no fd or queue holds: nginx's `deferred`)
/// is refused, by name: restored without it, the client was reset at its
/// first send. The server runs on and serves that client.
#[test]
fn a_deferred_connection_not_yet_accepted_is_refused() {
    use std::io::{Read, Write};
    if !available("python3", &["--version"]) {
        return;
    }
    let script = "import socket, time\n\
        s = socket.socket()\n\
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)\n\
        s.bind(('127.0.0.1', 0))\n\
        s.listen(8)\n\
        print(s.getsockname()[1], flush=True)\n\
        c, _ = s.accept()\n\
        c.sendall(c.recv(100).upper())\n\
        time.sleep(600)\n";
    let dir = TestDir::new("refuse-deferred");
    let (mut w, _, first) = python_reporting(&dir, script, &[]);
    let t = Duration::from_secs(30);
    let port: u16 = first[0].parse().unwrap();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for flags in [&[][..], &["--tcp-established"]] {
        let err = dump_fails(w.pid, flags);
        assert!(
            err.contains("1 connection(s) waiting for their client's first data"),
            "{flags:?}: {err}"
        );
    }
    assert_running_untraced(w.pid);
    client.set_read_timeout(Some(t)).unwrap();
    client.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HELLO");
    w.kill();
}

/// A FIFO at `path`.
fn make_fifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// python3 running `script` with `args`, its output in a log: the process,
/// the log and the words of its first line, once written.
fn python_reporting(
    dir: &TestDir,
    script: &str,
    args: &[&str],
) -> (Workload, std::path::PathBuf, Vec<String>) {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).args(args);
    let w = spawn_isolated(cmd, dir.path("report"));
    let log = dir.path("report").with_extension("log");
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.ends_with('\n'))
    }));
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text.lines().next().unwrap_or("");
    (w, log, first.split_whitespace().map(String::from).collect())
}

/// Waits until the log shows `want`; fails with the log after 30 s.
fn wait_for_log(log: &std::path::Path, want: &str) {
    let shows = || std::fs::read_to_string(log).is_ok_and(|l| l.contains(want));
    assert!(
        wait_until(Duration::from_secs(30), shows),
        "no {want:?} in: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
