//! Files with no name to reopen them by: memfds, and files deleted while
//! still open or mapped (python's multiprocessing semaphores are unlinked
//! `/dev/shm` files, mapped shared by every worker).
//!
//! Dump saves each such file once, by inode, with its whole contents (a blob
//! stream), whichever processes open or map it. Restore recreates it once
//! in crstream, writing the contents as the blob arrives; every fd and
//! mapping that named it then opens `/proc/<crstream>/fd/N`, so they share
//! one file again and writes through one are seen through the others.

mod make;

use crate::error::{DumpError, RestoreError};
use crstream_proto::{
    BlobInfo, Extent, OpenFile, StreamKind, UnlinkedFile, UnlinkedKind, record::Body,
};
use crstream_streamer::ImageSink;
use make::{
    SEALING_OFF, create_deleted, create_memfd, create_removed_node, create_tmpfile,
    open_or_make_transient, owner_or_times_differ, set_owner_and_times,
};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};

const MEMFD_PREFIX: &[u8] = b"/memfd:";
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

// ---------------------------------------------------------------- dump

struct Saved {
    meta: UnlinkedFile,
    /// Opened through /proc while the tree is frozen; read at the end.
    file: File,
    pid: i32,
}

/// The unlinked files of the tree being dumped, one per inode.
#[derive(Default)]
pub(crate) struct Collector {
    by_inode: HashMap<(u64, u64), usize>,
    saved: Vec<Saved>,
}

impl Collector {
    /// Notes the unlinked file that `source` (a `/proc/PID/fd/N` or
    /// `/proc/PID/map_files/A-B` path) opens, whose link reads `link`, and
    /// returns its id. Err: why it cannot be saved.
    pub(crate) fn note(&mut self, pid: i32, source: &str, link: &[u8]) -> Result<u64, String> {
        self.note_as(pid, source, link, false)
    }

    /// Notes the transient file (see [`is_transient`]) that `source` (a
    /// `/proc/PID/map_files/A-B` path) maps, at `path`, and returns its id.
    pub(crate) fn note_transient(
        &mut self,
        pid: i32,
        source: &str,
        path: &[u8],
    ) -> Result<u64, String> {
        self.note_as(pid, source, path, true)
    }

