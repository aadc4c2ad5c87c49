//! Memory of other processes: process_vm_readv, and which pages are
//! populated (PAGEMAP_SCAN, /proc/PID/pagemap).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The page size, as the whole engine uses it.
const PAGE: u64 = crstream_streamer::PAGE_SIZE as u64;

/// Reads `runs` (address, length) of process `pid` into `buf`, one
/// process_vm_readv per at most 1024 runs. Returns the bytes read (fewer
/// than asked on a short read).
pub(crate) fn vm_readv(pid: i32, runs: &[(u64, usize)], buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0usize;
    let mut off = 0usize;
    for chunk in runs.chunks(1024) {
        let total: usize = chunk.iter().map(|r| r.1).sum();
        let dst = &mut buf[off..off + total];
        let local = libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: dst.len(),
        };
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(a, l)| libc::iovec {
                iov_base: a as *mut _,
                iov_len: l,
            })
            .collect();
        // SAFETY: the local iovec covers `dst`, which we borrow mutably;
        // the remote iovecs are addresses in the other process, checked by
        // the kernel.
        let n = unsafe {
            libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        done += n as usize;
        if n as usize != total {
            return Ok(done);
        }
        off += total;
    }
    Ok(done)
}

// PAGEMAP_SCAN (include/uapi/linux/fs.h).
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610; // _IOWR('f', 16, struct pm_scan_arg)
/// Page categories PAGEMAP_SCAN reports.
pub(crate) const PAGE_IS_FILE: u64 = 1 << 2;
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;
pub(crate) const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub(crate) const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// A guard region's marker (MADV_GUARD_INSTALL), which also reads as
/// swapped (kernel 6.14 and later name it).
const PAGE_IS_GUARD: u64 = 1 << 8;

/// PAGE_IS_GUARD where this kernel's PAGEMAP_SCAN knows it, else 0 (such a
/// kernel refuses the bit with EINVAL).
fn guard_category() -> u64 {
    static KNOWN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        let here = &KNOWN as *const _ as u64 & !(PAGE - 1);
        let mut region = [PageRegion::default()];
        File::open("/proc/self/pagemap")
            .and_then(|f| scan_call(&f, here, here + PAGE, 0, PAGE_IS_GUARD, &mut region, 1))
            .map_or(0, |_| PAGE_IS_GUARD)
    })
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// One PAGEMAP_SCAN of [start, end) for pages present or swapped and in
/// none of the categories `excluded`, into `regions` (which tell the
/// categories of `returned` apart), stopping after `max_pages` pages (0: no
/// limit): the regions filled, and where the walk ended.
fn scan_call(
    pagemap: &File,
    start: u64,
    end: u64,
    excluded: u64,
    returned: u64,
    regions: &mut [PageRegion],
    max_pages: u64,
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        max_pages,
        category_inverted: excluded,
        category_mask: excluded,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: returned,
        ..Default::default()
    };
    // SAFETY: arg and the regions outlive the call; the kernel writes at
    // most vec_len regions and arg.walk_end.
    let n = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN,
            &mut arg as *mut PmScanArg,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, arg.walk_end))
}

/// What a PAGEMAP_SCAN found: runs (start, bytes), sorted and disjoint.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    /// Pages present or swapped.
    pub pages: Vec<(u64, u64)>,
    /// Guard regions (MADV_GUARD_INSTALL): no pages, and a fault there is
    /// SIGSEGV.
    pub guards: Vec<(u64, u64)>,
}

/// The pages of [start, end) in the process of `pagemap` (its
/// /proc/PID/pagemap) that are present or swapped and in none of the
/// categories `excluded`, and its guard regions, with the PAGEMAP_SCAN
/// ioctl. Err with ENOTTY or EINVAL: the kernel lacks it.
pub(crate) fn pagemap_scan(
    pagemap: &File,
    start: u64,
    end: u64,
    excluded: u64,
) -> io::Result<Scanned> {
    let guard = guard_category();
    let returned = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | guard;
    let mut regions = vec![PageRegion::default(); 1024];
    let (mut pages, mut guards) = (Vec::new(), Vec::new());
    let mut at = start;
    while at < end {
        let (n, walk_end) = scan_call(pagemap, at, end, excluded, returned, &mut regions, 0)?;
        for r in &regions[..n] {
            match r.categories & guard {
                0 => pages.push((r.start, r.end)),
                _ => guards.push((r.start, r.end)),
            }
        }
        if walk_end <= at {
            break;
        }
        at = walk_end;
    }
    Ok(Scanned {
        pages: union(pages),
        guards: union(guards),
    })
}

