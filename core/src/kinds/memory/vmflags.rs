//! VmFlags (the last line of each area in /proc/PID/smaps): what restore
//! reapplies (advice, mlock, growing down, no swap reservation) and what a
//! dump refuses (device memory).
//!
//! A live dump reads them without walking the page tables while the
//! process is frozen: from its snapshot's smaps once it runs again, which
//! has the process's flags but two: mlock (not inherited by a fork; the
//! status says whether any area is locked) and MADV_DONTFORK (the area is
//! missing). MADV_WIPEONFORK, whose pages must be read while frozen, shows
//! as pages the process has and its snapshot lacks.

use super::{DumpArea, Save, open_pagemap};
use crate::error::DumpError;
use crate::paths::show;
use crate::proc::MapEntry;
use crate::sys::mem::{PAGE_IS_PFNZERO, pagemap_has_page};
use crstream_proto::AreaKind;
use std::fs::File;

/// madvise-able VmFlags that restore reapplies: (smaps name, bit in
/// `VmArea.madvise`, MADV_* advice).
pub(super) const ADVICE: &[(&str, u64, i32)] = &[
    ("dc", ADVICE_DONTFORK, libc::MADV_DONTFORK),
    ("dd", 1 << 1, libc::MADV_DONTDUMP),
    ("wf", ADVICE_WIPEONFORK, libc::MADV_WIPEONFORK),
    ("hg", 1 << 3, libc::MADV_HUGEPAGE),
    ("nh", 1 << 4, libc::MADV_NOHUGEPAGE),
    ("mg", 1 << 5, libc::MADV_MERGEABLE),
    ("sr", 1 << 6, libc::MADV_SEQUENTIAL),
    ("rr", 1 << 7, libc::MADV_RANDOM),
];

pub(super) const ADVICE_DONTFORK: u64 = 1 << 0;
pub(super) const ADVICE_WIPEONFORK: u64 = 1 << 2;

/// Locked areas (smaps "lo"; "lf": only as pages fault in), in
/// `VmArea.madvise` too: locked once their pages are in.
pub(super) const LOCKED: u64 = 1 << 8;
pub(super) const LOCKED_ON_FAULT: u64 = 1 << 9;

/// A MAP_SHARED area mapped through a writable fd (smaps "sh", VM_SHARED),
/// read-only or not now: mprotect may make it writable again, so it is
/// mapped through a writable fd again.
pub(super) const SHARED_WRITABLE: u64 = 1 << 10;
/// A MAP_SHARED area mapped read-only for good (VmFlags read, no "sh": a
/// read-only fd, a System V attach with SHM_RDONLY): it comes back so.
pub(super) const SHARED_READ_ONLY: u64 = 1 << 11;
/// Sealed with mseal (smaps "sl"): sealed again once restored.
pub(super) const SEALED: u64 = 1 << 12;

/// What an area's VmFlags (smaps) say that restore reapplies, as bits of
/// `VmArea.flags` and `VmArea.madvise`: growing down, no swap reservation,
/// madvise advice, mlock, whether a shared area may be made writable,
/// mseal. None from /proc/PID/maps, which lacks VmFlags.
pub(super) fn vm_flag_bits(m: &MapEntry) -> (u32, u64) {
    let mut flags = 0;
    if m.has_flag("gd") {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    // VM_NORESERVE: mapped without swap-space reservation (a large sparse
    // area must not be refused under strict overcommit).
    if m.has_flag("nr") {
        flags |= libc::MAP_NORESERVE as u32;
    }
    let mut advice = 0;
    for &(name, bit, _) in ADVICE {
        if m.has_flag(name) {
            advice |= bit;
        }
    }
    if m.shared && m.has_flag("sh") {
        advice |= SHARED_WRITABLE;
    } else if m.shared && !m.vmflags.is_empty() {
        advice |= SHARED_READ_ONLY;
    }
    if m.has_flag("sl") {
        advice |= SEALED;
    }
    if m.has_flag("lo") {
        advice |= if m.has_flag("lf") {
            LOCKED_ON_FAULT
        } else {
            LOCKED
        };
    }
    (flags, advice)
}

/// VM_IO/VM_PFNMAP: a device's memory (the vDSO's data pages aside).
pub(super) fn is_device_mapping(m: &MapEntry) -> bool {
    m.has_flag("io") || m.has_flag("pf")
}

pub(super) const DEVICE_MAPPING: &str = "device (VM_IO/VM_PFNMAP) mappings cannot be restored";

/// The entry of `maps` (sorted) that is area `a`: same start, same end.
fn same_area<'m>(maps: &'m [MapEntry], a: &DumpArea) -> Option<&'m MapEntry> {
    let i = maps.binary_search_by_key(&a.area.start, |m| m.start).ok()?;
    Some(&maps[i]).filter(|m| m.end == a.area.end)
}

