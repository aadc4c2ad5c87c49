//! Memory areas and their pages.
//!
//! Dump: classify every area of /proc/PID/smaps (what restore can rebuild,
//! which pages to save), find populated pages with the PAGEMAP_SCAN ioctl
//! (fallback: /proc/PID/pagemap entries) and read them with
//! process_vm_readv (or /proc/PID/mem for unreadable areas).
//!
//! Restore: map every area at its address in the stub with injected mmap
//! calls (with their madvise flags), fill pages through /proc/PID/mem, then
//! set the final protections.
//!
//! The `MemoryMap` record of each process lists its areas; the pages
//! themselves travel in page frames after the metadata, which the
//! orchestrators write ([`Memory::write_pages`]) and read ([`fill`]).
//! Pages a child shares copy-on-write with its parent are saved once
//! (`inherit`).

mod fill;
pub(crate) mod identity;
mod inherit;
mod vmflags;

pub(crate) use fill::{Copier, PageWriter, take_userfaultfd};

pub(crate) use inherit::{kept_on_fork, settle};
use vmflags::{
    ADVICE, ADVICE_DONTFORK, ADVICE_WIPEONFORK, DEVICE_MAPPING, LOCKED, LOCKED_ON_FAULT, SEALED,
    SHARED_READ_ONLY, SHARED_WRITABLE, apply_vm_flags, has_every_area, is_device_mapping,
    mark_wiped_on_fork, vm_flag_bits,
};

use crate::error::{DumpError, RestoreError};
use crate::inject::RemoteMem;
use crate::kind::{DumpProcess, DumpTree, Kind, Phase, RestoreObjects, RestoreProcess};
use crate::proc::MapEntry;
use crate::records::ProcessImage;
use crate::stub::Stub;
use crate::sys::mem::{
    PAGE_IS_FILE, PAGE_IS_PFNZERO, PM_FILE, PM_GUARD_REGION, PM_PFN, PM_PRESENT, PM_SWAPPED,
    Scanned, pagemap_scan, vm_readv, zero_page_pfns,
};
use crstream_proto::{AreaKind, Extent, MemoryMap, VmArea};
use crstream_streamer::{ImageSink, PAGE_SIZE};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Memory: areas and their pages.
#[derive(Default)]
pub(crate) struct Memory {
    /// Dump: the areas of each process (by pid), with the page runs to save.
    areas: HashMap<i32, Vec<DumpArea>>,
    /// Restore: where each shared anonymous object was created.
    shm_origin: HashMap<u64, ShmemOrigin>,
    /// Dump: build-ids of the mapped files, by device and inode.
    build_ids: HashMap<(u64, u64), Vec<u8>>,
    /// Dump: processes whose areas a snapshot keeps are not scanned yet
    /// (see [`Memory::scan_kept`]).
    unscanned: HashSet<i32>,
    /// Dump: where the page tables of a process are read once it runs
    /// again: its snapshot.
    page_tables_of: HashMap<i32, i32>,
    /// Dump: processes whose areas were read from /proc/PID/maps while
    /// frozen, their VmFlags left to be read from their snapshot (see
    /// [`Memory::after_snapshot`]).
    flags_pending: HashSet<i32>,
    /// Restore: privately mapped files may have changed (--skip-validation).
    pub(crate) skip_validation: bool,
}

impl Kind for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn phase(&self) -> Phase {
        Phase::Memory
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        if p.snapshot_planned && p.status.vm_lck_kb == Some(0) {
            return self.dump_before_snapshot(p);
        }
        // smaps and PAGEMAP_SCAN each walk the page tables (~10 ms per GiB
        // here) while the process is frozen: on two threads at once (both
        // only read them), the scan over the whole address space. A live
        // dump scans the areas its snapshot keeps in the snapshot, once the
        // tree runs again (`scan_kept`).
        let later = p.snapshot_planned;
        let (smaps, scanned) = std::thread::scope(|s| {
            let scan = (!later).then(|| s.spawn(|| scan_whole(pid)));
            let smaps = crate::proc::smaps(pid);
            (smaps, scan.and_then(|h| h.join().ok().flatten()))
        });
        let smaps = smaps.map_err(|err| DumpError::Proc { pid, err })?;
        p.keyed_areas = smaps.iter().any(|m| m.pkey != 0);
        // An escape frame (and the calls' buffers) on an alternate stack in
        // such an area could be denied to the thread by its protection key,
        // be seen by other processes or the running process while the
        // snapshot is read (shared), or be missing or zeroed in the
        // snapshot (MADV_DONTFORK, MADV_WIPEONFORK).
        p.no_escapes = smaps
            .iter()
            .filter(|m| m.shared || m.pkey != 0 || m.has_flag("dc") || m.has_flag("wf"))
            .map(|m| m.start..m.end)
            .collect();
        let mut areas = plan(
            pid,
            &smaps,
            &mut p.objects.unlinked,
            &mut p.objects.sysv,
            &mut self.build_ids,
        )?;
        if later {
            self.unscanned.insert(pid); // see `after_snapshot`
        } else {
            scan(pid, pid, &mut areas, scanned.as_ref(), |_| true)?;
        }
        self.areas.insert(pid, areas);
        Ok(())
    }

    /// Shared anonymous memory is saved once, with the first process that
    /// maps it; then every process gets its `MemoryMap`.
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        let order: Vec<i32> = t.processes.iter().map(|p| p.pid).collect();
        share_memory(&order, &mut self.areas);
        for e in t.entries.iter().skip(1) {
            let (pid, ppid) = (e.pid as i32, e.ppid as i32);
            if !self.areas.contains_key(&ppid) {
                continue;
            }
            let Some(mut child) = self.areas.remove(&pid) else {
                continue;
            };
            // A snapshot shares every page its process does: the sharing
            // between two processes shows between their snapshots too.
            let tables = |pid: i32| self.page_tables_of.get(&pid).copied().unwrap_or(pid);
            let shared = inherit::find_shared(
                (pid, tables(pid)),
                (ppid, tables(ppid)),
                &mut child,
                &self.areas[&ppid],
            );
            self.areas.insert(pid, child);
            let shared = shared?;
            if shared > 0 {
                tracing::debug!(pid, ppid, pages = shared, "pages shared with the parent");
            }
        }
        for p in t.processes.iter_mut() {
            let areas = &self.areas[&p.pid];
            p.records.push(MemoryMap {
                pid: p.pid as u32,
                areas: areas.iter().map(|a| a.area.clone()).collect(),
                pages_total: areas
                    .iter()
                    .flat_map(|a| a.runs.iter())
                    .map(|r| r.1 / PAGE_SIZE as u64)
                    .sum(),
            });
        }
        Ok(())
    }

    /// Files that changed in a way that would corrupt the process are
    /// refused before anything is created.
    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        check_files(p.pid, &p.need::<MemoryMap>()?.areas, !self.skip_validation)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        self.restore_forked(p, &[], None)
    }
}

