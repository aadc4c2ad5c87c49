//! Round trips and failure cases through memory://, local paths and file:// URLs.

mod common;

use std::io;
use std::time::Duration;

use common::{assert_same, get, put, random_bytes, write_uneven};
use crstream_backends::{
    BackendError, Env, Location, ReadOptions, SinkOptions, delete, exists, open_sink, open_source,
    parse_location,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SMALL_PARTS: SinkOptions = SinkOptions {
    part_size: 64 << 10,
    parts_in_flight: 3,
};

fn env() -> Env {
    Env::from_pairs([("CRSTREAM_MAX_RETRIES", "0")])
}

/// Every way of reading `url` gives back `want`.
async fn check_reads(env: &Env, url: &str, want: &[u8]) {
    assert_same(&get(env, url, ReadOptions::default()).await, want);
    // Tiny chunks, many in flight: any reordering would show.
    let tiny = ReadOptions {
        chunk_size: 997,
        in_flight: 9,
    };
    assert_same(&get(env, url, tiny).await, want);

    let src = env.open_source(url).await.unwrap();
    let r = src.ranged().unwrap();
    assert_eq!(r.url(), url);
    let size = want.len() as u64;
    assert_eq!(r.size(), size);
    let odd = [
        0..0,
        0..1,
        size / 3..size / 3 + 4097,
        65535..65537,
        size - 1..size,
        1..size,
    ];
    for range in odd {
        // Clamped so that small objects can use the same list.
        let range = range.start.min(size)..range.end.min(size);
        let got = r.read_range(range.clone()).await.unwrap();
        assert_same(&got, &want[range.start as usize..range.end as usize]);
    }
    // Reads in parallel from clones of the handle.
    let n = if size >= 9000 { 8 } else { 0 };
    let reads = (0..n).map(|i: u64| {
        let r = r.clone();
        async move {
            (
                i,
                r.read_range(i * 1000 + 3..i * 1000 + 1500).await.unwrap(),
            )
        }
    });
    for (i, got) in futures::future::join_all(reads).await {
        assert_same(
            &got,
            &want[(i * 1000 + 3) as usize..(i * 1000 + 1500) as usize],
        );
    }
    #[allow(clippy::reversed_empty_ranges)] // a reversed range is the point
    let reversed = 5..4;
    for bad in [size..size + 1, reversed, 0..size + 1] {
        let e = r.read_range(bad.clone()).await.unwrap_err();
        assert!(
            matches!(e, BackendError::InvalidRange { .. }),
            "{bad:?}: {e}"
        );
        assert!(e.to_string().starts_with(url), "{e}");
    }
}

#[tokio::test]
async fn memory_round_trip_many_parts() {
    let env = env();
    let url = "memory://rt/dir/image.crs";
    let data = random_bytes((5 << 20) + 12345, 1);
    put(&env, url, &data, &SMALL_PARTS).await;
    check_reads(&env, url, &data).await;
    assert!(env.exists(url).await.unwrap());
}

#[tokio::test]
async fn file_round_trip_path_and_file_url() {
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let data = random_bytes((3 << 20) + 7, 2);

    // A plain absolute path, in a directory that does not exist yet, with a
    // name that needs escaping in URLs.
    let path = dir.path().join("new/sub dir/a%b #1.img");
    let url = path.to_str().unwrap();
    put(&env, url, &data, &SMALL_PARTS).await;
    assert_same(&std::fs::read(&path).unwrap(), &data);
    // The file is allocated ahead of the writes, then cut to its length:
    // nothing allocated is left past its end.
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap()) * 512;
    assert!(
        allocated < data.len() as u64 + (64 << 10),
        "{allocated} bytes allocated for {}",
        data.len()
    );
    check_reads(&env, url, &data).await;

    // file:// URL (percent-encoded) to the same file reads the same bytes.
    let file_url = url::Url::from_file_path(&path).unwrap().to_string();
    assert!(file_url.contains("%20"), "{file_url}");
    check_reads(&env, &file_url, &data).await;

    // And writing through file:// replaces it.
    let data2 = random_bytes(200_000, 3);
    put(&env, &file_url, &data2, &SMALL_PARTS).await;
    assert_same(&std::fs::read(&path).unwrap(), &data2);
    assert_no_leftovers(path.parent().unwrap(), &["a%b #1.img"]);
}

