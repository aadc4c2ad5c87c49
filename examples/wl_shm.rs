//! Workload for the shared-memory tests: a root and two children that
//! share memory of every kind and check each other's writes through it.
//!
//! Regions, each mapped MAP_SHARED by all three processes:
//! - `anon`: shared anonymous memory (inherited over fork);
//! - `memfd`: a memfd named "wl-shm" with seals (grow, shrink), whose fd the
//!   root also keeps open at an offset and reads through;
//! - `deleted`: a file created in /dev/shm and unlinked (as POSIX
//!   semaphores are);
//! - `sysv`: a System V segment (IPC_PRIVATE, marked for removal).
//!
//! Every 20 ms each process writes its next counter value into its slot of
//! every region, in turn. Every 100 ms the root checks, for each process,
//! that all regions show the same counter give or take one (a region that
//! stopped being shared falls behind), that the memfd fd reads what its
//! mapping shows, that its seals and name are intact, and that a private
//! mapping of the memfd still holds its own copy-on-write page.
//!
//! `unseen`: 64 pages of shared anonymous memory written by a child that
//! exits at once, and touched by no process after that, until REPORT.verify
//! exists: then the root checks them, removes the file and counts a pass.
//!
//! Report:
//!   line 0: "ROOTPID COUNTER STATUS PASSES" (STATUS: OK or BAD-what)
//!   line 1: the pids of the two children
//!   lines 2..: "REGION c0 c1 c2", the counters each region shows
//!
//! Usage: wl_shm REPORT

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::report;

const PROCS: usize = 3;
const PAGE: usize = 4096;
const MEMFD_SEALS: i32 = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
const PRIVATE_MARK: u64 = 0x5052_4956_4154_4521;
const UNSEEN_PAGES: usize = 64;

/// The word at `i` of the `unseen` region.
fn unseen_word(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// Maps `unseen`, has a short-lived child fill it, and waits for it.
fn unseen() -> &'static [u64] {
    let len = UNSEEN_PAGES * PAGE;
    // SAFETY: a fresh shared mapping that lives as long as the process;
    // the child writes it and exits.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap unseen");
        let words = std::slice::from_raw_parts_mut(p as *mut u64, len / 8);
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            for (i, w) in words.iter_mut().enumerate() {
                *w = unseen_word(i);
            }
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        words
    }
}

type Slots = [AtomicU64; PROCS];

fn map(flags: i32, fd: i32) -> *mut libc::c_void {
    // SAFETY: a fresh mapping of one page.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p
}

fn slots(p: *mut libc::c_void) -> &'static Slots {
    // SAFETY: a page-sized shared mapping that lives as long as the process.
    unsafe { &*(p as *const Slots) }
}

struct Regions {
    all: Vec<(&'static str, &'static Slots)>,
    memfd: i32,
    private: *mut u64,
    sysv_id: i32,
}

fn regions() -> Regions {
    let name = CString::new("wl-shm").unwrap();
    // SAFETY: plain syscalls; fds and mappings live as long as the process.
    unsafe {
        let memfd = libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(memfd >= 0, "memfd_create");
        assert_eq!(libc::ftruncate(memfd, (2 * PAGE) as i64), 0);
        let memfd_map = map(libc::MAP_SHARED, memfd);
        // A private copy of the same page, written once: copy-on-write.
        let private = map(libc::MAP_PRIVATE, memfd) as *mut u64;
        *private.add(100) = PRIVATE_MARK;
        assert_eq!(libc::fcntl(memfd, libc::F_ADD_SEALS, MEMFD_SEALS), 0);
        assert_eq!(libc::lseek(memfd, 7, libc::SEEK_SET), 7);

        let path = CString::new(format!("/dev/shm/wl-shm.{}", std::process::id())).unwrap();
        let fd = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o600,
        );
        assert!(fd >= 0, "open /dev/shm file");
        assert_eq!(libc::ftruncate(fd, PAGE as i64), 0);
        let deleted = map(libc::MAP_SHARED, fd);
        libc::unlink(path.as_ptr());
        libc::close(fd);

        let id = libc::shmget(libc::IPC_PRIVATE, PAGE, libc::IPC_CREAT | 0o600);
        assert!(id >= 0, "shmget");
        let sysv = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(sysv as isize, -1, "shmat");
        // Gone once the last process detaches (attachments keep it).
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());

        Regions {
            all: vec![
                (
                    "anon",
                    slots(map(libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)),
                ),
                ("memfd", slots(memfd_map)),
                ("deleted", slots(deleted)),
                ("sysv", slots(sysv)),
            ],
            memfd,
            private,
            sysv_id: id,
        }
    }
}

