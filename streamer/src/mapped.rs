//! A local image file read through a shared, read-only mapping of it: a
//! frame's payload is a view of the page cache, not a copy. A restore then
//! copies each page once, from the page cache into the process (1 GiB: the
//! read(2) copy into a buffer was a sixth of the restore's CPU time).
//!
//! A view gives its pages' mappings back when dropped (the page cache keeps
//! them), so crstream's resident memory stays about the frames in flight.
//!
//! A read error or a truncation while mapped is a SIGBUS, not an error the
//! restore could report: crstream's images are written beside their name
//! and renamed into place, never rewritten in place, and files on network
//! or FUSE file systems (where pages can fail to come back) are read
//! instead.

use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// A whole file, mapped read-only.
pub struct Mapping {
    addr: *mut std::ffi::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until the last view is gone;
// its address is only read through shared slices.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `file`, read sequentially. `None` for an empty file (nothing to
    /// map) or a file that cannot be mapped: read it instead.
    pub fn of(file: &std::fs::File) -> Option<Arc<Self>> {
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 || on_remote_file_system(file) {
            return None;
        }
        use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap};
        // SAFETY: a fresh shared read-only mapping of a file we hold open;
        // nothing else is placed at its address.
        let addr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                file,
                0,
            )
        }
        .ok()?;
        // SAFETY: advice on the mapping just made. Failure only loses the
        // larger read-ahead.
        let _ = unsafe { madvise(addr, len, Advice::Sequential) };
        Some(Arc::new(Self { addr, len }))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` maps `len` readable bytes for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }

    /// `range` of the file as shared bytes that unmap its pages once the
    /// last reference is dropped. `range` must lie within the file.
    pub fn view(self: &Arc<Self>, range: Range<usize>) -> Bytes {
        assert!(range.start <= range.end && range.end <= self.len);
        Bytes::from_owner(View {
            map: self.clone(),
            range,
        })
    }
}

/// Whether `file` is on a network or FUSE file system (statfs f_type).
fn on_remote_file_system(file: &std::fs::File) -> bool {
    const REMOTE: [u64; 9] = [
        0x6969,      // NFS
        0x6573_5546, // FUSE
        0xff53_4d42, // CIFS
        0xfe53_4d42, // SMB2
        0x517b,      // SMB
        0x0102_1997, // 9p
        0x00c3_6400, // Ceph
        0x0bd0_0bd0, // Lustre
        0x4750_4653, // GPFS
    ];
    rustix::fs::fstatfs(file).map_or(true, |st| REMOTE.contains(&(st.f_type as u64)))
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every view holds an Arc, so none is left.
        let _ = unsafe { rustix::mm::munmap(self.addr, self.len) };
    }
}

/// A mapped file as ranged reads: each range a view, as the random-access
/// reader of a lazy restore asks for its frames.
pub struct MappedRange(pub Arc<Mapping>);

#[async_trait::async_trait]
impl crate::RangeRead for MappedRange {
    fn len(&self) -> u64 {
        self.0.len as u64
    }

    async fn read_range(&self, range: Range<u64>) -> std::io::Result<Bytes> {
        if range.start > range.end || range.end > self.0.len as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("range {range:?} past the end of a {}-byte file", self.0.len),
            ));
        }
        Ok(self.0.view(range.start as usize..range.end as usize))
    }
}

struct View {
    map: Arc<Mapping>,
    range: Range<usize>,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.range.clone()]
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // The pages under this view, rounded out: a neighbouring view that
        // shares an edge page faults it in again from the page cache.
        let page = rustix::param::page_size();
        let start = self.range.start / page * page;
        let end = self.range.end.div_ceil(page) * page;
        let end = end.min(self.map.len.div_ceil(page) * page);
        if end > start {
            // SAFETY: MADV_DONTNEED on part of a shared read-only file
            // mapping only drops page-table entries; reads fault them in
            // again with the same contents.
            let _ = unsafe {
                rustix::mm::madvise(
                    self.map.addr.cast::<u8>().add(start).cast(),
                    end - start,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn views_read_the_file_and_outlive_their_mapping_handle() {
        let mut f = tempfile_in_tmp();
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let map = Mapping::of(&f).expect("mapped");
        let a = map.view(10..5000);
        let b = map.view(4000..12388);
        drop(map);
        assert_eq!(&a[..], &data[10..5000]);
        drop(a);
        // b shares a page with a, whose drop gave that page's mapping back.
        assert_eq!(&b[..], &data[4000..12388]);
    }

    #[test]
    fn an_empty_file_is_not_mapped() {
        let f = tempfile_in_tmp();
        assert!(Mapping::of(&f).is_none());
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "crstream-mapped-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