#[tokio::test]
async fn small_and_empty_objects() {
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let file = dir.path().join("small");
    for url in ["memory://small/one", file.to_str().unwrap()] {
        let data = random_bytes(1000, 4);
        put(&env, url, &data, &SinkOptions::default()).await;
        check_reads(&env, url, &data).await;

        put(&env, url, b"", &SinkOptions::default()).await;
        let src = env.open_source(url).await.unwrap();
        assert_eq!(src.size(), Some(0));
        assert!(get(&env, url, ReadOptions::default()).await.is_empty());
        let r = env.open_source(url).await.unwrap().ranged().unwrap();
        assert!(r.read_range(0..0).await.unwrap().is_empty());
    }
    assert_no_leftovers(dir.path(), &["small"]);
}

#[tokio::test]
async fn exact_multiple_of_part_size() {
    let env = env();
    let data = random_bytes(4 * (64 << 10), 5);
    put(&env, "memory://exact/x", &data, &SMALL_PARTS).await;
    check_reads(&env, "memory://exact/x", &data).await;
}

/// Nothing but `expected` in `dir` (no temporary upload files).
fn assert_no_leftovers(dir: &std::path::Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
}

#[tokio::test]
async fn abort_leaves_nothing_and_keeps_previous_object() {
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let old = random_bytes(100_000, 6);
    let file_new = dir.path().join("new.img");
    let file_old = dir.path().join("old.img");
    for (new, existing) in [
        ("memory://abort/new", "memory://abort/old".to_owned()),
        (
            file_new.to_str().unwrap(),
            file_old.to_str().unwrap().to_owned(),
        ),
    ] {
        put(&env, &existing, &old, &SMALL_PARTS).await;

        let mut sink = env.open_sink(new, &SMALL_PARTS).await.unwrap();
        write_uneven(&mut sink, &random_bytes(1 << 20, 7)).await;
        sink.flush().await.unwrap();
        sink.abort().await.unwrap();
        assert!(!env.exists(new).await.unwrap(), "{new} exists after abort");

        let mut sink = env.open_sink(&existing, &SMALL_PARTS).await.unwrap();
        write_uneven(&mut sink, &random_bytes(1 << 20, 8)).await;
        // Until commit, readers still see the old content.
        assert_same(&get(&env, &existing, ReadOptions::default()).await, &old);
        sink.abort().await.unwrap();
        assert_same(&get(&env, &existing, ReadOptions::default()).await, &old);
    }
    assert_no_leftovers(dir.path(), &["old.img"]);
}

#[tokio::test]
async fn dropped_sink_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let file = dir.path().join("dropped.img");
    for url in ["memory://drop/x", file.to_str().unwrap()] {
        let mut sink = env.open_sink(url, &SMALL_PARTS).await.unwrap();
        write_uneven(&mut sink, &random_bytes(1 << 20, 9)).await;
        drop(sink);
        assert!(!env.exists(url).await.unwrap());
    }
    // The background abort removes the temporary file.
    for _ in 0..200 {
        if std::fs::read_dir(dir.path()).unwrap().next().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_no_leftovers(dir.path(), &[]);
}

#[tokio::test]
async fn commit_replaces_previous_object() {
    let env = env();
    let url = "memory://replace/x";
    put(&env, url, &random_bytes(300_000, 10), &SMALL_PARTS).await;
    let new = random_bytes(200_001, 11);
    put(&env, url, &new, &SMALL_PARTS).await;
    check_reads(&env, url, &new).await;
}

/// Processes holding `path` open after it was deleted or replaced.
fn holders_of_deleted(path: &std::path::Path) -> Vec<String> {
    let gone = format!("{} (deleted)", path.display());
    let mut holders = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == gone) {
                holders.push(fd.path().display().to_string());
            }
        }
    }
    holders
}

/// A local file replaced by a commit is freed (in the background: its
/// last close frees its pages), and nothing keeps it open.
#[tokio::test]
async fn a_replaced_local_file_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    let url = path.to_str().unwrap();
    put(&env(), url, &random_bytes(4 << 20, 12), &SMALL_PARTS).await;
    let new = random_bytes(100_000, 13);
    put(&env(), url, &new, &SMALL_PARTS).await;
    check_reads(&env(), url, &new).await;
    let t = std::time::Instant::now();
    loop {
        let holders = holders_of_deleted(&path);
        if holders.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the replaced file is still open: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn not_found() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let missing_url = url::Url::from_file_path(&missing).unwrap().to_string();
    for url in [
        "memory://nf/missing",
        missing.to_str().unwrap(),
        &missing_url,
    ] {
        let e = open_source(url).await.err().unwrap();
        assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
        assert_eq!(e.to_string(), format!("{url}: not found"));
        assert_eq!(e.url(), url);
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
        assert!(!exists(url).await.unwrap());
        // Deleting what is not there is fine.
        delete(url).await.unwrap();
    }
}

