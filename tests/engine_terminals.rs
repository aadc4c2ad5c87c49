//! Pseudo-terminals the tree holds both ends of: a tmux server (Debian
//! package) with a shell counting in a window is dumped and restored
//! (twice from one image); a new client reads the screen: the earlier
//! output is still there, the counter goes on, on the same terminal, with
//! the shell in the foreground of its session.
//!
//! Skipped with a message when tmux is not installed, unless
//! CRSTREAM_TEST_REQUIRE_PROGRAMS is set (as `.ci/test` does).

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

/// Held by each test while it runs: a restore takes a pseudo-terminal's
/// index back, which any other test's new pty could take meanwhile
/// (/dev/pts numbers are the machine's).
static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ptys_to_ourselves() -> std::sync::MutexGuard<'static, ()> {
    PTYS.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmux(sock: &Path, home: &Path) -> Command {
    let mut c = Command::new("tmux");
    c.arg("-S")
        .arg(sock)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    // No fd of the test runner may reach the server.
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 4 /* CLOEXEC */);
            Ok(())
        });
    }
    c
}

fn ask(sock: &Path, home: &Path, args: &[&str]) -> String {
    let o = tmux(sock, home).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The counts the pane shows, its whole history.
fn counts(sock: &Path, home: &Path) -> Vec<u64> {
    ask(sock, home, &["capture-pane", "-p", "-S", "-"])
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

fn wait_count(sock: &Path, home: &Path, above: u64) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let c = counts(sock, home);
        if c.last().is_some_and(|&n| n > above) {
            return c;
        }
        assert!(started.elapsed() < T, "the counter stays at {c:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every process of the tree under `root`.
fn tree_of(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        all.extend(children_of(all[i]));
        i += 1;
    }
    all
}

struct Kill(Vec<i32>);

impl Drop for Kill {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: ending processes this test started or restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for &p in &self.0 {
            wait_gone(p, T);
        }
    }
}

#[test]
fn a_tmux_server_with_a_counting_shell_keeps_its_screen() {
    let _ptys = ptys_to_ourselves();
    if !available("tmux", &["-V"]) {
        return;
    }
    let dir = TestDir::new("tmux");
    let (sock, home) = (dir.path("sock"), dir.0.clone());
    let st = tmux(&sock, &home)
        .args(["new-session", "-d", "-x", "80", "-y", "24"])
        .arg(
            "bash -c 'exec 3<>/dev/tty; i=0; \
             while true; do i=$((i+1)); echo count $i; echo tty $i >&3; sleep 0.1; done'",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "tmux new-session");
    let server: i32 = ask(&sock, &home, &["display", "-p", "#{pid}"])
        .trim()
        .parse()
        .unwrap();
    let mut guard = Kill(tree_of(server));
    let tty = ask(&sock, &home, &["display", "-p", "#{pane_tty}"]);
    wait_count(&sock, &home, 5);

    let img = dir.path("img");
    let tree = tree_of(server);
    dump(server, &img, &[]);
    for &p in &tree {
        assert!(wait_gone(p, T), "pid {p} survived the dump");
    }
    let at_dump = counts(&sock, &home);
    assert!(at_dump.is_empty(), "the server is gone: {at_dump:?}");
    for round in ["first restore", "second restore"] {
        let (pid, _) = restore(&img);
        assert_eq!(pid, server);
        guard.0 = tree_of(server);
        let c = wait_count(&sock, &home, 5);
        let last = *c.last().unwrap();
        let c = wait_count(&sock, &home, last + 5);
        // The screen has what the shell wrote before the dump, and it goes
        // on from there, every count once.
        assert_eq!(c[0], 1, "{round}: {c:?}");
        assert!(c.windows(2).all(|w| w[1] == w[0] + 1), "{round}: {c:?}");
        assert_eq!(
            ask(&sock, &home, &["display", "-p", "#{pane_tty}"]),
            tty,
            "{round}"
        );
        // The shell leads its session on that terminal, in the foreground.
        let shell: i32 = ask(&sock, &home, &["display", "-p", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{shell}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // state ppid pgrp session tty_nr tpgid
        assert_eq!(f[3], shell.to_string(), "{round}: session");
        assert_eq!(f[5], shell.to_string(), "{round}: foreground group");
        // Its /dev/tty is /dev/tty again, and writes reach the screen.
        let link = std::fs::read_link(format!("/proc/{shell}/fd/3")).unwrap();
        assert_eq!(link.to_str(), Some("/dev/tty"), "{round}");
        let screen = ask(&sock, &home, &["capture-pane", "-p", "-S", "-"]);
        assert!(screen.contains(&format!("tty {last}")), "{round}: {screen}");
        assert_running_untraced(server);
        guard.0 = tree_of(server);
        drop(std::mem::replace(&mut guard, Kill(Vec::new())));
        // The next restore needs every PID free again.
        for &p in &tree {
            assert!(wait_gone(p, T), "pid {p} is still there");
        }
    }
}

/// Session, group, controlling terminal and its foreground group of a
/// process (fields 6, 5, 7, 8 of /proc/PID/stat).
fn session_view(pid: i32) -> (String, String, String, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<String> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    // state ppid pgrp session tty_nr tpgid
    (f[3].clone(), f[2].clone(), f[4].clone(), f[5].clone())
}

/// `script` holds a pseudo-terminal whose session (a shell's, with a job
/// in the background) is led by its child, on slave fds the child got
/// from `script` (one description, restored by `script`). Every process
/// of that session has the terminal as its controlling terminal again,
/// with the same foreground group, the member forked before the fds are
/// restored too (a controlling terminal passes only by fork); the slave
/// fds have the flags openpty gave them (no O_LARGEFILE, which an open by
/// path adds), and one opened by its path has its own.
#[test]
fn every_process_of_a_session_gets_its_controlling_terminal_back() {
    let _ptys = ptys_to_ourselves();
    if !available("script", &["--version"]) {
        return;
    }
    let dir = TestDir::new("ctty");
    let mut cmd = std::process::Command::new("script");
    // script runs the command with $SHELL -c (sh without one: dash, which
    // forks for the command rather than exec it, adding a process).
    cmd.env("SHELL", "/bin/bash");
    // fd 3: the terminal opened by its path.
    cmd.args([
        "-qfc",
        "bash -c 'exec 3<>$(tty); sleep 1000 & exec sleep 1001'",
        "/dev/null",
    ]);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let root = w.pid;
    let mut guard = Kill(Vec::new());
    assert!(
        wait_until(T, || tree_of(root).len() == 3),
        "script, its shell and the job: {:?}",
        tree_of(root)
    );
    let tree = tree_of(root);
    guard.0 = tree.clone();
    let before: Vec<_> = tree.iter().map(|&p| session_view(p)).collect();
    // The slave fds script made with openpty (TIOCGPTPEER: no O_LARGEFILE).
    let terminal_fds = |pid: i32| -> Vec<(String, String)> {
        let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let link = std::fs::read_link(e.path()).ok()?;
                link.to_str()?.starts_with("/dev/pts/").then_some(())?;
                let n = e.file_name().to_string_lossy().into_owned();
                let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).ok()?;
                let flags = info.lines().find(|l| l.starts_with("flags"))?.to_string();
                Some((n, flags))
            })
            .collect();
        fds.sort();
        fds
    };
    let fds_before: Vec<_> = tree.iter().map(|&p| terminal_fds(p)).collect();
    assert!(
        before[1..].iter().all(|v| v.2 != "0" && v.3 != "-1"),
        "the session has its terminal: {before:?}"
    );
    dump(root, &dir.path("img"), &[]);
    w.reap_dumped();
    for &p in &tree {
        assert!(wait_gone(p, T), "pid {p} survived the dump");
    }
    let (pid, _) = restore(&dir.path("img"));
    assert_eq!(pid, root);
    assert_eq!(tree_of(root), tree);
    let after: Vec<_> = tree.iter().map(|&p| session_view(p)).collect();
    assert_eq!(after, before);
    let fds_after: Vec<_> = tree.iter().map(|&p| terminal_fds(p)).collect();
    assert_eq!(fds_after, fds_before, "the terminal fds and their flags");
    assert_running_untraced(root);
    drop(guard);
}

