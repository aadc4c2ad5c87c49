//! Seccomp of each thread (the `Seccomp` record, one per thread): strict
//! mode, or the chain of BPF filters with their flags, read with
//! PTRACE_SECCOMP_GET_FILTER/GET_METADATA.
//!
//! The filters never see crstream's own injected syscalls: dump traces a
//! process that has them with PTRACE_O_SUSPEND_SECCOMP (see `freeze.rs`),
//! and restore sets that option on the threads before installing them,
//! from inside each thread, in the final phase but before the credentials
//! (installing a filter takes CAP_SYS_ADMIN or no_new_privs). The option
//! goes with the tracer: the filters apply from the first instruction the
//! process runs on its own.
//!
//! The filters all threads have in common are installed once, by the
//! leader, with SECCOMP_FILTER_FLAG_TSYNC: the threads share them as they
//! did (so a later TSYNC of the process's own still succeeds); the rest of
//! each thread's chain is installed by that thread.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::inject::Remote;
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::{SCRATCH_DATA, STUB_OPTIONS, Stub};
use crate::sys::ptrace;
use crstream_proto::{Seccomp, SeccompFilter};

/// Records version since which every thread has a `Seccomp` record.
const SINCE: u32 = 3;
const SECCOMP_MODE_STRICT: u32 = 1;
const SECCOMP_MODE_FILTER: u32 = 2;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
/// The longest program the kernel accepts (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

pub(crate) struct SeccompKind;

impl Kind for SeccompKind {
    fn name(&self) -> &'static str {
        "seccomp"
    }

    fn phase(&self) -> Phase {
        Phase::Final
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        for i in 0..p.threads.len() {
            let tid = p.threads[i].tid;
            let status = &p.thread_status[i];
            let mut filters = Vec::new();
            if status.seccomp == SECCOMP_MODE_FILTER {
                for index in 0.. {
                    let Some((program, flags)) = ptrace::seccomp_filter(tid, index)? else {
                        break;
                    };
                    if notifies_a_listener(&program) {
                        return Err(DumpError::Unsupported {
                            pid: p.pid,
                            what: "seccomp",
                            reason: format!(
                                "a filter of tid {tid} hands syscalls to a listener \
                                 (SECCOMP_RET_USER_NOTIF), which restore cannot reconnect"
                            ),
                        });
                    }
                    filters.push(SeccompFilter { program, flags });
                }
                // Index 0 is the oldest filter (the kernel counts back
                // from the newest): the order they are installed in.
            }
            p.thread_records[i].push(Seccomp {
                mode: status.seccomp,
                filters,
            });
        }
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        for i in 0..p.threads.len() {
            if let Some(s) = p.thread_need_since::<Seccomp>(i, SINCE)?
                && s.mode != 0
                && !crate::proc::own_capability(crate::proc::CAP_SYS_ADMIN)
            {
                return Err(RestoreError::Unsupported {
                    pid: p.pid,
                    what: "seccomp",
                    reason: "restoring filters takes CAP_SYS_ADMIN (to suspend them while \
                             restore runs), which crstream lacks"
                        .into(),
                });
            }
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let pid = p.stub.vpid;
        // (thread index, its saved TID, its filters)
        let mut saved = Vec::new();
        for (i, t) in p.image.threads.iter().enumerate() {
            if let Some(s) = p.image.thread_need_since::<Seccomp>(i, SINCE)?
                && s.mode != 0
            {
                saved.push((i, t.tid as i32, s));
            }
        }
        if saved.is_empty() {
            return Ok(());
        }
        let stub = p.stub;
        let every_thread = saved.len() == p.image.threads.len();
        for i in 0..p.image.threads.len() {
            ptrace::set_options(
                p.host_tid(i),
                STUB_OPTIONS | ptrace::PTRACE_O_SUSPEND_SECCOMP,
            )?;
        }
        // Filters every thread has, oldest first, installed once for all.
        let common = if every_thread {
            common_prefix(saved.iter().map(|(_, _, s)| *s))
        } else {
            0
        };
        if common > 0 {
            let (_, _, s) = saved[0];
            for f in &s.filters[..common] {
                install(stub, &stub.leader, f, SECCOMP_FILTER_FLAG_TSYNC)
                    .map_err(|e| err(pid, pid, e))?;
            }
        }
        for &(i, tid, s) in &saved {
            let thread = (i != 0).then(|| stub.thread(p.host_tid(i))).transpose()?;
            let remote = thread.as_ref().unwrap_or(&stub.leader);
            if s.mode == SECCOMP_MODE_STRICT {
                remote
                    .call(
                        "prctl(PR_SET_SECCOMP, strict)",
                        libc::SYS_prctl,
                        &[libc::PR_SET_SECCOMP as u64, SECCOMP_MODE_STRICT as u64],
                    )
                    .map_err(|e| err(pid, tid, e))?;
                continue;
            }
            for f in &s.filters[common..] {
                install(stub, remote, f, 0).map_err(|e| err(pid, tid, e))?;
            }
        }
        Ok(())
    }
}

