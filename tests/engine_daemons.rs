//! Real daemons that drop privileges, dumped while serving and restored
//! (twice from one image): nginx (master as root, workers as www-data) and
//! PostgreSQL (postmaster and its children as postgres, with data written
//! before the dump); and tor in its seccomp sandbox. Each listens on a free
//! loopback port; the test talks to it as a client would.
//!
//! Skipped with a message when the program is not installed, unless
//! CRSTREAM_TEST_REQUIRE_PROGRAMS is set (as `.ci/test` does), which makes
//! a missing program a failure.

mod support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < T, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first field of the Uid line of each process of `pids`.
fn uids(pids: &[i32]) -> Vec<String> {
    pids.iter()
        .map(|&p| {
            status_field(p, "Uid")
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn user_id(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

#[test]
fn nginx_master_as_root_and_workers_as_www_data_serve_after_restore() {
    if !available("nginx", &["-v"]) {
        return;
    }
    let dir = TestDir::new("nginx");
    let port = free_port();
    std::fs::create_dir_all(dir.path("www")).unwrap();
    std::fs::write(dir.path("www/index.html"), "served by a restored nginx\n").unwrap();
    let d = dir.0.display();
    // The Debian configuration's settings, on a loopback port and with
    // every path in the test's directory.
    let conf = format!(
        "user www-data;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         daemon off;\nevents {{ worker_connections 768; }}\n\
         http {{\n sendfile on;\n tcp_nopush on;\n types_hash_max_size 2048;\n\
         include /etc/nginx/mime.types;\n default_type application/octet-stream;\n\
         access_log {d}/access.log;\n client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n gzip on;\n\
         server {{ listen 127.0.0.1:{port}; root {d}/www; location / {{ }} }}\n}}\n"
    );
    std::fs::write(dir.path("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(dir.path("nginx.conf"))
        .arg("-e")
        .arg(dir.path("error.log"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let body = wait_for("nginx answering", || http_get(port, "/"));
    assert_eq!(body, "served by a restored nginx\n");
    let www_data = user_id("www-data").expect("a www-data user").0.to_string();
    // A worker answers while the other may still be setting itself up
    // (it is root until it calls setuid).
    let workers = wait_for("two workers as www-data", || {
        let workers = children_of(w.pid);
        (workers.len() == 2 && uids(&workers) == [www_data.clone(), www_data.clone()])
            .then_some(workers)
    });

    let img = dir.path("img");
    let pids = dump_tree(&mut w, img.to_str().unwrap(), &[]);
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(http_get(port, "/").is_none(), "nginx still answers");
    restore_twice(img.to_str().unwrap(), &[], &mut w, |w| {
        let body = wait_for("restored nginx answering", || http_get(port, "/"));
        assert_eq!(body, "served by a restored nginx\n");
        assert_eq!(uids(&[w.pid]), ["0"]);
        let mut now = children_of(w.pid);
        now.sort_unstable();
        let mut before = workers.clone();
        before.sort_unstable();
        assert_eq!(now, before, "the same workers");
        assert_eq!(uids(&now), [www_data.clone(), www_data.clone()]);
        // Many requests, served by the restored workers.
        for _ in 0..50 {
            assert!(http_get(port, "/").is_some());
        }
    });
}

/// The newest PostgreSQL server installed (Debian's layout).
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("postgres").exists() && b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn psql(port: u16, sql: &str) -> Option<String> {
    let o = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-X", "-A", "-t", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

#[test]
fn postgres_as_its_own_user_answers_queries_on_data_written_before_the_dump() {
    let Some(bin) = postgres_bin() else {
        assert!(
            std::env::var_os("CRSTREAM_TEST_REQUIRE_PROGRAMS").is_none(),
            "PostgreSQL is not installed (CRSTREAM_TEST_REQUIRE_PROGRAMS is set)"
        );
        eprintln!("PostgreSQL is not installed: skipped");
        return;
    };
    if !available("psql", &["--version"]) {
        return;
    }
    let (uid, gid) = user_id("postgres").expect("a postgres user");
    // Its dynamic shared memory segments, which it leaves when killed.
    let _segments = NewFilesRemoved::new("/dev/shm", "PostgreSQL.");
    let dir = TestDir::new("postgres");
    let data = dir.path("data");
    let sock = dir.path("sock");
    std::fs::create_dir_all(&sock).unwrap();
    chown(&dir.0, uid, gid);
    chown(&sock, uid, gid);
    let st = Command::new(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "initdb failed");
    let port = free_port();
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&sock)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .uid(uid)
        .gid(gid);
    let mut w = spawn_isolated(cmd, dir.path("report"));
    wait_for("postgres accepting connections", || psql(port, "select 1"));
    psql(
        port,
        "create table t (x int, s text); \
         insert into t select i, md5(i::text) from generate_series(1, 20000) i;",
    )
    .expect("create and fill a table");
    let digest = "select count(*), sum(x), md5(string_agg(s, ',' order by x)) from t";
    let before = psql(port, digest).unwrap();
    let children = children_of(w.pid);
    assert!(children.len() >= 4, "postgres children: {children:?}");

    // Restored, it answers and writes; dumped again with what it wrote,
    // and restored from that, it has it. (Not restored twice from one
    // image: its files on disk move on with the first restore.)
    let mut expected = before;
    let mut rows = 20000;
    for round in ["img", "img2"] {
        let img = dir.path(round);
        let pids = dump_tree(&mut w, img.to_str().unwrap(), &[]);
        assert!(pids.len() >= 5, "{pids:?}");
        let mut tree = restore_tree(&img, &mut w);
        let now = wait_for("restored postgres answering", || psql(port, digest));
        assert_eq!(now, expected, "{round}: the data written before the dump");
        assert_eq!(uids(&[w.pid]), [uid.to_string()]);
        assert!(
            uids(&children_of(w.pid))
                .iter()
                .all(|u| *u == uid.to_string())
        );
        // New backends fork from the restored postmaster and write.
        psql(port, "insert into t values (0, 'after restore')").expect("an insert");
        rows += 1;
        assert_eq!(psql(port, "select count(*) from t"), Some(rows.to_string()));
        expected = psql(port, digest).unwrap();
        if round == "img" {
            // The next dump ends these.
            tree.0.clear();
        } else {
            tree.0.extend(children_of(w.pid));
            tree.kill();
        }
    }
    remove_segments_made_by(w.pid);
}

/// Removes the System V segments process `pid` made that no process has
/// attached (a postmaster killed leaves its own behind).
fn remove_segments_made_by(pid: i32) {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    // key shmid perms size cpid lpid nattch ...
    for f in table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        if f.len() > 6 && f[4] == pid.to_string() && f[6] == "0" {
            let id: i32 = f[1].parse().unwrap();
            // SAFETY: IPC_RMID of a segment this test's server made.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// Restores `img` detached; the guard holds the restored processes.
fn restore_tree(img: &Path, w: &mut Workload) -> TreeGuard {
    let o = run(
        &["restore", "-i", img.to_str().unwrap(), "--detach", "--json"],
        &[],
    );
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    w.restored(v["pid"].as_i64().unwrap() as i32);
    TreeGuard(
        v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap() as i32)
            .collect(),
    )
}

/// tor's control port: the version line of an authenticated GETINFO.
fn tor_version(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"AUTHENTICATE \"\"\r\nGETINFO version\r\nQUIT\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("250-version="))
        .map(str::to_string)
}

/// tor with its seccomp sandbox (`Sandbox 1`: a BPF filter installed in
/// the main thread before its worker threads start), offline: after
/// restore every thread is still filtered, by as many filters, and tor
/// answers on its control port (which it could not if the filter had
/// broken the syscalls it needs, nor if it were gone).
#[test]
fn tor_in_its_seccomp_sandbox_answers_after_restore() {
    if !available("tor", &["--version"]) {
        return;
    }
    let dir = TestDir::new("tor");
    let (socks, control) = (free_port(), free_port());
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let conf = format!(
        "SocksPort 127.0.0.1:{socks}\nControlPort 127.0.0.1:{control}\nDataDirectory {}\n\
         DisableNetwork 1\nSandbox 1\nRunAsDaemon 0\nLog notice file {}\n",
        data.display(),
        dir.path("tor.log").display()
    );
    std::fs::write(dir.path("torrc"), conf).unwrap();
    let mut cmd = Command::new("tor");
    cmd.arg("-f").arg(dir.path("torrc"));
    let mut w = spawn_isolated(cmd, dir.path("report"));
    let version = wait_for("tor answering", || tor_version(control));
    let filtered = |pid: i32| -> Vec<(String, String)> {
        tasks(pid)
            .into_iter()
            .map(|t| {
                let s = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status"))
                    .unwrap_or_default();
                let field = |k: &str| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                        .unwrap_or_default()
                };
                (field("Seccomp:"), field("Seccomp_filters:"))
            })
            .collect()
    };
    let before = filtered(w.pid);
    assert!(before.len() > 1, "tor runs threads: {before:?}");
    assert!(
        before.iter().all(|(mode, n)| mode == "2" && n != "0"),
        "every thread in the sandbox: {before:?}"
    );
    let img = dir.path("img");
    dump_tree(&mut w, img.to_str().unwrap(), &[]);
    assert!(tor_version(control).is_none(), "tor still answers");
    restore_twice(img.to_str().unwrap(), &[], &mut w, |w| {
        let v = wait_for("restored tor answering", || tor_version(control));
        assert_eq!(v, version);
        assert_eq!(filtered(w.pid), before, "seccomp of each thread");
    });
}