#[tokio::test]
async fn bad_urls() {
    let e = open_sink("ftp://host/x", &SinkOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, BackendError::UnsupportedScheme { .. }), "{e}");
    assert!(e.to_string().contains("ftp://host/x"));
    assert!(e.to_string().contains("\"ftp\""));
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);

    for url in [
        "s3://",
        "s3://bucket/",
        "gs:///key",
        "memory://m",
        "",
        "file://host/x",
    ] {
        let e = open_source(url).await.err().unwrap();
        assert!(matches!(e, BackendError::InvalidUrl { .. }), "{url:?}: {e}");
        assert!(e.to_string().contains(url), "{e}");
        let e = open_sink(url, &SinkOptions::default()).await.err().unwrap();
        assert!(matches!(e, BackendError::InvalidUrl { .. }), "{url:?}: {e}");
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let e = open_sink(d, &SinkOptions::default()).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("{d}: invalid location (is a directory)")
    );
    let e = open_source(d).await.err().unwrap();
    assert!(matches!(e, BackendError::InvalidUrl { .. }), "{e}");
}

#[tokio::test]
async fn permission_denied_on_local_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    let url = ro.join("x.img");
    let url = url.to_str().unwrap();
    // root ignores directory permissions; nothing to check then.
    if std::fs::write(ro.join("probe"), b"").is_ok() {
        eprintln!("running as root: skipping the permission check");
        return;
    }
    let e = open_sink(url, &SinkOptions::default()).await.err().unwrap();
    assert!(matches!(e, BackendError::PermissionDenied { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{url}: permission denied (")),
        "{e}"
    );
}

/// Reads never mix two versions: an object replaced meanwhile fails them
/// with `Changed`; a local file goes on being read where it was opened
/// (the version the reader started with).
#[tokio::test]
async fn object_replaced_while_reading_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let file = dir.path().join("changing.img");
    let old = random_bytes(10_000, 12);
    for url in ["memory://changed/x", file.to_str().unwrap()] {
        put(&env, url, &old, &SMALL_PARTS).await;
        let r = env.open_source(url).await.unwrap().ranged().unwrap();
        r.read_range(0..10).await.unwrap();
        // Sleep so that a file's mtime (part of its ETag) moves on.
        tokio::time::sleep(Duration::from_millis(20)).await;
        put(&env, url, &random_bytes(10_001, 13), &SMALL_PARTS).await;
        let got = r.read_range(0..10_000).await;
        if url.starts_with("memory://") {
            assert_eq!(
                got.unwrap_err(),
                BackendError::Changed {
                    url: url.to_owned()
                }
            );
        } else {
            assert_eq!(got.unwrap(), old, "the file as it was opened");
        }
    }
}

#[tokio::test]
async fn read_errors_surface_as_io_errors_with_the_backend_line() {
    let env = env();
    let url = "memory://ioerr/x";
    put(&env, url, &random_bytes(50_000, 14), &SMALL_PARTS).await;
    let src = env.open_source(url).await.unwrap();
    env.delete(url).await.unwrap();
    let mut out = Vec::new();
    let e = src
        .into_async_read(ReadOptions::default())
        .read_to_end(&mut out)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert_eq!(e.to_string(), format!("{url}: not found"));
    let inner = e.get_ref().unwrap().downcast_ref::<BackendError>().unwrap();
    assert!(matches!(inner, BackendError::NotFound { .. }));
}

#[tokio::test]
async fn stdio_location() {
    assert!(matches!(parse_location("-"), Ok(Location::Stdio)));
    let src = open_source("-").await.unwrap();
    assert_eq!(src.url(), "-");
    assert_eq!(src.size(), None);
    assert!(src.ranged().is_none());
    let sink = open_sink("-", &SinkOptions::default()).await.unwrap();
    assert_eq!(sink.url(), "-");
    assert_eq!(sink.commit().await.unwrap(), 0);
}

#[tokio::test]
async fn relative_path_resolves_against_cwd() {
    let Location::Store { path, url, .. } = parse_location("target-test-rel/x.img").unwrap() else {
        panic!("expected a store");
    };
    assert_eq!(url, "target-test-rel/x.img");
    let cwd = std::fs::canonicalize(std::env::current_dir().unwrap()).unwrap();
    assert_eq!(
        format!("/{path}"),
        cwd.join("target-test-rel/x.img").to_str().unwrap()
    );
}

#[tokio::test]
async fn sink_write_after_large_input_keeps_memory_bounded_and_data_ordered() {
    // Many parts with a single in-flight slot: the slowest schedule.
    let env = env();
    let url = "memory://serial/x";
    let opts = SinkOptions {
        part_size: 4096,
        parts_in_flight: 1,
    };
    let data = random_bytes(1 << 20, 15);
    let mut sink = env.open_sink(url, &opts).await.unwrap();
    for chunk in data.chunks(10_000) {
        sink.write_all(chunk).await.unwrap();
    }
    assert_eq!(sink.commit().await.unwrap(), data.len() as u64);
    let mut out = Vec::new();
    env.open_source(url)
        .await
        .unwrap()
        .into_async_read(ReadOptions {
            chunk_size: 1,
            in_flight: 1,
        })
        .take(5000)
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_same(&out, &data[..5000]);
}

/// A device or FIFO given as a path is written and read in place: the sink
/// must not rename a temporary file over it (as root that would replace
/// `/dev/null` with a regular file), and the source reads it as a stream.
#[tokio::test]
async fn devices_and_fifos_are_written_and_read_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix_mkfifo(&fifo);
    let url = fifo.to_str().unwrap().to_owned();
    let data = random_bytes(3 << 20, 11);
    let reader_url = url.clone();
    let reader = tokio::spawn(async move {
        let src = crstream_backends::open_source(&reader_url).await.unwrap();
        assert!(src.size().is_none() && src.ranged().is_none());
        let mut r = src.into_async_read(Default::default());
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got)
            .await
            .unwrap();
        got
    });
    let mut sink = crstream_backends::open_sink(&url, &Default::default())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut sink, &data)
        .await
        .unwrap();
    assert_eq!(sink.commit().await.unwrap(), data.len() as u64);
    assert!(reader.await.unwrap() == data);
    assert!(
        std::fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );

    // /dev/null itself stays a device after a committed write.
    let mut sink = crstream_backends::open_sink("/dev/null", &Default::default())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut sink, b"gone")
        .await
        .unwrap();
    sink.commit().await.unwrap();
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let leftovers: Vec<_> = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".crstream-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left in /dev: {leftovers:?}"
    );
}

