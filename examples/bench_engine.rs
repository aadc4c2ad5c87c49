//! Benchmark of dump and restore on a real process: the memory workload
//! (examples/wl_memory.rs) at several sizes, dumped with each codec to a
//! file and to /dev/null, and restored from the file; prints times, MB/s,
//! image size and the peak RSS of the crstream processes. Needs root
//! (ptrace, clone3 set_tid, PR_SET_MM_MAP), like the engine tests.
//!
//! Usage (after `cargo build --release --examples --bin crstream`):
//!   target/release/examples/bench_engine [--sizes 64,256,1024]
//!       [--codecs auto,zstd,none] [--dests file,null] [--dir DIR] [--wait-idle SECS]
//!       [--runs N (3: medians printed)] [--dump-args 'ARGS'] [--restore-args 'ARGS'] [--json]
//!
//! MB/s is 10^6 bytes per second of the workload's buffer (SIZE MiB).

#[path = "bench_common/mod.rs"]
mod common;

use common::{cpu_time, machine_busy, others_pct, proc_cpu, tv, wait_idle};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    sizes: Vec<usize>,
    codecs: Vec<String>,
    dests: Vec<String>,
    dir: Option<PathBuf>,
    json: bool,
    wait_idle: u64,
    /// Runs of each configuration; the medians are printed.
    runs: usize,
    /// Extra arguments for every `crstream dump` / `crstream restore` (tuning).
    dump_args: Vec<String>,
    restore_args: Vec<String>,
}

const USAGE: &str = "usage: bench_engine [--sizes 64,256,1024] [--codecs auto,zstd,none] \
[--dests file,null] [--dir DIR] [--wait-idle SECS] [--dump-args 'ARGS'] [--restore-args 'ARGS'] [--json]";

