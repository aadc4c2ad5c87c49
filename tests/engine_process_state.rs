//! Process state beyond memory, files and registers comes back exactly:
//! each workload sets one kind of state, checks it all the time, and says
//! so in its report. Each is restored twice from one image, then dumped
//! again after restore and restored from that.

mod support;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);

/// Dump `w`; restore the image twice, then dump the restored process and
/// restore that; after each restore, the workload's counter moves on and
/// its status stays OK. `extra` checks the restored process from outside.
fn round_trips(w: &mut Workload, dir: &TestDir, extra: &dyn Fn(i32)) {
    let counter = |r: &str| field(r, 0, 1);
    let r = w.wait_report(T, |r| counter(r) >= 3);
    assert!(r.contains(" OK"), "before the dump: {r}\n{}", w.log());
    extra(w.pid);
    let img = dir.path("img");
    let kids = children_of(w.pid);
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    for pid in kids {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
    let again = |w: &mut Workload, img: &Path, what: &str| {
        let at = counter(&w.read_report().unwrap());
        put_back_report_tmp(&w.report);
        let (pid, _) = restore(img);
        w.restored(pid);
        let r = w.wait_report(T, |r| counter(r) > at + 3 || !r.contains(" OK"));
        assert!(r.contains(" OK"), "{what}: {r}\n{}", w.log());
        assert_running_untraced(pid);
        extra(pid);
    };
    again(w, &img, "first restore");
    w.kill();
    again(w, &img, "second restore");
    let img2 = dir.path("img2");
    let kids = children_of(w.pid);
    dump(w.pid, &img2, &[]);
    for pid in kids.into_iter().chain([w.pid]) {
        assert!(wait_gone(pid, T), "pid {pid} survived the dump");
    }
    again(w, &img2, "restore of a restored process");
    w.kill();
}

#[test]
fn scheduling_io_priority_affinity_timer_slack_and_oom_score_survive() {
    let dir = TestDir::new("sched");
    let mut w = Workload::spawn("wl_sched", dir.path("report"), &[]);
    let oom = |pid: i32| {
        let v = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(v.trim(), "345");
        assert_eq!(tasks(pid).len(), 6);
    };
    round_trips(&mut w, &dir, &oom);
}

/// Threads with users, groups, capability sets and securebits of their
/// own (a daemon's main thread as nobody keeping CAP_NET_BIND_SERVICE, a
/// thread as uid 1000, a root thread with a smaller bounding set and an
/// ambient capability) come back with exactly those.
#[test]
fn threads_with_their_own_users_groups_capabilities_and_securebits_come_back() {
    let dir = TestDir::new("creds");
    let mut w = Workload::spawn("wl_creds", dir.path("report"), &[]);
    let uids = |pid: i32| {
        let mut uids: Vec<String> = tasks(pid)
            .into_iter()
            .map(|t| {
                let uid = status_field(t, "Uid").unwrap_or_default();
                uid.split_whitespace().next().unwrap_or("").to_string()
            })
            .collect();
        uids.sort();
        assert_eq!(uids, ["0", "1000", "65534"], "uids of the threads of {pid}");
        assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    };
    round_trips(&mut w, &dir, &uids);
}

/// Seccomp: threads sharing filters installed with TSYNC (and installing
/// more with TSYNC, which only works while they still share them), then a
/// thread in strict mode beside threads with filters of their own, in
/// their order (two deny one call with different errnos: the newest
/// decides). The filters filter after restore, never restore's own
/// syscalls.
#[test]
fn seccomp_filters_shared_by_threads_per_thread_and_strict_mode_come_back() {
    for variant in ["tsync", "strict"] {
        let dir = TestDir::new(&format!("seccomp-{variant}"));
        let mut w = Workload::spawn("wl_seccomp", dir.path("report"), &[variant]);
        let filtering = |pid: i32| {
            assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
            let modes: Vec<String> = tasks(pid)
                .into_iter()
                .map(|t| status_field(t, "Seccomp").unwrap_or_default())
                .collect();
            let strict = modes.iter().filter(|m| *m == "1").count();
            assert_eq!(strict, usize::from(variant == "strict"), "{modes:?}");
        };
        round_trips(&mut w, &dir, &filtering);
    }
}

/// The lines of /proc/locks on the files of `dir`, without their ids.
fn locks_on(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().ino())
        .collect();
    let mut out: Vec<String> = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().skip(1).collect();
            let ino: u64 = f.get(4)?.rsplit(':').next()?.parse().ok()?;
            inodes.contains(&ino).then(|| f.join(" "))
        })
        .collect();
    out.sort();
    out
}

/// The lock F_GETLK (or F_OFD_GETLK) finds in the way of a write lock on
/// `start..start+len` of `path`: (type, pid).
fn lock_in_the_way(path: &Path, cmd: i32, start: i64, len: i64) -> (i32, i32) {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: fcntl on our own fd with a local struct flock.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = start;
        fl.l_len = len;
        assert_eq!(libc::fcntl(f.as_raw_fd(), cmd, &mut fl), 0);
        (fl.l_type as i32, fl.l_pid)
    }
}

/// Whether flock `op` on `path` would have to wait.
fn flock_blocked(path: &Path, op: i32) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: flock on our own fd.
    let r = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
    r != 0
}

