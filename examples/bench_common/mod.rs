//! What the benchmarks share: finding the binaries they run, and measuring
//! CPU time and how busy the machine is (so that figures taken next to a
//! build are flagged instead of trusted). Included with `#[path]`; not an
//! example of its own (a directory without main.rs).

#![allow(dead_code)]

pub mod s3;
pub mod services;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `crstream` binary of the build this benchmark belongs to
/// (target/release/examples/bench_x -> target/release/crstream).
pub fn crstream_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    built(
        exe.parent()
            .and_then(|p| p.parent())
            .expect("target directory")
            .join("crstream"),
    )
}

/// Example `name` (a workload) of the same build.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    built(exe.parent().expect("examples directory").join(name))
}

fn built(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --bin crstream --examples` first",
        p.display()
    );
    p
}

pub fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

pub fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(n as f64 / hz)
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy CPU time of the whole machine so far, all CPUs together (from
/// /proc/stat: all but idle and iowait; steal counts, as others took it).
pub fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    ticks(busy)
}

/// CPU time of another process so far (a zombie still has it).
pub fn proc_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let f: Vec<u64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    ticks(f.iter().sum())
}

/// Share (%) of all CPUs that something other than the measured work used
/// during `wall`: when high, the figures measure the machine, not crstream.
pub fn others_pct(busy: Duration, ours: Duration, wall: Duration) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    busy.saturating_sub(ours).as_secs_f64() / (wall.as_secs_f64().max(1e-9) * cpus) * 100.0
}

/// Writes back dirty page cache, then waits (up to `max`) until the machine
/// is idle, so that builds or tests running next to the bench do not weigh
/// on the figures. `bench` names the benchmark in what it prints.
pub fn wait_idle(bench: &str, max: Duration) {
    // Dirty page cache left by earlier work (a build, an earlier image) is
    // written back first: past the kernel's dirty limits, an image's writes
    // are held back for it (a 1 GiB dump measured 0.46-0.51 s after a
    // sync, 0.56 s to 2.7 s with 2 GB dirty).
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let started = Instant::now();
    let mut said = false;
    loop {
        let (b0, c0, t0) = (machine_busy(), cpu_time(), Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        let load = others_pct(machine_busy() - b0, cpu_time() - c0, t0.elapsed());
        if load < 10.0 {
            return;
        }
        if started.elapsed() > max {
            eprintln!("{bench}: warning: the machine is {load:.0}% busy; measuring anyway");
            return;
        }
        if !said {
            eprintln!("{bench}: waiting for the machine to be idle ({load:.0}% busy)");
            said = true;
        }
    }
}

/// Whether `pid` is gone, reaping first any child of ours that exited (the
/// benchmarks that restore trees are subreapers of them; __WALL: also
/// those whose exit signal is not SIGCHLD).
pub fn gone(pid: i32) -> bool {
    let mut st = 0;
    // SAFETY: non-blocking reap of any child.
    while unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) } > 0 {}
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `f` until it holds; panics after `max`.
pub fn wait_for(max: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < max, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The PIDs a `crstream dump --json` summary names.
pub fn dumped_pids(summary: &serde_json::Value) -> Vec<i32> {
    summary["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect()
}

/// SIGKILLs the processes a benchmark started or restored, by PID, and
/// waits (at most `max`) until they are gone.
pub fn kill_all(pids: &[i32], max: Duration) {
    for &p in pids {
        // SAFETY: ending processes this benchmark started.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for(max, || pids.iter().all(|&p| gone(p)));
}

/// Kills a process this benchmark started, and every descendant of it, by
/// PID when dropped: a benchmark that panics half way leaves nothing
/// running.
pub struct KillTreeOnDrop(pub i32);

impl Drop for KillTreeOnDrop {
    fn drop(&mut self) {
        let mut pids = vec![self.0];
        let mut i = 0;
        while i < pids.len() {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", pids[i]));
            for t in tasks.into_iter().flatten().flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
            i += 1;
        }
        for &p in &pids {
            // SAFETY: ending processes this benchmark started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a crstream command to success; its stdout.
pub fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let o = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn crstream");
    assert!(
        o.status.success(),
        "crstream failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// The machine's limits the figures are read against, measured now over
/// `mib` MiB: memcpy between buffers already faulted in, and writing pages
/// the process never touched (page faults and zeroing included), in GB/s.
pub fn memory_bandwidth(mib: usize) -> (f64, f64) {
    let len = mib << 20;
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    let best = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let copy = best(&mut || {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
    });
    let fresh = best(&mut || {
        // SAFETY: a new private anonymous mapping, written then unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            std::ptr::copy_nonoverlapping(src.as_ptr(), p.cast::<u8>(), len);
            libc::munmap(p, len);
        }
    });
    (len as f64 / copy / 1e9, len as f64 / fresh / 1e9)
}

/// A TCP port free on the loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `program` is on PATH.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
