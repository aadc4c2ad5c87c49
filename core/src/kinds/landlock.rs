//! Landlock sandboxes: refused, by thread. A thread that restricted itself
//! with landlock_restrict_self keeps its domain in its credentials, which
//! no interface reads back or sets on another thread; restored without it,
//! the process would run unconfined, silently.
//!
//! No file shows the domain, so dump asks the kernel through the one rule
//! every domain enforces whatever it handles: a sandboxed thread may not
//! ptrace-access a process outside its domain. From inside each thread, an
//! injected kcmp(2) (a PTRACE_MODE_READ access) of a probe process that the
//! thread could access without a sandbox: a child of crstream in the
//! thread's PID namespace with its real uid and gid, no capabilities,
//! dumpable. EPERM means a domain. A probe is started per PID namespace,
//! uid and gid the tree's threads have, only where the kernel enforces
//! Landlock, and ended once every process is read.
//!
//! A MAC module (SELinux, an enforcing AppArmor profile) may deny that
//! access too: a thread whose label is such is only warned about.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, DumpTree, Kind, Phase, RestoreProcess};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const KCMP_VM: u64 = 1;
const LANDLOCK_CREATE_RULESET_VERSION: u64 = 1;

/// The probes of one dump, by (PID namespace inode, uid, gid).
#[derive(Default)]
pub(crate) struct Landlock {
    probes: HashMap<(u64, u32, u32), Option<Probe>>,
}

impl Kind for Landlock {
    fn name(&self) -> &'static str {
        "landlock"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        if !landlock_enabled() {
            return Ok(());
        }
        let ns = match std::fs::File::open(format!("/proc/{}/ns/pid", p.pid)) {
            Ok(ns) => ns,
            Err(e) => {
                tracing::warn!(
                    pid = p.pid,
                    "its PID namespace ({e}): Landlock sandboxes not looked for"
                );
                return Ok(());
            }
        };
        for i in 0..p.threads.len() {
            let status = &p.thread_status[i];
            let (uid, gid) = (status.uids[0], status.gids[0]);
            let tid = p.threads[i].tid;
            let Some(probe) = self.probe(&ns, p.pid, uid, gid) else {
                continue;
            };
            let remote = p.thread_remote(i)?;
            // The process itself (its PID where it runs) against the probe.
            let own = p.status.nspid.last().copied().unwrap_or(p.pid);
            let (ret, _) =
                remote.raw(libc::SYS_kcmp, &[own as u64, probe as u64, KCMP_VM, 0, 0])?;
            match ret {
                0..=2 => continue,
                r if r == -(libc::EPERM as i64) => {}
                r => {
                    tracing::warn!(
                        pid = p.pid,
                        tid,
                        "whether thread {tid} is in a Landlock sandbox is unknown (kcmp: \
                         {}): one would not be restored",
                        std::io::Error::from_raw_os_error(-r as i32)
                    );
                    continue;
                }
            }
            if let Some(label) = mac_label(p.pid, tid) {
                tracing::warn!(
                    pid = p.pid,
                    tid,
                    "thread {tid} may not access other processes: its security label \
                     \"{label}\" may forbid it, or a Landlock sandbox, which would not be \
                     restored"
                );
                continue;
            }
            return Err(DumpError::Unsupported {
                pid: p.pid,
                what: "Landlock sandbox",
                reason: format!(
                    "thread {tid} ({}) is confined by a Landlock domain \
                     (landlock_restrict_self), which is not saved: restored, it would run \
                     unconfined",
                    status.name
                ),
            });
        }
        Ok(())
    }

    /// Every process is read: the probes end (each is a copy of crstream,
    /// whose pages it would keep while the image is written).
    fn dump_tree(&mut self, _t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        self.probes.clear();
        Ok(())
    }

    /// Nothing is saved: a sandboxed tree is refused.
    fn restore(&mut self, _p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        Ok(())
    }
}

impl Landlock {
    /// The PID, in `ns` (the PID namespace of process `pid`), of a probe
    /// running there as `uid`:`gid`, started on first use; None (with a
    /// warning) if it cannot be.
    fn probe(&mut self, ns: &std::fs::File, pid: i32, uid: u32, gid: u32) -> Option<i32> {
        let inode = ns.metadata().map(|m| m.ino()).unwrap_or(0);
        let probe = self.probes.entry((inode, uid, gid)).or_insert_with(|| {
            match Probe::start(ns, inode, uid, gid) {
                Ok(probe) => Some(probe),
                Err(e) => {
                    tracing::warn!(
                        pid,
                        uid,
                        gid,
                        "no Landlock probe ({e}): sandboxes of these ids not looked for"
                    );
                    None
                }
            }
        });
        probe.as_ref().map(|p| p.inside)
    }
}

