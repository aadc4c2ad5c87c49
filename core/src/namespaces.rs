//! Namespaces other than the PID namespace (`pidns.rs`): crstream saves
//! none of them. A process in a network, UTS, IPC, user, cgroup or time
//! namespace of its own would come back in crstream's, with the host's
//! network, hostname, System V objects, ids, cgroup view or clocks: dump
//! refuses it instead, naming the namespace, before anything is changed.
//!
//! A mount namespace of its own is accepted for a process in a PID
//! namespace of its own (which restore creates again, with a mount
//! namespace of its own too) when it mounts the same as crstream's but for
//! /proc: `unshare --pid --fork --mount-proc`. Any other mount namespace
//! is refused, naming a mount that differs.

use crate::error::DumpError;
use std::collections::BTreeSet;

/// Namespaces restore would silently replace by crstream's.
const NOT_SAVED: [(&str, &str); 6] = [
    ("net", "network"),
    ("uts", "UTS (hostname)"),
    ("ipc", "IPC"),
    ("user", "user"),
    ("cgroup", "cgroup"),
    ("time", "time"),
];

/// Refuses process `pid` if a namespace of its would not come back (see
/// the module comment); `own_pidns`: it is in a PID namespace of its own.
pub(crate) fn refuse_unsaved(pid: i32, own_pidns: bool) -> Result<(), DumpError> {
    let refuse = |reason: String| DumpError::Unsupported {
        pid,
        what: "namespace",
        reason,
    };
    for (ns, name) in NOT_SAVED {
        if let Some((theirs, ours)) = differs(pid, ns) {
            return Err(refuse(format!(
                "it is in a {name} namespace of its own ({theirs}; crstream's is {ours}), which \
                 crstream does not save: restored, it would be in crstream's"
            )));
        }
    }
    if let Some((theirs, ours)) = differs(pid, "mnt") {
        let why = match own_pidns {
            false => Some("crstream does not save mount namespaces".to_string()),
            true => mounts_differ(pid).map(|m| format!("it mounts differently: {m}")),
        };
        if let Some(why) = why {
            return Err(refuse(format!(
                "it is in a mount namespace of its own ({theirs}; crstream's is {ours}) and {why}: \
                 restored, it would see crstream's mounts"
            )));
        }
    }
    Ok(())
}

/// The namespace `ns` of `pid` and crstream's, if they differ (a kind the
/// kernel lacks, or cannot read, differs in nothing).
fn differs(pid: i32, ns: &str) -> Option<(String, String)> {
    let link = |p: String| std::fs::read_link(p).ok().map(|l| l.display().to_string());
    let theirs = link(format!("/proc/{pid}/ns/{ns}"))?;
    let ours = link(format!("/proc/self/ns/{ns}"))?;
    (theirs != ours).then_some((theirs, ours))
}

/// A mount `pid` has and crstream has not, or the other way round,
/// leaving out /proc and what is mounted below it.
fn mounts_differ(pid: i32) -> Option<String> {
    let theirs = mounts(&format!("/proc/{pid}/mountinfo"));
    let ours = mounts("/proc/self/mountinfo");
    if let Some(m) = theirs.difference(&ours).next() {
        return Some(format!("{m} is mounted only there"));
    }
    ours.difference(&theirs)
        .next()
        .map(|m| format!("{m} is not mounted there"))
}

/// The mounts of a mountinfo file as "MOUNTPOINT (TYPE SOURCE, ROOT, OPTIONS)",
/// without mount ids and propagation (which every namespace has its own of).
fn mounts(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (root, point, opts) = (f.get(3)?, f.get(4)?, f.get(5)?);
            if *point == "/proc" || point.starts_with("/proc/") {
                return None;
            }
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            Some(format!("{point} ({fstype} {source}, {root}, {opts})"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crstream_is_in_its_own_namespaces() {
        let me = std::process::id() as i32;
        assert!(refuse_unsaved(me, false).is_ok());
        assert_eq!(mounts_differ(me), None);
        assert!(!mounts("/proc/self/mountinfo").is_empty());
    }
}