impl Memory {
    /// A live dump, frozen: the areas from /proc/PID/maps, which walks no
    /// page table (smaps takes 25 ms per GiB here, the freeze's largest
    /// part after the fork). Their VmFlags come from the snapshot, which
    /// has the same ones but mlock (a fork does not inherit it: the status
    /// said no area is locked) and lacks the MADV_DONTFORK areas.
    fn dump_before_snapshot(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let maps = crate::proc::maps(pid).map_err(|err| DumpError::Proc { pid, err })?;
        let areas = plan(
            pid,
            &maps,
            &mut p.objects.unlinked,
            &mut p.objects.sysv,
            &mut self.build_ids,
        )?;
        self.areas.insert(pid, areas);
        self.flags_pending.insert(pid);
        self.unscanned.insert(pid);
        Ok(())
    }

    /// A live dump, still frozen, once the snapshot of `pid` is taken
    /// (`snapshot`: its PID, None if it could not be): finds the areas
    /// the snapshot does not keep as they are now, and scans them in the
    /// process. If the areas were read from maps, either the snapshot has
    /// every one of them, and those with pages it lacks are MADV_WIPEONFORK
    /// ones (the rest of their VmFlags come later, in [`Memory::scan_kept`]),
    /// or smaps is read now.
    pub(crate) fn after_snapshot(
        &mut self,
        pid: i32,
        snapshot: Option<i32>,
    ) -> Result<(), DumpError> {
        if !self.unscanned.contains(&pid) {
            return Ok(()); // no live dump planned: scanned whole
        }
        let areas = self.areas.get_mut(&pid).expect("areas of a dumped process");
        if self.flags_pending.contains(&pid) {
            let proc_err = |err| DumpError::Proc { pid, err };
            let forked = match snapshot {
                Some(child) => Some((child, crate::proc::maps(child).map_err(proc_err)?)),
                None => None,
            };
            match forked {
                Some((child, maps)) if has_every_area(&maps, areas) => {
                    mark_wiped_on_fork(pid, child, areas)?
                }
                _ => {
                    let smaps = crate::proc::smaps(pid).map_err(proc_err)?;
                    apply_vm_flags(pid, areas, &smaps, false)?;
                    self.flags_pending.remove(&pid);
                }
            }
        }
        scan(pid, pid, areas, None, |a| !in_snapshot(a))
    }

    /// Scans the areas of `pid` that its snapshot keeps, if a live dump
    /// left them for later, in `read_from`: the snapshot (the same page
    /// tables as the process at the freeze, for those areas: a fork copies
    /// them), or the frozen process itself when it got none. VmFlags left
    /// for later are read from the snapshot first.
    pub(crate) fn scan_kept(&mut self, pid: i32, read_from: i32) -> Result<(), DumpError> {
        if !self.unscanned.remove(&pid) {
            return Ok(());
        }
        let areas = self.areas.get_mut(&pid).expect("areas of a dumped process");
        if self.flags_pending.remove(&pid) {
            let smaps =
                crate::proc::smaps(read_from).map_err(|err| DumpError::Proc { pid, err })?;
            apply_vm_flags(pid, areas, &smaps, true)?;
        }
        if read_from != pid {
            self.page_tables_of.insert(pid, read_from);
        }
        let whole = scan_whole(read_from);
        scan(pid, read_from, areas, whole.as_ref(), in_snapshot)
    }

    /// Whether the process has pages to save that its snapshot lacks: they
    /// are read while it is frozen, so its metadata is written then too.
    pub(crate) fn has_pages_outside_snapshot(&self, pid: i32) -> bool {
        self.areas[&pid]
            .iter()
            .any(|a| !in_snapshot(a) && !a.runs.is_empty())
    }

    /// Reads the saved pages of every area of `pid` while it is frozen and
    /// hands them to the sink, for `stream` (the page stream of `pid`, as
    /// the image names it). Returns the pages written.
    pub(crate) fn write_pages(
        &self,
        pid: i32,
        which: PagesFrom,
        sink: &mut dyn ImageSink,
        stream: PageStream,
        opts: &crate::DumpOptions,
    ) -> Result<u64, DumpError> {
        let areas = &self.areas[&pid];
        match which {
            PagesFrom::Process => write_pages(pid, pid, areas, |_| true, sink, stream, opts),
            PagesFrom::NotInSnapshot => {
                write_pages(pid, pid, areas, |a| !in_snapshot(a), sink, stream, opts)
            }
            PagesFrom::Snapshot(child) => {
                write_pages(pid, child, areas, in_snapshot, sink, stream, opts)
            }
        }
    }

    /// Maps the areas of a process, but those in `kept` (which it keeps
    /// from its fork, see [`kept_on_fork`]), then settles the pages it
    /// shares with its `parent` (see [`settle`]). Its own pages follow.
    pub(crate) fn restore_forked(
        &mut self,
        p: &mut RestoreProcess<'_>,
        kept: &[(u64, u64)],
        parent: Option<&Stub>,
    ) -> Result<(), RestoreError> {
        let mm: &MemoryMap = p.image.need()?;
        let locks = p.image.records.get::<crstream_proto::FileLocks>();
        map_areas(
            p.stub,
            &mm.areas,
            kept,
            &mut self.shm_origin,
            p.objects,
            locks,
        )?;
        let copied = settle(p.stub, &mm.areas, kept, parent)?;
        if copied > 0 {
            tracing::debug!(
                pid = p.stub.pid,
                pages = copied,
                "copied the pages shared with the parent"
            );
        }
        Ok(())
    }
}