fn nix_mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// commit_if_absent on a local file: whichever of two sinks commits first
/// wins, atomically; the other writes nothing and leaves no file behind.
#[tokio::test]
async fn commit_if_absent_never_replaces_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entry.img");
    let url = path.to_str().unwrap().to_owned();
    let env = env();
    let (a, b) = (random_bytes(300_000, 41), random_bytes(200_000, 42));
    let mut first = env.open_sink(&url, &SMALL_PARTS).await.unwrap();
    let mut second = env.open_sink(&url, &SMALL_PARTS).await.unwrap();
    write_uneven(&mut first, &a).await;
    write_uneven(&mut second, &b).await;
    assert_eq!(
        second.commit_if_absent().await.unwrap(),
        Some(b.len() as u64)
    );
    assert_eq!(first.commit_if_absent().await.unwrap(), None);
    assert_same(&std::fs::read(&path).unwrap(), &b);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
}

/// A damaged image is removed only if it is still the one read: never a
/// replacement stored meanwhile.
#[tokio::test]
async fn remove_if_unchanged_spares_a_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let env = env();
    let file = dir.path().join("entry.img");
    for url in ["memory://removing/x", file.to_str().unwrap()] {
        put(&env, url, &random_bytes(5_000, 1), &SMALL_PARTS).await;
        let r = env.open_source(url).await.unwrap().ranged().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        put(&env, url, &random_bytes(5_000, 2), &SMALL_PARTS).await;
        assert!(!r.remove_if_unchanged().await.unwrap(), "{url}");
        assert!(
            env.exists(url).await.unwrap(),
            "{url}: the replacement stays"
        );

        let r = env.open_source(url).await.unwrap().ranged().unwrap();
        assert!(r.remove_if_unchanged().await.unwrap(), "{url}");
        assert!(!env.exists(url).await.unwrap(), "{url}: removed");
        assert!(
            !r.remove_if_unchanged().await.unwrap(),
            "{url}: gone already"
        );
    }
}
