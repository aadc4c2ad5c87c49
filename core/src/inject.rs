//! Remote syscall injection: run one syscall inside a ptrace-stopped task by
//! pointing its rip at an existing `syscall` instruction (in the vDSO, or in
//! the restorer's trampoline page) and stepping it with PTRACE_SYSCALL from
//! the entry stop to the exit stop. The task's code is never modified.
//!
//! Also: access to a task's memory through /proc/PID/mem (which works on
//! areas without read or write permission) and process_vm_readv.

use crate::error::TaskError;
use crate::ptrace::{self, Regs, Stop};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Events seen while a syscall ran (e.g. the tid of a thread created by an
/// injected clone3 under PTRACE_O_TRACECLONE).
#[derive(Debug, Default)]
pub struct SyscallEvents {
    pub clone: bool,
    pub fork: bool,
}

/// A stopped task into which syscalls can be injected.
pub struct Remote {
    pub tid: i32,
    /// Address of a `syscall` (0f 05) instruction mapped executable in the task.
    pub syscall_ip: u64,
    /// Registers the injected calls start from (all but rip/rax/args kept).
    pub base: Regs,
}

impl Remote {
    pub fn new(tid: i32, syscall_ip: u64) -> Result<Self, TaskError> {
        let base = ptrace::get_regs(tid)?;
        Ok(Self {
            tid,
            syscall_ip,
            base,
        })
    }

    /// Runs syscall `nr` with `args`; returns the raw result (negative errno
    /// on failure). The task is left in its syscall-exit stop.
    pub fn raw(&self, nr: i64, args: &[u64]) -> Result<(i64, SyscallEvents), TaskError> {
        let tid = self.tid;
        let mut r = self.base;
        r.rip = self.syscall_ip;
        r.rax = nr as u64;
        // -1: no syscall is being restarted, so the kernel's restart logic
        // leaves our registers alone on the way back to user mode.
        r.orig_rax = u64::MAX;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a[0], a[1], a[2], a[3], a[4], a[5]);
        ptrace::set_regs(tid, &r)?;
        ptrace::syscall(tid, 0)?;
        let (status, stop) = ptrace::wait(tid)?;
        match stop {
            Stop::Syscall => {}
            Stop::Gone => return Err(TaskError::Gone { tid, status }),
            _ => {
                return Err(TaskError::UnexpectedStop {
                    tid,
                    status,
                    while_doing: "waiting for a syscall-entry stop",
                });
            }
        }
        let mut events = SyscallEvents::default();
        loop {
            ptrace::syscall(tid, 0)?;
            let (status, stop) = ptrace::wait(tid)?;
            match stop {
                Stop::Syscall => break,
                Stop::Event(ptrace::PTRACE_EVENT_CLONE) => events.clone = true,
                Stop::Event(ptrace::PTRACE_EVENT_FORK) => events.fork = true,
                Stop::Gone => return Err(TaskError::Gone { tid, status }),
                _ => {
                    return Err(TaskError::UnexpectedStop {
                        tid,
                        status,
                        while_doing: "waiting for a syscall-exit stop",
                    });
                }
            }
        }
        let out = ptrace::get_regs(tid)?;
        Ok((out.rax as i64, events))
    }

    /// Runs a syscall and turns a negative result into an error naming it.
    pub fn call(&self, name: &'static str, nr: i64, args: &[u64]) -> Result<i64, TaskError> {
        let (ret, _) = self.raw(nr, args)?;
        tracing::trace!(tid = self.tid, name, ret, "injected syscall");
        if (-4095..0).contains(&ret) {
            return Err(TaskError::Syscall {
                tid: self.tid,
                name,
                errno: (-ret) as i32,
            });
        }
        Ok(ret)
    }
}

/// Finds a `syscall` instruction in a vDSO image mapped at `base`.
pub fn find_syscall_insn(vdso: &[u8], base: u64) -> Option<u64> {
    vdso.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| base + i as u64)
}

/// /proc/PID/mem of a task: reads and writes regardless of page protections.
pub struct RemoteMem {
    pub pid: i32,
    file: File,
}

impl RemoteMem {
    pub fn open(pid: i32, write: bool) -> Result<Self, TaskError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|err| TaskError::RemoteMemory {
                pid,
                what: "opening /proc/PID/mem for",
                addr: 0,
                len: 0,
                err,
            })?;
        Ok(Self { pid, file })
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TaskError> {
        self.file
            .read_exact_at(buf, addr)
            .map_err(|err| TaskError::RemoteMemory {
                pid: self.pid,
                what: "reading",
                addr,
                len: buf.len(),
                err,
            })
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), TaskError> {
        self.file
            .write_all_at(data, addr)
            .map_err(|err| TaskError::RemoteMemory {
                pid: self.pid,
                what: "writing",
                addr,
                len: data.len(),
                err,
            })
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, TaskError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Reads `runs` (address, length) of another process into `buf` with one
/// process_vm_readv call per at most 1024 runs. Returns bytes read.
pub fn vm_readv(pid: i32, runs: &[(u64, usize)], buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0usize;
    let mut off = 0usize;
    for chunk in runs.chunks(1024) {
        let total: usize = chunk.iter().map(|r| r.1).sum();
        let local = libc::iovec {
            iov_base: buf[off..off + total].as_mut_ptr().cast(),
            iov_len: total,
        };
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(a, l)| libc::iovec {
                iov_base: a as *mut _,
                iov_len: l,
            })
            .collect();
        // SAFETY: local buffer is valid for `total` bytes; remote iovecs are
        // addresses in the other process, checked by the kernel.
        let n = unsafe {
            libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        done += n as usize;
        if n as usize != total {
            return Ok(done);
        }
        off += total;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_syscall_insn() {
        assert_eq!(
            find_syscall_insn(&[0x90, 0x0f, 0x05, 0xc3], 0x1000),
            Some(0x1001)
        );
        assert_eq!(find_syscall_insn(&[0x90, 0x0f, 0xc3], 0x1000), None);
    }
}
