//! Process state beyond memory, files and registers comes back exactly:
//! each workload sets one kind of state, checks it all the time, and says
//! so in its report. Each is restored twice from one image, then dumped
//! again after restore and restored from that.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);

/// Dump `w`; restore the image twice, then dump the restored process and
/// restore that; after each restore, the workload's counter moves on and
/// its status stays OK. `extra` checks the restored process from outside.
fn round_trips(w: &mut Workload, dir: &TestDir, extra: &dyn Fn(i32)) {
    let counter = |r: &str| field(r, 0, 1);
    let r = w.wait_report(T, |r| counter(r) >= 3);
    assert!(r.contains(" OK"), "before the dump: {r}\n{}", w.log());
    extra(w.pid);
    let img = dir.path("img");
    dump(w.pid, &img, &[]);
    w.reap_dumped();
    let again = |w: &mut Workload, img: &Path, what: &str| {
        let at = counter(&w.read_report().unwrap());
        let (pid, _) = restore(img);
        w.restored(pid);
        let r = w.wait_report(T, |r| counter(r) > at + 3 || !r.contains(" OK"));
        assert!(r.contains(" OK"), "{what}: {r}\n{}", w.log());
        assert_running_untraced(pid);
        extra(pid);
    };
    again(w, &img, "first restore");
    w.kill();
    again(w, &img, "second restore");
    let img2 = dir.path("img2");
    dump(w.pid, &img2, &[]);
    assert!(wait_gone(w.pid, T));
    again(w, &img2, "restore of a restored process");
}

#[test]
fn scheduling_io_priority_affinity_timer_slack_and_oom_score_survive() {
    let dir = TestDir::new("sched");
    let mut w = Workload::spawn("wl_sched", dir.path("report"), &[]);
    let oom = |pid: i32| {
        let v = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(v.trim(), "345");
        assert_eq!(tasks(pid).len(), 5);
    };
    round_trips(&mut w, &dir, &oom);
}

/// Threads with users, groups, capability sets and securebits of their
/// own (a daemon's main thread as nobody keeping CAP_NET_BIND_SERVICE, a
/// thread as uid 1000, a root thread with a smaller bounding set and an
/// ambient capability) come back with exactly those.
#[test]
fn threads_with_their_own_users_groups_capabilities_and_securebits_come_back() {
    let dir = TestDir::new("creds");
    let mut w = Workload::spawn("wl_creds", dir.path("report"), &[]);
    let uids = |pid: i32| {
        let mut uids: Vec<String> = tasks(pid)
            .into_iter()
            .map(|t| {
                let uid = status_field(t, "Uid").unwrap_or_default();
                uid.split_whitespace().next().unwrap_or("").to_string()
            })
            .collect();
        uids.sort();
        assert_eq!(uids, ["0", "1000", "65534"], "uids of the threads of {pid}");
        assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    };
    round_trips(&mut w, &dir, &uids);
}

/// Seccomp: threads sharing filters installed with TSYNC (and installing
/// more with TSYNC, which only works while they still share them), then a
/// thread in strict mode beside threads with filters of their own. The
/// filters filter after restore, never restore's own syscalls.
#[test]
fn seccomp_filters_shared_by_threads_per_thread_and_strict_mode_come_back() {
    for variant in ["tsync", "strict"] {
        let dir = TestDir::new(&format!("seccomp-{variant}"));
        let mut w = Workload::spawn("wl_seccomp", dir.path("report"), &[variant]);
        let filtering = |pid: i32| {
            assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
            let modes: Vec<String> = tasks(pid)
                .into_iter()
                .map(|t| status_field(t, "Seccomp").unwrap_or_default())
                .collect();
            let strict = modes.iter().filter(|m| *m == "1").count();
            assert_eq!(strict, usize::from(variant == "strict"), "{modes:?}");
        };
        round_trips(&mut w, &dir, &filtering);
    }
}
