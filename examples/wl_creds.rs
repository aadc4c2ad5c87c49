//! Workload: threads with credentials of their own, as daemons that drop
//! privileges have them (set with raw syscalls, which change only the
//! calling thread):
//! - the main thread runs as nobody (65534) with groups 65534 and 100,
//!   keeping CAP_NET_BIND_SERVICE permitted and effective, no_new_privs set;
//! - a thread runs as uid/gid 1000 with no groups and no capabilities, and
//!   file-system ids of its own (fsuid 1003, fsgid 1004: set while it
//!   still had CAP_SETUID and CAP_SETGID);
//! - a thread stays root with CAP_NET_RAW and CAP_SYS_BOOT out of its
//!   bounding set, CAP_NET_BIND_SERVICE inheritable and ambient, and
//!   SECBIT_NO_SETUID_FIXUP; it writes the report.
//!
//! Each thread notes its credentials (/proc/thread-self/status and
//! securebits) once set, and every 20 ms compares them with what they are.
//! Reports "pid counter STATUS" every 100 ms.
//!
//! Usage: wl_creds REPORT

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod wl_common;
use wl_common::{Status, report};

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_BOOT: u32 = 22;
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;

static COUNTER: AtomicU64 = AtomicU64::new(0);
static STATUS: Status = Status::new();

fn sys(name: &str, r: libc::c_long) {
    assert!(r >= 0, "{name}: {}", std::io::Error::last_os_error());
}

/// The calling thread's credentials as the kernel shows them.
fn creds() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let mut out: Vec<String> = status
        .lines()
        .filter(|l| {
            [
                "Uid:",
                "Gid:",
                "Groups:",
                "CapInh:",
                "CapPrm:",
                "CapEff:",
                "CapBnd:",
                "CapAmb:",
                "NoNewPrivs:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // SAFETY: a plain prctl query.
    out.push(format!("securebits {}", unsafe {
        libc::prctl(libc::PR_GET_SECUREBITS)
    }));
    out.join("; ")
}

fn capset(effective: u64, permitted: u64, inheritable: u64) {
    let header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    for (i, half) in [0, 32].into_iter().enumerate() {
        data[3 * i] = (effective >> half) as u32;
        data[3 * i + 1] = (permitted >> half) as u32;
        data[3 * i + 2] = (inheritable >> half) as u32;
    }
    // SAFETY: capset reads a v3 header and two data structs.
    sys("capset", unsafe {
        libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr())
    });
}

fn set_groups(groups: &[u32]) {
    // SAFETY: setgroups reads `groups.len()` gids.
    sys("setgroups", unsafe {
        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr())
    });
}

fn set_ids(uid: u32, gid: u32) {
    // SAFETY: plain integer arguments; only the calling thread changes.
    unsafe {
        sys(
            "setresgid",
            libc::syscall(libc::SYS_setresgid, gid, gid, gid),
        );
        sys(
            "setresuid",
            libc::syscall(libc::SYS_setresuid, uid, uid, uid),
        );
    }
}

fn prctl(name: &str, args: [u64; 5]) {
    // SAFETY: prctl with integer arguments.
    sys(
        name,
        unsafe { libc::syscall(libc::SYS_prctl, args[0], args[1], args[2], args[3], args[4]) }
            as libc::c_long,
    );
}

/// Notes the calling thread's credentials, then checks them forever;
/// `each` runs after every check.
fn watch(name: &'static str, each: impl Fn()) -> ! {
    let want = creds();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = creds();
        if now != want {
            STATUS.fail(format!("{name}-changed:[{now}]-was:[{want}]").replace(' ', "_"));
        }
        each();
    }
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_creds REPORT");
    let pid = std::process::id();

    std::thread::spawn(|| {
        prctl("keepcaps", [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0]);
        set_groups(&[]);
        set_ids(1000, 1000);
        let set_ids_caps = (1u64 << CAP_SETUID) | (1u64 << CAP_SETGID);
        capset(set_ids_caps, set_ids_caps, 0);
        // SAFETY: raw calls that change only this thread's fs ids.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, 1003);
            libc::syscall(libc::SYS_setfsgid, 1004);
        }
        capset(0, 0, 0);
        prctl("keepcaps", [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0]);
        watch("user", || {})
    });
    std::thread::spawn(move || {
        let net_bind = 1u64 << CAP_NET_BIND_SERVICE;
        for cap in [CAP_NET_RAW, CAP_SYS_BOOT] {
            prctl(
                "capbset_drop",
                [libc::PR_CAPBSET_DROP as u64, cap as u64, 0, 0, 0],
            );
        }
        let all = u64::from_str_radix(
            creds()
                .split("; ")
                .find_map(|f| f.strip_prefix("CapPrm: "))
                .unwrap(),
            16,
        )
        .unwrap();
        capset(all, all, net_bind);
        prctl(
            "ambient_raise",
            [
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_RAISE as u64,
                CAP_NET_BIND_SERVICE as u64,
                0,
                0,
            ],
        );
        prctl(
            "securebits",
            [
                libc::PR_SET_SECUREBITS as u64,
                SECBIT_NO_SETUID_FIXUP,
                0,
                0,
                0,
            ],
        );
        watch("root", || {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 5 == 0 {
                let status = STATUS.shown();
                report(&path, &format!("{pid} {n} {status}\n"));
            }
        })
    });

    // The main thread: nobody, keeping one capability.
    prctl("keepcaps", [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0]);
    set_groups(&[65534, 100]);
    set_ids(65534, 65534);
    let net_bind = 1u64 << CAP_NET_BIND_SERVICE;
    capset(net_bind, net_bind, 0);
    prctl("keepcaps", [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0]);
    prctl(
        "no_new_privs",
        [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
    );
    watch("nobody", || {})
}
