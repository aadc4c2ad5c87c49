//! A real mail server: postfix (master and its pickup, qmgr, smtpd,
//! cleanup, trivial-rewrite, virtual and postlogd processes, as postfix)
//! dumped with --tcp-established while a client outside the tree is in the
//! middle of a mail's body, and restored: the client finishes the mail on
//! the same connection and it is delivered, whole.
//!
//! Skipped with a message when postfix is not installed, unless
//! CRSTREAM_TEST_REQUIRE_PROGRAMS is set (as `.ci/test` does).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(20);

/// A postfix program (root's PATH may lack /usr/sbin).
fn sbin(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// uid and gid of user `name`.
fn user_id(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .unwrap_or_else(|| panic!("no user {name}"));
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// A postfix instance whose every file is in `dir`: configuration in
/// conf/, queue in queue/, mail for box@test.lan in the maildir
/// vmail/box/, its log in maillog; SMTP on 127.0.0.1:`port` only, no DNS,
/// nothing relayed, no chroot.
fn configure(dir: &TestDir, port: u16) -> PathBuf {
    let (uid, gid) = user_id("postfix");
    let d = dir.0.display();
    let conf = dir.path("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(dir.path("queue")).unwrap();
    std::fs::create_dir_all(dir.path("vmail")).unwrap();
    std::os::unix::fs::chown(dir.path("vmail"), Some(uid), Some(gid)).unwrap();
    std::fs::write(
        conf.join("main.cf"),
        format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             myhostname = mail.test.lan\n\
             mydomain = test.lan\n\
             myorigin = test.lan\n\
             mydestination = localhost\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost =\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             default_transport = error:nothing leaves this test\n\
             relay_transport = error:nothing leaves this test\n\
             smtpd_peername_lookup = no\n\
             biff = no\n\
             virtual_mailbox_domains = test.lan\n\
             virtual_mailbox_base = {d}/vmail\n\
             virtual_mailbox_maps = static:box/\n\
             virtual_uid_maps = static:{uid}\n\
             virtual_gid_maps = static:{gid}\n"
        ),
    )
    .unwrap();
    // Debian's master.cf, chroot off, smtpd on the test's port only.
    std::fs::write(
        conf.join("master.cf"),
        format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup    unix  n - n 60    1 pickup\n\
             cleanup   unix  n - n -     0 cleanup\n\
             qmgr      unix  n - n 300   1 qmgr\n\
             rewrite   unix  - - n -     - trivial-rewrite\n\
             bounce    unix  - - n -     0 bounce\n\
             defer     unix  - - n -     0 bounce\n\
             trace     unix  - - n -     0 bounce\n\
             verify    unix  - - n -     1 verify\n\
             flush     unix  n - n 1000? 0 flush\n\
             proxymap  unix  - - n -     - proxymap\n\
             error     unix  - - n -     - error\n\
             retry     unix  - - n -     - error\n\
             discard   unix  - - n -     - discard\n\
             local     unix  - n n -     - local\n\
             virtual   unix  - n n -     - virtual\n\
             anvil     unix  - - n -     1 anvil\n\
             scache    unix  - - n -     1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n"
        ),
    )
    .unwrap();
    // Fills the queue directory and makes the data directory, owned as
    // postfix wants them.
    let o = Command::new(sbin("postfix"))
        .arg("-c")
        .arg(&conf)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "postfix check: {}\n{}",
        text(&o),
        logs(dir)
    );
    conf
}

/// What postfix logged, and what its master wrote.
fn logs(dir: &TestDir) -> String {
    format!(
        "maillog:\n{}\nmaster's output:\n{}",
        std::fs::read_to_string(dir.path("maillog")).unwrap_or_default(),
        std::fs::read_to_string(dir.path("master.log")).unwrap_or_default()
    )
}

/// An SMTP client on one connection.
struct Smtp<'a> {
    conn: BufReader<TcpStream>,
    dir: &'a TestDir,
}

