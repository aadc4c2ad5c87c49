//! Credentials of each thread (the `Credentials` record, in each thread's
//! stream): real/effective/saved/fs user and group IDs, supplementary
//! groups, the five capability sets, securebits and no_new_privs. Saved
//! from /proc/TID/status and an injected prctl(PR_GET_SECUREBITS).
//!
//! Restore sets them from inside each thread, last (in the final phase,
//! after everything that needs privilege), in the one order the kernel
//! allows from root: the inheritable set while the bounding set is whole,
//! the bounding set, groups and gids, then the uids with SECBIT_KEEP_CAPS
//! and SECBIT_NO_SETUID_FIXUP so that every capability survives the change
//! (an fsuid other than the uids takes CAP_SETUID), then the capabilities
//! (with CAP_SETPCAP kept effective while the ambient set and securebits
//! are set), then the final capability sets. Changing credentials resets
//! the process's dumpable flag, which is set again once every thread has
//! its own.
//!
//! Images of records version 2 carry one record per process (the
//! leader's), which every thread gets.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::inject::Remote;
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::proc::Status;
use crate::records::ProcessImage;
use crate::stub::{SCRATCH_DATA, Stub, capset};
use crstream_proto::{Credentials, MmFields};

/// Records version since which every thread has its own record.
const PER_THREAD: u32 = 3;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
/// securebits (linux/securebits.h).
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
const SECBIT_NO_SETUID_FIXUP: u32 = 1 << 2;

pub(crate) struct Creds;

impl Kind for Creds {
    fn name(&self) -> &'static str {
        "credentials"
    }

    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        for i in 0..p.threads.len() {
            let status = &p.thread_status[i];
            let remote = p.thread_remote(i)?;
            let securebits = remote.call(
                "prctl(PR_GET_SECUREBITS)",
                libc::SYS_prctl,
                &[libc::PR_GET_SECUREBITS as u64],
            )? as u32;
            p.thread_records[i].push(from_status(status, securebits));
        }
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        let mine = crate::proc::status(std::process::id() as i32).map_err(|e| {
            RestoreError::Credentials {
                pid: p.pid,
                reason: e.to_string(),
            }
        })?;
        for i in 0..p.threads.len() {
            check(p.pid, saved(p, i)?, &mine)?;
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.pid();
        let stub = p.stub;
        // The leader last: the dumpable flag is set from it afterwards.
        for i in (0..p.image.threads.len()).rev() {
            let c = saved(p.image, i)?;
            let tid = p.image.threads[i].tid as i32;
            let thread = if i == 0 {
                None
            } else {
                Some(stub.thread(p.host_tid(i))?)
            };
            let remote = thread.as_ref().unwrap_or(&stub.leader);
            set(stub, remote, c).map_err(|e| RestoreError::Thread {
                pid,
                tid,
                reason: format!("setting credentials: {e}"),
            })?;
        }
        if let Some(mm) = p.image.records.get::<MmFields>()
            && mm.dumpable <= 1
        {
            stub.call(
                "prctl(PR_SET_DUMPABLE)",
                libc::SYS_prctl,
                &[libc::PR_SET_DUMPABLE as u64, mm.dumpable as u64],
            )?;
        }
        Ok(())
    }
}

/// The credentials of thread `i`: its own, or the process's in images
/// older than per-thread records.
fn saved<'a>(p: &'a ProcessImage<'_>, i: usize) -> Result<&'a Credentials, RestoreError> {
    match p.thread_need_since::<Credentials>(i, PER_THREAD)? {
        Some(c) => Ok(c),
        None => p.need(),
    }
}

fn from_status(s: &Status, securebits: u32) -> Credentials {
    Credentials {
        uid: s.uids[0],
        euid: s.uids[1],
        suid: s.uids[2],
        fsuid: s.uids[3],
        gid: s.gids[0],
        egid: s.gids[1],
        sgid: s.gids[2],
        fsgid: s.gids[3],
        groups: s.groups.clone(),
        cap_inheritable: s.cap_inh,
        cap_permitted: s.cap_prm,
        cap_effective: s.cap_eff,
        cap_bounding: s.cap_bnd,
        cap_ambient: s.cap_amb,
        securebits,
        no_new_privs: s.no_new_privs,
    }
}

