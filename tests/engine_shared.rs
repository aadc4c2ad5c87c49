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

/// Files of a temporary file system mapped shared, as a JVM maps its
/// hsperfdata file (under /tmp, its fd closed) and python's
/// `shared_memory` a POSIX shared memory object (in /dev/shm, a tmpfs, its
/// fd open): each keeps a counter the process increments. Gone at
/// restore (another machine, a reboot, the process that made them
/// removed them), they are made again at their paths with the contents,
/// mode and owner they had, the directory too, and the counters go on from
/// where they were; still there, they are mapped as they are (their
/// contents now, not the image's).
#[test]
fn temporary_files_mapped_shared_come_back_when_gone() {
    if !have("python3") {
        panic!("python3 is needed for this test");
    }
    let dir = TestDir::new("transient");
    let report = dir.path("report");
    let tmp_dir = format!("/tmp/crstream-transient-{}", std::process::id());
    let tmp_file = format!("{tmp_dir}/counters");
    let shm_name = format!("crstream-transient-{}", std::process::id());
    let shm_file = format!("/dev/shm/{shm_name}");
    let script = format!(
        r#"
import mmap, os, struct, time
from multiprocessing import shared_memory
os.makedirs({d:?}, mode=0o750)
os.chown({d:?}, 1234, 1235)
fd = os.open({f:?}, os.O_RDWR | os.O_CREAT, 0o640)
os.ftruncate(fd, 40960)
tmp = mmap.mmap(fd, 40960, mmap.MAP_SHARED)
os.close(fd)
os.chown({f:?}, 1234, 1235)
tmp[8:40960] = bytes(i % 251 for i in range(40952))
shm = shared_memory.SharedMemory(name={s:?}, create=True, size=8192)
shm.buf[8:8192] = bytes(i % 241 for i in range(8184))
def put(text):
    with open({r:?} + ".tmp", "w") as f:
        f.write(text)
    os.replace({r:?} + ".tmp", {r:?})
while True:
    a = struct.unpack_from("q", tmp, 0)[0] + 1
    struct.pack_into("q", tmp, 0, a)
    b = struct.unpack_from("q", shm.buf, 0)[0] + 1
    struct.pack_into("q", shm.buf, 0, b)
    intact = tmp[8:40960] == bytes(i % 251 for i in range(40952)) and \
        bytes(shm.buf[8:8192]) == bytes(i % 241 for i in range(8184))
    put("%d %d %d %s\n" % (os.getpid(), a, b, "OK" if intact else "BAD"))
    time.sleep(0.05)
"#,
        d = tmp_dir,
        f = tmp_file,
        s = shm_name,
        r = report.to_str().unwrap()
    );
    let _cleanup = RemovedAtEnd(vec![tmp_dir.clone(), shm_file.clone()]);
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", &script]);
    let mut w = spawn_isolated(cmd, report);
    w.wait_report(T, |r| field(r, 0, 1) >= 5);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    let at_dump = w.read_report().unwrap();
    w.reap_dumped();
    let counter = |path: &str| {
        let bytes = std::fs::read(path).unwrap();
        u64::from_ne_bytes(bytes[..8].try_into().unwrap())
    };
    // Stopped at the dump: what the files hold is what the image holds.
    let (tmp_at_dump, shm_at_dump) = (counter(&tmp_file), counter(&shm_file));
    assert_eq!(tmp_at_dump, field(&at_dump, 0, 1));
    std::fs::remove_dir_all(&tmp_dir).unwrap();
    std::fs::remove_file(&shm_file).unwrap();

    let (pid, _) = restore(&img);
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 1) > tmp_at_dump + 5);
    assert!(r.contains(" OK"), "the saved contents are back: {r}");
    assert!(
        field(&r, 0, 1) < tmp_at_dump + 100 && field(&r, 0, 2) > shm_at_dump,
        "the counters go on from where they were ({tmp_at_dump}, {shm_at_dump}): {r}"
    );
    // The process writes the files at their paths again.
    assert!(counter(&tmp_file) >= field(&r, 0, 1));
    assert!(counter(&shm_file) >= field(&r, 0, 2));
    use std::os::unix::fs::MetadataExt;
    for (path, mode, owner) in [
        (tmp_dir.as_str(), 0o750, (1234, 1235)),
        (tmp_file.as_str(), 0o640, (1234, 1235)),
    ] {
        let md = std::fs::metadata(path).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, (md.uid(), md.gid())),
            (mode, owner),
            "{path}"
        );
    }
    // A restore that fails (the PID is taken: by the copy restored above)
    // leaves nothing it made behind.
    let mut bytes = std::fs::read(&tmp_file).unwrap();
    std::fs::remove_dir_all(&tmp_dir).unwrap();
    std::fs::remove_file(&shm_file).unwrap();
    let failed = run(&["restore", "-i", img.to_str().unwrap(), "--detach"], &[]);
    assert!(!failed.status.success(), "{}", text(&failed));
    for path in [&tmp_dir, &shm_file] {
        assert!(
            !std::path::Path::new(path).exists(),
            "{path} left behind by a failed restore: {}",
            text(&failed)
        );
    }
    w.kill();

    // Still there: mapped as they are now (a value the image never held).
    let tmp_now = 1_000_000u64;
    bytes[..8].copy_from_slice(&tmp_now.to_ne_bytes());
    std::fs::create_dir(&tmp_dir).unwrap();
    std::fs::write(&tmp_file, &bytes).unwrap();
    // Unless another user's: refused, naming it.
    std::os::unix::fs::chown(&tmp_file, Some(4321), Some(4321)).unwrap();
    let refused = run(&["restore", "-i", img.to_str().unwrap(), "--detach"], &[]);
    assert!(
        !refused.status.success() && text(&refused).contains("belongs to uid 4321 now, not 1234"),
        "{}",
        text(&refused)
    );
    std::os::unix::fs::chown(&tmp_file, Some(1234), Some(1235)).unwrap();
    // The last copy's report must not pass for this one's.
    std::fs::remove_file(&w.report).unwrap();
    let (pid, _) = restore(&img);
    w.restored(pid);
    let r = w.wait_report(T, |r| field(r, 0, 1) > 0);
    assert!(r.contains(" OK"), "{r}");
    assert!(
        field(&r, 0, 1) > tmp_now && field(&r, 0, 1) < tmp_now + 100,
        "the counter goes on from the file's {tmp_now}, not the image's {tmp_at_dump}: {r}"
    );
    w.kill();
}

/// Paths a test made outside its directory, removed when it ends.
struct RemovedAtEnd(Vec<String>);

impl Drop for RemovedAtEnd {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}