/// A probe: a child of crstream, in a given PID namespace, that took
/// `uid`:`gid` as all its ids, no supplementary groups and no capabilities
/// (even as root), made itself dumpable again, closed every fd crstream
/// had, and waits to be killed (at the latest when the thread that made it
/// ends). Any thread of those real ids in that namespace may access it.
struct Probe {
    /// Its PID here.
    pid: i32,
    /// Its PID in its namespace.
    inside: i32,
}

impl Probe {
    /// In `ns`, whose inode is `ns_inode`.
    fn start(ns: &std::fs::File, ns_inode: u64, uid: u32, gid: u32) -> std::io::Result<Probe> {
        let own = std::fs::File::open("/proc/thread-self/ns/pid_for_children")?;
        let elsewhere = ns_inode != own.metadata()?.ino();
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 into a local array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds were just made and are owned here alone.
        let (ready_r, ready_w) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // This thread's children only, until set back below.
        if elsewhere && unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Its parent as it sees it: none, from a namespace below ours.
        let parent = if elsewhere {
            0
        } else {
            std::process::id() as libc::pid_t
        };
        let w = ready_w.as_raw_fd();
        // SAFETY: the child makes raw syscalls only (no allocation, no
        // lock another thread may hold), then waits or exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe { probe_child(uid, gid, parent, w) }
        }
        let forked = std::io::Error::last_os_error();
        // SAFETY: setns on this thread, back to crstream's own namespace
        // (an ancestor of any other: always allowed).
        if elsewhere && unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            panic!(
                "setns back to crstream's PID namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        if pid < 0 {
            return Err(forked);
        }
        drop(ready_w);
        let mut probe = Probe { pid, inside: pid };
        // Not to be used before it has taken its ids (until then it is
        // root with every capability, and not dumpable for a moment).
        let mut byte = [0u8; 1];
        // SAFETY: read into a local byte.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        if n != 1 {
            return Err(std::io::Error::other("it could not take the ids"));
        }
        if elsewhere {
            probe.inside = crate::proc::status(pid)
                .ok()
                .and_then(|s| s.nspid.last().copied())
                .ok_or_else(|| std::io::Error::other("its PID in the namespace is unknown"))?;
        }
        Ok(probe)
    }
}

/// The probe's life after fork; never returns. `ready`: the fd it writes a
/// byte to once it has its ids (its only fd left but 0-2).
unsafe fn probe_child(uid: u32, gid: u32, parent: libc::pid_t, ready: i32) -> ! {
    use libc::{SYS_capset, SYS_close_range, SYS_setgroups, SYS_setresgid, SYS_setresuid, syscall};
    // struct __user_cap_header_struct (version 3) and two empty data sets.
    let mut header = [0x2008_0522u32, 0];
    let data = [0u32; 6];
    let ready_u = ready as u32;
    // SAFETY: raw syscalls on this (single-threaded) child's own state.
    unsafe {
        let ok = (ready_u <= 3 || syscall(SYS_close_range, 3u32, ready_u - 1, 0u32) == 0)
            && syscall(SYS_close_range, ready_u + 1, u32::MAX, 0u32) == 0
            && syscall(SYS_setgroups, 0, 0usize) == 0
            && syscall(SYS_setresgid, gid, gid, gid) == 0
            && syscall(SYS_setresuid, uid, uid, uid) == 0
            && syscall(SYS_capset, header.as_mut_ptr(), data.as_ptr()) == 0
            && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) == 0
            // (Cleared by the id changes: set after them.)
            && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0
            && libc::getppid() == parent
            && libc::write(ready, [1u8].as_ptr().cast(), 1) == 1;
        if !ok {
            libc::_exit(1);
        }
        libc::close(ready);
        loop {
            libc::pause();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // SAFETY: killing and reaping the child this probe made.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The label of a MAC module that may deny the thread access to other
/// processes (SELinux, an enforcing AppArmor profile); None without one.
fn mac_label(pid: i32, tid: i32) -> Option<String> {
    let label = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/attr/current")).ok()?;
    let label = label.trim_end_matches(['\n', '\0']);
    // AppArmor's unconfined, and profiles that only log ("complain") or
    // allow everything ("unconfined" mode), deny nothing.
    let denies_nothing = label.is_empty()
        || label == "unconfined"
        || label.ends_with(" (complain)")
        || label.ends_with(" (unconfined)");
    (!denies_nothing).then(|| label.to_string())
}

/// Whether this kernel enforces Landlock (no domain can exist otherwise).
fn landlock_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        // SAFETY: landlock_create_ruleset asking the ABI version only.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                0usize,
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if abi < 0 {
            let e = std::io::Error::last_os_error();
            // ENOSYS, EOPNOTSUPP: none. Anything else (a filter of
            // crstream's own): look at the list of security modules.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
            ) {
                return std::fs::read_to_string("/sys/kernel/security/lsm")
                    .is_ok_and(|l| l.split(',').any(|m| m.trim() == "landlock"));
            }
        }
        abi > 0
    })
}
