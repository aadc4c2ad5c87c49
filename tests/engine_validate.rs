//! Restore refuses, before creating any process, an image whose files or
//! CPU are not the ones it was dumped with: an executable replaced by
//! another (other build-id), a library replaced or gone, a privately
//! mapped data file modified since. Put back as they were, the same image
//! restores.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);

/// A python3 that runs from a copy of itself, loads a copy of libz with
/// ctypes and maps a copy of a data file privately, then counts.
fn start(dir: &TestDir) -> Workload {
    let python = dir.path("python3");
    std::fs::copy("/usr/bin/python3", &python).unwrap();
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libz");
    std::fs::copy(libz, dir.path("libz.so.1")).unwrap();
    std::fs::write(dir.path("data"), vec![7u8; 8192]).unwrap();
    let report = dir.path("report");
    let mut cmd = Command::new(&python);
    cmd.args([
        "-c",
        "import ctypes, mmap, sys, time, os\n\
         z = ctypes.CDLL(sys.argv[2])\n\
         f = open(sys.argv[3], 'rb')\n\
         m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1\n\
         \x20   open(sys.argv[1] + '.tmp', 'w').write('%d %d OK %d\\n' % (os.getpid(), n, z.zlibVersion() is not None))\n\
         \x20   os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n\
         \x20   time.sleep(0.1)\n",
    ])
    .arg(&report)
    .arg(dir.path("libz.so.1"))
    .arg(dir.path("data"));
    spawn_isolated(cmd, report)
}

#[test]
fn changed_or_missing_files_are_refused_before_anything_is_created() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("python3 is not installed: skipped");
        return;
    }
    let dir = TestDir::new("validate");
    let mut w = start(&dir);
    w.wait_report(T, |r| field(r, 0, 1) >= 3);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let img_s = img.to_str().unwrap();
    let keep = |name: &str| {
        std::fs::rename(dir.path(name), dir.path(&format!("{name}.orig"))).unwrap();
    };
    // Another program in its place, as long (a shorter file is refused
    // for that already).
    let replace = |name: &str| {
        let len = std::fs::metadata(dir.path(&format!("{name}.orig")))
            .unwrap()
            .len();
        std::fs::copy("/bin/sh", dir.path(name)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path(name))
            .unwrap();
        f.set_len(len.max(f.metadata().unwrap().len())).unwrap();
    };
    let put_back = |name: &str| {
        let _ = std::fs::remove_file(dir.path(name));
        std::fs::rename(dir.path(&format!("{name}.orig")), dir.path(name)).unwrap();
    };
    let nothing_made = |what: &str| {
        assert!(!proc_exists(w.pid), "{what}: a process was created");
    };

    // The executable replaced by another program: other build-id.
    keep("python3");
    replace("python3");
    let err = restore_refused(img_s, &[]);
    assert!(err.contains("python3") && err.contains("build-id"), "{err}");
    nothing_made("executable");
    put_back("python3");

    // The library replaced by another, then gone.
    keep("libz.so.1");
    replace("libz.so.1");
    let err = restore_refused(img_s, &[]);
    assert!(
        err.contains("libz.so.1") && err.contains("build-id"),
        "{err}"
    );
    std::fs::remove_file(dir.path("libz.so.1")).unwrap();
    let err = restore_refused(img_s, &[]);
    assert!(
        err.contains("libz.so.1") && err.contains("cannot stat"),
        "{err}"
    );
    nothing_made("library");
    put_back("libz.so.1");

    // The data file modified since (same size, other time).
    let data = dir.path("data");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&data, vec![7u8; 8192]).unwrap();
    let err = restore_refused(img_s, &[]);
    assert!(
        err.contains("data") && err.contains("changed since the dump"),
        "{err}"
    );
    nothing_made("data file");
    // --skip-validation takes it as it is.
    let o = run(
        &[
            "restore",
            "-i",
            img_s,
            "--detach",
            "--json",
            "--skip-validation",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    w.restored(v["pid"].as_i64().unwrap() as i32);
    let at = field(&w.read_report().unwrap(), 0, 1);
    w.wait_report(T, |r| field(r, 0, 1) > at + 3);
    w.kill();
}
