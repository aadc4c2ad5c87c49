//! End-to-end tests of POSIX timers (timer_create) and inotify fds, with
//! the wl_timers workload (run as root).
//!
//! Run with: cargo build --bin crstream --example wl_timers &&
//! cargo test --test engine_timers

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);

// Report fields (see examples/wl_timers.rs).
const COUNTER: usize = 1;
const USR1: usize = 2;
const USR2: usize = 3;
const USR2_ON_THREAD: usize = 4;
const BAD: usize = 5;
const WD_DIR: usize = 10;
const WD_FILE: usize = 11;
const LAST_CREATE: usize = 12;
const LAST_MODIFY: usize = 13;
const CHECKS_OK: usize = 14;

fn timers(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap()
}

/// The "inotify wd:.. ino:.. sdev:.. mask:.." lines of the workload's
/// inotify fd, sorted.
fn inotify_watches(pid: i32) -> Vec<String> {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_str() == Some("anon_inode:inotify")) {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_str().unwrap()
            ))
            .unwrap();
            let mut v: Vec<String> = info
                .lines()
                .filter(|l| l.starts_with("inotify "))
                .map(str::to_string)
                .collect();
            v.sort();
            return v;
        }
    }
    panic!("pid {pid} has no inotify fd");
}

fn start(dir: &TestDir) -> Workload {
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let w = Workload::spawn("wl_timers", dir.path("report"), &[data.to_str().unwrap()]);
    let r = w.wait_report(T, |r| {
        field(r, 0, COUNTER) >= 3 && field(r, 0, USR2_ON_THREAD) >= 3
    });
    assert_eq!(
        field(&r, 0, CHECKS_OK),
        1,
        "checks failed before the dump: {r}"
    );
    assert_eq!(field(&r, 0, BAD), 0, "{r}");
    w
}

/// Restores IMG (with ENV) and checks that the timers and the inotify
/// watches are those of the dumped process and keep working.
fn restore_and_check(
    w: &mut Workload,
    img: &Path,
    env: &[(&str, &str)],
    timers_before: &str,
    watches_before: &[String],
    data: &Path,
) {
    let at_dump = w.read_report().unwrap();
    let o = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach", "--json"],
        env,
    );
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let pid = v["pid"].as_i64().unwrap() as i32;
    w.restored(pid);
    assert_eq!(timers(pid), timers_before, "/proc/PID/timers changed");
    assert_eq!(
        inotify_watches(pid),
        watches_before,
        "inotify watches changed"
    );
    let (usr1, usr2) = (field(&at_dump, 0, USR1), field(&at_dump, 0, USR2_ON_THREAD));
    let r = w.wait_report(T, |r| {
        field(r, 0, COUNTER) > field(&at_dump, 0, COUNTER) + 3
    });
    assert_eq!(
        field(&r, 0, CHECKS_OK),
        1,
        "timer_gettime on the saved IDs: {r}"
    );
    assert!(
        field(&r, 0, USR1) > usr1 + 5,
        "the periodic timer stopped: {at_dump} -> {r}"
    );
    assert!(
        field(&r, 0, USR2_ON_THREAD) > usr2 + 2,
        "the SIGEV_THREAD_ID timer no longer signals its thread: {at_dump} -> {r}"
    );
    assert_eq!(
        field(&r, 0, USR2),
        field(&r, 0, USR2_ON_THREAD),
        "SIGUSR2 on another thread"
    );
    assert_eq!(field(&r, 0, BAD), 0, "bad siginfo in a timer signal: {r}");

    // inotify: events arrive with the saved wds.
    let (wd_dir, wd_file) = (field(&r, 0, WD_DIR), field(&r, 0, WD_FILE));
    assert!(wd_dir >= 2 && wd_file > wd_dir, "{r}");
    std::fs::write(data.join("watched").join(format!("new-{pid}")), b"").unwrap();
    std::fs::write(data.join("file.txt"), b"modified").unwrap();
    let r = w.wait_report(T, |r| {
        field(r, 0, LAST_CREATE) != 0 && field(r, 0, LAST_MODIFY) != 0
    });
    assert_eq!(field(&r, 0, LAST_CREATE), wd_dir, "IN_CREATE wd: {r}");
    assert_eq!(field(&r, 0, LAST_MODIFY), wd_file, "IN_MODIFY wd: {r}");
    assert_running_untraced(pid);
}

