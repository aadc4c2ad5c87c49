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
