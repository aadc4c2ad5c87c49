//! Landlock sandboxes: refused, by thread. A thread that restricted itself
//! with landlock_restrict_self keeps its domain in its credentials, which
//! no interface reads back or sets on another thread; restored without it,
//! the process would run unconfined, silently.
//!
//! No file shows the domain, so dump asks the kernel through the one rule
//! every domain enforces whatever it handles: a sandboxed thread may not
//! ptrace-access a process outside its domain. From inside each thread, an
//! injected kcmp(2) (a PTRACE_MODE_READ access) of a probe process that the
//! thread could access without a sandbox: a child of crstream with the
//! thread's real uid and gid, no capabilities, dumpable. EPERM means a domain. A
//! probe is started per uid and gid the tree's threads have, only where
//! the kernel enforces Landlock.
//!
//! A MAC module (SELinux, AppArmor) may deny that access too: where the
//! thread carries a label of one other than AppArmor's "unconfined", an
//! EPERM proves nothing and the thread is only warned about.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use std::collections::HashMap;

const KCMP_VM: u64 = 1;
const LANDLOCK_CREATE_RULESET_VERSION: u64 = 1;

/// The probes of one dump, by (uid, gid); ended (by PID) with it.
#[derive(Default)]
pub(crate) struct Landlock {
    probes: HashMap<(u32, u32), Option<Probe>>,
}

impl Kind for Landlock {
    fn name(&self) -> &'static str {
        "landlock"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        if !landlock_enabled() || p.status.nspid.len() > own_pid_depth() {
            // (A probe outside the process's PID namespace has no PID in it.)
            return Ok(());
        }
        for i in 0..p.threads.len() {
            let status = &p.thread_status[i];
            let (uid, gid) = (status.uids[0], status.gids[0]);
            let Some(probe) = self.probe(uid, gid) else {
                continue;
            };
            let tid = p.threads[i].tid;
            let remote = p.thread_remote(i)?;
            // The process itself (its PID where it runs) against the probe.
            let own = p.status.nspid.last().copied().unwrap_or(p.pid);
            let (ret, _) =
                remote.raw(libc::SYS_kcmp, &[own as u64, probe as u64, KCMP_VM, 0, 0])?;
            if ret != -(libc::EPERM as i64) {
                continue;
            }
            let label = std::fs::read_to_string(format!("/proc/{}/task/{tid}/attr/current", p.pid))
                .map(|l| l.trim_end_matches(['\n', '\0']).to_string())
                .ok()
                .filter(|l| !l.is_empty() && l != "unconfined");
            if let Some(label) = label {
                tracing::warn!(
                    pid = p.pid,
                    tid,
                    "thread {tid} may not access other processes; its security label \
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

    /// Nothing is saved: a sandboxed tree is refused.
    fn restore(&mut self, _p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        Ok(())
    }
}

impl Landlock {
    /// The PID of a probe running as `uid`:`gid`, started on first use;
    /// None if it cannot be started (the thread is then not probed).
    fn probe(&mut self, uid: u32, gid: u32) -> Option<i32> {
        let probe = self
            .probes
            .entry((uid, gid))
            .or_insert_with(|| Probe::start(uid, gid));
        probe.as_ref().map(|p| p.0)
    }
}

/// A probe: a child of crstream that took `uid`:`gid` as all its ids, no
/// supplementary groups and no capabilities (even as root), made itself
/// dumpable again, and waits to be killed (at the latest when the thread
/// that made it ends). Any thread of those real ids may access it.
struct Probe(i32);

impl Probe {
    fn start(uid: u32, gid: u32) -> Option<Probe> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the child makes raw syscalls only (no allocation, no
        // lock another thread may hold), then waits or exits.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => {
                let e = std::io::Error::last_os_error();
                tracing::warn!(
                    uid,
                    gid,
                    "no Landlock probe ({e}): sandboxes of these ids not looked for"
                );
                None
            }
            0 => unsafe { probe_child(uid, gid, parent) },
            pid => Some(Probe(pid)),
        }
    }
}

/// The probe's life after fork; never returns.
unsafe fn probe_child(uid: u32, gid: u32, parent: libc::pid_t) -> ! {
    use libc::{SYS_capset, SYS_setgroups, SYS_setresgid, SYS_setresuid, syscall};
    // struct __user_cap_header_struct (version 3) and two empty data sets.
    let header = [0x2008_0522u32, 0];
    let data = [0u32; 6];
    // SAFETY: raw syscalls on this (single-threaded) child's own ids.
    unsafe {
        let ids = syscall(SYS_setgroups, 0, 0usize) == 0
            && syscall(SYS_setresgid, gid, gid, gid) == 0
            && syscall(SYS_setresuid, uid, uid, uid) == 0
            && syscall(SYS_capset, header.as_ptr(), data.as_ptr()) == 0
            && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) == 0
            // (Cleared by the id changes: set after them.)
            && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0;
        if !ids || libc::getppid() != parent {
            libc::_exit(1);
        }
        loop {
            libc::pause();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // SAFETY: killing and reaping the child this probe made.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
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
        abi > 0
    })
}

/// How many PID namespaces deep crstream is (its NSpid entries).
fn own_pid_depth() -> usize {
    crate::proc::status(std::process::id() as i32).map_or(1, |s| s.nspid.len())
}