/// Whether `forked` (the maps of a snapshot) has each of `areas`.
pub(super) fn has_every_area(forked: &[MapEntry], areas: &[DumpArea]) -> bool {
    areas.iter().all(|a| same_area(forked, a).is_some())
}

/// Marks MADV_WIPEONFORK on the private anonymous areas of `pid` that
/// have pages (not the zero page) where its snapshot `child` has none: a
/// fork copies every other such area's page tables. (That advice is
/// allowed on private anonymous memory only.) Their pages are then read
/// from the process while it is frozen.
pub(super) fn mark_wiped_on_fork(
    pid: i32,
    child: i32,
    areas: &mut [DumpArea],
) -> Result<(), DumpError> {
    let (ours, forked) = (open_pagemap(pid, pid)?, open_pagemap(pid, child)?);
    for a in areas
        .iter_mut()
        .filter(|a| a.save == Save::Private && a.area.flags & libc::MAP_ANONYMOUS as u32 != 0)
    {
        let (start, end) = (a.area.start, a.area.end);
        let has = |pagemap: &File| {
            pagemap_has_page(pagemap, start, end, PAGE_IS_PFNZERO).map_err(|err| {
                DumpError::PageScan {
                    pid,
                    start,
                    end,
                    err,
                }
            })
        };
        if !has(&forked)? && has(&ours)? {
            a.area.madvise |= ADVICE_WIPEONFORK;
        }
    }
    Ok(())
}

/// Sets the VmFlags of `smaps` (the process's, or with `forked` its
/// snapshot's: then no area is locked, and MADV_WIPEONFORK was found by
/// [`mark_wiped_on_fork`] already) on `areas`, read from maps.
pub(super) fn apply_vm_flags(
    pid: i32,
    areas: &mut [DumpArea],
    smaps: &[MapEntry],
    forked: bool,
) -> Result<(), DumpError> {
    for a in areas.iter_mut() {
        let (start, end) = (a.area.start, a.area.end);
        let Some(m) = same_area(smaps, a) else {
            return Err(DumpError::Unsupported {
                pid,
                what: "live dump",
                reason: format!(
                    "the area {start:#x}-{end:#x} is not in {} smaps",
                    if forked { "its snapshot's" } else { "its" }
                ),
            });
        };
        let special = matches!(
            a.area.kind(),
            AreaKind::Vdso | AreaKind::Vvar | AreaKind::VvarVclock | AreaKind::Vsyscall
        );
        if is_device_mapping(m) && !special {
            return Err(DumpError::UnsupportedMapping {
                pid,
                start,
                end,
                path: show(&m.path).into_owned(),
                reason: DEVICE_MAPPING.into(),
            });
        }
        let (flags, advice) = vm_flag_bits(m);
        if forked && a.area.madvise & ADVICE_WIPEONFORK != 0 && advice & ADVICE_WIPEONFORK == 0 {
            return Err(DumpError::Unsupported {
                pid,
                what: "live dump",
                reason: format!(
                    "its snapshot does not show MADV_WIPEONFORK on {start:#x}-{end:#x} as its \
                     pages did"
                ),
            });
        }
        a.area.flags |= flags;
        a.area.madvise |= advice;
        // A fork keeps each area's protection key.
        a.area.pkey = m.pkey;
    }
    Ok(())
}