fn err(pid: i32, tid: i32, e: TaskError) -> RestoreError {
    RestoreError::Thread {
        pid,
        tid,
        reason: format!("installing its seccomp filters: {e}"),
    }
}

/// Whether a BPF program can return SECCOMP_RET_USER_NOTIF (a `ret #k`
/// with that action).
fn notifies_a_listener(program: &[u8]) -> bool {
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
    const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
    program.chunks_exact(8).any(|insn| {
        let code = u16::from_le_bytes([insn[0], insn[1]]);
        let k = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        code == BPF_RET_K && k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF
    })
}

/// How many filters, oldest first, every chain of filters starts with.
fn common_prefix<'a>(mut chains: impl Iterator<Item = &'a Seccomp>) -> usize {
    let Some(first) = chains.next() else {
        return 0;
    };
    if first.mode != SECCOMP_MODE_FILTER {
        return 0;
    }
    let mut n = first.filters.len();
    for s in chains {
        if s.mode != SECCOMP_MODE_FILTER {
            return 0;
        }
        n = n.min(
            first
                .filters
                .iter()
                .zip(&s.filters)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    n
}

/// Installs filter `f` in the thread `remote` injects into.
fn install(
    stub: &Stub,
    remote: &Remote,
    f: &SeccompFilter,
    extra_flags: u64,
) -> Result<(), TaskError> {
    let insns = f.program.len() / 8;
    if insns == 0 || insns > MAX_INSNS || !f.program.len().is_multiple_of(8) {
        return Err(TaskError::Syscall {
            tid: remote.tid,
            name: "seccomp (a saved program of a length the kernel refuses)",
            errno: libc::EINVAL,
        });
    }
    // struct sock_fprog { unsigned short len; struct sock_filter *filter; },
    // the program right after it.
    let prog_at = stub.put(SCRATCH_DATA + 16, &f.program)?;
    let mut fprog = Vec::with_capacity(16);
    fprog.extend_from_slice(&(insns as u64).to_le_bytes());
    fprog.extend_from_slice(&prog_at.to_le_bytes());
    let fprog_at = stub.put(SCRATCH_DATA, &fprog)?;
    remote.call(
        "seccomp(SECCOMP_SET_MODE_FILTER)",
        libc::SYS_seccomp,
        &[SECCOMP_SET_MODE_FILTER, f.flags | extra_flags, fprog_at],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(filters: &[&[u8]]) -> Seccomp {
        Seccomp {
            mode: SECCOMP_MODE_FILTER,
            filters: filters
                .iter()
                .map(|p| SeccompFilter {
                    program: p.to_vec(),
                    flags: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn filters_in_common() {
        let (a, b, c): (&[u8], &[u8], &[u8]) = (&[1; 8], &[2; 8], &[3; 8]);
        let all = [chain(&[a, b]), chain(&[a, b, c]), chain(&[a, b])];
        assert_eq!(common_prefix(all.iter()), 2);
        let diverge = [chain(&[a, b]), chain(&[a, c])];
        assert_eq!(common_prefix(diverge.iter()), 1);
        let strict = Seccomp {
            mode: SECCOMP_MODE_STRICT,
            filters: vec![],
        };
        assert_eq!(common_prefix([chain(&[a]), strict].iter()), 0);
    }
}
