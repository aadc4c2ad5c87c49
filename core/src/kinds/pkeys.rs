//! Memory protection keys (pkey_alloc, pkey_mprotect): which keys a
//! process has allocated (`PrctlValues.pkeys`, read here for the prctl
//! kind) and the key each area carries (`VmArea.pkey`, from smaps' line
//! ProtectionKey). What each thread may do with each key is its PKRU
//! register, which comes back with its other registers. V8 (node) keeps
//! its WebAssembly code under a key of its own.
//!
//! No interface lists the allocated keys: dump asks the process for every
//! free key (pkey_alloc until none is left) and frees them again; the rest
//! are allocated. Restore allocates every key, frees those the process had
//! not allocated, and gives each area its key, before areas are sealed.

use crate::error::{DumpError, RestoreError, TaskError};
use crate::kind::Injector;
use crate::stub::Stub;

/// Keys an x86 process may have (key 0 is every area's without one).
const KEYS: u32 = 16;
const SYS_PKEY_MPROTECT: i64 = 329;
const SYS_PKEY_ALLOC: i64 = 330;
const SYS_PKEY_FREE: i64 = 331;

/// Whether this CPU and kernel give processes protection keys.
fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            c.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == "ospke"))
        })
    })
}

/// The keys the process `inject` runs in has allocated, as a bitmap (bit
/// k: key k; key 0 not counted): 0 where there are none to have. Asked
/// (about 1 ms) only of a process some area of which has a key
/// (`keyed_areas`) or whose leader's PKRU is not the kernel's default: a
/// key allocated with access disabled and on no area is not seen. The
/// leader's PKRU, which pkey_alloc changes, is put back.
pub(crate) fn allocated(inject: &Injector, keyed_areas: bool) -> Result<u32, DumpError> {
    if !available() {
        return Ok(0);
    }
    let tid = inject.leader.tid;
    let xstate = crate::sys::ptrace::get_xstate(tid)?;
    if !keyed_areas && pkru(&xstate) == Some(DEFAULT_PKRU) {
        return Ok(0);
    }
    let mut free = 0u32;
    let probed = take_every_free_key(
        |key| free |= 1 << key,
        |name, nr, args| inject.call(name, nr, args),
    );
    for key in (1..KEYS).filter(|k| free & (1 << k) != 0) {
        inject.call("pkey_free", SYS_PKEY_FREE, &[key as u64])?;
    }
    crate::sys::ptrace::set_xstate(tid, &xstate)?;
    probed?;
    Ok(!free & !1 & ((1 << KEYS) - 1))
}

/// Allocates every key the process `call` injects into has free
/// (pkey_alloc until none is left), telling `got` each.
fn take_every_free_key(
    mut got: impl FnMut(i64),
    call: impl Fn(&'static str, i64, &[u64]) -> Result<i64, TaskError>,
) -> Result<(), TaskError> {
    for _ in 1..KEYS {
        match call("pkey_alloc", SYS_PKEY_ALLOC, &[0, 0]) {
            Ok(key) => got(key),
            Err(TaskError::Syscall { errno, .. }) if errno == libc::ENOSPC => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What PKRU holds for a task that never changed it: access to every key
/// but 0 disabled.
const DEFAULT_PKRU: u32 = 0x5555_5554;

/// The PKRU value an XSAVE area holds (its place, from CPUID leaf 0xd,
/// subleaf 9); 0 when the area has it in its initial state; None where the
/// area is too short to hold it.
fn pkru(xstate: &[u8]) -> Option<u32> {
    const PKRU_COMPONENT: u32 = 9;
    let offset = std::arch::x86_64::__cpuid_count(0xd, PKRU_COMPONENT).ebx as usize;
    let xstate_bv = u64::from_le_bytes(xstate.get(512..520)?.try_into().ok()?);
    if xstate_bv & (1 << PKRU_COMPONENT) == 0 {
        return Some(0);
    }
    Some(u32::from_le_bytes(
        xstate.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// Makes the keys of process `stub` those of `wanted` (see [`allocated`]):
/// allocates every key, then frees the others (a process forked from a
/// restored parent may have its keys already).
pub(crate) fn allocate(stub: &Stub, wanted: u32) -> Result<(), RestoreError> {
    if wanted == 0 {
        return Ok(());
    }
    take_every_free_key(|_| {}, |name, nr, args| stub.call(name, nr, args))?;
    for key in (1..KEYS).filter(|k| wanted & (1 << k) == 0) {
        stub.call("pkey_free", SYS_PKEY_FREE, &[key as u64])?;
    }
    Ok(())
}

/// Gives the area [start, start + len) key `pkey`, with protection `prot`.
pub(crate) fn protect(
    stub: &Stub,
    start: u64,
    len: u64,
    prot: u32,
    pkey: u32,
) -> Result<(), RestoreError> {
    stub.call(
        "pkey_mprotect",
        SYS_PKEY_MPROTECT,
        &[start, len, prot as u64, pkey as u64],
    )?;
    Ok(())
}