impl<'a> Smtp<'a> {
    fn connect(dir: &'a TestDir, port: u16) -> Self {
        let started = Instant::now();
        let s = loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                break s;
            }
            assert!(
                started.elapsed() < T,
                "nothing listens on port {port}\n{}",
                logs(dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        s.set_read_timeout(Some(T)).unwrap();
        let mut smtp = Smtp {
            conn: BufReader::new(s),
            dir,
        };
        smtp.expect("(the greeting)", "220");
        smtp
    }

    fn send(&mut self, bytes: &str) {
        self.conn
            .get_mut()
            .write_all(bytes.as_bytes())
            .unwrap_or_else(|e| panic!("sending {bytes:?}: {e}\n{}", logs(self.dir)));
    }

    /// Reads a whole reply (its continuation lines too), which must have
    /// `code`; returns its last line.
    fn expect(&mut self, after: &str, code: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.conn.read_line(&mut line).unwrap_or_else(|e| {
                panic!("reply to {after:?}: {e}\n{}", logs(self.dir));
            });
            assert!(
                n > 0,
                "reply to {after:?}: connection closed\n{}",
                logs(self.dir)
            );
            assert!(
                line.starts_with(code),
                "reply to {after:?}: {line:?}, not {code}\n{}",
                logs(self.dir)
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    fn command(&mut self, command: &str, code: &str) -> String {
        self.send(&format!("{command}\r\n"));
        self.expect(command, code)
    }

    /// Starts a mail to box@test.lan: the envelope, then DATA.
    fn start_mail(&mut self) {
        self.command("MAIL FROM:<sender@example.com>", "250");
        self.command("RCPT TO:<box@test.lan>", "250");
        self.command("DATA", "354");
    }

    /// Ends the body: the queue id postfix gives the mail.
    fn end_mail(&mut self) -> String {
        let reply = self.command(".", "250");
        reply
            .rsplit(' ')
            .next()
            .filter(|_| reply.contains("queued as"))
            .unwrap_or_else(|| panic!("no queue id in {reply:?}"))
            .to_string()
    }
}

/// Header and body lines of the mail `subject` (a line starting with a
/// dot among them: sent doubled), and the body as delivered.
fn mail(subject: &str, lines: std::ops::Range<u32>) -> (String, String) {
    let mut wire = format!("Subject: {subject}\r\nFrom: <sender@example.com>\r\n\r\n");
    let mut delivered = String::new();
    for i in lines {
        let line = if i % 10 == 7 {
            format!(".line {i} of {subject} starts with a dot")
        } else {
            format!("line {i} of {subject}: {}", "x".repeat(i as usize % 70))
        };
        let stuffed = if line.starts_with('.') { "." } else { "" };
        wire += &format!("{stuffed}{line}\r\n");
        delivered += &format!("{line}\n");
    }
    (wire, delivered)
}

/// The delivered mail with `subject` in the maildir, once it is there.
fn delivered(dir: &TestDir, subject: &str) -> String {
    let new = dir.path("vmail/box/new");
    let find = || -> Option<String> {
        std::fs::read_dir(&new)
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .find(|m| m.contains(&format!("\nSubject: {subject}\n")))
    };
    assert!(
        wait_until(T, || find().is_some()),
        "mail {subject:?} not delivered to {}\n{}",
        new.display(),
        logs(dir)
    );
    find().unwrap()
}

/// PID, name and uid of `master` and each process under it.
fn processes(master: i32) -> Vec<(i32, String, String)> {
    let mut all: Vec<(i32, String, String)> = [master]
        .into_iter()
        .chain(descendants_of(master))
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let uid = status_field(p, "Uid").unwrap_or_default();
            let uid = uid.split_whitespace().next().unwrap_or("").to_string();
            (p, comm.trim().to_string(), uid)
        })
        .collect();
    all.sort();
    all
}

fn pids(v: &serde_json::Value, key: &str) -> Vec<i32> {
    let mut p: Vec<i32> = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    p.sort();
    p
}

/// postfix, checkpointed with a client outside the tree in the middle of
/// sending a mail, comes back as the same processes (master keeps its
/// PID, its children theirs, as postfix): the client finishes the mail
/// on the same connection, postfix accepts and delivers it with its body
/// intact, and delivers a mail from a new connection too. A mail server
/// moved or restarted this way loses no mail and drops no client.
#[test]
fn postfix_takes_a_mail_begun_before_the_dump_and_delivers_it_after_restore() {
    if !available(sbin("postconf").to_str().unwrap(), &["-d", "mail_version"]) {
        return;
    }
    let dir = TestDir::new("postfix");
    // The restored processes (killed after `w`, which kills the master and
    // everything under it).
    let mut tree = TreeGuard(Vec::new());
    let port = free_port();
    let conf = configure(&dir, port);
    let daemons = Command::new(sbin("postconf"))
        .arg("-c")
        .arg(&conf)
        .args(["-h", "daemon_directory"])
        .output()
        .unwrap();
    let master = Path::new(String::from_utf8_lossy(&daemons.stdout).trim()).join("master");
    // In the foreground (-d): the process spawned is the root of the tree.
    let mut cmd = Command::new(master);
    cmd.arg("-c").arg(&conf).arg("-d");
    let mut w = spawn_isolated(cmd, dir.path("master"));
    let master_pid = w.pid;

    // One mail delivered (so that every process delivery needs runs), then
    // a second begun on the same connection: half its body sent.
    let mut client = Smtp::connect(&dir, port);
    client.command("EHLO client.example.com", "250");
    let (first, first_body) = mail("before the dump", 0..20);
    client.start_mail();
    client.send(&first);
    client.end_mail();
    let got = delivered(&dir, "before the dump");
    assert!(got.ends_with(&first_body), "{got}\n{}", logs(&dir));
    let (across, across_body) = mail("across the dump", 0..200);
    let split = across.find("line 100 ").unwrap();
    client.start_mail();
    client.send(&across[..split]);
    // cleanup has the mail in the queue, incomplete.
    assert!(
        wait_until(T, || std::fs::read_dir(dir.path("queue/incoming"))
            .is_ok_and(|mut d| d.next().is_some())),
        "no mail in the incoming queue\n{}",
        logs(&dir)
    );
    let names = [
        "master",
        "pickup",
        "qmgr",
        "postlogd",
        "smtpd",
        "cleanup",
        "trivial-rewrite",
        "virtual",
    ];
    let has_all = || {
        let now = processes(master_pid);
        names.iter().all(|n| now.iter().any(|p| p.1 == *n))
    };
    assert!(
        wait_until(T, has_all),
        "postfix processes: {:?}",
        processes(master_pid)
    );
    let before = processes(master_pid);

    let img = dir.path("img");
    let dumped = dump_tree_with(&mut w, img.to_str().unwrap(), &["--tcp-established"], &[]);
    let _lock = NetLockGuard::of(&dumped);
    let dumped: serde_json::Value = serde_json::from_slice(&dumped.stdout).unwrap();
    let all: Vec<i32> = before.iter().map(|p| p.0).collect();
    assert_eq!(pids(&dumped, "pids"), all, "the whole tree dumped");

    let o = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach", "--json"],
        &[],
    );
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let restored: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    tree.0 = pids(&restored, "processes");
    assert_eq!(tree.0, all, "the whole tree restored");
    assert_eq!(
        restored["pid"].as_i64(),
        Some(master_pid as i64),
        "master restored with another PID"
    );
    w.restored(master_pid);
    assert_eq!(processes(master_pid), before, "the same processes, users");
    for &(pid, _, _) in &before {
        assert_running_untraced(pid);
    }

