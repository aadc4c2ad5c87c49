//! Live dump (`dump --leave-running`): the process is frozen only while its
//! state is read, then runs on while its pages are written from a
//! copy-on-write snapshot; the image is still one instant of its memory.
//!
//! Run with: cargo build --examples && cargo test --test engine_live

mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(30);

/// wl_sweep writes every page over and over, checking that each holds the
/// previous sweep's number: an image mixing pages from before and after
/// the freeze makes the restored copy report TORN. The original runs on
/// during the dump (frozen for a fraction of it), keeps no child, and a
/// second live dump of it works as well.
#[test]
fn a_live_dump_saves_one_instant_of_memory_the_process_keeps_writing() {
    let dir = TestDir::new("live");
    let mut w = Workload::spawn("wl_sweep", dir.path("report"), &["256"]);
    w.wait_report(T, |r| field(r, 0, 0) >= 3);
    for round in 0..2 {
        let img = dir.path(&format!("img{round}"));
        let o = dump(w.pid, &img, &["--leave-running", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
        assert_eq!(s["live"], true, "{s}");
        let (frozen, total) = (
            s["frozen_ms"].as_f64().unwrap(),
            s["total_ms"].as_f64().unwrap(),
        );
        assert!(
            frozen * 2.0 < total,
            "frozen {frozen} ms of {total} ms: {s}"
        );
        assert!(s["pages"].as_u64().unwrap() >= 256 * 256, "{s}");
        // The original sweeps on, never out of step, with no child left.
        let n = field(&w.read_report().unwrap(), 0, 0);
        w.wait_report(T, |r| field(r, 0, 0) > n + 2);
        assert_running_untraced(w.pid);
        assert_eq!(
            children_of(w.pid),
            Vec::<i32>::new(),
            "a snapshot stays behind"
        );
    }

    // Each copy sweeps on from where its image was taken.
    w.kill();
    for round in 0..2 {
        let _ = std::fs::remove_file(dir.path("report"));
        put_back_report_tmp(&w.report);
        let (pid, _) = restore(&dir.path(&format!("img{round}")));
        w.restored(pid);
        let first = field(&w.wait_report(T, |r| field(r, 0, 0) > 0), 0, 0);
        let r = w.wait_report(T, |r| field(r, 0, 0) >= first + 3);
        assert_eq!(field(&r, 0, 1), pid as u64, "{r}");
        assert_running_untraced(pid);
        w.kill();
    }
}

/// `--no-live` keeps the process frozen until its pages are written.
#[test]
fn no_live_keeps_the_process_frozen_for_the_whole_dump() {
    let dir = TestDir::new("nolive");
    let w = Workload::spawn("wl_sweep", dir.path("report"), &["64"]);
    w.wait_report(T, |r| field(r, 0, 0) >= 3);
    let o = dump(
        w.pid,
        &dir.path("img"),
        &["--leave-running", "--no-live", "--json"],
    );
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    assert_eq!(s["live"], false, "{s}");
    let (frozen, total) = (
        s["frozen_ms"].as_f64().unwrap(),
        s["total_ms"].as_f64().unwrap(),
    );
    assert!(
        frozen * 1.2 > total,
        "frozen {frozen} ms of {total} ms: {s}"
    );
    let n = field(&w.read_report().unwrap(), 0, 0);
    w.wait_report(T, |r| field(r, 0, 0) > n + 2);
    assert_running_untraced(w.pid);
}

/// A parent and a child sharing pages copy-on-write (wl_cow), dumped live:
/// the pages they share are found between their snapshots, once both run
/// again, and come back shared, each process with its own pages intact.
#[test]
fn a_live_dump_keeps_the_pages_a_child_shares_with_its_parent() {
    let dir = TestDir::new("livecow");
    let mut w = Workload::spawn("wl_cow", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    assert!(r.contains(" OK"), "before the dump: {r}\n{}", w.log());
    assert_eq!(cow_pages_shared_with_child(w.pid), COW_PAGES_SHARED);
    let pid = live_dump_then_restore(&mut w, &dir.path("img"));
    assert_eq!(cow_pages_shared_with_child(pid), COW_PAGES_SHARED);
}

/// Dumps workload `w` (reporting "PID COUNTER ... OK") live to `img`,
/// checks that it counts on, kills it and restores it; returns the PID of
/// the restored process, running untraced and counting on, OK.
fn live_dump_then_restore(w: &mut Workload, img: &std::path::Path) -> i32 {
    let counter = |r: &str| field(r, 0, 1);
    let o = dump(w.pid, img, &["--leave-running", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    assert_eq!(s["live"], true, "{s}");
    let at = counter(&w.read_report().unwrap());
    w.wait_report(T, |r| counter(r) > at + 1);
    w.kill();
    let at = counter(&w.read_report().unwrap());
    let (pid, _) = restore(img);
    w.restored(pid);
    let r = w.wait_report(T, |r| counter(r) > at + 3 || !r.contains(" OK"));
    assert!(r.contains(" OK"), "restored: {r}\n{}", w.log());
    assert_running_untraced(pid);
    pid
}

/// A process whose seccomp filter denies rt_sigaction, dumped live: the
/// signal actions read from its snapshot (a child that inherits the
/// filter) are read past the filter, as they are from the process (the
/// dump failed with EPERM). Restored, the filter still denies the call.
#[test]
fn a_live_dump_reads_past_the_seccomp_filters_of_the_snapshot() {
    let dir = TestDir::new("live-seccomp");
    let script = "import ctypes, os, signal, struct, sys, time\n\
         report = sys.argv[1]\n\
         signal.signal(signal.SIGUSR1, lambda *a: None)\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         insns = [(0x20, 0, 0, 0), (0x15, 0, 1, 13), (0x06, 0, 0, 0x50000 | 1), (0x06, 0, 0, 0x7fff0000)]\n\
         code = ctypes.create_string_buffer(b''.join(struct.pack('HBBI', *i) for i in insns))\n\
         prog = struct.pack('HxxxxxxQ', len(insns), ctypes.addressof(code))\n\
         assert libc.prctl(38, 1, 0, 0, 0) == 0\n\
         assert libc.syscall(317, 1, 0, ctypes.c_char_p(prog)) == 0\n\
         def denied():\n\
         \x20   old = ctypes.create_string_buffer(64)\n\
         \x20   return libc.syscall(13, 10, None, old, 8) == -1 and ctypes.get_errno() == 1\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1; open(report + '.tmp', 'w').write('%d %d %s\\n' % (os.getpid(), n, 'OK' if denied() else 'ALLOWED'))\n\
         \x20   os.rename(report + '.tmp', report); time.sleep(0.05)\n";
    let mut cmd = std::process::Command::new(system_python());
    cmd.args(["-c", script]).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 3);
    assert!(r.contains(" OK"), "before the dump: {r}\n{}", w.log());
    let pid = live_dump_then_restore(&mut w, &dir.path("img"));
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
}

/// Areas with advice (wl_advice), dumped live: every area's VmFlags come
/// back and its pages hold what they held at the freeze, among them a
/// MADV_WIPEONFORK area (a snapshot sees it zeroed: its pages must come
/// from the process). Without MADV_DONTFORK and mlock, the flags are read
/// from the snapshot once the process runs again; with either, from the
/// process while frozen. A guard region comes back from the snapshot.
#[test]
fn a_live_dump_keeps_advice_and_the_pages_of_wipe_on_fork_areas() {
    let layouts = [
        "dontdump,wipeonfork,hugepage,nohugepage,mergeable,sequential,random",
        "dontfork,wipeonfork,random",
        "wipeonfork,mlock,onfault",
        "sealed,roshared,shmro,wipeonfork,guard",
    ];
    for (i, layout) in layouts.into_iter().enumerate() {
        let dir = TestDir::new(&format!("liveadvice{i}"));
        let mut w = Workload::spawn("wl_advice", dir.path("report"), &[layout]);
        let counter = |r: &str| field(r, 0, 1);
        let r = w.wait_report(T, |r| counter(r) >= 1);
        assert!(r.contains(" OK"), "{layout}, before the dump: {r}");
        let starts = advice_starts(&r);
        let flags = |pid: i32| -> Vec<String> { starts.iter().map(|s| vm_flags(pid, s)).collect() };
        let before = flags(w.pid);
        assert!(
            before[layout.split(',').position(|a| a == "wipeonfork").unwrap()]
                .split(' ')
                .any(|f| f == "wf")
        );
        let img = dir.path("img");
        let o = dump(w.pid, &img, &["--leave-running", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
        assert_eq!(s["live"], true, "{layout}: {s}");
        let at = counter(&w.read_report().unwrap());
        let r = w.wait_report(T, |r| counter(r) > at + 1 || !r.contains(" OK"));
        assert!(r.contains(" OK"), "{layout}, after the dump: {r}");
        assert_eq!(flags(w.pid), before, "{layout}: the original's flags");
        assert_eq!(children_of(w.pid), Vec::<i32>::new(), "{layout}");
        w.kill();
        let at = counter(&w.read_report().unwrap());
        let (pid, _) = restore(&img);
        w.restored(pid);
        let r = w.wait_report(T, |r| counter(r) > at + 3 || !r.contains(" OK"));
        assert!(r.contains(" OK"), "{layout}, restored: {r}\n{}", w.log());
        assert_running_untraced(pid);
        assert_eq!(flags(pid), before, "{layout}: the restored flags");
        if let Some(i) = layout.split(',').position(|a| a == "guard") {
            let guard_area = u64::from_str_radix(&starts[i], 16).unwrap();
            assert_eq!(guard_pages(pid, guard_area), [12, 13], "the guard region");
        }
        w.kill();
    }
}