/// Timers keep their IDs, clocks, signals, targets and settings; the inotify
/// fd keeps its watches and their wds.
#[test]
fn posix_timers_and_inotify_watches_survive() {
    let dir = TestDir::new("timers");
    let mut w = start(&dir);
    let timers_before = timers(w.pid);
    assert_eq!(
        timers_before
            .lines()
            .filter(|l| l.starts_with("ID:"))
            .count(),
        4,
        "{timers_before}"
    );
    let watches_before = inotify_watches(w.pid);
    assert_eq!(watches_before.len(), 2, "{watches_before:?}");
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    restore_and_check(
        &mut w,
        &img,
        &[],
        &timers_before,
        &watches_before,
        &dir.path("data"),
    );
}

/// Without PR_TIMER_CREATE_RESTORE_IDS (forced in debug builds), the IDs are
/// reached with filler timers.
#[test]
fn posix_timer_ids_are_reached_without_the_prctl() {
    let dir = TestDir::new("timers-linear");
    let mut w = start(&dir);
    let timers_before = timers(w.pid);
    let watches_before = inotify_watches(w.pid);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    restore_and_check(
        &mut w,
        &img,
        &[("CRSTREAM_TEST_FAIL_AT", "posix-timer-prctl")],
        &timers_before,
        &watches_before,
        &dir.path("data"),
    );
}

/// A watched path that is gone at restore time: a clean error naming it,
/// and no process left behind. Once the path is back, the same image
/// restores.
#[test]
fn restore_refuses_an_inotify_watch_on_a_removed_path() {
    let dir = TestDir::new("timers-gone");
    let mut w = start(&dir);
    let tids = tasks(w.pid);
    let timers_before = timers(w.pid);
    let watches_before = inotify_watches(w.pid);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let file = dir.path("data").join("file.txt");
    std::fs::remove_file(&file).unwrap();
    let err = restore_refused(img.to_str().unwrap(), &[]);
    assert!(
        err.contains("inotify") && err.contains(file.to_str().unwrap()),
        "{err}"
    );
    for t in tids {
        assert!(!proc_exists(t), "tid {t} left behind by a failed restore");
    }
    // Same path, new inode: the watch is added by path again.
    std::fs::write(&file, b"x").unwrap();
    let o = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach", "--json"],
        &[],
    );
    assert!(o.status.success(), "restore failed: {}", text(&o));
    w.restored(w.pid);
    assert_eq!(timers(w.pid), timers_before);
    let after = inotify_watches(w.pid);
    assert_eq!(after.len(), watches_before.len(), "{after:?}");
}

/// inotify events the process has not read when it is dumped cannot come
/// back (a read takes them, nothing queues one): the dump says so.
#[test]
fn inotify_events_not_read_at_the_dump_are_named_as_lost() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("inotify-queued");
    let script = "import ctypes, os, sys, time\n\
         report, where = sys.argv[1], sys.argv[2]\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         fd = libc.inotify_init1(os.O_NONBLOCK)\n\
         assert libc.inotify_add_watch(fd, where.encode(), 0x100) >= 0\n\
         open(os.path.join(where, 'new'), 'w').close()\n\
         open(report, 'w').write('%d ready\\n' % os.getpid())\n\
         time.sleep(600)\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script])
        .arg(dir.path("report"))
        .arg(dir.path(""));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| r.contains("ready"));
    let o = dump(w.pid, &dir.path("img"), &[]);
    assert!(
        text(&o).contains("bytes of inotify events the process has not read yet are lost"),
        "{}",
        text(&o)
    );
    w.reap_dumped();
}