/// Runs (start, bytes) covering the regions (start, end): where it skips
/// pages, kernel 6.18 may report regions beyond the walk_end it returns,
/// and the next call reports them again.
fn union(mut found: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    found.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (start, end) in found {
        match runs.last_mut() {
            Some(last) if start <= last.0 + last.1 => {
                last.1 = last.1.max(end - last.0);
            }
            _ => runs.push((start, end - start)),
        }
    }
    runs
}

/// Whether [start, end) of the process of `pagemap` has a page that is
/// present or swapped and in none of the categories `excluded`: a
/// PAGEMAP_SCAN that stops at the first one.
pub(crate) fn pagemap_has_page(
    pagemap: &File,
    start: u64,
    end: u64,
    excluded: u64,
) -> io::Result<bool> {
    let mut region = [PageRegion::default()];
    let excluded = excluded | guard_category();
    let returned = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
    let (n, _) = scan_call(pagemap, start, end, excluded, returned, &mut region, 1)?;
    Ok(n > 0)
}

/// A /proc/PID/pagemap entry: present, swapped, file-backed or shared, PFN.
pub(crate) const PM_PRESENT: u64 = 1 << 63;
pub(crate) const PM_SWAPPED: u64 = 1 << 62;
pub(crate) const PM_FILE: u64 = 1 << 61;
pub(crate) const PM_PFN: u64 = (1 << 55) - 1;
/// A guard region's marker (kernel 6.14 and later).
pub(crate) const PM_GUARD_REGION: u64 = 1 << 58;

/// Whether the page at `addr` of process `pid` is present (its pagemap
/// entry).
pub(crate) fn page_present(pid: i32, addr: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut e = [0u8; 8];
    File::open(format!("/proc/{pid}/pagemap"))?.read_exact_at(&mut e, addr / PAGE * 8)?;
    Ok(u64::from_le_bytes(e) & PM_PRESENT != 0)
}

/// PFN ranges of the shared zero page and, when transparent huge pages map
/// it, of the huge zero page: what a read fault on untouched anonymous
/// memory maps. Found by read-faulting fresh mappings of our own and
/// reading our own pagemap; empty when PFNs are hidden (without
/// CAP_SYS_ADMIN they read as 0).
pub(crate) fn zero_page_pfns() -> Vec<(u64, u64)> {
    const HPAGE: usize = 2 << 20;
    let Ok(pagemap) = File::open("/proc/self/pagemap") else {
        return Vec::new();
    };
    let pfn_of = |addr: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        pagemap.read_exact_at(&mut b, addr as u64 / PAGE * 8).ok()?;
        let e = u64::from_le_bytes(b);
        (e & PM_PRESENT != 0 && e & PM_PFN != 0).then_some(e & PM_PFN)
    };
    let mut out = Vec::new();
    for huge in [false, true] {
        let len = 2 * HPAGE;
        // SAFETY: a fresh private anonymous mapping, only read, unmapped
        // below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            continue;
        }
        let at = (p as usize).next_multiple_of(HPAGE);
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [at, at + HPAGE) lies inside the mapping; reading it
        // maps a zero page.
        let pfn = unsafe {
            libc::madvise(at as *mut libc::c_void, HPAGE, advice);
            std::ptr::read_volatile(at as *const u8);
            pfn_of(at)
        };
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(p, len) };
        let Some(pfn) = pfn else { continue };
        let n = if huge { HPAGE as u64 / PAGE } else { 1 };
        if !out.iter().any(|&(s, e)| (s..e).contains(&pfn)) {
            out.push((pfn, pfn + n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More regions than one PAGEMAP_SCAN call returns, among pages it
    /// must skip (a page written every MiB of 1 GiB, one only read, which
    /// maps the zero page, half a MiB further; kernel 6.18 then reports
    /// regions beyond the walk_end it returns): each written page is
    /// reported once, in order.
    #[test]
    fn pagemap_scan_reports_each_page_once() {
        const PAGE: usize = 4096;
        const MIB: usize = 1 << 20;
        let len = 1024 * MIB;
        // SAFETY: a fresh private mapping of our own, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        let mut touched = 0u64;
        // SAFETY: every address written lies inside the mapping.
        unsafe {
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            for at in (0..len).step_by(MIB) {
                std::ptr::write_volatile((base + at) as *mut u8, 1);
                touched += 1;
            }
            for at in (MIB / 2..len).step_by(MIB) {
                std::ptr::read_volatile((base + at) as *const u8);
            }
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let scanned = pagemap_scan(&pagemap, base as u64, (base + len) as u64, PAGE_IS_PFNZERO);
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(p, len) };
        let runs = match scanned {
            Ok(r) => r.pages,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => return,
            Err(e) => panic!("{e}"),
        };
        for w in runs.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "overlap or disorder: {w:x?}");
        }
        let pages: u64 = runs.iter().map(|r| r.1 / PAGE as u64).sum();
        assert_eq!(pages, touched);
    }
}
