//! End-to-end tests of memory shared between the processes of a tree (run
//! as root): shared anonymous memory, memfds with their seals, deleted
//! files mapped shared, System V segments, and a real python
//! `multiprocessing` pool whose semaphores are unlinked /dev/shm files.
//!
//! Run with: cargo build --bin crstream --examples && .ci/test
//! (the S3 tests need CRSTREAM_TEST_S3_ENDPOINT, as set by .ci/test).

mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(30);

/// wl_shm's counters: region name -> the three processes' counters.
fn regions(report: &str) -> Vec<(String, Vec<u64>)> {
    report
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?.to_string();
            Some((name, it.filter_map(|v| v.parse().ok()).collect()))
        })
        .collect()
}

/// Whether every counter of every region passed its value in `before`.
fn all_moved_on(report: &str, before: &[(String, Vec<u64>)]) -> bool {
    let now = regions(report);
    now.len() == before.len()
        && now
            .iter()
            .zip(before)
            .all(|((_, n), (_, b))| n.len() == b.len() && n.iter().zip(b).all(|(n, b)| n > b))
}

fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
}

/// Three processes sharing an anonymous mapping, a sealed memfd (mapped
/// shared and privately, its fd open at an offset), a deleted /dev/shm
/// file and a System V segment, checking each other's writes through each:
/// after restore from S3, twice, every region is shared again and every
/// counter continues from where it stopped; shared anonymous pages no
/// process had mapped at the dump have their contents.
#[test]
fn memfd_deleted_file_sysv_and_anonymous_shared_memory_stay_shared() {
    let dir = TestDir::new("shm-s3");
    let mut w = Workload::spawn("wl_shm", dir.path("report"), &[]);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 20);
    assert_eq!(status(&r), "OK", "{r}\n{}", w.log());
    let kids = [field(&r, 1, 0) as i32, field(&r, 1, 1) as i32];
    let env = s3_env();
    let env = env_refs(&env);
    let url = format!("s3://{}/shm.img", s3_bucket("shm"));
    let pids = dump_tree(&mut w, &url, &env);
    assert_eq!(pids.len(), 3, "{pids:?}");
    let at_dump = regions(&w.read_report().unwrap());
    assert_eq!(at_dump.len(), 4, "{at_dump:?}");
    let deleted_name = format!("/dev/shm/wl-shm.{} (deleted)", w.pid);
    assert!(
        !std::path::Path::new(deleted_name.trim_end_matches(" (deleted)")).exists(),
        "the dump left a file behind"
    );
    restore_twice(&url, &env, &mut w, |w| {
        let r = w.wait_report(T, |r| {
            all_moved_on(r, &at_dump) || status(r).starts_with("BAD")
        });
        assert_eq!(status(&r), "OK", "after restore: {r}\nat dump: {at_dump:?}");
        for (name, counters) in regions(&r) {
            let before = &at_dump.iter().find(|(n, _)| *n == name).unwrap().1;
            for (now, then) in counters.iter().zip(before) {
                assert!(
                    now < &(then + 500),
                    "{name}: counter jumped from {then} to {now}"
                );
            }
        }
        for pid in [w.pid, kids[0], kids[1]] {
            let maps = maps(pid);
            assert!(maps.contains("/memfd:wl-shm (deleted)"), "{pid}: {maps}");
            assert!(maps.contains(&deleted_name), "{pid}: {maps}");
        }
        assert!(
            !std::path::Path::new(deleted_name.trim_end_matches(" (deleted)")).exists(),
            "the restore left the deleted file linked"
        );
        // Shared pages that no process had mapped at the dump (written by
        // a child that exited) are there too.
        std::fs::write(dir.path("report.verify"), b"").unwrap();
        let r = w.wait_report(T, |r| field(r, 0, 3) >= 1 || status(r).starts_with("BAD"));
        assert_eq!(status(&r), "OK", "{r}");
    });
}

/// A python `multiprocessing` pool (nobody here wrote it): two forked
/// workers, pipes, semaphores that are unlinked /dev/shm files, and an
/// `mp.Value` counter in a deleted shared file every worker increments
/// under its lock. After restore from S3, twice, the same workers keep
/// answering, every result is right and no increment is lost.
#[test]
fn python_multiprocessing_pool_continues_after_restore() {
    if !have("python3") {
        panic!("python3 is needed for this test");
    }
    let dir = TestDir::new("shm-pool");
    let report = dir.path("report");
    let script = format!(
        r#"
import multiprocessing as mp, os, time
counter = None
def init(c):
    global counter
    counter = c
def square(x):
    with counter.get_lock():
        counter.value += 1
    return (os.getpid(), x * x)
def write(text):
    with open({r:?} + ".tmp", "w") as f:
        f.write(text)
    os.replace({r:?} + ".tmp", {r:?})
if __name__ == "__main__":
    mp.set_start_method("fork")
    c = mp.Value("q", 0)
    with mp.Pool(2, initializer=init, initargs=(c,)) as pool:
        rounds, status, workers = 0, "OK", set()
        while True:
            base = rounds * 10
            got = pool.map(square, range(base, base + 10), chunksize=1)
            workers |= {{pid for pid, _ in got}}
            if [sq for _, sq in got] != [x * x for x in range(base, base + 10)]:
                status = "BAD-results"
            rounds += 1
            if c.value != rounds * 10:
                status = "BAD-counter-%d" % c.value
            write("%d %d %s %d\n%s\n" % (os.getpid(), rounds, status, c.value,
                  " ".join(map(str, sorted(workers)))))
            time.sleep(0.05)
"#,
        r = report.to_str().unwrap()
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", &script]);
    let mut w = spawn_isolated(cmd, report);
    let r = w.wait_report(T, |r| field(r, 0, 1) >= 5);
    assert_eq!(status(&r), "OK", "{r}\n{}", w.log());
    let env = s3_env();
    let env = env_refs(&env);
    let url = format!("s3://{}/pool.img", s3_bucket("pool"));
    let pids = dump_tree(&mut w, &url, &env);
    assert!(pids.len() >= 3, "the pool's workers were dumped: {pids:?}");
    let at_dump = w.read_report().unwrap();
    let rounds = field(&at_dump, 0, 1);
    let workers = at_dump.lines().nth(1).unwrap_or("").to_string();
    restore_twice(&url, &env, &mut w, |w| {
        let r = w.wait_report(T, |r| {
            field(r, 0, 1) > rounds + 10 || status(r).starts_with("BAD")
        });
        assert_eq!(status(&r), "OK", "after restore: {r}\nat dump: {at_dump}");
        assert!(field(&r, 0, 1) < rounds + 500, "restarted? {r}");
        assert_eq!(
            field(&r, 0, 3),
            field(&r, 0, 1) * 10,
            "lost increments: {r}"
        );
        assert_eq!(
            r.lines().nth(1).unwrap_or(""),
            workers,
            "the same workers answer"
        );
    });
}
