//! Private pages a parent and its child share copy-on-write, as a fork
//! left them: saved once, with the parent, and shared again at restore.
//!
//! Dump: a child's page whose physical frame (pagemap PFN) is its parent's
//! at the same address, in an area the child inherits whole from the
//! parent's, is left out of the child's pages and listed in
//! `VmArea.inherited`.
//!
//! Restore: the child is forked from its parent once the parent's memory
//! is in and keeps such areas from the fork ([`kept_on_fork`]); the pages
//! of those areas it did not share are dropped again ([`settle`]). A child
//! that could not keep them (a session helper forked it) gets a copy of
//! the parent's pages instead: the same contents, not shared.

use super::{ADVICE_DONTFORK, ADVICE_WIPEONFORK, DumpArea, LOCKED, LOCKED_ON_FAULT, Save};
use crate::error::{DumpError, RestoreError};
use crate::stub::Stub;
use crate::sys::mem::{PM_PFN, PM_PRESENT};
use crstream_proto::{AreaKind, Extent, VmArea};
use crstream_streamer::PAGE_SIZE;
use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: u64 = PAGE_SIZE as u64;

fn is_private(a: &VmArea) -> bool {
    a.flags as i32 & libc::MAP_PRIVATE != 0 && a.sysv_shmid.is_none() && a.shmem_id == 0
}

/// Whether the child's area `child` is what a fork gives it of the
/// parent's area `parent`: a private mapping of the same thing, at the same
/// place, with the same flags, advice and guard regions, that fork passes
/// on.
pub(super) fn inheritable(child: &VmArea, parent: &VmArea) -> bool {
    let advice = |a: &VmArea| a.madvise & !(LOCKED | LOCKED_ON_FAULT);
    let within = parent.start <= child.start && child.end <= parent.end;
    let same_object = within
        && match child.kind() {
            AreaKind::Anon | AreaKind::Heap | AreaKind::Stack => true,
            AreaKind::File => {
                child.path == parent.path
                    && child.unlinked_file == parent.unlinked_file
                    && child.dev == parent.dev
                    && child.inode == parent.inode
                    && parent.pgoff.checked_add(child.start - parent.start) == Some(child.pgoff)
            }
            _ => false,
        };
    is_private(child)
        && is_private(parent)
        && child.kind == parent.kind
        && child.flags == parent.flags
        && parent.madvise & (ADVICE_DONTFORK | ADVICE_WIPEONFORK) == 0
        && advice(child) == advice(parent)
        && same_object
        && guards_within(parent, child.start, child.end)
            == guards_within(child, child.start, child.end)
}

/// The guard regions of `a` within [start, end): a fork passes them on,
/// and restore installs none where they lie already.
fn guards_within(a: &VmArea, start: u64, end: u64) -> Vec<(u64, u64)> {
    a.guards
        .iter()
        .map(|g| (g.offset.max(start), (g.offset + g.len).min(end)))
        .filter(|(s, e)| s < e)
        .collect()
}

fn open_pagemap(pid: i32) -> Result<File, DumpError> {
    let path = format!("/proc/{pid}/pagemap");
    File::open(&path).map_err(|err| DumpError::Proc {
        pid,
        err: crate::error::ProcError::Io { path, err },
    })
}