/// A process and its child holding flock locks (one shared between them),
/// POSIX record locks of each, an OFD lock and a lease: after restore the
/// same locks are held, as /proc/locks shows and as another process (this
/// test) finds them in its way.
#[test]
fn file_locks_of_every_kind_are_held_again() {
    let dir = TestDir::new("locks");
    let files = dir.path("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut w = Workload::spawn("wl_locks", dir.path("report"), &[files.to_str().unwrap()]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let child = field(&r, 1, 0) as i32;
    let before = locks_on(&files);
    assert_eq!(before.len(), 8, "{before:#?}");
    let held = |pid: i32| {
        assert_eq!(locks_on(&files), before, "/proc/locks");
        assert!(flock_blocked(&files.join("flock"), libc::LOCK_SH));
        assert!(flock_blocked(&files.join("shared"), libc::LOCK_EX));
        assert!(!flock_blocked(&files.join("shared"), libc::LOCK_SH));
        let posix = files.join("posix");
        assert_eq!(
            lock_in_the_way(&posix, libc::F_GETLK, 10, 10),
            (libc::F_WRLCK, pid)
        );
        assert_eq!(
            lock_in_the_way(&posix, libc::F_GETLK, 30, 10),
            (libc::F_WRLCK, child)
        );
        assert_eq!(
            lock_in_the_way(&posix, libc::F_GETLK, 200, 1),
            (libc::F_RDLCK, pid)
        );
        assert_eq!(
            lock_in_the_way(&files.join("ofd"), libc::F_OFD_GETLK, 0, 1).0,
            libc::F_WRLCK
        );
    };
    round_trips(&mut w, &dir, &held);
}

/// Signal-driven I/O: a pipe whose owner is the process with a real-time
/// signal naming the fd (F_SETSIG), one whose owner is a thread (SIGIO):
/// after restore the signals keep coming, to the same process and thread,
/// with the same fd.
#[test]
fn signal_driven_io_keeps_its_owners_signals_and_fds() {
    let dir = TestDir::new("fasync");
    let mut w = Workload::spawn("wl_fasync", dir.path("report"), &[]);
    let report = dir.path("report");
    let signals_arrive = |_pid: i32| {
        let read = || std::fs::read_to_string(&report).unwrap_or_default();
        let first = read();
        let (a, b) = (field(&first, 0, 3), field(&first, 0, 4));
        let started = std::time::Instant::now();
        loop {
            let r = read();
            assert!(!r.is_empty() && r.contains(" OK "), "{r}");
            if field(&r, 0, 3) > a + 5 && field(&r, 0, 4) > b + 5 {
                break;
            }
            assert!(started.elapsed() < T, "signals stopped: {first} then {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    round_trips(&mut w, &dir, &signals_arrive);
}

fn state(pid: i32) -> char {
    status_field(pid, "State")
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

fn wait_state(pid: i32, want: char) {
    let started = std::time::Instant::now();
    while state(pid) != want {
        assert!(
            started.elapsed() < T,
            "pid {pid} is {} not {want}",
            state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_running_untraced_or_stopped(pid: i32) {
    assert_eq!(status_field(pid, "TracerPid").as_deref(), Some("0"));
    assert_ne!(state(pid), 'Z');
}

/// The signal that stopped process `pid` (in a group stop): seized with
/// ptrace, it reports it; detached, it stays stopped.
fn stop_signal(pid: i32) -> i32 {
    // SAFETY: ptrace of a process this test restored, waited for and
    // detached again.
    unsafe {
        assert_eq!(libc::ptrace(0x4206 /* PTRACE_SEIZE */, pid, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        assert!(libc::WIFSTOPPED(status), "{status:#x}");
        libc::WSTOPSIG(status)
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test started or restored.
    unsafe { libc::kill(pid, sig) };
}

/// A process stopped by SIGSTOP comes back stopped: it counts no further
/// until SIGCONT, then counts on with its memory intact. A child stopped by
/// SIGTSTP in a tree that runs comes back stopped while its parent runs,
/// and continues on SIGCONT.
#[test]
fn stopped_processes_come_back_stopped_and_continue_on_sigcont() {
    let dir = TestDir::new("stopped");
    let mut w = Workload::spawn("wl_memory", dir.path("report"), &["16"]);
    let r = w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let checksum = field(&r, 0, 1);
    signal(w.pid, libc::SIGSTOP);
    wait_state(w.pid, 'T');
    let at_stop = field(&w.read_report().unwrap(), 0, 0);
    // Dumped and left running, it stays stopped (dump continues it under
    // ptrace to read it, and stops it again).
    dump(w.pid, &dir.path("img0"), &["--leave-running"]);
    assert_running_untraced_or_stopped(w.pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(w.pid), 'T');
    assert_eq!(field(&w.read_report().unwrap(), 0, 0), at_stop, "it ran");
    let img = dir.path("img");
    let pid = dump_and_restore(&mut w, &img);
    wait_state(pid, 'T');
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(state(pid), 'T');
    assert_eq!(field(&w.read_report().unwrap(), 0, 0), at_stop, "it ran");
    signal(pid, libc::SIGCONT);
    let r = w.wait_report(T, |r| field(r, 0, 0) > at_stop + 2);
    assert_eq!(field(&r, 0, 1), checksum);
    w.kill();

    // A tree: the root runs, its child is stopped by SIGTSTP.
    let dir = TestDir::new("stopped-child");
    let mut w = Workload::spawn("wl_memory", dir.path("report"), &["8", "2"]);
    w.wait_report(T, |r| field(r, 0, 0) >= 2);
    let child = children_of(w.pid)[0];
    signal(child, libc::SIGTSTP);
    wait_state(child, 'T');
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    assert!(wait_gone(child, T));
    let at_dump = field(&w.read_report().unwrap(), 0, 0);
    let (pid, _) = restore(&img);
    w.restored(pid);
    w.wait_report(T, |r| field(r, 0, 0) > at_dump + 2);
    assert_eq!(children_of(pid), [child]);
    assert_eq!(state(child), 'T');
    assert_eq!(
        stop_signal(child),
        libc::SIGTSTP,
        "stopped by SIGTSTP again"
    );
    assert_ne!(state(pid), 'T');
    signal(child, libc::SIGCONT);
    wait_state(child, 'S');
    w.kill();
}

/// A stopped process that blocks SIGCONT (php-fpm's master does) comes back
/// stopped: the SIGCONT with which dump continued it to read it stayed
/// pending, was saved, and continued the restored process.
#[test]
fn a_stopped_process_that_blocks_sigcont_comes_back_stopped() {
    let dir = TestDir::new("stopped-sigcont");
    let script = "import os, signal, sys, time\n\
         report = sys.argv[1]\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCONT])\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1; open(report + '.tmp', 'w').write('%d %d\\n' % (os.getpid(), n))\n\
         \x20   os.rename(report + '.tmp', report); time.sleep(0.05)\n";
    let mut cmd = std::process::Command::new(system_python());
    cmd.args(["-c", script]).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    signal(w.pid, libc::SIGSTOP);
    wait_state(w.pid, 'T');
    let at_stop = field(&w.read_report().unwrap(), 0, 1);
    let pid = dump_and_restore(&mut w, &dir.path("img"));
    wait_state(pid, 'T');
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(state(pid), 'T');
    assert_eq!(field(&w.read_report().unwrap(), 0, 1), at_stop, "it ran");
    signal(pid, libc::SIGCONT);
    w.wait_report(T, |r| field(r, 0, 1) > at_stop + 2);
    w.kill();
}

/// A memfd and a file, each seen through shared, private (with copies of
/// their own) and partial views and a patchwork of small overlapping
/// mappings: every page of every view reads the same after restore, and
/// the file's views take the protections its open mode allows.
#[test]
fn every_view_of_a_memfd_and_a_file_reads_the_same() {
    let dir = TestDir::new("views");
    let files = dir.path("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut w = Workload::spawn("wl_views", dir.path("report"), &[files.to_str().unwrap()]);
    round_trips(&mut w, &dir, &|_| {});
}

/// Advice and locks that show in VmFlags (DONTFORK, DONTDUMP, WIPEONFORK,
/// HUGEPAGE, NOHUGEPAGE, MERGEABLE, SEQUENTIAL, RANDOM, mlock, mlock2
/// ONFAULT) come back on the same areas; so do mseal (it was dropped:
/// the area could be unmapped after restore), a shared read-only mapping
/// through a writable fd (it came back through a read-only one: mprotect
/// to make it writable failed), and a System V attach with SHM_RDONLY (it
/// came back writable-capable once it had pages), and a guard region
/// (MADV_GUARD_INSTALL: the dump failed on it with EIO). So do the
/// process's memory-deny-write-execute (which wl_advice checks) and core
/// dump filter.
#[test]
fn madvise_flags_and_locked_areas_come_back() {
    let dir = TestDir::new("advice");
    let report = dir.path("report");
    let mut w = Workload::spawn("wl_advice", report.clone(), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 1);
    let starts = advice_starts(&r);
    let before: Vec<String> = starts.iter().map(|s| vm_flags(w.pid, s)).collect();
    for (i, want) in ["dc", "dd", "wf", "hg", "nh", "mg", "sr", "rr", "lo"]
        .iter()
        .enumerate()
    {
        assert!(
            before[i].split(' ').any(|f| f == *want),
            "area {i}: {}",
            before[i]
        );
    }
    let has = |i: usize, f: &str| before[i].split(' ').any(|x| x == f);
    assert!(has(10, "sl"), "sealed: {}", before[10]);
    assert!(
        has(11, "sh") && has(11, "mw") && !has(11, "wr"),
        "{}",
        before[11]
    );
    assert!(
        !has(12, "sh") && !has(12, "mw"),
        "SHM_RDONLY: {}",
        before[12]
    );
    let guard_area = u64::from_str_radix(&starts[13], 16).unwrap();
    assert_eq!(guard_pages(w.pid, guard_area), [12, 13]);
    // Readers that would drop them (before version 13) refuse the image.
    let img = dir.path("img-v");
    dump(w.pid, &img, &["--leave-running"]);
    // (14 where some System V semaphore exists meanwhile.)
    assert!(records_version(&img) >= 13);
    let same = |pid: i32| {
        let now: Vec<String> = starts.iter().map(|s| vm_flags(pid, s)).collect();
        assert_eq!(now, before);
        assert_eq!(guard_pages(pid, guard_area), [12, 13], "guard region");
        let filter = std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).unwrap();
        assert_eq!(filter.trim(), "0000003f", "the core dump filter");
    };
    round_trips(&mut w, &dir, &same);
}

/// pidfds of a child (and a second fd on it from pidfd_getfd), of the
/// process itself, of one of its threads (PIDFD_THREAD, and a dup), of a
/// process outside the tree and of a process that has exited: after
/// restore each names the same process or thread, signals reach the
/// living ones and the dead one polls as exited.
#[test]
fn pidfds_name_the_same_processes() {
    let dir = TestDir::new("pidfd");
    let outside = ChildGuard(Some(
        std::process::Command::new("sleep")
            .arg("600")
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let outside_pid = outside.0.as_ref().unwrap().id().to_string();
    let mut w = Workload::spawn("wl_pidfd", dir.path("report"), &[&outside_pid]);
    round_trips(&mut w, &dir, &|_| {});
    drop(outside);
}

/// membarrier registrations: private expedited barriers keep working
/// after restore (EPERM without the registration).
#[test]
fn membarrier_registrations_come_back() {
    let dir = TestDir::new("membarrier");
    let mut w = Workload::spawn("wl_membarrier", dir.path("report"), &[]);
    round_trips(&mut w, &dir, &|_| {});
}

/// What a thread is trapped or killed on: the main thread's early
/// machine-check kills, another thread's late ones and its RDTSC and CPUID
/// faulting, a third thread's defaults, each thread checking its own after
/// restore (and an image with them is version 16, which a reader of 15
/// refuses).
#[test]
fn machine_check_policies_and_rdtsc_cpuid_faulting_come_back_per_thread() {
    let dir = TestDir::new("traps");
    let mut w = Workload::spawn("wl_traps", dir.path("report"), &[]);
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let img = dir.path("img-v");
    dump(w.pid, &img, &["--leave-running"]);
    assert!(records_version(&img) >= 16);
    round_trips(&mut w, &dir, &|_| {});
}

/// A thread on a small stack of its own right above data of the process
/// (as Go runs goroutines): what dump writes below the stack pointers (its
/// calls' buffers, the frames that let a thread resume should crstream
/// die) is put back, in the process left running and in the image.
#[test]
fn memory_below_a_threads_stack_pointer_is_left_as_it_was() {
    let dir = TestDir::new("small-stack");
    let mut w = Workload::spawn("wl_small_stack", dir.path("report"), &[]);
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    for _ in 0..3 {
        let at = field(&w.read_report().unwrap(), 0, 1);
        dump(w.pid, &dir.path("img-live"), &["--leave-running"]);
        let r = w.wait_report(T, |r| field(r, 0, 1) > at + 2 || !r.contains(" OK"));
        assert!(r.contains(" OK"), "left running: {r}");
    }
    round_trips(&mut w, &dir, &|_| {});
}

/// Files with no usable path, or a path only a careful restore gets
/// right: a removed working directory (the same inode as an fd that holds
/// it), a removed directory held open, symlinks opened with O_PATH (one
/// removed), a removed FIFO with bytes queued, /proc/PID/stat partly read,
/// files of a removed and of a renamed directory, a private mapping longer
/// than its shrunk file, inotify watches on deleted inodes held open. /proc
/// shows the same "(deleted)" names after restore.
#[test]
fn removed_directories_symlinks_fifos_and_proc_files_come_back() {
    let dir = TestDir::new("paths");
    let mut w = Workload::spawn("wl_paths", dir.path("report"), &[]);
    let base = dir.path("paths");
    let names = move |pid: i32| {
        let link = |what: &str| {
            std::fs::read_link(format!("/proc/{pid}/{what}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(
            link("cwd"),
            format!("{} (deleted)", base.join("gone-cwd").display())
        );
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| link(&format!("fd/{}", e.unwrap().file_name().to_string_lossy())))
            .collect();
        for want in ["gone-dir", "gone-link", "fifo"] {
            let want = format!("{} (deleted)", base.join(want).display());
            assert!(fds.contains(&want), "{want} not in {fds:?}");
        }
        assert!(fds.contains(&format!("/proc/{pid}/stat")), "{fds:?}");
    };
    round_trips(&mut w, &dir, &names);
}

/// A chrooted process: after restore its root is the same directory (it
/// reads a file there by path and through an fd) and its cwd is its root.
#[test]
fn a_chrooted_process_keeps_its_root() {
    let dir = TestDir::new("chroot");
    let mut w = Workload::spawn("wl_paths", dir.path("report"), &["chroot"]);
    let root = dir.0.clone();
    let same_root = move |pid: i32| {
        let r = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        assert_eq!(r, root.canonicalize().unwrap());
    };
    round_trips(&mut w, &dir, &same_root);
}

/// A program running from a memfd (execveat), holding the memfd open for
/// writing: after restore /proc/PID/exe is the memfd again, the kernel
/// still refuses to open it for writing, and the kept fd still writes.
#[test]
fn a_program_run_from_a_memfd_comes_back() {
    let dir = TestDir::new("memfd-exec");
    let mut w = Workload::spawn("wl_memfd_exec", dir.path("report"), &[]);
    let exe = |pid: i32| {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, Path::new("/memfd:wl-memfd-exec (deleted)"));
    };
    round_trips(&mut w, &dir, &exe);
}

/// An EPOLLONESHOT registration that already fired (disarmed: another
/// thread must not get its file while one handles it) comes back disarmed:
/// added again, it would be armed for EPOLLERR and EPOLLHUP, and the
/// peer's hang-up would wake the epoll. One still armed comes back armed.
#[test]
fn a_fired_oneshot_epoll_registration_comes_back_disarmed() {
    if !have("python3") {
        return;
    }
    let dir = TestDir::new("epoll-oneshot");
    let script = "import os, select, socket, sys, time\n\
         report = sys.argv[1]\n\
         a, b = socket.socketpair(); c, d = socket.socketpair()\n\
         ep = select.epoll()\n\
         ep.register(a.fileno(), select.EPOLLIN | select.EPOLLONESHOT)\n\
         ep.register(c.fileno(), select.EPOLLIN | select.EPOLLONESHOT)\n\
         b.send(b'x'); fired = ep.poll(1)\n\
         tfd = lambda: sorted(l.split()[1] + ':' + l.split()[3] for l in open('/proc/self/fdinfo/%d' % ep.fileno()) if l.startswith('tfd'))\n\
         before = tfd()\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         after = tfd(); b.close(); d.send(b'y')\n\
         got = ep.poll(0.3)\n\
         ok = [len(fired) == 1, after == before, [fd for fd, _ in got] == [c.fileno()]]\n\
         open(report, 'w').write('%d %d %s %s %s %s\\n' % (os.getpid(), n, ok, before, after, got))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    assert!(r.contains("[True, True, True]"), "{r}\n{}", w.log());
    w.kill();
}

/// The nice value of a session's autogroup (what `renice` of a session,
/// or a write to /proc/self/autogroup, sets) comes back with the session
/// (it came back 0).
#[test]
fn a_sessions_autogroup_keeps_its_nice_value() {
    // A session in the default autogroup (one never made by setsid, as
    // under some CI runners) shows nothing here.
    let Ok(ours_before) = std::fs::read_to_string("/proc/self/autogroup") else {
        return;
    };
    let dir = TestDir::new("autogroup");
    let script = "import os, sys, time\n\
         report = sys.argv[1]\n\
         os.setsid(); open('/proc/self/autogroup', 'w').write('5')\n\
         nice = lambda: open('/proc/self/autogroup').read().split()[2]\n\
         before = nice()\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         open(report, 'w').write('%d %d %s\\n' % (os.getpid(), n, [before, nice()]))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    assert!(r.contains("['5', '5']"), "{r}\n{}", w.log());
    let ours = std::fs::read_to_string("/proc/self/autogroup").unwrap();
    assert_eq!(ours, ours_before, "crstream's own autogroup changed");
    w.kill();
}

/// Memory protection keys (node's V8 keeps its WebAssembly code under
/// one): the keys allocated, one of them on no area, the key an area
/// carries and the rights the thread's PKRU gives it come back (the keys
/// were lost: the area lost its key, so writes PKRU was to forbid were
/// allowed, and the key could be allocated again).
#[test]
fn memory_protection_keys_come_back() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    if !cpu.split_whitespace().any(|f| f == "ospke") {
        return;
    }
    let dir = TestDir::new("pkeys");
    let script = "import ctypes, mmap, os, sys, time\n\
         report = sys.argv[1]\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         k1 = libc.syscall(330, 0, 0); k2 = libc.syscall(330, 0, 1)\n\
         m = mmap.mmap(-1, 8192); scratch = mmap.mmap(-1, 4096)\n\
         at = lambda b: ctypes.addressof(ctypes.c_char.from_buffer(b))\n\
         base = at(m); assert libc.syscall(329, ctypes.c_void_p(base), 4096, 3, k1) == 0\n\
         assert libc.pkey_set(k1, 2) == 0\n\
         def key_of(addr):\n\
         \x20   cur = None\n\
         \x20   for l in open('/proc/self/smaps'):\n\
         \x20       f = l.split()\n\
         \x20       if '-' in f[0] and all(c in '0123456789abcdef-' for c in f[0]): cur = int(f[0].split('-')[0], 16)\n\
         \x20       elif f[0] == 'ProtectionKey:' and cur == addr: return int(f[1])\n\
         def allocated(k):\n\
         \x20   ok = libc.syscall(329, ctypes.c_void_p(at(scratch)), 4096, 3, k) == 0\n\
         \x20   libc.syscall(329, ctypes.c_void_p(at(scratch)), 4096, 3, 0); return ok\n\
         state = lambda: [key_of(base), libc.pkey_get(k1), allocated(k1), allocated(k2), allocated(max(k1, k2) + 1)]\n\
         before = state()\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         after = state(); k3 = libc.syscall(330, 0, 0)\n\
         open(report, 'w').write('%d %d %s %s %s\\n' % (os.getpid(), n, [before == after, k3 not in (k1, k2)], before, after))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    assert!(
        r.contains("[True, True] [1, 2, True, True, False]"),
        "{r}\n{}",
        w.log()
    );
    w.kill();
}

/// A thread's NUMA memory policy (what `numactl --interleave` sets) and
/// the speculation mitigations it asked for (PR_SET_SPECULATION_CTRL)
/// come back (both came back as the defaults).
#[test]
fn memory_policy_and_speculation_mitigations_come_back() {
    let dir = TestDir::new("mempolicy");
    let script = "import ctypes, os, sys, time\n\
         report = sys.argv[1]\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         mask = ctypes.c_ulong(1)\n\
         assert libc.syscall(238, 3, ctypes.byref(mask), 64) == 0, ctypes.get_errno()\n\
         spec = [libc.prctl(53, which, 4, 0, 0) == 0 for which in (0, 1)]\n\
         def state():\n\
         \x20   mode, nodes = ctypes.c_int(-1), (ctypes.c_ulong * 16)()\n\
         \x20   libc.syscall(239, ctypes.byref(mode), nodes, 1024, 0, 0)\n\
         \x20   return [mode.value, nodes[0]] + [libc.prctl(52, w, 0, 0, 0) if on else 'n/a' for w, on in zip((0, 1), spec)]\n\
         before = state()\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         after = state()\n\
         open(report, 'w').write('%d %d %s %s %s\\n' % (os.getpid(), n, before == after, before, after))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    assert!(r.contains(" True [3, 1, "), "{r}\n{}", w.log());
    w.kill();
}

/// mlockall(MCL_CURRENT | MCL_FUTURE), which also locks every mapping
/// made after it, comes back, with MCL_ONFAULT or without (mappings made
/// after the restore were not locked).
#[test]
fn mappings_made_after_mlockall_future_stay_locked() {
    for flags in ["3", "7"] {
        let dir = TestDir::new(&format!("mlockall-{flags}"));
        let script = "import ctypes, mmap, os, sys, time\n\
             report, flags = sys.argv[1], int(sys.argv[2])\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             assert libc.mlockall(flags) == 0, ctypes.get_errno()\n\
             def locked():\n\
             \x20   m = mmap.mmap(-1, 3 * 4096); at = ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
             \x20   cur, out = None, None\n\
             \x20   for l in open('/proc/self/smaps'):\n\
             \x20       f = l.split()\n\
             \x20       if '-' in f[0] and all(c in '0123456789abcdef-' for c in f[0]): cur = int(f[0].split('-')[0], 16)\n\
             \x20       elif f[0] == 'VmFlags:' and cur == at: out = sorted(x for x in f[1:] if x in ('lo', 'lf'))\n\
             \x20   return out\n\
             before = locked()\n\
             n = 0\n\
             while not os.path.exists(report + '.go'):\n\
             \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
             open(report, 'w').write('%d %d %s %s\\n' % (os.getpid(), n, before, locked()))\n\
             time.sleep(600)\n";
        let (mut w, r) = python_across_restore(&dir, script, &[flags.into()], "]");
        let want = if flags == "3" {
            "['lo'] ['lo']"
        } else {
            "['lf', 'lo'] ['lf', 'lo']"
        };
        assert!(r.contains(want), "{flags}: {r}\n{}", w.log());
        w.kill();
    }
}

/// System V semaphore units a process holds or added with SEM_UNDO (the
/// kernel gives them back when the dump kills it): restore takes them again
/// from inside the restored process, so the semaphores have the values they
/// had, and the process gives them back with SEM_UNDO as it would have.
#[test]
fn sysv_semaphore_units_held_with_sem_undo_come_back() {
    let dir = TestDir::new("sem-undo");
    let script = "import ctypes, os, sys, time\n\
         report = sys.argv[1]\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         GETVAL, SETVAL, IPC_RMID, SEM_UNDO, IPC_NOWAIT = 12, 16, 0, 0x1000, 0o4000\n\
         sid = libc.semget(0, 2, 0o1600)\n\
         libc.semctl(sid, 0, SETVAL, 5); libc.semctl(sid, 1, SETVAL, 1)\n\
         class Op(ctypes.Structure): _fields_ = [('num', ctypes.c_ushort), ('op', ctypes.c_short), ('flg', ctypes.c_short)]\n\
         vals = lambda: [libc.semctl(sid, 0, GETVAL), libc.semctl(sid, 1, GETVAL)]\n\
         assert libc.semop(sid, (Op * 2)(Op(0, -2, SEM_UNDO), Op(1, 3, SEM_UNDO)), 2) == 0\n\
         before = vals()\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting %d\\n' % (os.getpid(), n, sid)); time.sleep(0.05)\n\
         after = vals()\n\
         back = libc.semop(sid, (Op * 2)(Op(0, 2, SEM_UNDO | IPC_NOWAIT), Op(1, -3, SEM_UNDO | IPC_NOWAIT)), 2) == 0\n\
         given = vals()\n\
         libc.semctl(sid, 0, IPC_RMID)\n\
         open(report, 'w').write('%d %d %s %s %s %s\\n' % (os.getpid(), n, before, after, back, given))\n\
         time.sleep(600)\n";
    // Removes the set whatever happens (the script does once it is done).
    struct SemSet(std::path::PathBuf);
    impl Drop for SemSet {
        fn drop(&mut self) {
            let report = std::fs::read_to_string(&self.0).unwrap_or_default();
            if let Some(id) = report
                .split_whitespace()
                .nth(3)
                .and_then(|v| v.parse().ok())
            {
                // SAFETY: IPC_RMID takes no fourth argument.
                unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
            }
        }
    }
    let _set = SemSet(dir.path("report"));
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    assert!(r.contains("[3, 4] [3, 4] True [5, 1]"), "{r}\n{}", w.log());
    w.kill();
}

/// epoll registrations that outlived their fd number (the file moved to
/// another fd, the number reused by another registered file, or by the
/// epoll fd itself) come back: each file wakes the epoll with its own data.
#[test]
fn epoll_registrations_of_moved_fds_come_back() {
    let dir = TestDir::new("epoll-moved");
    let mut w = Workload::spawn("wl_epoll_moved", dir.path("report"), &[]);
    round_trips(&mut w, &dir, &|_| {});
}

/// A process that unmapped its vDSO: syscalls are injected through a
/// `syscall` of its own code, and the restored process has no vDSO either.
#[test]
fn a_process_without_a_vdso_comes_back_without_one() {
    let dir = TestDir::new("novdso");
    let mut w = Workload::spawn("wl_novdso", dir.path("report"), &[]);
    let no_vdso = |pid: i32| {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.contains("[vdso]") && !maps.contains("[vvar"),
            "{maps}"
        );
    };
    round_trips(&mut w, &dir, &no_vdso);
}

/// A fanotify group with marks on a file, on a directory for its children
/// and on a file with an ignore mask and on a deleted file held open: after restore each
/// write reports exactly the same events.
#[test]
fn fanotify_groups_and_their_marks_come_back() {
    let dir = TestDir::new("fanotify");
    let mut w = Workload::spawn("wl_fanotify", dir.path("report"), &[]);
    round_trips(&mut w, &dir, &|_| {});
}

/// python3 run by setpriv as nobody with supplementary groups and no
/// capabilities, as a service manager would start it: after restore it is
/// the same user with the same groups (and it checks so itself).
#[test]
fn python_as_nobody_with_supplementary_groups_comes_back_as_such() {
    const SCRIPT: &str = r#"
import os, sys, time
want = (65534, 65534, [27, 44, 100])
n = 0
while True:
    n += 1
    got = (os.getuid(), os.getgid(), sorted(os.getgroups()))
    status = "OK" if got == want and os.geteuid() == 65534 else "BAD-%s" % (got,)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("%d %d %s\n" % (os.getpid(), n, status.replace(" ", "")))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.1)
"#;
    // The system's python3: one under root's home (pyenv) is not
    // nobody's to run.
    let python = "/usr/bin/python3";
    if !have("setpriv") || !Path::new(python).exists() {
        panic!("setpriv and {python} are needed for this test");
    }
    let dir = TestDir::new("nobody");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let report = dir.path("report");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--groups=27,44,100",
        "--inh-caps=-all",
        "--bounding-set=-all",
        python,
        "-c",
        SCRIPT,
        report.to_str().unwrap(),
    ]);
    let mut w = spawn_isolated(cmd, report);
    let ids = |pid: i32| {
        assert_eq!(
            status_field(pid, "Uid").unwrap(),
            "65534\t65534\t65534\t65534"
        );
        assert_eq!(status_field(pid, "Groups").unwrap(), "27 44 100");
        assert_eq!(status_field(pid, "CapBnd").unwrap(), "0000000000000000");
    };
    round_trips(&mut w, &dir, &ids);
}

/// A program whose executable was deleted while it runs (as after a
/// package upgrade): after restore /proc/PID/exe names the deleted file
/// again, and the program runs on from where it was.
#[test]
fn a_program_whose_executable_was_deleted_comes_back() {
    let dir = TestDir::new("deleted-exe");
    let exe = dir.path("wl_membarrier-copy");
    std::fs::copy(example("wl_membarrier"), &exe).unwrap();
    let report = dir.path("report");
    // Until no test thread's fork holds the copy open for writing any more.
    let started = std::time::Instant::now();
    let child = loop {
        match std::process::Command::new(&exe)
            .arg(&report)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && started.elapsed() < T => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    let mut w = Workload::from_child(child, report);
    w.wait_report(T, |r| field(r, 0, 1) >= 1);
    std::fs::remove_file(&exe).unwrap();
    let want = format!("{} (deleted)", exe.display());
    let deleted = move |pid: i32| {
        let link = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(link.to_str().unwrap(), want);
    };
    round_trips(&mut w, &dir, &deleted);
}

/// Private memory a parent and its child share copy-on-write since a fork
/// stays shared after restore: the same physical page in both (pagemap),
/// not a copy each; pages either rewrote or dropped since are their own,
/// with their own contents (the workload checks every page, both sides).
#[test]
fn pages_shared_copy_on_write_with_a_child_stay_shared() {
    let dir = TestDir::new("cow");
    let mut w = Workload::spawn("wl_cow", dir.path("report"), &[]);
    let shared = |pid: i32| {
        assert_eq!(
            cow_pages_shared_with_child(pid),
            COW_PAGES_SHARED,
            "pages {pid} shares with its child"
        )
    };
    round_trips(&mut w, &dir, &shared);
}

/// An io_setup context with completions not reaped yet comes back at the
/// same address (the context's id) with those completions in its ring, in
/// order, and takes new requests: the workload reaps each completion three
/// behind its submission, reading the ring's memory and io_getevents.
#[test]
fn an_aio_context_keeps_its_unreaped_completions() {
    let dir = TestDir::new("aio");
    let mut w = Workload::spawn("wl_aio", dir.path("report"), &[]);
    let ring = |pid: i32| -> String {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let rings: Vec<&str> = maps.lines().filter(|l| l.contains("[aio]")).collect();
        assert_eq!(rings.len(), 1, "{maps}");
        rings[0].split_whitespace().next().unwrap().to_string()
    };
    w.wait_report(T, |r| field(r, 0, 1) >= 1);
    let first = ring(w.pid);
    round_trips(&mut w, &dir, &move |pid| assert_eq!(ring(pid), first));
}

/// Leases being broken (a write lease breaking to read, a read lease
/// breaking to none) come back being broken the same way: /proc shows
/// them BREAKING, and the holder sees the types it breaks to.
#[test]
fn leases_being_broken_come_back_being_broken() {
    let dir = TestDir::new("lease");
    let mut w = Workload::spawn("wl_lease", dir.path("report"), &[]);
    let breaking = |pid: i32| {
        let mut lines: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flat_map(|e| {
                std::fs::read_to_string(e.unwrap().path())
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("LEASE"))
                    .map(|l| {
                        l.split_whitespace()
                            .skip(2)
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            ["LEASE BREAKING READ", "LEASE BREAKING UNLCK"],
            "pid {pid}"
        );
    };
    round_trips(&mut w, &dir, &breaking);
}

/// A process whose open fds fill its RLIMIT_NOFILE (sshd's pre-auth child
/// sets it to 1): restore opens files in it (its executable, /proc files)
/// before it gives it its limits, never after (that open failed with
/// EMFILE once the dump had killed the process).
#[test]
fn a_process_whose_fds_fill_its_open_file_limit_comes_back() {
    if !have("python3") {
        return;
    }
    let dir = TestDir::new("rlimit-full");
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import resource, sys, time\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))\n\
         print('limited', flush=True)\n\
         while True: time.sleep(0.1)\n",
    ]);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let pid = w.pid;
    let log = dir.path("report.log");
    assert!(wait_until(T, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("limited"))));
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    assert_eq!(fds(), 3, "fds 0-2 fill the limit");
    let limits = || std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let before = limits();
    dump_and_restore(&mut w, &dir.path("img"));
    assert_eq!(limits(), before);
    assert_eq!(fds(), 3);
    assert_running_untraced(pid);
}

/// A process that dropped root (here to nobody) keeps its resource limits,
/// soft and hard, even where they are below crstream's: reading another
/// user's limits with prlimit needs CAP_SYS_RESOURCE, and without it they
/// were left out silently (the process came back with crstream's).
#[test]
fn resource_limits_of_a_process_that_dropped_root_come_back() {
    if !have("setpriv") || !have("prlimit") {
        return;
    }
    let dir = TestDir::new("rlimits");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "prlimit",
    ])
    .args(["--nofile=512:777", "--core=0:0", "--stack=4000000:8000000"])
    .args(["sleep", "600"]);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let pid = w.pid;
    assert!(wait_until(T, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    let limits = || std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let before = limits();
    assert!(before.contains("Max open files            512                  777"));
    dump_and_restore(&mut w, &dir.path("img"));
    assert_eq!(limits(), before);
    assert_eq!(
        status_field(pid, "Uid").unwrap().split_whitespace().next(),
        Some("65534")
    );
    assert_running_untraced(pid);
}

/// A process with a parent-death signal (PR_SET_PDEATHSIG, as daemons
/// started by a supervisor set it) restored with --detach runs on after
/// the restore returns: its parent there is crstream, which exits at once,
/// and the signal set again ended it as the restore reported success.
#[test]
fn a_detached_restore_does_not_end_a_process_with_a_parent_death_signal() {
    let python = system_python();
    let dir = TestDir::new("pdeathsig");
    let script = "import ctypes, os, signal, sys, time\n\
        libc = ctypes.CDLL(None)\n\
        assert libc.prctl(1, signal.SIGTERM) == 0\n\
        n = 0\n\
        while True:\n\
        \x20   n += 1\n\
        \x20   with open(sys.argv[1] + '.new', 'w') as f: f.write('%d %d' % (os.getpid(), n))\n\
        \x20   os.replace(sys.argv[1] + '.new', sys.argv[1])\n\
        \x20   time.sleep(0.05)\n";
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-c", script]).arg(dir.path("report"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let (pid, _) = restore(&img);
    w.restored(pid);
    let n = field(&w.read_report().unwrap(), 0, 1);
    w.wait_report(T, |r| field(r, 0, 1) > n + 10);
    assert_running_untraced(pid);
    w.kill();
}

/// A robust mutex in shared memory (a file mapped shared), held by the
/// dumped process, stays held through the dump's kill and after the
/// restore: the kernel marked it as its owner dead (EOWNERDEAD) as the
/// dump killed the holder, and another process then took a lock the
/// restored holder still believed its own.
#[test]
fn a_robust_mutex_in_shared_memory_stays_held() {
    let python = system_python();
    const MUTEX: &str = "import ctypes, mmap, os, sys, time\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        fd = os.open(sys.argv[1], os.O_RDWR)\n\
        m = mmap.mmap(fd, 4096)\n\
        at = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m)))\n\
        if sys.argv[2] == 'hold':\n\
        \x20   attr = ctypes.create_string_buffer(8)\n\
        \x20   libc.pthread_mutexattr_init(attr)\n\
        \x20   libc.pthread_mutexattr_setpshared(attr, 1)\n\
        \x20   libc.pthread_mutexattr_setrobust(attr, 1)\n\
        \x20   assert libc.pthread_mutex_init(at, attr) == 0\n\
        \x20   assert libc.pthread_mutex_lock(at) == 0\n\
        \x20   n = 0\n\
        \x20   while True:\n\
        \x20       n += 1\n\
        \x20       with open(sys.argv[3] + '.new', 'w') as f: f.write('%d %d OK' % (os.getpid(), n))\n\
        \x20       os.replace(sys.argv[3] + '.new', sys.argv[3])\n\
        \x20       time.sleep(0.05)\n\
        else:\n\
        \x20   deadline = (ctypes.c_long * 2)(int(time.time()) + 1, 0)\n\
        \x20   print(libc.pthread_mutex_timedlock(at, deadline))\n";
    let dir = TestDir::new("robust");
    let shared = dir.path("shared");
    std::fs::write(&shared, vec![0u8; 4096]).unwrap();
    let report = dir.path("report");
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-c", MUTEX])
        .arg(&shared)
        .arg("hold")
        .arg(&report);
    let mut w = spawn_isolated(cmd, report.clone());
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    // What another process gets: ETIMEDOUT (110) while it is held.
    let try_lock = || {
        let o = std::process::Command::new(python)
            .args(["-c", MUTEX])
            .arg(&shared)
            .arg("try")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(try_lock(), "110");
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    assert_eq!(try_lock(), "110", "held while the holder is gone");
    let (pid, _) = restore(&img);
    w.restored(pid);
    let n = field(&w.read_report().unwrap(), 0, 1);
    w.wait_report(T, |r| field(r, 0, 1) > n + 2);
    assert_eq!(try_lock(), "110", "held by the restored holder");
    w.kill();
}

/// A POSIX named semaphore (glibc's sem_open: a file made under a
/// temporary name, mapped shared, linked under the semaphore's name, the
/// temporary name removed), as Python's multiprocessing uses with spawn
/// and forkserver: the process comes back on the same semaphore, whose
/// posts by another process it then sees. Such a mapping was refused.
#[test]
fn a_named_semaphore_comes_back_shared() {
    let python = system_python();
    let name = format!("/crstream-test-{}", std::process::id());
    const SEM: &str = "import ctypes, os, sys, time\n\
        libc = ctypes.CDLL(None)\n\
        libc.sem_open.restype = ctypes.c_void_p\n\
        sem = ctypes.c_void_p(libc.sem_open(sys.argv[1].encode(), os.O_CREAT, 0o600, 0))\n\
        assert sem.value\n\
        if sys.argv[2] == 'post':\n\
        \x20   assert libc.sem_post(sem) == 0\n\
        \x20   sys.exit(0)\n\
        value = ctypes.c_int()\n\
        n = 0\n\
        while True:\n\
        \x20   n += 1\n\
        \x20   libc.sem_getvalue(sem, ctypes.byref(value))\n\
        \x20   with open(sys.argv[3] + '.new', 'w') as f: f.write('%d %d %d' % (os.getpid(), n, value.value))\n\
        \x20   os.replace(sys.argv[3] + '.new', sys.argv[3])\n\
        \x20   time.sleep(0.05)\n";
    struct Unlink(String);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("/dev/shm/sem.{}", &self.0[1..]));
        }
    }
    let _unlink = Unlink(name.clone());
    let dir = TestDir::new("named-sem");
    let report = dir.path("report");
    let mut cmd = std::process::Command::new(python);
    cmd.args(["-c", SEM, &name, "wait"]).arg(&report);
    let mut w = spawn_isolated(cmd, report.clone());
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let post = || {
        let st = std::process::Command::new(python)
            .args(["-c", SEM, &name, "post", "-"])
            .status()
            .unwrap();
        assert!(st.success());
    };
    post();
    w.wait_report(T, |r| field(r, 0, 2) == 1);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let (pid, _) = restore(&img);
    w.restored(pid);
    let n = field(&w.read_report().unwrap(), 0, 1);
    let r = w.wait_report(T, |r| field(r, 0, 1) > n + 2);
    assert_eq!(field(&r, 0, 2), 1, "its value: {r}");
    // Another process's post reaches it: the same semaphore.
    post();
    w.wait_report(T, |r| field(r, 0, 2) == 2);
    w.kill();
}