/// A new pseudo-terminal pair: (master, slave, slave's path), both
/// close-on-exec (the tests of this binary run side by side: an fd one of
/// them let a child inherit would be in another's workload too).
fn new_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd, String) {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let path = ptsname(&master, Vec::new())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let slave = rustix::fs::open(
        path.as_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    (master, slave, path)
}

/// python3 running `script` (its argument: `report`) as the leader of a
/// session of its own whose controlling terminal is `slave`, its stdio.
fn python_leading_a_session_on(
    slave: &std::os::fd::OwnedFd,
    script: &str,
    report: std::path::PathBuf,
) -> Workload {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script])
        .arg(&report)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Workload::from_child(cmd.spawn().unwrap(), report)
}

/// Reads the master side until `want` shows (or `T` passes); all it read.
fn read_until(master: &std::os::fd::OwnedFd, want: &str) -> String {
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains(want) && start.elapsed() < T {
        let mut fds = [rustix::event::PollFd::new(
            master,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
            let mut buf = [0u8; 4096];
            match rustix::io::read(master, &mut buf) {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A session whose controlling terminal another program holds (a terminal
/// emulator's pty; the test holds the master here): refused by name, with
/// the key to give `--external`; dumped with `--external tty[RDEV:DEV]`;
/// refused at restore without a terminal handed in; restored with a new
/// pty's slave handed in (`--inherit-fd`): that terminal controls its
/// session again, with the process in the foreground, /dev/tty is it, and
/// a line typed on it is read and answered there.
#[test]
fn a_session_on_a_terminal_another_program_holds_comes_back_on_the_one_handed_in() {
    let _ptys = ptys_to_ourselves();
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("external-tty");
    let (master, slave, _) = new_pty();
    let md = rustix::fs::fstat(&slave).unwrap();
    let key = format!("tty[{:x}:{:x}]", md.st_rdev, md.st_dev);
    let script = "import os, sys, select, time\n\
         report = sys.argv[1]\n\
         tty = open('/dev/tty', 'w')\n\
         n, last = 0, '-'\n\
         while True:\n\
         \x20   n += 1\n\
         \x20   if select.select([0], [], [], 0.05)[0]:\n\
         \x20       last = sys.stdin.readline().strip() or '-'\n\
         \x20       print('got', last, flush=True); tty.write('via dev tty\\n'); tty.flush()\n\
         \x20   open(report + '.tmp', 'w').write('%d %d %d %d %s %s\\n' % (os.getpid(), n, os.getsid(0), os.tcgetpgrp(0), os.ttyname(0), last))\n\
         \x20   os.rename(report + '.tmp', report)\n";
    let mut w = python_leading_a_session_on(&slave, script, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);

    let img = dir.path("img");
    let err = dump_refused(w.pid, &img, &[], &[]);
    assert!(
        err.contains(&format!("--external {key}")) && err.contains("--inherit-fd"),
        "{err}"
    );
    assert_running_untraced(w.pid);
    let o = dump(w.pid, &img, &["--external", &key]);
    assert!(o.status.success(), "{}", text(&o));
    w.reap_dumped();
    drop(master);

    let err = restore_refused(img.to_str().unwrap(), &[]);
    assert!(err.contains(&key) && err.contains("--inherit-fd"), "{err}");
    let restore_handing_in = |slave: &std::os::fd::OwnedFd| {
        // Handed to crstream as its fd 10, in the child only.
        const HANDED: i32 = 10;
        let given = std::os::fd::AsRawFd::as_raw_fd(slave);
        let mut restore = Command::new(crstream_bin());
        restore
            .args(["restore", "-i", img.to_str().unwrap(), "--detach", "--json"])
            .arg("--inherit-fd")
            .arg(format!("fd[{HANDED}]:{key}"));
        // SAFETY: dup2 only, between fork and exec.
        unsafe {
            restore.pre_exec(move || {
                if libc::dup2(given, HANDED) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        restore.output().unwrap()
    };

    // A terminal another session controls cannot be its terminal: the
    // restore says so, and leaves nothing behind.
    let (_master3, slave3, _) = new_pty();
    let mut other = python_leading_a_session_on(
        &slave3,
        "import time\nwhile True: time.sleep(1)\n",
        dir.path("other"),
    );
    let o = restore_handing_in(&slave3);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("another session controls it"),
        "{}",
        text(&o)
    );
    assert!(wait_gone(w.pid, T), "the failed restore left pid {}", w.pid);
    other.kill();

    let (master2, slave2, path2) = new_pty();
    let o = restore_handing_in(&slave2);
    drop(slave2);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    w.restored(v["pid"].as_i64().unwrap() as i32);
    let pid = w.pid as u64;
    // Its session, led by it, in the foreground of the terminal handed in.
    let r = w.wait_report(T, |r| r.contains(&path2));
    assert_eq!(
        (field(&r, 0, 2), field(&r, 0, 3)),
        (pid, pid),
        "session and foreground group: {r}"
    );
    rustix::io::write(&master2, b"hello\n").unwrap();
    let seen = read_until(&master2, "via dev tty");
    assert!(
        seen.contains("got hello") && seen.contains("via dev tty"),
        "{seen:?}"
    );
    w.kill();
}

/// A session leader whose controlling terminal it holds no fd of (it
/// moved its stdio to /dev/null) would come back with no terminal: refused
/// by name, and it runs on.
#[test]
fn a_session_leader_whose_terminal_would_not_come_back_is_refused() {
    let _ptys = ptys_to_ourselves();
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("lost-ctty");
    let (_master, slave, _) = new_pty();
    let script = "import os, sys, time\n\
         null = os.open('/dev/null', os.O_RDWR)\n\
         for fd in (0, 1, 2): os.dup2(null, fd)\n\
         os.close(null)\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1; open(sys.argv[1] + '.tmp', 'w').write('%d %d\\n' % (os.getpid(), n))\n\
         \x20   os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(0.05)\n";
    let w = python_leading_a_session_on(&slave, script, dir.path("report"));
    w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let err = dump_refused(w.pid, &dir.path("img"), &[], &[]);
    assert!(
        err.contains(&format!("pid {}", w.pid))
            && err.contains("controls its session")
            && err.contains("--external tty["),
        "{err}"
    );
    assert_running_untraced(w.pid);
}

/// The same on a pseudo-terminal the tree made itself: the parent holds the
/// master, the child leads a session on the slave but closed every fd of
/// it. Nothing would make it the child's terminal again: refused by name,
/// and both run on.
#[test]
fn a_session_leader_holding_no_fd_of_its_own_pty_is_refused() {
    let _ptys = ptys_to_ourselves();
    if !available("python3", &["--version"]) {
        return;
    }
    let dir = TestDir::new("lost-own-pty");
    let script = "import fcntl, os, sys, termios, time\n\
         m, s = os.openpty()\n\
         child = os.fork()\n\
         if child == 0:\n\
         \x20   os.close(m); os.setsid(); fcntl.ioctl(s, termios.TIOCSCTTY, 0); os.close(s)\n\
         \x20   while True: time.sleep(0.05)\n\
         os.close(s)\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1; open(sys.argv[1] + '.tmp', 'w').write('%d %d %s\\n' % (child, n, os.ttyname(m)))\n\
         \x20   os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(0.05)\n";
    let child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(dir.path("report"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = Workload::from_child(child, dir.path("report"));
    let report = w.wait_report(T, |r| field(r, 0, 1) >= 2);
    let leader = field(&report, 0, 0) as i32;
    let _leader = TreeGuard(vec![leader]);
    let err = dump_refused(w.pid, &dir.path("img"), &[], &[]);
    assert!(
        err.contains(&format!("pid {leader}"))
            && err.contains("/dev/pts/")
            && err.contains("controls its session but it holds no fd of it"),
        "{err}"
    );
    assert_running_untraced(w.pid);
    assert_running_untraced(leader);
}

/// The owner and mode of a terminal's device file, which sshd and screen
/// give the user (group tty, 0620: `mesg`, `write`), come back (the new
/// pair's were root's, 0600: the user could no longer open its own
/// terminal).
#[test]
fn a_terminal_keeps_the_owner_and_mode_of_its_device() {
    let _ptys = ptys_to_ourselves();
    let dir = TestDir::new("pty-owner");
    let script = "import os, sys, time\n\
         report = sys.argv[1]\n\
         m, s = os.openpty(); os.fchown(s, 65534, 5); os.fchmod(s, 0o620)\n\
         st = lambda: (lambda x: [x.st_uid, x.st_gid, oct(x.st_mode & 0o7777)])(os.fstat(s))\n\
         before = st()\n\
         n = 0\n\
         while not os.path.exists(report + '.go'):\n\
         \x20   n += 1; open(report, 'w').write('%d %d waiting\\n' % (os.getpid(), n)); time.sleep(0.05)\n\
         open(report, 'w').write('%d %d %s %s\\n' % (os.getpid(), n, before, st()))\n\
         time.sleep(600)\n";
    let (mut w, r) = python_across_restore(&dir, script, &[], "]");
    assert!(
        r.contains("[65534, 5, '0o620'] [65534, 5, '0o620']"),
        "{r}\n{}",
        w.log()
    );
    w.kill();
}
