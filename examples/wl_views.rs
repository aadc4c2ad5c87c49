//! Workload: many views of the same objects, as allocators and databases
//! make them. A memfd and a file in DIR (8 pages each), each mapped:
//! - shared, whole, written on pages 0, 2 and 5;
//! - privately, whole, with pages 1 and 5 written (copy-on-write copies:
//!   page 5 differs from what the shared view shows);
//! - shared again from page 2 on (offset 8 KiB), written on its page 1
//!   (page 3 of the object);
//! - a run of 6 small mappings over one 6-page range, alternately shared
//!   and private, placed over each other with MAP_FIXED at odd offsets,
//!   the private ones written.
//!
//! Every view's expected contents are computed from what was written;
//! every 100 ms all views are compared with them. Reports "pid counter
//! STATUS" every 100 ms, STATUS naming the first view and page that
//! differ. Also checks that the file's private view accepts
//! mprotect(PROT_READ|PROT_WRITE|PROT_EXEC) and the shared one PROT_WRITE.
//!
//! Usage: wl_views REPORT DIR

use std::ffi::CString;
use std::time::Duration;

mod wl_common;
use wl_common::report;

const PAGE: usize = 4096;
const PAGES: usize = 8;

struct View {
    name: String,
    at: *mut u8,
    pages: usize,
    /// Expected bytes, page by page.
    want: Vec<Vec<u8>>,
}

fn fill(tag: u8, page: usize) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i as u8).wrapping_mul(7) ^ tag ^ (page as u8).wrapping_mul(13))
        .collect()
}

fn map(at: *mut u8, pages: usize, flags: i32, fd: i32, off: usize) -> *mut u8 {
    // SAFETY: mapping our own fd; MAP_FIXED only over our own mappings.
    let p = unsafe {
        libc::mmap(
            at.cast(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            off as i64,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

fn write(v: &mut View, page: usize, tag: u8) {
    let data = fill(tag, page);
    // SAFETY: the page lies inside the view's mapping.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.at.add(page * PAGE), PAGE) };
    v.want[page] = data;
}

/// The views of one object (`fd`, all zeros to begin with).
fn views(kind: &str, fd: i32) -> Vec<View> {
    let zero = vec![0u8; PAGE];
    let view = |name: &str, at, pages| View {
        name: format!("{kind}-{name}"),
        at,
        pages,
        want: vec![zero.clone(); pages],
    };
    let mut shared = view(
        "shared",
        map(std::ptr::null_mut(), PAGES, libc::MAP_SHARED, fd, 0),
        PAGES,
    );
    let mut private = view(
        "private",
        map(std::ptr::null_mut(), PAGES, libc::MAP_PRIVATE, fd, 0),
        PAGES,
    );
    // Private copies first (page 5 copied before the shared write).
    write(&mut private, 1, 0x11);
    write(&mut private, 5, 0x15);
    write(&mut shared, 0, 0x20);
    write(&mut shared, 2, 0x22);
    write(&mut shared, 5, 0x25);
    let mut tail = view(
        "tail",
        map(
            std::ptr::null_mut(),
            PAGES - 2,
            libc::MAP_SHARED,
            fd,
            2 * PAGE,
        ),
        PAGES - 2,
    );
    write(&mut tail, 1, 0x31);
    // What the object holds now, as every shared view shows it.
    let mut object = shared.want.clone();
    object[3] = tail.want[1].clone();
    // The private view shows the object where it has no copy of its own.
    for (p, want) in private.want.iter_mut().enumerate() {
        if p != 1 && p != 5 {
            *want = object[p].clone();
        }
    }
    shared.want = object.clone();
    tail.want = object[2..].to_vec();

    // A patchwork: six mappings over one 6-page range, each placed with
    // MAP_FIXED over the last at odd offsets.
    let base = map(
        std::ptr::null_mut(),
        6,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    let mut patch: Vec<Vec<u8>> = vec![zero.clone(); 6];
    for (i, (start, len, off)) in [
        (0, 3, 1),
        (2, 2, 4),
        (1, 2, 0),
        (4, 2, 2),
        (3, 1, 6),
        (5, 1, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let shared_map = i % 2 == 0;
        let flags = libc::MAP_FIXED
            | if shared_map {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        // SAFETY: the range lies inside `base`, our own mapping.
        let at = map(
            unsafe { base.add(start * PAGE) },
            len,
            flags,
            fd,
            off * PAGE,
        );
        patch[start..start + len].clone_from_slice(&object[off..off + len]);
        if !shared_map {
            // A private copy of its first page.
            let data = fill(0x40 + i as u8, start);
            // SAFETY: inside the mapping just made.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at, PAGE) };
            patch[start] = data;
        }
    }
    let patchwork = View {
        name: format!("{kind}-patchwork"),
        at: base,
        pages: 6,
        want: patch,
    };
    vec![shared, private, tail, patchwork]
}

fn check(views: &[View]) -> Option<String> {
    for v in views {
        for p in 0..v.pages {
            // SAFETY: the page lies inside the view's mapping.
            let got = unsafe { std::slice::from_raw_parts(v.at.add(p * PAGE), PAGE) };
            if got != v.want[p].as_slice() {
                let at = got
                    .iter()
                    .zip(&v.want[p])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Some(format!("{}-page-{p}-byte-{at}", v.name));
            }
        }
    }
    None
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let (path, dir) = (args[1].clone(), args[2].clone());
    let name = CString::new("wl-views").unwrap();
    let file = CString::new(format!("{dir}/views.dat")).unwrap();
    // SAFETY: plain syscalls; the fds live as long as the process.
    let (memfd, filefd) = unsafe {
        let m = libc::memfd_create(name.as_ptr(), 0);
        assert!(m >= 0);
        assert_eq!(libc::ftruncate(m, (PAGES * PAGE) as i64), 0);
        let f = libc::open(
            file.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        );
        assert!(f >= 0);
        assert_eq!(libc::ftruncate(f, (PAGES * PAGE) as i64), 0);
        (m, f)
    };
    let mut all = views("memfd", memfd);
    all.extend(views("file", filefd));
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut status: Option<String> = None;
    loop {
        counter += 1;
        if status.is_none() {
            status = check(&all);
        }
        if status.is_none() {
            // The file's views take the protections the open file allows.
            // SAFETY: mprotect on our own mappings, put back at once.
            unsafe {
                let private = all[5].at.cast();
                let shared = all[4].at.cast();
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                if libc::mprotect(private, PAGES * PAGE, rw | libc::PROT_EXEC) != 0
                    || libc::mprotect(private, PAGES * PAGE, rw) != 0
                {
                    status = Some("file-private-mprotect".into());
                }
                if libc::mprotect(shared, PAGES * PAGE, libc::PROT_READ) != 0
                    || libc::mprotect(shared, PAGES * PAGE, rw) != 0
                {
                    status = Some("file-shared-mprotect".into());
                }
            }
        }
        let shown = status.clone().unwrap_or_else(|| "OK".into());
        report(&path, &format!("{pid} {counter} {shown}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