/// Writes the next counter value of process `me` into every region.
fn tick(r: &Regions, me: usize, n: u64) {
    for (_, s) in &r.all {
        s[me].store(n, Ordering::SeqCst);
    }
}

fn child(r: &Regions, me: usize) -> ! {
    let mut n = 0;
    loop {
        n += 1;
        tick(r, me, n);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_shm REPORT");
    let verify = format!("{path}.verify");
    let r = regions();
    let unseen = unseen();
    let mut passes = 0u64;
    let mut unseen_bad = None;
    let mut kids = Vec::new();
    for me in 1..PROCS {
        // SAFETY: the child only runs `child`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            child(&r, me);
        }
        kids.push(pid);
    }
    let me = std::process::id();
    let mut n = 0u64;
    loop {
        for _ in 0..5 {
            n += 1;
            tick(&r, 0, n);
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::fs::remove_file(&verify).is_ok() {
            match unseen
                .iter()
                .enumerate()
                .find(|(i, w)| **w != unseen_word(*i))
            {
                None => passes += 1,
                Some((i, w)) => unseen_bad = Some(format!("BAD-unseen-word-{i}-is-{w:#x}")),
            }
        }
        let status = unseen_bad.clone().unwrap_or_else(|| check(&r));
        let mut text = format!("{me} {n} {status} {passes}\n{} {}\n", kids[0], kids[1]);
        for (name, s) in &r.all {
            let v: Vec<String> = s
                .iter()
                .map(|c| c.load(Ordering::SeqCst).to_string())
                .collect();
            text += &format!("{name} {}\n", v.join(" "));
        }
        report(&path, &text);
    }
}

fn check(r: &Regions) -> String {
    for p in 0..PROCS {
        let seen: Vec<u64> = r
            .all
            .iter()
            .map(|(_, s)| s[p].load(Ordering::SeqCst))
            .collect();
        let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        if hi - lo > 1 {
            return format!("BAD-regions-disagree-on-process-{p}:{seen:?}");
        }
    }
    // SAFETY: plain syscalls on our own fds and mappings.
    unsafe {
        let mut b = [0u8; 8];
        if libc::pread(r.memfd, b.as_mut_ptr().cast(), 8, 0) != 8 {
            return "BAD-memfd-pread".into();
        }
        let through_fd = u64::from_ne_bytes(b);
        let through_map = r.all[1].1[0].load(Ordering::SeqCst);
        if through_map.abs_diff(through_fd) > 1 {
            return format!("BAD-memfd-fd-reads-{through_fd}-map-shows-{through_map}");
        }
        if libc::lseek(r.memfd, 0, libc::SEEK_CUR) != 7 {
            return "BAD-memfd-offset".into();
        }
        let seals = libc::fcntl(r.memfd, libc::F_GET_SEALS);
        if seals != MEMFD_SEALS {
            return format!("BAD-memfd-seals-{seals:#x}");
        }
        if libc::ftruncate(r.memfd, (4 * PAGE) as i64) == 0 {
            return "BAD-memfd-grew-despite-seal".into();
        }
        if *r.private.add(100) != PRIVATE_MARK || *r.private != 0 {
            return "BAD-private-copy".into();
        }
        // The segment keeps its id, and knows all three attachments.
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(r.sysv_id, libc::IPC_STAT, &mut ds) != 0 {
            return format!("BAD-sysv-id-{}-gone", r.sysv_id);
        }
        if ds.shm_nattch != PROCS as u64 || ds.shm_segsz != PAGE {
            return format!("BAD-sysv-nattch-{}-size-{}", ds.shm_nattch, ds.shm_segsz);
        }
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", r.memfd)).unwrap_or_default();
    if link.to_string_lossy() != "/memfd:wl-shm (deleted)" {
        return format!("BAD-memfd-name-{}", link.display());
    }
    "OK".into()
}