/// Refuses, before anything is created, credentials the restorer cannot
/// give: it starts from its own and can only drop capabilities it has.
fn check(pid: i32, c: &Credentials, me: &Status) -> Result<(), RestoreError> {
    let refuse = |reason: String| RestoreError::Credentials { pid, reason };
    let has = |cap: u32| me.cap_eff & (1 << cap) != 0;
    let ids_differ = [c.uid, c.euid, c.suid, c.fsuid] != me.uids;
    let gids_differ = [c.gid, c.egid, c.sgid, c.fsgid] != me.gids;
    let mut groups = c.groups.clone();
    let mut my_groups = me.groups.clone();
    groups.sort_unstable();
    my_groups.sort_unstable();
    if ids_differ && !has(CAP_SETUID) {
        return Err(refuse(format!(
            "uids {:?}, and crstream lacks CAP_SETUID",
            [c.uid, c.euid, c.suid, c.fsuid]
        )));
    }
    if (gids_differ || groups != my_groups) && !has(CAP_SETGID) {
        return Err(refuse(format!(
            "gids {:?} and groups {:?}, and crstream lacks CAP_SETGID",
            [c.gid, c.egid, c.sgid, c.fsgid],
            c.groups
        )));
    }
    let extra = (c.cap_permitted | c.cap_bounding | c.cap_inheritable) & !me.cap_prm & !me.cap_bnd;
    if extra != 0 {
        return Err(refuse(format!(
            "capabilities {extra:#x} that crstream does not have"
        )));
    }
    if c.securebits != 0 && !has(CAP_SETPCAP) {
        return Err(refuse(format!(
            "securebits {:#x}, and crstream lacks CAP_SETPCAP",
            c.securebits
        )));
    }
    Ok(())
}

/// Gives the thread `remote` injects into the credentials `c`, from the
/// restorer's (root's) own.
fn set(stub: &Stub, remote: &Remote, c: &Credentials) -> Result<(), TaskError> {
    let prctl = |name, args: &[u64]| remote.call(name, libc::SYS_prctl, args);
    let now = crate::proc::status(remote.tid).unwrap_or_default();
    // The inheritable set while the bounding set is whole (it may hold
    // capabilities the saved bounding set no longer has).
    capset(stub, remote, now.cap_eff, now.cap_prm, c.cap_inheritable)?;
    for cap in 0..64 {
        if now.cap_bnd & (1 << cap) != 0 && c.cap_bounding & (1 << cap) == 0 {
            prctl(
                "prctl(PR_CAPBSET_DROP)",
                &[libc::PR_CAPBSET_DROP as u64, cap],
            )?;
        }
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let list = stub.put(SCRATCH_DATA, &groups)?;
    remote.call(
        "setgroups",
        libc::SYS_setgroups,
        &[c.groups.len() as u64, list],
    )?;
    remote.call(
        "setresgid",
        libc::SYS_setresgid,
        &[c.gid as u64, c.egid as u64, c.sgid as u64],
    )?;
    remote.call("setfsgid", libc::SYS_setfsgid, &[c.fsgid as u64])?;
    // Keep every capability through the change of uids: the fsuid, unless
    // it is one of the uids, takes CAP_SETUID effective (setfsuid fails
    // silently without it), which setresuid would have cleared.
    prctl(
        "prctl(PR_SET_SECUREBITS)",
        &[
            libc::PR_SET_SECUREBITS as u64,
            (SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP) as u64,
        ],
    )?;
    remote.call(
        "setresuid",
        libc::SYS_setresuid,
        &[c.uid as u64, c.euid as u64, c.suid as u64],
    )?;
    remote.call("setfsuid", libc::SYS_setfsuid, &[c.fsuid as u64])?;
    // setfsuid tells no failure: its answer to an invalid id is the fsuid.
    let fsuid = remote.call("setfsuid", libc::SYS_setfsuid, &[u32::MAX as u64])?;
    let fsgid = remote.call("setfsgid", libc::SYS_setfsgid, &[u32::MAX as u64])?;
    if (fsuid as u32, fsgid as u32) != (c.fsuid, c.fsgid) {
        return Err(TaskError::Syscall {
            tid: remote.tid,
            name: "setfsuid",
            errno: libc::EPERM,
        });
    }
    // CAP_SETPCAP effective for the securebits; ambient capabilities need
    // theirs permitted and inheritable.
    let wide = c.cap_permitted | (1u64 << CAP_SETPCAP);
    capset(stub, remote, wide, wide, c.cap_inheritable)?;
    for cap in 0..64 {
        if c.cap_ambient & (1 << cap) != 0 {
            prctl(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                ],
            )?;
        }
    }
    prctl(
        "prctl(PR_SET_SECUREBITS)",
        &[libc::PR_SET_SECUREBITS as u64, c.securebits as u64],
    )?;
    capset(
        stub,
        remote,
        c.cap_effective,
        c.cap_permitted,
        c.cap_inheritable,
    )?;
    if c.no_new_privs {
        prctl(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        )?;
    }
    Ok(())
}