/// Shared anonymous memory seen by several processes is restored once (in
/// the first process that maps it) and mapped from there by the others:
/// its pages are saved once, where the first mapping covers them.
fn share_memory(order: &[i32], areas: &mut HashMap<i32, Vec<DumpArea>>) {
    let mut first: Vec<(u64, u64, u64)> = Vec::new(); // shmem id, pgoff, end offset
    for pid in order {
        let Some(list) = areas.get_mut(pid) else {
            continue;
        };
        for a in list.iter_mut().filter(|a| a.area.shmem_id != 0) {
            let (off, end) = (a.area.pgoff, a.area.pgoff + a.area.end - a.area.start);
            match first.iter().find(|f| f.0 == a.area.shmem_id) {
                Some(&(_, fo, fe)) if fo <= off && end <= fe => {
                    a.runs.clear();
                    a.area.has_pages = false;
                }
                Some(_) => {}
                None => first.push((a.area.shmem_id, off, end)),
            }
        }
    }
}

use crate::paths::{is_deleted, path, show, undeleted};

/// How the pages of an area are saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Save {
    /// Nothing (the file or the kernel has the contents).
    None,
    /// Anonymous pages of a private mapping: present or swapped, not the
    /// zero page, not page-cache pages of the mapped file.
    Private,
    /// Shared anonymous memory: every populated page.
    Shared,
}

/// An area to dump, with the page runs (start, bytes) found in it.
#[derive(Debug, Clone)]
struct DumpArea {
    pub area: VmArea,
    pub save: Save,
    pub readable: bool,
    pub runs: Vec<(u64, u64)>,
}

fn is_shared_anon_path(path: &[u8]) -> bool {
    path.starts_with(b"/dev/zero") || path.starts_with(b"/SYSV") || path == b"[anon_shmem]"
}

/// Decides, for every area of the target, how restore rebuilds it; refuses
/// the areas it cannot rebuild.
fn plan(
    pid: i32,
    maps: &[MapEntry],
    unlinked: &mut crate::unlinked::Collector,
    sysv: &mut crate::sysv::Collector,
    build_ids: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<Vec<DumpArea>, DumpError> {
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let refuse = |reason: String| DumpError::UnsupportedMapping {
            pid,
            start: m.start,
            end: m.end,
            path: show(&m.path).into_owned(),
            reason,
        };
        let mut a = VmArea {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            flags: if m.shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            } as u32,
            pgoff: m.pgoff,
            dev: libc::makedev(m.dev_major, m.dev_minor),
            inode: m.inode,
            ..Default::default()
        };
        let (flags, advice) = vm_flag_bits(m);
        a.flags |= flags;
        a.madvise |= advice;
        let segment = if m.shared {
            crate::sysv::segment_of(m)
        } else {
            None
        };
        if let Some(id) = segment {
            sysv.note(pid, id, m).map_err(refuse)?;
            a.sysv_shmid = Some(id);
        }
        let (kind, save) = match m.path.as_slice() {
            b"[vdso]" => (AreaKind::Vdso, Save::None),
            b"[vvar]" => (AreaKind::Vvar, Save::None),
            b"[vvar_vclock]" => (AreaKind::VvarVclock, Save::None),
            b"[vsyscall]" => (AreaKind::Vsyscall, Save::None),
            _ if is_device_mapping(m) => return Err(refuse(DEVICE_MAPPING.into())),
            b"[heap]" => (AreaKind::Heap, Save::Private),
            b"[stack]" => (AreaKind::Stack, Save::Private),
            p if p.is_empty() || p.starts_with(b"[anon:") => {
                if m.shared {
                    (AreaKind::Anon, Save::Shared)
                } else {
                    (AreaKind::Anon, Save::Private)
                }
            }
            p if is_shared_anon_path(p) && m.shared => (AreaKind::Anon, Save::Shared),
            p if p.starts_with(b"[") => {
                return Err(refuse(format!(
                    "special mapping {} is not supported",
                    show(p)
                )));
            }
            // The ring of an io_setup context: the aio kind rebuilds it.
            b"/[aio] (deleted)" => (AreaKind::Aio, Save::None),
            // memfd_secret: its pages are out of the kernel's reach (no
            // read of them from outside the process).
            b"/secretmem (deleted)" => {
                return Err(refuse(
                    "memfd_secret memory, whose pages nothing outside the process can read".into(),
                ));
            }
            p if is_deleted(p) => {
                // A memfd or deleted file: its contents are saved once for
                // the tree; private pages written since are saved here.
                let source = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                // Removed under this name but linked under another (glibc's
                // sem_open): a copy would not see the writes through the
                // others, nor they its; mapped by its handle again.
                if m.shared && std::fs::metadata(&source).is_ok_and(|md| md.nlink() > 0) {
                    let (handle_type, handle) =
                        crate::sys::fds::name_to_handle(&source).map_err(|e| {
                            refuse(format!(
                                "a shared mapping of {}, removed under that name but linked \
                                 under another, has no file handle: {e}",
                                show(p)
                            ))
                        })?;
                    a.handle = Some(crstream_proto::FileHandle {
                        handle_type,
                        handle,
                    });
                } else {
                    a.unlinked_file = unlinked.note(pid, &source, p).map_err(refuse)?;
                }
                a.path = undeleted(p).to_vec();
                (
                    AreaKind::File,
                    if m.shared { Save::None } else { Save::Private },
                )
            }
            // Kernel objects with no file to map again (io_uring's rings,
            // a perf buffer, a kvm vcpu, ...).
            p if p.starts_with(b"anon_inode:") => {
                return Err(refuse(format!(
                    "a mapping of {} (a kernel object, such as io_uring's rings) is not supported",
                    show(p)
                )));
            }
            p => {
                let md = std::fs::metadata(path(p))
                    .map_err(|e| refuse(format!("cannot stat the mapped file: {e}")))?;
                if md.ino() != m.inode || md.dev() != a.dev {
                    return Err(refuse(
                        "the path now names another file than the one mapped".into(),
                    ));
                }
                a.path = p.to_vec();
                a.file_size = md.size();
                // Only a regular file's contents are read for its build-id
                // (a device's reads could have effects).
                if !m.shared && md.is_file() {
                    identity::note(&mut a, &md, build_ids);
                }
                // Saved, to be made again if it is gone at restore.
                if m.shared && crate::unlinked::is_transient(p, &md) {
                    let source = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                    a.unlinked_file = unlinked.note_transient(pid, &source, p).map_err(refuse)?;
                }
                (
                    AreaKind::File,
                    if m.shared { Save::None } else { Save::Private },
                )
            }
        };
        if let Some(id) = segment {
            // Pages saved once, like shared anonymous memory (whose ids are
            // inode numbers of the same filesystem: keep them apart).
            a.shmem_id = 1 << 62 | id as u64;
        } else if kind == AreaKind::Anon && m.shared {
            a.flags |= libc::MAP_ANONYMOUS as u32;
            a.shmem_id = m.inode;
        } else if matches!(kind, AreaKind::Anon | AreaKind::Heap | AreaKind::Stack) {
            a.flags |= libc::MAP_ANONYMOUS as u32;
        }
        a.kind = kind as i32;
        a.pkey = m.pkey;
        out.push(DumpArea {
            area: a,
            save,
            readable: m.read,
            runs: Vec::new(),
        });
    }
    Ok(out)
}