    // The rest of the body on the same connection: accepted, delivered
    // whole.
    client.send(&across[split..]);
    let queue_id = client.end_mail();
    client.command("QUIT", "221");
    let got = delivered(&dir, "across the dump");
    assert!(
        got.ends_with(&across_body),
        "body of the mail sent across the dump:\n{got}\n{}",
        logs(&dir)
    );
    let log = std::fs::read_to_string(dir.path("maillog")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{queue_id}: to=<box@test.lan>"))
                && l.contains("status=sent")),
        "{queue_id} not logged as sent\n{}",
        logs(&dir)
    );

    // A new client.
    let mut again = Smtp::connect(&dir, port);
    again.command("EHLO again.example.com", "250");
    let (after, after_body) = mail("after the restore", 0..20);
    again.start_mail();
    again.send(&after);
    again.end_mail();
    again.command("QUIT", "221");
    let got = delivered(&dir, "after the restore");
    assert!(got.ends_with(&after_body), "{got}\n{}", logs(&dir));
    let log = std::fs::read_to_string(dir.path("maillog")).unwrap_or_default();
    let trouble: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("warning:") || l.contains("fatal:") || l.contains("panic:"))
        .collect();
    assert!(
        trouble.is_empty(),
        "postfix complained: {trouble:?}\n{}",
        logs(&dir)
    );
    w.kill();
    tree.0.clear();
}