fn die(msg: &str) -> ! {
    eprintln!("bench_engine: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        sizes: vec![64, 256, 1024],
        codecs: vec!["auto".into(), "zstd".into(), "none".into()],
        dests: vec!["file".into(), "null".into()],
        dir: None,
        json: false,
        wait_idle: 60,
        runs: 3,
        dump_args: Vec::new(),
        restore_args: Vec::new(),
    };
    let list = |v: String| -> Vec<String> { v.split(',').map(|s| s.trim().to_string()).collect() };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        match name.as_str() {
            "--sizes" => {
                o.sizes = list(value())
                    .iter()
                    .map(|s| s.parse().unwrap_or_else(|_| die(&format!("bad size {s}"))))
                    .collect()
            }
            "--codecs" => {
                o.codecs = list(value());
                if let Some(c) = o
                    .codecs
                    .iter()
                    .find(|c| !["auto", "zstd", "lz4", "none"].contains(&c.as_str()))
                {
                    die(&format!("unknown codec {c}"));
                }
            }
            "--dests" => {
                o.dests = list(value());
                if let Some(d) = o
                    .dests
                    .iter()
                    .find(|d| !["file", "null"].contains(&d.as_str()))
                {
                    die(&format!("unknown destination {d}"));
                }
            }
            "--dir" => o.dir = Some(PathBuf::from(value())),
            "--wait-idle" => {
                o.wait_idle = value().parse().unwrap_or_else(|_| die("bad --wait-idle"))
            }
            "--runs" => {
                o.runs = value()
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .unwrap_or_else(|| die("bad --runs"))
            }
            "--dump-args" => o.dump_args = value().split_whitespace().map(String::from).collect(),
            "--restore-args" => {
                o.restore_args = value().split_whitespace().map(String::from).collect()
            }
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    o
}

fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reaps `pid` if it is our child (the restored process is, once the
/// restorer exits, because this bench is a child subreaper), and waits
/// until its PID is free either way.
fn reap_gone(pid: i32, timeout: Duration) -> bool {
    let t = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: non-blocking wait for one PID with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if (r == pid || r < 0) && !proc_exists(pid) {
            return true;
        }
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workload, first as our child, then as the restored process with the
/// same PID. Killed by PID and reaped on drop, also when the bench panics.
struct Workload {
    pid: i32,
    child: Option<Child>,
    report: PathBuf,
}

impl Workload {
    fn spawn(bin: &Path, report: PathBuf, mib: usize) -> Self {
        let _ = std::fs::remove_file(&report);
        // Regular-file stdio: the engine refuses pipes.
        let log = std::fs::File::create(report.with_extension("log")).expect("log file");
        let child = Command::new(bin)
            .arg(&report)
            .arg(mib.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting wl_memory");
        Workload {
            pid: child.id() as i32,
            child: Some(child),
            report,
        }
    }

    /// "counter checksum pid" from the report, once it exists.
    fn report(&self) -> Option<(u64, u64, i32)> {
        let s = std::fs::read_to_string(&self.report).ok()?;
        let mut f = s.split_whitespace();
        Some((
            f.next()?.parse().ok()?,
            f.next()?.parse().ok()?,
            f.next()?.parse().ok()?,
        ))
    }

    fn wait_report(&self, timeout: Duration, pred: impl Fn(u64) -> bool) -> (u64, u64, i32) {
        let t = Instant::now();
        loop {
            if let Some(r) = self.report().filter(|r| pred(r.0)) {
                return r;
            }
            let log = std::fs::read_to_string(self.report.with_extension("log"));
            assert!(
                t.elapsed() < timeout,
                "pid {}: report {:?} not reached in {timeout:?}; log: {log:?}",
                self.pid,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the dump killed it: reap it so that its PID is free to restore.
    fn reap_dumped(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = c.wait().expect("waiting for the workload");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL),
                "the dump should have killed the workload"
            );
        }
        assert!(
            reap_gone(self.pid, Duration::from_secs(10)),
            "pid {} still exists after the dump",
            self.pid
        );
    }

    fn kill(&mut self) {
        if self.child.is_none() && !proc_exists(self.pid) {
            return;
        }
        // SAFETY: signalling the process this guard owns, by PID.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        reap_gone(self.pid, Duration::from_secs(10));
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A crstream child run to completion, with its resource usage.
struct Run {
    ok: bool,
    wall: Duration,
    cpu: Duration,
    maxrss_kib: i64,
    stdout: String,
    stderr: String,
}

/// One run of a configuration: a fresh workload dumped, then (to a file)
/// restored and checked.
struct Sample {
    dump: Run,
    info: DumpInfo,
    restore: Option<Run>,
    verified: bool,
    others: f64,
}

fn measure(
    o: &Opts,
    crstream: &Path,
    wl: &Path,
    dir: &Path,
    size: usize,
    codec: &str,
    dest: &str,
) -> Sample {
    if o.wait_idle > 0 {
        wait_idle("bench_engine", Duration::from_secs(o.wait_idle));
    }
    let report = dir.join("report");
    let mut w = Workload::spawn(wl, report, size);
    let slow = Duration::from_secs(60 + size as u64 / 8);
    // Two rounds: the buffer is filled and checksummed at least twice.
    let (_, checksum, _) = w.wait_report(slow, |c| c >= 2);

    let img = dir.join("image.crs");
    // What the machine, we and the workload used during the dump.
    let (busy0, own0, wl0) = (machine_busy(), cpu_time(), proc_cpu(w.pid));
    let mut cmd = Command::new(crstream);
    cmd.args(["dump", "-t", &w.pid.to_string(), "--compress", codec])
        .args(&o.dump_args);
    let dump = if dest == "file" {
        cmd.args(["--json", "-o"]).arg(&img);
        run_measured(cmd, None, dir)
    } else {
        // Not `-o /dev/null`: the file backend writes a temporary
        // file next to the target and renames it into place.
        cmd.args(["-o", "-"]);
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        run_measured(cmd, Some(null.into()), dir)
    };
    assert!(dump.ok, "dump failed: {}", dump.stderr);
    // Read before reaping: the killed workload is a zombie still.
    let ours = dump.cpu + (cpu_time() - own0) + (proc_cpu(w.pid) - wl0);
    let mut others = others_pct(machine_busy() - busy0, ours, dump.wall);
    let info = if dest == "file" {
        parse_json(&dump.stdout)
    } else {
        parse_stderr(&dump.stderr)
    }
    .unwrap_or_else(|| {
        eprintln!(
            "bench_engine: could not parse the dump summary: {}{}",
            dump.stdout, dump.stderr
        );
        DumpInfo::default()
    });
    let (dumped, _, _) = w.report().expect("report after the dump");
    w.reap_dumped();

    let mut restore = None;
    let mut verified = "-";
    if dest == "file" {
        let mut cmd = Command::new(crstream);
        cmd.args(["restore", "--detach", "--json", "-i"])
            .arg(&img)
            .args(&o.restore_args);
        let (busy0, own0) = (machine_busy(), cpu_time());
        let r = run_measured(cmd, None, dir);
        assert!(r.ok, "restore failed: {}", r.stderr);
        let ours = r.cpu + (cpu_time() - own0) + proc_cpu(w.pid);
        others = others.max(others_pct(machine_busy() - busy0, ours, r.wall));
        let v: serde_json::Value =
            serde_json::from_str(r.stdout.trim()).expect("restore --json output");
        assert_eq!(v["pid"].as_i64(), Some(w.pid as i64), "restored PID");
        // Verify outside the timing: it continues from where it
        // was, with the same memory.
        let (_, sum, pid) = w.wait_report(slow, |c| c > dumped + 1);
        assert_eq!(sum, checksum, "checksum after restore");
        assert_eq!(pid, w.pid, "PID in the report");
        verified = "yes";
        restore = Some(r);
    }
    w.kill();
    drop(w);
    let _ = std::fs::remove_file(&img);

    Sample {
        dump,
        info,
        restore,
        verified: verified == "yes",
        others,
    }
}

/// Runs a command, waiting for it with wait4 to get its own peak RSS and
/// CPU time. (Exec records the peak RSS of the mm it replaces, here this
/// bench's, a few MiB: that is the floor of the figure.)
/// Stdout goes to `stdout` if given, else to a file that is read back.
fn run_measured(mut cmd: Command, stdout: Option<Stdio>, scratch: &Path) -> Run {
    let out_path = scratch.join("child.stdout");
    let err_path = scratch.join("child.stderr");
    let captured = stdout.is_none();
    let stdout = stdout.unwrap_or_else(|| std::fs::File::create(&out_path).unwrap().into());
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(&err_path).unwrap());
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
    let wall = started.elapsed();
    drop(child);
    Run {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss,
        stdout: if captured {
            std::fs::read_to_string(&out_path).unwrap_or_default()
        } else {
            String::new()
        },
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// What a dump reports about itself.
#[derive(Default)]
struct DumpInfo {
    frozen_ms: f64,
    total_ms: f64,
    pages: u64,
    bytes: u64,
    /// The byte count came from the rounded stderr figure.
    bytes_approx: bool,
}

/// From the `--json` summary (the image went to a file).
fn parse_json(stdout: &str) -> Option<DumpInfo> {
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last()?).ok()?;
    Some(DumpInfo {
        frozen_ms: v["frozen_ms"].as_f64()?,
        total_ms: v["total_ms"].as_f64()?,
        pages: v["pages"].as_u64()?,
        bytes: v["bytes_written"].as_u64()?,
        bytes_approx: false,
    })
}

/// From the stderr line, when the image went to stdout and there is no JSON:
/// "... N pages (X MiB), Y MiB written, frozen F ms, total T ms".
fn parse_stderr(stderr: &str) -> Option<DumpInfo> {
    let line = stderr.lines().find(|l| l.contains("dumped pid"))?;
    let after = |key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let words: Vec<&str> = line.split(&[' ', ',', ':', '(', ')'][..]).collect();
    let before = |key: &str, back: usize| -> Option<&str> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i.checked_sub(back)?).copied()
    };
    let unit = match before("written", 1)? {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value: f64 = before("written", 2)?.parse().ok()?;
    Some(DumpInfo {
        frozen_ms: after("frozen ")?,
        total_ms: after("total ")?,
        pages: before("pages", 1)?.parse().ok()?,
        bytes: (value * unit) as u64,
        bytes_approx: unit > 1.0,
    })
}

fn mb_s(mib: usize, d: Duration) -> f64 {
    (mib << 20) as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn rss_mib(kib: i64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HEADERS: [&str; 16] = [
    "size MiB",
    "codec",
    "dest",
    "dump s",
    "engine s",
    "frozen ms",
    "dump MB/s",
    "dump cores",
    "image MiB",
    "ratio",
    "dump RSS MiB",
    "restore s",
    "restore MB/s",
    "restore RSS MiB",
    "verified",
    "others %",
];

fn print_table(rows: &[Vec<String>]) {
    let mut w: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = w[i]))
            .collect();
        println!("  {}", s.join("  "));
    };
    line(HEADERS.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
}

fn main() {
    let o = parse_args();
    // target/release/examples/bench_engine -> target/release/{crstream,examples/wl_memory}
    let (crstream, wl) = (common::crstream_bin(), common::example_bin("wl_memory"));
    // Restored processes are re-parented to us when the restorer exits, so
    // we can reap them at once instead of waiting for PID 1 to.
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let base = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("crstream-bench-engine-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).expect("scratch directory");
    let dir = scratch.0.clone();
    if !o.json {
        println!(
            "crstream bench_engine: wl_memory dumped with `crstream dump` and restored with `crstream restore --detach`; \
MB/s = 10^6 B/s of the workload's buffer; RSS = peak of the crstream process (wait4);\n\
dump cores: CPU time / wall time of `crstream dump`; others %: CPU share used by anything else \
during dump or restore (the higher of the two; high = figures not trustworthy)"
        );
    }
    let mut rows = Vec::new();
    for &size in &o.sizes {
        for codec in &o.codecs {
            for dest in &o.dests {
                eprintln!("bench_engine: {size} MiB, {codec}, {dest}");
                let samples: Vec<Sample> = (0..o.runs)
                    .map(|_| measure(&o, &crstream, &wl, &dir, size, codec, dest))
                    .collect();
                // Medians: of the dump by its wall time, of the restore by
                // its own.
                let median = |key: &dyn Fn(&Sample) -> Duration| {
                    let mut order: Vec<usize> = (0..samples.len()).collect();
                    order.sort_by_key(|&i| key(&samples[i]));
                    &samples[order[order.len() / 2]]
                };
                let d = median(&|s| s.dump.wall);
                let r = median(&|s| s.restore.as_ref().map_or(Duration::ZERO, |r| r.wall));
                let (dump, info) = (&d.dump, &d.info);
                let restore = r.restore.as_ref();
                let verified = if samples.iter().all(|s| s.verified) {
                    "yes"
                } else {
                    "-"
                };
                let others = samples.iter().map(|s| s.others).fold(0.0, f64::max);
                let image_mib = info.bytes as f64 / (1u64 << 20) as f64;
                let ratio = (size << 20) as f64 / info.bytes.max(1) as f64;
                let approx = if info.bytes_approx { "~" } else { "" };
                let dash = || "-".to_string();
                rows.push(vec![
                    size.to_string(),
                    codec.clone(),
                    if dest == "null" {
                        "/dev/null".into()
                    } else {
                        "file".into()
                    },
                    format!("{:.3}", dump.wall.as_secs_f64()),
                    format!("{:.3}", info.total_ms / 1e3),
                    format!("{:.1}", info.frozen_ms),
                    format!("{:.0}", mb_s(size, dump.wall)),
                    format!("{:.2}", dump.cpu.as_secs_f64() / dump.wall.as_secs_f64()),
                    format!("{approx}{image_mib:.1}"),
                    format!("{ratio:.2}"),
                    rss_mib(dump.maxrss_kib),
                    restore
                        .as_ref()
                        .map_or_else(dash, |r| format!("{:.3}", r.wall.as_secs_f64())),
                    restore
                        .as_ref()
                        .map_or_else(dash, |r| format!("{:.0}", mb_s(size, r.wall))),
                    restore
                        .as_ref()
                        .map_or_else(dash, |r| rss_mib(r.maxrss_kib)),
                    verified.into(),
                    format!("{others:.0}"),
                ]);
                if o.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "bench": "engine", "size_mib": size, "codec": codec, "dest": dest,
                            "dump_secs": dump.wall.as_secs_f64(),
                            "engine_total_ms": info.total_ms, "frozen_ms": info.frozen_ms,
                            "dump_mb_per_s": mb_s(size, dump.wall),
                            "pages": info.pages, "image_bytes": info.bytes,
                            "image_bytes_approx": info.bytes_approx,
                            "dump_peak_rss_kib": dump.maxrss_kib,
                            "restore_secs": restore.as_ref().map(|r| r.wall.as_secs_f64()),
                            "restore_mb_per_s": restore.as_ref().map(|r| mb_s(size, r.wall)),
                            "restore_peak_rss_kib": restore.as_ref().map(|r| r.maxrss_kib),
                            "verified": restore.is_some().then_some(true),
                            "dump_cpu_secs": dump.cpu.as_secs_f64(),
                            "restore_cpu_secs": restore.as_ref().map(|r| r.cpu.as_secs_f64()),
                            "others_pct": others,
                        })
                    );
                }
            }
        }
    }
    if !o.json {
        print_table(&rows);
        println!(
            "  dump s: wall time of `crstream dump`; engine s and frozen ms: as crstream reports them; \
~: rounded figure from the stderr summary"
        );
    }
    // Last: the buffers would count in the peak RSS that every child
    // started afterwards inherits.
    let (memcpy_gbs, fresh_gbs) = common::memory_bandwidth(256);
    if o.json {
        println!(
            "{}",
            serde_json::json!({"bench": "engine", "memcpy_gb_per_s": memcpy_gbs,
                "fresh_page_write_gb_per_s": fresh_gbs})
        );
    } else {
        println!(
            "  machine: memcpy {memcpy_gbs:.1} GB/s, writing fresh pages {fresh_gbs:.1} GB/s \
(best of 3 over 256 MiB, measured after the runs)"
        );
    }
}