/// Populated page runs and guard regions of [start, end) via
/// PAGEMAP_SCAN; `Err` with ENOTTY/EINVAL when the kernel lacks it.
pub(crate) fn scan_ioctl(
    pagemap: &File,
    start: u64,
    end: u64,
    save: Save,
) -> std::io::Result<Scanned> {
    let excluded = match save {
        Save::Private => PAGE_IS_PFNZERO | PAGE_IS_FILE,
        _ => PAGE_IS_PFNZERO,
    };
    pagemap_scan(pagemap, start, end, excluded)
}

/// Fallback: reads one 64-bit /proc/PID/pagemap entry per page. `zero`:
/// PFN ranges of zero pages, not saved.
fn scan_pagemap(
    pagemap: &File,
    start: u64,
    end: u64,
    save: Save,
    zero: &[(u64, u64)],
) -> std::io::Result<Scanned> {
    const PRESENT: u64 = PM_PRESENT;
    const SWAPPED: u64 = PM_SWAPPED;
    const FILE: u64 = PM_FILE;
    let is_zero = |e: u64| {
        let pfn = e & PM_PFN;
        pfn != 0 && zero.iter().any(|&(s, end)| (s..end).contains(&pfn))
    };
    let mut found = Scanned::default();
    let mut buf = vec![0u8; 8 * 4096];
    let mut addr = start;
    while addr < end {
        let pages = (((end - addr) / PAGE_SIZE as u64) as usize).min(4096);
        let b = &mut buf[..pages * 8];
        pagemap.read_exact_at(b, addr / PAGE_SIZE as u64 * 8)?;
        for e in b.chunks_exact(8) {
            let e = u64::from_le_bytes(e.try_into().unwrap());
            let runs = match e & PM_GUARD_REGION {
                0 => &mut found.pages,
                _ => &mut found.guards,
            };
            let keep = e & PM_GUARD_REGION != 0
                || match save {
                    Save::Private => {
                        (e & PRESENT != 0 && e & FILE == 0 && !is_zero(e)) || e & SWAPPED != 0
                    }
                    _ => e & (PRESENT | SWAPPED) != 0,
                };
            if keep {
                match runs.last_mut() {
                    Some(last) if last.0 + last.1 == addr => last.1 += PAGE_SIZE as u64,
                    _ => runs.push((addr, PAGE_SIZE as u64)),
                }
            }
            addr += PAGE_SIZE as u64;
        }
    }
    Ok(found)
}

/// The pages of the kernel shmem object a shared anonymous area (or a
/// System V segment) maps: every page the object holds, found with
/// SEEK_DATA/SEEK_HOLE on the object itself (through map_files), whether
/// or not this process has it mapped: a page written by a process that
/// has exited since is in no page table.
fn scan_shmem(pid: i32, a: &VmArea) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let page = PAGE_SIZE as u64;
    let f = File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", a.start, a.end))?;
    let (lo, hi) = (a.pgoff, a.pgoff + (a.end - a.start));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut at = lo;
    while at < hi {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(at)) {
            Ok(o) => o,
            // No data after `at`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= hi {
            break;
        }
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data))?.min(hi);
        let (s, e) = (data / page * page, hole.div_ceil(page) * page);
        runs.push((a.start + (s - lo), e.min(hi) - s));
        at = hole;
    }
    Ok(runs)
}

/// End of the address space [`scan_whole`] covers (47-bit user space);
/// an area above it is scanned on its own.
const SCAN_WHOLE_END: u64 = 0x7fff_ffff_f000;

/// The pages a private area saves (see [`Save::Private`]), found in the
/// whole address space at once: None when PAGEMAP_SCAN fails (each area is
/// then scanned on its own, with the fallback).
fn scan_whole(pid: i32) -> Option<Scanned> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).ok()?;
    scan_ioctl(&pagemap, 0, SCAN_WHOLE_END, Save::Private).ok()
}

/// The runs of `whole` (sorted, disjoint) within [start, end).
fn runs_within(whole: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let first = whole.partition_point(|&(s, len)| s + len <= start);
    whole[first..]
        .iter()
        .take_while(|&&(s, _)| s < end)
        .map(|&(s, len)| {
            let (a, b) = (s.max(start), (s + len).min(end));
            (a, b - a)
        })
        .collect()
}

/// /proc/`of`/pagemap, for the dump of `pid` (`of`: it, or its snapshot).
fn open_pagemap(pid: i32, of: i32) -> Result<File, DumpError> {
    let path = format!("/proc/{of}/pagemap");
    File::open(&path).map_err(|err| DumpError::Proc {
        pid,
        err: crate::error::ProcError::Io { path, err },
    })
}