/// A timer on the creating thread's CPU clock of a multi-threaded process
/// cannot be recreated (/proc does not say which thread): the dump refuses
/// it by name and the workload runs on.
#[test]
fn dump_refuses_a_thread_cpu_clock_timer_and_the_target_runs_on() {
    let dir = TestDir::new("timers-cpuclock");
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let w = Workload::spawn(
        "wl_timers",
        dir.path("report"),
        &[data.to_str().unwrap(), "thread-cpu-clock"],
    );
    let r = w.wait_report(T, |r| field(r, 0, COUNTER) >= 2);
    let pid_s = w.pid.to_string();
    let img = dir.path("img");
    let err = dump_refused(w.pid, &img, &[], &[]);
    assert!(
        err.contains("POSIX timer") && err.contains("CPU clock") && err.contains(&pid_s),
        "{err}"
    );
    w.wait_report(T, |x| field(x, 0, COUNTER) > field(&r, 0, COUNTER) + 2);
    assert_running_untraced(w.pid);
}

/// A periodic POSIX timer whose signal is pending (blocked) at the dump:
/// the kernel keeps one signal pending per timer and counts the expiries
/// after it as overruns. After restore exactly one signal of the timer is
/// pending, with its value, and the timer goes on with its period (the
/// saved signal was queued besides the one the timer raised again: two).
#[test]
fn a_pending_periodic_timer_signal_comes_back_once() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("pending-timer");
    let script = "import ctypes, os, signal, sys, time\n\
         report = sys.argv[1]\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         class sigevent(ctypes.Structure): _fields_ = [('value', ctypes.c_long), ('signo', ctypes.c_int), ('notify', ctypes.c_int), ('pad', ctypes.c_int * 12)]\n\
         class itimerspec(ctypes.Structure): _fields_ = [('i_s', ctypes.c_long), ('i_ns', ctypes.c_long), ('v_s', ctypes.c_long), ('v_ns', ctypes.c_long)]\n\
         sig = int(signal.SIGRTMIN) + 3\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, {sig})\n\
         ev = sigevent(4242, sig, 0); tid = ctypes.c_void_p()\n\
         assert libc.timer_create(1, ctypes.byref(ev), ctypes.byref(tid)) == 0\n\
         assert libc.timer_settime(tid, 0, ctypes.byref(itimerspec(0, 50_000_000, 0, 50_000_000)), None) == 0\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         got = []\n\
         while True:\n\
         \x20   si = signal.sigtimedwait({sig}, 0)\n\
         \x20   if si is None: break\n\
         \x20   got.append((si.si_code, si.si_pid))\n\
         time.sleep(0.3)\n\
         later = signal.sigtimedwait({sig}, 0)\n\
         open(report, 'w').write('%d %d %s %s\\n' % (os.getpid(), n, got, later is not None and later.si_code == -2))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    // si_pid holds the timer ID for SI_TIMER (-2): timer 0.
    assert!(r.contains(" [(-2, 0)] True"), "{r}\n{}", w.log());
    w.kill();
}

/// A thread waiting in sigtimedwait when the dump freezes it waits again
/// after restore: the freeze ends the call with EINTR, which the kernel
/// does not restart, and CPython's sigtimedwait, told EINTR after its
/// deadline (a restore always passes it), returns a siginfo it never
/// filled: a signal nobody sent.
#[test]
fn a_thread_in_sigtimedwait_waits_again_after_restore() {
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("sigtimedwait");
    let script = "import os, signal, sys, time\n\
         report = sys.argv[1]\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n\
         n = 0; bogus = []\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n))\n\
         \x20   si = signal.sigtimedwait({signal.SIGUSR1}, 0.05)\n\
         \x20   if si is not None: bogus.append((si.si_signo, si.si_code))\n\
         open(report, 'w').write('%d %d bogus %s\\n' % (os.getpid(), n, bogus))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "bogus");
    assert!(r.contains("bogus []"), "{r}\n{}", w.log());
    w.kill();
}