/// Moves the child's saved pages that are its parent's very frames from
/// `runs` to `VmArea.inherited`. Returns how many pages moved. Each process
/// comes with where its page tables are read: itself, or its snapshot.
pub(super) fn find_shared(
    (child, child_tables): (i32, i32),
    (parent, parent_tables): (i32, i32),
    child_areas: &mut [DumpArea],
    parent_areas: &[DumpArea],
) -> Result<u64, DumpError> {
    let candidates: Vec<(usize, usize)> = child_areas
        .iter()
        .enumerate()
        .filter(|(_, a)| a.save == Save::Private && !a.runs.is_empty())
        .filter_map(|(i, a)| {
            parent_areas
                .iter()
                .position(|p| p.save == Save::Private && inheritable(&a.area, &p.area))
                .map(|j| (i, j))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let (cmap, pmap) = (open_pagemap(child_tables)?, open_pagemap(parent_tables)?);
    let scan_err = |pid: i32, a: &VmArea| {
        let (start, end) = (a.start, a.end);
        move |err| DumpError::PageScan {
            pid,
            start,
            end,
            err,
        }
    };
    let mut moved = 0;
    let (mut centries, mut pentries) = (Vec::new(), Vec::new());
    for (i, _) in candidates {
        let a = &mut child_areas[i];
        let mut own: Vec<(u64, u64)> = Vec::new();
        let mut shared: Vec<(u64, u64)> = Vec::new();
        for &(start, len) in &a.runs {
            let pages = (len / PAGE) as usize;
            read_entries(&cmap, start, pages, &mut centries).map_err(scan_err(child, &a.area))?;
            read_entries(&pmap, start, pages, &mut pentries).map_err(scan_err(parent, &a.area))?;
            for (k, (c, p)) in centries.iter().zip(&pentries).enumerate() {
                let same_frame = c & PM_PRESENT != 0
                    && p & PM_PRESENT != 0
                    && c & PM_PFN != 0
                    && c & PM_PFN == p & PM_PFN;
                let to = if same_frame { &mut shared } else { &mut own };
                push_page(to, start + k as u64 * PAGE);
            }
        }
        moved += shared.iter().map(|r| r.1 / PAGE).sum::<u64>();
        a.runs = own;
        a.area.has_pages = !a.runs.is_empty();
        a.area.inherited = shared
            .into_iter()
            .map(|(offset, len)| Extent { offset, len })
            .collect();
    }
    Ok(moved)
}

fn push_page(runs: &mut Vec<(u64, u64)>, addr: u64) {
    match runs.last_mut() {
        Some(last) if last.0 + last.1 == addr => last.1 += PAGE,
        _ => runs.push((addr, PAGE)),
    }
}

fn read_entries(map: &File, start: u64, pages: usize, out: &mut Vec<u64>) -> std::io::Result<()> {
    let mut buf = vec![0u8; pages * 8];
    map.read_exact_at(&mut buf, start / PAGE * 8)?;
    out.clear();
    out.extend(
        buf.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes"))),
    );
    Ok(())
}

/// The areas of a child that it keeps from its fork: those holding pages
/// it shares with its parent, which the parent's restored areas give it
/// whole.
pub(crate) fn kept_on_fork(child: &[VmArea], parent: &[VmArea]) -> Vec<(u64, u64)> {
    child
        .iter()
        .filter(|a| !a.inherited.is_empty())
        .filter(|a| parent.iter().any(|p| inheritable(a, p)))
        .map(|a| (a.start, a.end))
        .collect()
}

/// Before the child's own pages are written: in the areas it kept from the
/// fork, drops every page it did not share (MADV_DONTNEED: zero, or the
/// file's contents, as it had them); into other areas with shared pages,
/// copies them from the parent. Returns the pages copied.
pub(crate) fn settle(
    stub: &Stub,
    areas: &[VmArea],
    kept: &[(u64, u64)],
    parent: Option<&Stub>,
) -> Result<u64, RestoreError> {
    let mut copied = 0;
    for a in areas.iter().filter(|a| !a.inherited.is_empty()) {
        check_runs(stub.pid, a)?;
        if kept.contains(&(a.start, a.end)) {
            let mut at = a.start;
            for e in a.inherited.iter().chain(std::iter::once(&Extent {
                offset: a.end,
                len: 0,
            })) {
                if e.offset > at {
                    stub.call(
                        "madvise(MADV_DONTNEED)",
                        libc::SYS_madvise,
                        &[at, e.offset - at, libc::MADV_DONTNEED as u64],
                    )?;
                }
                at = e.offset + e.len;
            }
            continue;
        }
        let parent = parent.ok_or_else(|| RestoreError::Pages {
            pid: stub.pid,
            addr: a.start,
            reason: "pages shared with the parent, but the process has none".into(),
        })?;
        let mut buf = Vec::new();
        for e in &a.inherited {
            // In bounded pieces: a shared run may be the whole heap.
            let mut at = e.offset;
            while at < e.offset + e.len {
                let len = (e.offset + e.len - at).min(8 << 20) as usize;
                buf.resize(len, 0);
                parent.mem.read(at, &mut buf)?;
                stub.mem.write(at, &buf)?;
                at += len as u64;
            }
            copied += e.len / PAGE;
        }
    }
    Ok(copied)
}

/// The shared runs of an image's area: page-aligned, in order, inside it.
fn check_runs(pid: i32, a: &VmArea) -> Result<(), RestoreError> {
    let mut at = a.start;
    for e in &a.inherited {
        let end = e.offset.saturating_add(e.len);
        if e.offset < at || end > a.end || e.offset % PAGE != 0 || e.len % PAGE != 0 {
            return Err(RestoreError::Pages {
                pid,
                addr: e.offset,
                reason: format!(
                    "shared run of {} bytes out of order or outside area {:#x}-{:#x}",
                    e.len, a.start, a.end
                ),
            });
        }
        at = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> VmArea {
        VmArea {
            start,
            end,
            prot: 3,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            kind: AreaKind::Anon as i32,
            ..Default::default()
        }
    }

    #[test]
    fn what_a_fork_passes_on() {
        let parent = anon(0x10000, 0x20000);
        assert!(inheritable(&anon(0x10000, 0x20000), &parent));
        assert!(inheritable(&anon(0x12000, 0x14000), &parent));
        assert!(!inheritable(&anon(0x10000, 0x21000), &parent));
        let mut shared = anon(0x10000, 0x20000);
        shared.flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32;
        assert!(!inheritable(&shared, &shared));
        let mut dontfork = parent.clone();
        dontfork.madvise = ADVICE_DONTFORK;
        assert!(!inheritable(&anon(0x10000, 0x20000), &dontfork));
        // Locks are not inherited, whatever the parent holds.
        let mut locked = parent.clone();
        locked.madvise = LOCKED;
        assert!(inheritable(&anon(0x10000, 0x20000), &locked));
    }

    #[test]
    fn kept_only_with_shared_pages() {
        let parent = [anon(0x10000, 0x20000)];
        let mut child = [anon(0x10000, 0x20000), anon(0x30000, 0x40000)];
        assert!(kept_on_fork(&child, &parent).is_empty());
        child[0].inherited.push(Extent {
            offset: 0x11000,
            len: PAGE,
        });
        child[1].inherited.push(Extent {
            offset: 0x31000,
            len: PAGE,
        });
        assert_eq!(kept_on_fork(&child, &parent), vec![(0x10000, 0x20000)]);
    }
}