/// Finds the pages to save in the areas of `pid` that `pick` selects, in
/// the page tables of `read_from` (itself, or its snapshot); `whole` is
/// [`scan_whole`] of `read_from`.
fn scan(
    pid: i32,
    read_from: i32,
    areas: &mut [DumpArea],
    whole: Option<&Scanned>,
    pick: impl Fn(&DumpArea) -> bool,
) -> Result<(), DumpError> {
    let pagemap = open_pagemap(pid, read_from)?;
    let mut use_ioctl = true;
    let mut zero: Option<Vec<(u64, u64)>> = None;
    for a in areas.iter_mut().filter(|a| pick(a)) {
        let (start, end) = (a.area.start, a.area.end);
        if a.save != Save::Private {
            // Guard regions in areas whose pages are not read here (shared
            // ones: kernel 6.15 and later allow them there).
            let guards = match whole.filter(|_| end <= SCAN_WHOLE_END) {
                Some(whole) => runs_within(&whole.guards, start, end),
                None if use_ioctl => scan_ioctl(&pagemap, start, end, a.save)
                    .map(|s| s.guards)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            a.area.guards = extents(&guards);
        }
        if a.save == Save::None {
            continue;
        }
        if a.save == Save::Shared {
            a.runs = scan_shmem(pid, &a.area).map_err(|err| DumpError::PageScan {
                pid,
                start,
                end,
                err,
            })?;
            a.area.has_pages = !a.runs.is_empty();
            continue;
        }
        let mut runs = None;
        if let Some(whole) = whole.filter(|_| end <= SCAN_WHOLE_END) {
            runs = Some(Scanned {
                pages: runs_within(&whole.pages, start, end),
                guards: runs_within(&whole.guards, start, end),
            });
        } else if use_ioctl {
            match scan_ioctl(&pagemap, start, end, a.save) {
                Ok(r) => runs = Some(r),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
                    tracing::info!(
                        pid,
                        "PAGEMAP_SCAN unavailable ({e}); reading pagemap entries"
                    );
                    use_ioctl = false;
                }
                Err(err) => {
                    return Err(DumpError::PageScan {
                        pid,
                        start,
                        end,
                        err,
                    });
                }
            }
        }
        let runs = match runs {
            Some(r) => r,
            None => {
                let zero = zero.get_or_insert_with(zero_page_pfns);
                scan_pagemap(&pagemap, start, end, a.save, zero).map_err(|err| {
                    DumpError::PageScan {
                        pid,
                        start,
                        end,
                        err,
                    }
                })?
            }
        };
        a.area.has_pages = !runs.pages.is_empty();
        a.runs = runs.pages;
        a.area.guards = extents(&runs.guards);
    }
    Ok(())
}

/// Runs (start, bytes) as the image keeps them.
fn extents(runs: &[(u64, u64)]) -> Vec<Extent> {
    (runs.iter())
        .map(|&(offset, len)| Extent { offset, len })
        .collect()
}

/// Which pages of a process to write, and where to read them.
#[derive(Clone, Copy)]
pub(crate) enum PagesFrom {
    /// All of them, from the frozen process.
    Process,
    /// Those a copy-on-write snapshot lacks, from the frozen process.
    NotInSnapshot,
    /// The rest, from the snapshot (`crate::snapshot`), this child.
    Snapshot(i32),
}

/// Whether a fork shares an area's pages copy-on-write, so that a child
/// forked at the freeze keeps them as they were: not MAP_SHARED memory
/// (the parent's writes reach it), not MADV_DONTFORK or MADV_WIPEONFORK
/// areas (the child lacks them, or sees them zeroed).
fn in_snapshot(a: &DumpArea) -> bool {
    a.area.flags as i32 & libc::MAP_SHARED == 0
        && a.area.madvise & (ADVICE_DONTFORK | ADVICE_WIPEONFORK) == 0
}

/// The page stream of a process: its id, and the PID it is declared with
/// (the process as the image names it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageStream {
    pub id: u32,
    pub pid: u32,
}

/// Reads the saved pages of the areas `pick` selects, from process
/// `read_from` (the frozen process `pid`, or its snapshot), and hands them
/// to the sink. Returns the pages written.
///
/// Long runs are read straight into the sink's frame buffers (no copy of
/// ours); short ones are gathered first, so that sparse memory takes one
/// process_vm_readv per many runs instead of one per run.
fn write_pages(
    pid: i32,
    read_from: i32,
    areas: &[DumpArea],
    pick: impl Fn(&DumpArea) -> bool,
    sink: &mut dyn ImageSink,
    page_stream: PageStream,
    opts: &crate::DumpOptions,
) -> Result<u64, DumpError> {
    let stream = page_stream.id;
    /// Runs at least this long are read in place.
    const DIRECT: usize = 64 << 10;
    let fail_at_memory = crate::failpoint::armed("memory");
    let mut reader = PageReader {
        pid: page_stream.pid,
        mem: RemoteMem::open(read_from, false)?,
        // process_vm_readv pins the pages it reads, and pinning a page a
        // snapshot shares copy-on-write makes the kernel copy it first (GUP
        // unsharing): a snapshot is read through /proc/PID/mem, which does
        // not.
        vm: read_from == pid,
        gathered: Vec::new(),
        buf: vec![0u8; PageReader::GATHER],
    };
    let mut pages = 0u64;
    for (idx, a) in areas.iter().enumerate().filter(|(_, a)| pick(a)) {
        let area = idx as u32;
        for &(start, len) in &a.runs {
            let len = len as usize;
            if len < DIRECT {
                reader.gather(a, area, start, len, sink, stream)?;
                continue;
            }
            reader.flush(a, area, sink, stream)?;
            let mut done = 0usize;
            while done < len {
                let addr = start + done as u64;
                let room = sink.page_room(stream, page_stream.pid, area, addr, len - done)?;
                reader.read(a, addr, room)?;
                done += room.len();
                opts.check_interrupt()?;
            }
        }
        reader.flush(a, area, sink, stream)?;
        if fail_at_memory && !a.runs.is_empty() {
            return Err(DumpError::TestFailure("memory".into()));
        }
        opts.check_interrupt()?;
        pages += a.runs.iter().map(|r| r.1 / PAGE_SIZE as u64).sum::<u64>();
    }
    Ok(pages)
}

/// Reads the pages of a process from `mem` (it, or its snapshot) for the
/// sink: short runs are gathered, so that sparse memory takes one
/// process_vm_readv per many runs instead of one per run.
struct PageReader {
    /// The process, as the image names it.
    pid: u32,
    mem: RemoteMem,
    /// process_vm_readv may be used (else /proc/PID/mem only).
    vm: bool,
    gathered: Vec<(u64, usize)>,
    buf: Vec<u8>,
}

impl PageReader {
    const GATHER: usize = 1 << 20;