    fn note_as(
        &mut self,
        pid: i32,
        source: &str,
        link: &[u8],
        transient: bool,
    ) -> Result<u64, String> {
        // The magic link leads to the object itself (a symlink too, not
        // what it points to); O_PATH opens any of them without side effects
        // (a FIFO would wait for a writer).
        let md = std::fs::metadata(source).map_err(|e| format!("stat of {source}: {e}"))?;
        if let Some(&i) = self.by_inode.get(&(md.dev(), md.ino())) {
            return Ok(self.saved[i].meta.id);
        }
        let ft = md.file_type();
        let name = crate::paths::undeleted(link);
        let (kind, path) = if transient {
            (UnlinkedKind::Transient, link)
        } else if ft.is_file() {
            match name.strip_prefix(MEMFD_PREFIX) {
                Some(n) => (UnlinkedKind::Memfd, n),
                None => (UnlinkedKind::Deleted, name),
            }
        } else if ft.is_dir() {
            (UnlinkedKind::Directory, name)
        } else if ft.is_symlink() {
            (UnlinkedKind::Symlink, name)
        } else if ft.is_fifo() {
            (UnlinkedKind::Fifo, name)
        } else {
            return Err("a removed socket or device file: cannot be made again".into());
        };
        let file = if ft.is_file() {
            File::open(source)
        } else {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(source)
        }
        .map_err(|e| format!("opening {source}: {e}"))?;
        let target = if kind == UnlinkedKind::Symlink {
            rustix::fs::readlinkat(&file, "", Vec::new())
                .map_err(|e| format!("reading the symlink: {e}"))?
                .into_bytes()
        } else {
            Vec::new()
        };
        if rustix::fs::fstatfs(&file).is_ok_and(|s| s.f_type == HUGETLBFS_MAGIC) {
            return Err(
                "huge pages of hugetlbfs (mmap MAP_HUGETLB, memfd MFD_HUGETLB, a hugetlbfs file) \
                 are not supported"
                    .into(),
            );
        }
        let seals = if kind == UnlinkedKind::Memfd {
            rustix::fs::fcntl_get_seals(&file).map_or(0, |s| s.bits())
        } else {
            0
        };
        let data = if ft.is_file() {
            data_extents(&file, md.size()).map_err(|e| format!("finding its data: {e}"))?
        } else {
            Vec::new()
        };
        // A transient file's directory, made again with it if gone too.
        let dir = match transient {
            true => Some(
                std::fs::metadata(
                    crate::paths::path(path)
                        .parent()
                        .unwrap_or(std::path::Path::new("/")),
                )
                .map_err(|e| format!("stat of its directory: {e}"))?,
            ),
            false => None,
        };
        let id = self.saved.len() as u64 + 1;
        self.by_inode.insert((md.dev(), md.ino()), self.saved.len());
        self.saved.push(Saved {
            meta: UnlinkedFile {
                id,
                kind: kind as i32,
                path: path.to_vec(),
                size: if ft.is_file() { md.size() } else { 0 },
                mode: md.mode() & 0o7777,
                seals,
                contents_stream: 0,
                dev: md.dev(),
                inode: md.ino(),
                sparse: true,
                data,
                uid: md.uid(),
                gid: md.gid(),
                atime_ns: md.atime() * 1_000_000_000 + md.atime_nsec(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                target,
                tmpfile_flags: 0,
                dir_mode: dir.as_ref().map_or(0, |d| d.mode() & 0o7777),
                dir_uid: dir.as_ref().map_or(0, |d| d.uid()),
                dir_gid: dir.as_ref().map_or(0, |d| d.gid()),
            },
            file,
            pid,
        });
        Ok(id)
    }

    /// Whether a transient file is saved: what makes the image version 15.
    pub(crate) fn has_transient(&self) -> bool {
        self.saved
            .iter()
            .any(|s| s.meta.kind() == UnlinkedKind::Transient)
    }

    /// Notes that file `id` was made with O_TMPFILE by an open file
    /// description with `open_flags`.
    pub(crate) fn made_by_tmpfile(&mut self, id: u64, open_flags: u32) {
        if let Some(s) = self.saved.iter_mut().find(|s| s.meta.id == id) {
            s.meta.tmpfile_flags = open_flags;
        }
    }

    /// Declares a blob stream for each file and writes its record, in
    /// stream 0 (before any process record names it).
    pub(crate) fn write_records(&mut self, sink: &mut dyn ImageSink) -> Result<(), DumpError> {
        for s in &mut self.saved {
            let what = describe(&s.meta);
            if !has_contents(&s.meta) {
                sink.record(0, Body::UnlinkedFile(s.meta.clone()))?;
                continue;
            }
            s.meta.contents_stream = sink.declare(StreamKind::Blob, 0, 0, &what)?;
            sink.record(0, Body::UnlinkedFile(s.meta.clone()))?;
            sink.record(
                0,
                Body::BlobInfo(BlobInfo {
                    stream_id: s.meta.contents_stream,
                    size: blob_len(&s.meta),
                    what: format!("contents of {what}"),
                }),
            )?;
        }
        Ok(())
    }

    /// Streams the data of every file (its holes left out) into its blob
    /// stream.
    pub(crate) fn write_contents(&self, sink: &mut dyn ImageSink) -> Result<(), DumpError> {
        let mut buf = vec![0u8; 1 << 20];
        for s in &self.saved {
            let err = |err| DumpError::UnlinkedContents {
                pid: s.pid,
                what: describe(&s.meta),
                err,
            };
            for e in &s.meta.data {
                let mut at = e.offset;
                let end = e.offset + e.len;
                while at < end {
                    let want = buf.len().min((end - at) as usize);
                    let n = s.file.read_at(&mut buf[..want], at).map_err(err)?;
                    if n == 0 {
                        return Err(err(std::io::Error::other(format!(
                            "the file shrank below {at} bytes during the dump"
                        ))));
                    }
                    sink.blob(s.meta.contents_stream, &buf[..n])?;
                    at += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// The ranges of `file` that hold data (SEEK_DATA/SEEK_HOLE): a large
/// memfd is often mostly holes, which must not fill the image or, at
/// restore, memory.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<Extent>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut at = 0u64;
    // lseek on our own fd: reads use pread, not the offset.
    while at < size {
        let start = match seek(file, SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => return Ok(out),
            // No hole support: all of it.
            Err(rustix::io::Errno::INVAL) => {
                return Ok(vec![Extent {
                    offset: 0,
                    len: size,
                }]);
            }
            Err(e) => return Err(e.into()),
        };
        let end = seek(file, SeekFrom::Hole(start))?.min(size);
        if end > start {
            out.push(Extent {
                offset: start,
                len: end - start,
            });
        }
        at = end;
    }
    Ok(out)
}

/// Bytes of the blob of `u`: its data extents, or all of it.
fn blob_len(u: &UnlinkedFile) -> u64 {
    if u.sparse {
        u.data.iter().map(|e| e.len).sum()
    } else {
        u.size
    }
}

/// Where blob byte `n` of `u` goes in the file, and how many bytes from
/// there are contiguous in the blob.
fn file_position(u: &UnlinkedFile, n: u64) -> (u64, u64) {
    if !u.sparse {
        return (n, u.size - n);
    }
    let mut skipped = 0;
    for e in &u.data {
        if n < skipped + e.len {
            return (e.offset + (n - skipped), e.len - (n - skipped));
        }
        skipped += e.len;
    }
    (u.size, 0)
}

/// Memfds and deleted regular files carry bytes; removed directories,
/// symlinks and FIFOs (whose bytes go with the pipe) none.
fn has_contents(u: &UnlinkedFile) -> bool {
    matches!(
        u.kind(),
        UnlinkedKind::Memfd | UnlinkedKind::Deleted | UnlinkedKind::Transient
    )
}

/// Files of a temporary file system that a process maps shared are saved
/// with their contents up to this size: a JVM's hsperfdata file (32 KiB),
/// POSIX shared memory objects. Larger ones must be there at restore.
const TRANSIENT_MAX: u64 = 64 << 20;
pub(super) const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Whether the regular file at `path` (metadata `md`), mapped shared, is
/// transient: on a tmpfs (memory: gone after a reboot, absent on another
/// machine) or under /tmp (where a JVM makes its hsperfdata file, which it
/// removes when it exits), and small enough to save.
pub(crate) fn is_transient(path: &[u8], md: &std::fs::Metadata) -> bool {
    md.is_file()
        && md.size() <= TRANSIENT_MAX
        && (path.starts_with(b"/tmp/")
            || rustix::fs::statfs(crate::paths::path(path)).is_ok_and(|s| s.f_type == TMPFS_MAGIC))
}

fn describe(u: &UnlinkedFile) -> String {
    let path = crate::paths::show(&u.path);
    match u.kind() {
        UnlinkedKind::Memfd => format!("memfd:{path}"),
        UnlinkedKind::Directory => format!("removed directory {path}"),
        UnlinkedKind::Symlink => format!("removed symlink {path}"),
        UnlinkedKind::Fifo => format!("removed FIFO {path}"),
        UnlinkedKind::Transient => format!("temporary file {path}"),
        _ => format!("deleted file {path}"),
    }
}

// ---------------------------------------------------------------- restore

struct Recreated {
    meta: UnlinkedFile,
    file: File,
    /// A file made with O_TMPFILE: the description that made it, once
    /// `file` is held read-only.
    made_by: Option<File>,
    written: u64,
    /// A transient file found at its path: used as it is (the saved
    /// contents, owner and times are not applied).
    kept: bool,
}

/// The unlinked files of an image being restored, recreated in crstream.
/// Dropping it closes them: by then every process that uses one holds it.
#[derive(Default)]
pub(crate) struct Recreator {
    by_id: HashMap<u64, Recreated>,
    by_stream: HashMap<u32, u64>,
    /// Memfds whose own open file description was handed to a process.
    handed: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// Transient files (and directories) made at their paths, removed
    /// again if the restore fails ([`commit`](Self::commit): it did not).
    made: std::sync::Mutex<Vec<make::Made>>,
}

impl Drop for Recreator {
    fn drop(&mut self) {
        for made in self.made.get_mut().unwrap().drain(..) {
            let _ = std::fs::remove_file(&made.file);
            if let Some(dir) = made.dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl Recreator {
    /// Creates the file of record `u` (still empty).
    pub(crate) fn add(&mut self, u: UnlinkedFile) -> Result<(), RestoreError> {
        let err = |reason: String| RestoreError::Recreate {
            what: describe(&u),
            reason,
        };
        if u.id == 0 || self.by_id.contains_key(&u.id) {
            return Err(RestoreError::Image(format!(
                "UnlinkedFile id {} is zero or used twice",
                u.id
            )));
        }
        let mut end = 0;
        for e in &u.data {
            if e.offset < end || e.offset.checked_add(e.len).is_none_or(|x| x > u.size) {
                return Err(RestoreError::Image(format!(
                    "{}: data range {}+{} out of order or beyond its {} bytes",
                    describe(&u),
                    e.offset,
                    e.len,
                    u.size
                )));
            }
            end = e.offset + e.len;
        }
        if !has_contents(&u) && (u.size != 0 || !u.data.is_empty() || u.contents_stream != 0) {
            return Err(RestoreError::Image(format!(
                "{}: contents announced for an object without any",
                describe(&u)
            )));
        }
        let mut kept = false;
        let file = match u.kind() {
            UnlinkedKind::Memfd => create_memfd(&u),
            UnlinkedKind::Deleted if u.tmpfile_flags != 0 => create_tmpfile(&u),
            UnlinkedKind::Deleted => create_deleted(&u),
            UnlinkedKind::Directory | UnlinkedKind::Symlink | UnlinkedKind::Fifo => {
                create_removed_node(&u)
            }
            UnlinkedKind::Transient => open_or_make_transient(&u).map(|(file, made)| {
                match made {
                    Some(made) => {
                        tracing::info!(
                            path = %crate::paths::show(&u.path),
                            "a mapped temporary file was gone: made again from the image"
                        );
                        self.made.lock().unwrap().push(made);
                    }
                    None => kept = true,
                }
                file
            }),
            UnlinkedKind::Unknown => Err(std::io::Error::other("unknown kind")),
        }
        .map_err(|e| err(e.to_string()))?;
        if u.contents_stream != 0 {
            self.by_stream.insert(u.contents_stream, u.id);
        }
        self.by_id.insert(
            u.id,
            Recreated {
                meta: u,
                file,
                made_by: None,
                written: 0,
                kept,
            },
        );
        Ok(())
    }

    /// Whether blob stream `stream` holds the contents of one of the files.
    pub(crate) fn takes(&self, stream: u32) -> bool {
        self.by_stream.contains_key(&stream)
    }

    /// Writes the next bytes of blob stream `stream` where they belong.
    pub(crate) fn write(&mut self, stream: u32, mut data: &[u8]) -> Result<(), RestoreError> {
        let Some(r) = self
            .by_stream
            .get(&stream)
            .and_then(|id| self.by_id.get_mut(id))
        else {
            return Ok(());
        };
        let what = describe(&r.meta);
        if r.written + data.len() as u64 > blob_len(&r.meta) {
            return Err(RestoreError::Image(format!(
                "the contents of {what} exceed the {} bytes announced",
                blob_len(&r.meta)
            )));
        }
        if r.kept {
            // The file found at its path holds what the process maps now.
            r.written += data.len() as u64;
            return Ok(());
        }
        while !data.is_empty() {
            let (at, room) = file_position(&r.meta, r.written);
            let n = data.len().min(room as usize);
            if n == 0 {
                return Err(RestoreError::Image(format!(
                    "{what}: blob beyond its data ranges"
                )));
            }
            r.file
                .write_all_at(&data[..n], at)
                .map_err(|e| RestoreError::Recreate {
                    what: what.clone(),
                    reason: format!("writing its contents: {e}"),
                })?;
            r.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Turns a deleted fd of an image written before `UnlinkedFile` existed
    /// (contents in a blob named by the fd) into one of these files.
    pub(crate) fn adopt_legacy(
        &mut self,
        f: &mut OpenFile,
        data: &[u8],
    ) -> Result<(), RestoreError> {
        let id = (1 << 63) | f.contents_stream as u64;
        if !self.by_id.contains_key(&id) {
            self.add(UnlinkedFile {
                id,
                kind: UnlinkedKind::Deleted as i32,
                path: f.path.clone(),
                size: f.size,
                mode: f.mode & 0o7777,
                ..Default::default()
            })?;
            let r = self.by_id.get_mut(&id).expect("just added");
            r.file
                .write_all_at(data, 0)
                .map_err(|e| RestoreError::Recreate {
                    what: describe(&r.meta),
                    reason: format!("writing its contents: {e}"),
                })?;
            r.written = data.len() as u64;
        }
        f.unlinked_file = id;
        Ok(())
    }

    /// After the metadata: every file got all its bytes. Then each gets its
    /// saved owner, mode and times, before any process opens or watches
    /// it (an inotify watch would see the change).
    ///
    /// Deleted files are then held read-only: a writer would keep the
    /// kernel from taking one as a process's executable again
    /// (PR_SET_MM_MAP), and the processes reopen them through /proc with
    /// the access they had.
    pub(crate) fn check_complete(&mut self) -> Result<(), RestoreError> {
        for r in self.by_id.values_mut() {
            if r.written != blob_len(&r.meta) {
                return Err(RestoreError::Image(format!(
                    "the image holds {} of the {} bytes of {}",
                    r.written,
                    blob_len(&r.meta),
                    describe(&r.meta)
                )));
            }
            if r.meta.kind() == UnlinkedKind::Deleted {
                let read_only = File::open(format!("/proc/self/fd/{}", r.file.as_raw_fd()))
                    .map_err(|e| RestoreError::Recreate {
                        what: describe(&r.meta),
                        reason: format!("reopening it read-only: {e}"),
                    })?;
                let made_by = std::mem::replace(&mut r.file, read_only);
                if r.meta.tmpfile_flags != 0 {
                    r.made_by = Some(made_by);
                }
            }
        }
        self.set_owners_and_times(false)
    }

    fn set_owners_and_times(&self, only_changed: bool) -> Result<(), RestoreError> {
        for r in self.by_id.values().filter(|r| !r.kept) {
            if only_changed && !owner_or_times_differ(&r.file, &r.meta) {
                continue;
            }
            set_owner_and_times(&r.file, &r.meta).map_err(|e| RestoreError::Recreate {
                what: describe(&r.meta),
                reason: format!("setting its owner and times: {e}"),
            })?;
        }
        Ok(())
    }

    /// The first time for file `id`, for an open file description with
    /// `open_flags`: a new fd for the description that made the file, if
    /// it is the one that made it. For a memfd (any read-write fd): like
    /// the original memfd_create fd, it does not count as a writer of the
    /// file, which matters for a memfd the process runs (the kernel takes
    /// it as its executable only while no writer exists, and then refuses
    /// new ones). For a file made with O_TMPFILE (the fd with its flags):
    /// O_TMPFILE stays in its flags. Other fds of it reopen `proc_path`.
    pub(crate) fn take_own_description(
        &self,
        id: u64,
        open_flags: u32,
    ) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        let Some(r) = self.by_id.get(&id) else {
            return Ok(None);
        };
        let own = match r.meta.kind() {
            UnlinkedKind::Memfd if open_flags as i32 & libc::O_ACCMODE == libc::O_RDWR => {
                Some(&r.file)
            }
            UnlinkedKind::Deleted if r.meta.tmpfile_flags == open_flags => r.made_by.as_ref(),
            _ => None,
        };
        let Some(own) = own else {
            return Ok(None);
        };
        if !self.handed.lock().unwrap().insert(id) {
            return Ok(None);
        }
        Ok(Some(rustix::io::fcntl_dupfd_cloexec(own, 0)?))
    }

    /// The tree runs: the transient files made for it stay.
    pub(crate) fn commit(&self) {
        self.made.lock().unwrap().clear();
    }

    /// Whether file `id` is a transient file found at its path (mapped as
    /// any file there: it must still cover the mapping).
    pub(crate) fn kept(&self, id: u64) -> bool {
        self.by_id.get(&id).is_some_and(|r| r.kept)
    }

    /// A path the restored process opens to get file `id`, which must be
    /// of one of the kinds `want` (a damaged image could name a FIFO where
    /// a file is opened, which would block).
    pub(crate) fn proc_path(&self, id: u64, want: &[UnlinkedKind]) -> Result<String, RestoreError> {
        let r = self
            .by_id
            .get(&id)
            .ok_or_else(|| RestoreError::Image(format!("no UnlinkedFile record with id {id}")))?;
        if !want.contains(&r.meta.kind()) {
            return Err(RestoreError::Image(format!(
                "UnlinkedFile {id} ({}) is named where one of {want:?} is expected",
                describe(&r.meta)
            )));
        }
        Ok(crate::stub::crstream_fd_path(r.file.as_raw_fd()))
    }

    /// Gives each file its seals (and its times again where a mapping moved
    /// them), once every process has opened and mapped the files (a write
    /// seal refuses writable shared mappings made after it, which the
    /// processes made before it).
    pub(crate) fn seal(&self) -> Result<(), RestoreError> {
        // Mapping a file may have moved its access time.
        self.set_owners_and_times(true)?;
        for r in self.by_id.values() {
            let seals = r.meta.seals;
            if r.meta.kind() != UnlinkedKind::Memfd || seals == 0 || seals == SEALING_OFF {
                continue;
            }
            rustix::fs::fcntl_add_seals(&r.file, rustix::fs::SealFlags::from_bits_retain(seals))
                .map_err(|e| RestoreError::Recreate {
                    what: describe(&r.meta),
                    reason: format!("adding seals {seals:#x}: {e}"),
                })?;
        }
        Ok(())
    }
}

/// Every kind: for a caller that takes any (a watch, a mark).
pub(crate) const ANY_KIND: [UnlinkedKind; 6] = [
    UnlinkedKind::Deleted,
    UnlinkedKind::Memfd,
    UnlinkedKind::Directory,
    UnlinkedKind::Symlink,
    UnlinkedKind::Fifo,
    UnlinkedKind::Transient,
];
/// Files with contents: memfds, deleted regular files, transient files.
pub(crate) const FILE_KINDS: [UnlinkedKind; 3] = [
    UnlinkedKind::Deleted,
    UnlinkedKind::Memfd,
    UnlinkedKind::Transient,
];

/// Reads a whole file, for tests.
#[cfg(test)]
fn read_all(path: &str) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    #[test]
    fn memfd_round_trip_keeps_contents_mode_and_seals() {
        let mut r = Recreator::default();
        r.add(UnlinkedFile {
            id: 7,
            kind: UnlinkedKind::Memfd as i32,
            path: "state".into(),
            size: 5,
            mode: 0o640,
            seals: (libc::F_SEAL_GROW | libc::F_SEAL_SHRINK) as u32,
            contents_stream: 3,
            ..Default::default()
        })
        .unwrap();
        assert!(r.takes(3));
        r.write(3, b"hel").unwrap();
        assert!(r.check_complete().is_err(), "3 of 5 bytes is incomplete");
        r.write(3, b"lo").unwrap();
        assert!(r.write(3, b"!").is_err(), "more than announced");
        r.check_complete().unwrap();
        r.seal().unwrap();
        let path = r.proc_path(7, &ANY_KIND).unwrap();
        assert_eq!(read_all(&path), b"hello");
        assert!(
            std::fs::read_link(&path)
                .unwrap()
                .to_string_lossy()
                .starts_with("/memfd:state")
        );
        let f = File::open(&path).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o640);
        let seals = rustix::fs::fcntl_get_seals(&f).unwrap().bits() as i32;
        assert_eq!(seals, libc::F_SEAL_GROW | libc::F_SEAL_SHRINK);
    }

    #[test]
    fn sparse_memfd_saves_only_its_data_and_comes_back_with_its_holes() {
        let f = File::from(
            rustix::fs::memfd_create("sparse", rustix::fs::MemfdFlags::empty()).unwrap(),
        );
        f.set_len(1 << 20).unwrap();
        f.write_all_at(b"ab", 0).unwrap();
        f.write_all_at(b"cde", 8192).unwrap();
        let data = data_extents(&f, 1 << 20).unwrap();
        let ranges: Vec<(u64, u64)> = data.iter().map(|e| (e.offset, e.len)).collect();
        // tmpfs reports data by page.
        assert_eq!(ranges, vec![(0, 4096), (8192, 4096)]);

        let mut r = Recreator::default();
        r.add(UnlinkedFile {
            id: 1,
            kind: UnlinkedKind::Memfd as i32,
            path: "sparse".into(),
            size: 1 << 20,
            mode: 0o600,
            contents_stream: 4,
            sparse: true,
            data: vec![
                Extent { offset: 0, len: 2 },
                Extent {
                    offset: 8192,
                    len: 3,
                },
            ],
            ..Default::default()
        })
        .unwrap();
        r.write(4, b"abc").unwrap();
        r.write(4, b"de").unwrap();
        r.check_complete().unwrap();
        let got = read_all(&r.proc_path(1, &ANY_KIND).unwrap());
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(&got[..2], b"ab");
        assert_eq!(&got[8192..8195], b"cde");
        assert!(got[2..8192].iter().chain(&got[8195..]).all(|&b| b == 0));
        // Ranges that overlap or leave the file are refused.
        let bad = UnlinkedFile {
            id: 2,
            kind: UnlinkedKind::Memfd as i32,
            size: 10,
            sparse: true,
            data: vec![Extent { offset: 8, len: 5 }],
            ..Default::default()
        };
        assert!(r.add(bad).is_err());
    }

    #[test]
    fn removed_directory_symlink_and_fifo_round_trip_with_mode_owner_and_target() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o751)).unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("somewhere", &l).unwrap();
        let f = dir.path().join("f");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &f,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        let open = |p: &Path, flags| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(p)
                .unwrap()
        };
        let held = [
            open(&d, libc::O_DIRECTORY),
            open(&l, libc::O_PATH | libc::O_NOFOLLOW),
            open(&f, libc::O_PATH),
        ];
        std::fs::remove_dir(&d).unwrap();
        std::fs::remove_file(&l).unwrap();
        std::fs::remove_file(&f).unwrap();
        let mut c = Collector::default();
        let pid = std::process::id() as i32;
        let ids: Vec<u64> = held
            .iter()
            .map(|h| {
                let source = format!("/proc/self/fd/{}", h.as_raw_fd());
                let link = std::fs::read_link(&source).unwrap();
                c.note(pid, &source, link.as_os_str().as_encoded_bytes())
                    .unwrap()
            })
            .collect();
        let metas: Vec<UnlinkedFile> = c.saved.iter().map(|s| s.meta.clone()).collect();
        assert_eq!(
            metas.iter().map(|m| m.kind()).collect::<Vec<_>>(),
            [
                UnlinkedKind::Directory,
                UnlinkedKind::Symlink,
                UnlinkedKind::Fifo
            ]
        );
        assert_eq!(metas[1].target, b"somewhere");
        assert!(metas.iter().all(|m| !has_contents(m) && blob_len(m) == 0));
        let mut r = Recreator::default();
        for m in metas {
            r.add(m).unwrap();
        }
        r.check_complete().unwrap();
        r.seal().unwrap();
        assert!(
            !d.exists() && !l.exists() && !f.exists(),
            "removed again at once"
        );
        let made: Vec<std::fs::Metadata> = ids
            .iter()
            .map(|&id| std::fs::metadata(r.proc_path(id, &ANY_KIND).unwrap()).unwrap())
            .collect();
        assert!(made[0].is_dir() && made[0].nlink() == 0);
        assert_eq!(made[0].mode() & 0o7777, 0o751);
        assert!(made[1].file_type().is_symlink());
        assert_eq!(
            rustix::fs::readlinkat(&r.by_id[&ids[1]].file, "", Vec::new())
                .unwrap()
                .as_bytes(),
            b"somewhere"
        );
        assert!(made[2].file_type().is_fifo());
        assert_eq!(made[2].mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_link(r.proc_path(ids[0], &ANY_KIND).unwrap()).unwrap(),
            Path::new(&format!("{} (deleted)", d.display()))
        );
    }

    #[test]
    fn an_object_with_a_name_is_given_no_owner() {
        // What restore made at a path others may write to must be unlinked
        // before it gets the saved owner and mode (never an object swapped
        // in there).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("linked");
        std::fs::write(&p, b"x").unwrap();
        let f = File::open(&p).unwrap();
        let meta = UnlinkedFile {
            kind: UnlinkedKind::Deleted as i32,
            mode: 0o4755,
            mtime_ns: 1,
            ..Default::default()
        };
        let err = set_owner_and_times(&f, &meta).unwrap_err().to_string();
        assert!(err.contains("has a name again"), "{err}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_ne!(mode & 0o4000, 0o4000, "mode left alone");
    }

    #[test]
    fn deleted_file_comes_back_under_its_old_name() {
        let dir = std::env::temp_dir().join(format!("crstream-unlinked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join("sem.x");
        let mut r = Recreator::default();
        r.add(UnlinkedFile {
            id: 1,
            kind: UnlinkedKind::Deleted as i32,
            path: old.to_str().unwrap().into(),
            size: 2,
            mode: 0o600,
            contents_stream: 9,
            ..Default::default()
        })
        .unwrap();
        r.write(9, b"ok").unwrap();
        let path = r.proc_path(1, &ANY_KIND).unwrap();
        assert!(!old.exists(), "unlinked again at once");
        assert_eq!(
            std::fs::read_link(&path).unwrap(),
            Path::new(&format!("{} (deleted)", old.display()))
        );
        assert_eq!(read_all(&path), b"ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