    /// Adds a short run of area `a`; the gathered runs are written when
    /// the buffer is full, and by [`flush`](Self::flush).
    fn gather(
        &mut self,
        a: &DumpArea,
        area: u32,
        start: u64,
        len: usize,
        sink: &mut dyn ImageSink,
        stream: u32,
    ) -> Result<(), DumpError> {
        if self.gathered.iter().map(|r| r.1).sum::<usize>() + len > Self::GATHER {
            self.flush(a, area, sink, stream)?;
        }
        self.gathered.push((start, len));
        Ok(())
    }

    /// Reads the gathered runs of area `a` at once and hands them on.
    fn flush(
        &mut self,
        a: &DumpArea,
        area: u32,
        sink: &mut dyn ImageSink,
        stream: u32,
    ) -> Result<(), DumpError> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        let total: usize = self.gathered.iter().map(|r| r.1).sum();
        let got = if a.readable && self.vm {
            vm_readv(self.mem.pid, &self.gathered, &mut self.buf[..total]).unwrap_or(0)
        } else {
            0
        };
        let mut off = 0;
        for &(addr, len) in &self.gathered {
            if off + len > got {
                self.mem.read(addr, &mut self.buf[off..off + len])?;
            }
            sink.pages(stream, self.pid, area, addr, &self.buf[off..off + len])?;
            off += len;
        }
        self.gathered.clear();
        Ok(())
    }

    /// Reads `buf.len()` bytes at `addr`: process_vm_readv, or
    /// /proc/PID/mem for what it cannot read (protections; we are the
    /// tracer).
    fn read(&self, a: &DumpArea, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
        let got = if a.readable && self.vm {
            vm_readv(self.mem.pid, &[(addr, buf.len())], buf).unwrap_or(0)
        } else {
            0
        };
        if got < buf.len() {
            self.mem.read(addr + got as u64, &mut buf[got..])?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------

fn map_err(pid: i32, a: &VmArea, reason: String) -> RestoreError {
    RestoreError::Mapping {
        pid,
        start: a.start,
        end: a.end,
        path: show(&a.path).into_owned(),
        reason,
    }
}

/// Whether the area is rebuilt by mapping it (vs. moved kernel mappings).
pub(crate) fn is_mapped_area(a: &VmArea) -> bool {
    matches!(
        a.kind(),
        AreaKind::Anon | AreaKind::File | AreaKind::Heap | AreaKind::Stack
    )
}

/// Checks that the file of a file-backed area can be mapped again without
/// corrupting the process: it must exist and still cover every byte of the
/// file the mapping covered at the dump (a shorter file would give SIGBUS
/// or zeros where data was). A replaced file is logged when `warn`.
fn check_mapped_file(pid: i32, a: &VmArea, warn: bool) -> Result<std::fs::Metadata, RestoreError> {
    check_file_of_area(pid, a, path(&a.path), warn)
}

/// [`check_mapped_file`] of the file at `file` (the one the area will map).
fn check_file_of_area(
    pid: i32,
    a: &VmArea,
    file: &std::path::Path,
    warn: bool,
) -> Result<std::fs::Metadata, RestoreError> {
    let md = std::fs::metadata(file).map_err(|e| map_err(pid, a, format!("cannot stat: {e}")))?;
    let needed = (a.pgoff + (a.end - a.start)).min(a.file_size);
    if md.size() < needed {
        return Err(map_err(
            pid,
            a,
            format!(
                "the file shrank from {} to {} bytes since the dump; the mapping needs {needed}",
                a.file_size,
                md.size()
            ),
        ));
    }
    if warn && (md.ino() != a.inode || md.dev() != a.dev) {
        tracing::warn!(pid, path = %show(&a.path), "mapped file was replaced since the dump (other inode)");
    }
    Ok(md)
}

/// Before anything is created: refuses mapped files that changed in a way
/// that would corrupt the restored process (see `check_mapped_file`).
/// With `identity`, a privately mapped file must also be the same file
/// (`identity.rs`).
fn check_files(pid: i32, areas: &[VmArea], identity: bool) -> Result<(), RestoreError> {
    let mut seen = std::collections::HashSet::new();
    for a in areas
        .iter()
        .filter(|a| a.kind() == AreaKind::File && a.unlinked_file == 0 && a.handle.is_none())
    {
        let first = seen.insert(a.path.as_slice());
        let md = check_mapped_file(pid, a, first)?;
        if identity && first && a.flags as i32 & libc::MAP_PRIVATE != 0 {
            identity::check(pid, a, &md)?;
        }
    }
    Ok(())
}

/// Where restore created a shared anonymous object: the process, its area
/// and the object offset that area starts at.
#[derive(Debug, Clone, Copy)]
struct ShmemOrigin {
    /// As the processes of the tree see it (the stub opens the object
    /// through its own /proc, which in a new PID namespace shows only
    /// theirs).
    vpid: i32,
    start: u64,
    end: u64,
    pgoff: u64,
}

/// Maps every area at its address (an area `kept` from the fork is there
/// already). Areas that will receive pages but lack read/write permission
/// are mapped writable first; `finish` fixes them.
fn map_areas(
    stub: &Stub,
    areas: &[VmArea],
    kept: &[(u64, u64)],
    shm: &mut HashMap<u64, ShmemOrigin>,
    objects: &RestoreObjects<'_>,
    locks: Option<&crstream_proto::FileLocks>,
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    for a in areas.iter().filter(|a| is_mapped_area(a)) {
        let len = a.end - a.start;
        let mut prot = a.prot as i32;
        if a.has_pages {
            prot |= libc::PROT_READ | libc::PROT_WRITE;
        }
        if kept.contains(&(a.start, a.end)) {
            stub.call("mprotect", libc::SYS_mprotect, &[a.start, len, prot as u64])
                .map_err(|e| map_err(pid, a, format!("mprotect: {e}")))?;
        } else {
            match a.sysv_shmid {
                Some(id) => objects
                    .sysv
                    .attach(
                        stub,
                        id,
                        a.start,
                        shm_read_only(a, prot) && !a.has_pages,
                        prot & libc::PROT_EXEC != 0,
                    )
                    .map_err(|e| map_err(pid, a, e.to_string()))?,
                None => map_area(stub, a, prot, shm, objects.unlinked, locks)?,
            }
        }
        // Advice before the pages arrive: filling a MADV_NOHUGEPAGE area
        // must not allocate huge pages around sparse pages.
        for &(name, bit, advice) in ADVICE {
            if a.madvise & bit != 0 {
                stub.call("madvise", libc::SYS_madvise, &[a.start, len, advice as u64])
                    .map_err(|e| map_err(pid, a, format!("madvise ({name}): {e}")))?;
            }
        }
    }
    // Once every area is in place: an area with a guard region is marked so
    // ("gu"), and an area mapped next to it after would merge with it and
    // take the mark. No pages come to a guard region.
    for a in areas.iter().filter(|a| is_mapped_area(a)) {
        for g in &a.guards {
            stub.call(
                "madvise",
                libc::SYS_madvise,
                &[g.offset, g.len, MADV_GUARD_INSTALL],
            )
            .map_err(|e| map_err(pid, a, format!("madvise (guard region): {e}")))?;
        }
    }
    Ok(())
}

/// madvise advice (uapi asm-generic/mman-common.h, kernel 6.13).
const MADV_GUARD_INSTALL: u64 = 102;

/// Maps one area (not a System V attachment) at its address.
fn map_area(
    stub: &Stub,
    a: &VmArea,
    prot: i32,
    shm: &mut HashMap<u64, ShmemOrigin>,
    unlinked: &crate::unlinked::Recreator,
    locks: Option<&crstream_proto::FileLocks>,
) -> Result<(), RestoreError> {
    let pid = stub.pid;
    let len = a.end - a.start;
    let mut flags = (a.flags as i32
        & (libc::MAP_SHARED
            | libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_GROWSDOWN
            | libc::MAP_NORESERVE))
        | libc::MAP_FIXED;
    let mut fd: i64 = -1;
    let mut pgoff = a.pgoff;
    // Shared anonymous memory another process of the tree created:
    // map the same object, through that process's map_files entry.
    let origin = (a.shmem_id != 0)
        .then(|| shm.get(&a.shmem_id))
        .flatten()
        // Only within the range the origin's mapping covers (the dump
        // saved the pages once under the same condition).
        .filter(|o| o.pgoff <= a.pgoff && a.pgoff + len <= o.pgoff + (o.end - o.start));
    if let Some(o) = origin {
        flags &= !libc::MAP_ANONYMOUS;
        pgoff = a.pgoff - o.pgoff;
        let path = format!("/proc/{}/map_files/{:x}-{:x}", o.vpid, o.start, o.end);
        fd = stub
            .open(path.as_bytes(), libc::O_RDWR | libc::O_CLOEXEC, 0)
            .map_err(|e| map_err(pid, a, format!("open {path}: {e}")))?;
    } else if a.shmem_id != 0 {
        shm.entry(a.shmem_id).or_insert(ShmemOrigin {
            vpid: stub.vpid,
            start: a.start,
            end: a.end,
            pgoff: a.pgoff,
        });
    }
    if a.kind() == AreaKind::File {
        flags &= !libc::MAP_ANONYMOUS;
        let write_shared = a.flags as i32 & libc::MAP_SHARED != 0
            && (a.prot as i32 & libc::PROT_WRITE != 0 || a.madvise & SHARED_WRITABLE != 0);
        let oflags = if write_shared {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        } | libc::O_CLOEXEC;
        // Held until the stub has opened it through crstream's fd.
        let mut by_handle = None;
        let path = if let Some(h) = &a.handle {
            let fd = crate::fd::open_by_saved_handle(a.dev, a.inode, h, oflags)
                .map_err(|e| map_err(pid, a, format!("by its file handle: {e}")))?;
            let path = crate::stub::crstream_fd_path(std::os::fd::AsRawFd::as_raw_fd(&fd));
            by_handle = Some(fd);
            path.into_bytes()
        } else if a.unlinked_file != 0 {
            let at = unlinked.proc_path(a.unlinked_file, &crate::unlinked::FILE_KINDS)?;
            // A transient file found at its path: as any mapped file.
            if unlinked.kept(a.unlinked_file) {
                check_file_of_area(pid, a, std::path::Path::new(&at), true)?;
            }
            at.into_bytes()
        } else {
            check_mapped_file(pid, a, false)?;
            a.path.clone()
        };
        fd = stub
            .open(&path, oflags, 0)
            .map_err(|e| map_err(pid, a, format!("open: {e}")))?;
        drop(by_handle);
    }
    let r = stub.call(
        "mmap",
        libc::SYS_mmap,
        &[a.start, len, prot as u64, flags as u64, fd as u64, pgoff],
    );
    // A flock held through this mapping's file, on the file it maps now.
    let flocked = match r.is_ok() && fd >= 0 && a.kind() == AreaKind::File {
        true => crate::fd::locks::take_mapping_flocks(stub, locks, a.start, fd),
        false => Ok(()),
    };
    if fd >= 0 {
        stub.call("close", libc::SYS_close, &[fd as u64])?;
    }
    let got = r.map_err(|e| map_err(pid, a, e.to_string()))?;
    flocked.map_err(|e| map_err(pid, a, format!("taking its flock again: {e}")))?;
    if got as u64 != a.start {
        return Err(map_err(pid, a, format!("mmap returned {got:#x}")));
    }
    Ok(())
}

/// Whether an area has what records version 12 added and a reader of 11
/// would drop: mseal, a shared mapping read-only now that may be made
/// writable, a System V attachment read-only for good that has pages.
pub(crate) fn needs_records_12(processes: &[crate::kind::ProcessDump]) -> bool {
    processes
        .iter()
        .filter_map(|p| p.records.get::<MemoryMap>())
        .flat_map(|m| &m.areas)
        .any(|a| {
            a.madvise & SEALED != 0
                || a.handle.is_some()
                || (a.madvise & SHARED_WRITABLE != 0 && a.prot as i32 & libc::PROT_WRITE == 0)
                || (a.madvise & SHARED_READ_ONLY != 0 && a.sysv_shmid.is_some() && a.has_pages)
        })
}

/// Whether System V attachment `a` is read-only for good (SHM_RDONLY),
/// mapped with `prot` now (as the dump saw it, or by its protection in an
/// image without VmFlags).
fn shm_read_only(a: &VmArea, prot: i32) -> bool {
    if a.madvise & (SHARED_WRITABLE | SHARED_READ_ONLY) != 0 {
        a.madvise & SHARED_READ_ONLY != 0
    } else {
        prot & libc::PROT_WRITE == 0
    }
}

/// Final protections (and protection keys: `pkeys` allocated, as
/// `PrctlValues.pkeys` says).
pub(crate) fn finish(stub: &Stub, areas: &[VmArea], pkeys: u32) -> Result<(), RestoreError> {
    // (The keys of the areas too: a live dump may not have probed them.)
    let keyed = areas.iter().filter(|a| a.pkey != 0 && a.pkey < 32);
    let pkeys = keyed.fold(pkeys, |keys, a| keys | 1 << a.pkey);
    crate::kinds::pkeys::allocate(stub, pkeys)?;
    for a in areas.iter().filter(|a| is_mapped_area(a)) {
        let len = a.end - a.start;
        // A read-only attachment was attached writable for its pages: now
        // as it was (the segment keeps them).
        if let Some(id) = a.sysv_shmid
            && a.has_pages
            && a.madvise & SHARED_READ_ONLY != 0
        {
            crate::sysv::attach_at(
                stub,
                id,
                a.start,
                true,
                a.prot as i32 & libc::PROT_EXEC != 0,
            )
            .map_err(|e| map_err(stub.pid, a, e.to_string()))?;
        }
        if a.has_pages
            && a.prot as i32 & (libc::PROT_READ | libc::PROT_WRITE)
                != libc::PROT_READ | libc::PROT_WRITE
        {
            stub.call(
                "mprotect",
                libc::SYS_mprotect,
                &[a.start, len, a.prot as u64],
            )
            .map_err(|e| map_err(stub.pid, a, e.to_string()))?;
        }
        if a.pkey != 0 {
            crate::kinds::pkeys::protect(stub, a.start, len, a.prot, a.pkey)
                .map_err(|e| map_err(stub.pid, a, format!("protection key {}: {e}", a.pkey)))?;
        }
        if a.madvise & (LOCKED | LOCKED_ON_FAULT) != 0 {
            /// mlock2's flag: lock pages as they fault in.
            const MLOCK_ONFAULT: u64 = 1;
            let flags = if a.madvise & LOCKED_ON_FAULT != 0 {
                MLOCK_ONFAULT
            } else {
                0
            };
            stub.call("mlock2", libc::SYS_mlock2, &[a.start, len, flags])
                .map_err(|e| map_err(stub.pid, a, format!("mlock2: {e}")))?;
        }
        if a.madvise & SEALED != 0 {
            stub.call("mseal", SYS_MSEAL, &[a.start, len, 0])
                .map_err(|e| map_err(stub.pid, a, format!("mseal: {e}")))?;
        }
    }
    Ok(())
}

const SYS_MSEAL: libc::c_long = 462;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_within_clips_to_the_area() {
        let whole = [(0x1000, 0x3000), (0x6000, 0x1000), (0x9000, 0x4000)];
        assert_eq!(
            runs_within(&whole, 0x2000, 0xa000),
            vec![(0x2000, 0x2000), (0x6000, 0x1000), (0x9000, 0x1000)]
        );
        assert_eq!(runs_within(&whole, 0x4000, 0x6000), vec![]);
        assert_eq!(runs_within(&whole, 0, 0x10000), whole.to_vec());
        assert_eq!(runs_within(&[], 0, 0x10000), vec![]);
    }

    #[test]
    fn plan_and_scan_self() {
        let pid = std::process::id() as i32;
        // A private anonymous area with a few touched pages.
        let len = 64 * PAGE_SIZE;
        // SAFETY: fresh anonymous mapping, unmapped at the end.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p as isize, -1);
        // SAFETY: inside the mapping.
        unsafe {
            *p.add(3 * PAGE_SIZE) = 1;
            *p.add(4 * PAGE_SIZE) = 2;
            *p.add(10 * PAGE_SIZE) = 3;
            // A read fault maps the zero page, which is not saved.
            std::ptr::read_volatile(p.add(20 * PAGE_SIZE));
            // A guard region over a written page and an untouched one.
            let guard = p.add(30 * PAGE_SIZE);
            *guard = 4;
            let r = libc::madvise(guard.cast(), 2 * PAGE_SIZE, MADV_GUARD_INSTALL as i32);
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        }
        let maps = crate::proc::smaps(pid).unwrap();
        let mut areas = plan(
            pid,
            &maps,
            &mut Default::default(),
            &mut Default::default(),
            &mut Default::default(),
        )
        .unwrap();
        let mut each = areas.clone();
        scan(pid, pid, &mut each, None, |_| true).unwrap();
        scan(pid, pid, &mut areas, scan_whole(pid).as_ref(), |_| true).unwrap();
        // The whole address space scanned at once finds what each area
        // scanned on its own does (this test's own memory aside, which the
        // two scans themselves allocate in between).
        let base = p as u64;
        for (w, e) in areas.iter().zip(&each) {
            if w.area.start <= base && w.area.end >= base + len as u64 {
                assert_eq!(w.runs, e.runs, "area {:#x}", w.area.start);
                assert_eq!(w.area.guards, e.area.guards, "area {:#x}", w.area.start);
            }
        }
        let a = areas
            .iter()
            .find(|a| a.area.start <= base && a.area.end >= base + len as u64)
            .unwrap();
        let ours: Vec<_> = a
            .runs
            .iter()
            .filter(|r| r.0 >= base && r.0 < base + len as u64)
            .copied()
            .collect();
        assert_eq!(
            ours,
            vec![(base + 3 * 4096, 2 * 4096), (base + 10 * 4096, 4096)]
        );
        let guard = Extent {
            offset: base + 30 * 4096,
            len: 2 * 4096,
        };
        assert_eq!(a.area.guards, vec![guard]);
        // The pagemap fallback finds the same pages (root sees PFNs, so the
        // zero page is recognised and skipped).
        let pagemap = File::open(format!("/proc/{pid}/pagemap")).unwrap();
        let zero = zero_page_pfns();
        let fallback =
            scan_pagemap(&pagemap, base, base + len as u64, Save::Private, &zero).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(!zero.is_empty(), "zero page PFN not found");
            assert_eq!(fallback.pages, ours);
            assert_eq!(fallback.guards, vec![(guard.offset, guard.len)]);
        }
        assert!(
            areas
                .iter()
                .any(|a| a.area.kind() == AreaKind::Vdso && a.runs.is_empty())
        );
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }
}
