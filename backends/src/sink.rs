//! Writing: stdout, or a multipart upload that becomes visible on commit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::task::{JoinError, JoinSet};

use crate::error::{BackendError, Diag};
use crate::location::{Env, Resolved};

/// How a sink uploads.
///
/// A sink holds at most one part being filled plus `parts_in_flight` parts
/// being uploaded, so its memory is bounded by about
/// `part_size * (parts_in_flight + 1)` (80 MiB with the defaults).
///
/// For `s3://` and `gs://` the part size is raised to the 5 MiB minimum those
/// services accept. S3 allows at most 10 000 parts, so the largest object is
/// `part_size * 10_000` (160 GB with the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// Bytes per uploaded part (default 16 MiB).
    pub part_size: usize,
    /// Parts uploaded concurrently (default 4); writes wait when all are busy.
    pub parts_in_flight: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            part_size: 16 << 20,
            parts_in_flight: 4,
        }
    }
}

/// Where a stream is written. Write to it with `tokio::io::AsyncWrite`, then
/// call [`Sink::commit`] (the object appears, atomically) or [`Sink::abort`]
/// (nothing remains). A sink dropped without either is aborted in the
/// background (on the runtime it was opened on).
///
/// `flush`/`shutdown` wait for the parts already handed off to finish
/// uploading; they do not commit.
pub struct Sink {
    url: String,
    inner: Inner,
}

enum Inner {
    Stdio {
        out: tokio::io::Stdout,
        written: u64,
    },
    File(FileSink),
    Object(ObjectSink),
}

/// Opens a sink at `url` (see [`parse_location`](crate::parse_location)),
/// configured from the process environment.
///
/// For objects and files this starts the multipart upload right away, so a
/// missing bucket, bad credentials or an unreachable endpoint fail here,
/// before anything is written. A pre-existing object at `url` stays intact
/// until [`Sink::commit`] replaces it.
pub async fn open_sink(url: &str, opts: &SinkOptions) -> Result<Sink, BackendError> {
    Env::process().open_sink(url, opts).await
}

impl Env {
    /// Opens a sink; see [`open_sink`].
    pub async fn open_sink(&self, url: &str, opts: &SinkOptions) -> Result<Sink, BackendError> {
        let inner = match self.resolve(url)? {
            Resolved::Stdio => Inner::Stdio {
                out: tokio::io::stdout(),
                written: 0,
            },
            Resolved::Store(t) if t.local_path.is_some() => {
                t.check_not_dir()?;
                Inner::File(FileSink::create(t.diag.clone(), t.local_path.clone().unwrap()).await?)
            }
            Resolved::Store(t) => {
                t.check_not_dir()?;
                if t.probe_on_open {
                    match crate::source::head(&t).await {
                        Ok(_) | Err(BackendError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                let handle = Handle::try_current().map_err(|_| BackendError::Other {
                    url: url.to_owned(),
                    cause: "a sink needs a tokio runtime".to_owned(),
                })?;
                let upload = t
                    .store
                    .put_multipart(&t.path)
                    .await
                    .map_err(|e| t.diag.classify(&e))?;
                let part_size = opts.part_size.max(t.min_part_size).max(1);
                tracing::debug!(
                    url,
                    part_size,
                    opts.parts_in_flight,
                    "multipart upload started"
                );
                let mut sink = ObjectSink::new(
                    t.diag.clone(),
                    upload,
                    handle,
                    part_size,
                    opts.parts_in_flight,
                );
                sink.target = Some(t);
                Inner::Object(sink)
            }
        };
        Ok(Sink {
            url: url.to_owned(),
            inner,
        })
    }
}

impl Sink {
    /// The URL the sink writes to, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the stream goes into a regular file on this machine (not a
    /// pipe, device or object store): a destination fast enough that
    /// compressing costs more time than it saves.
    pub fn is_local_file(&self) -> bool {
        matches!(&self.inner, Inner::File(f) if f.direct.is_some())
    }

    /// Finishes the upload and makes the object visible (for files: renames
    /// the temporary file in the same directory into place). Returns the
    /// number of bytes written. On error the upload is aborted.
    ///
    /// For stdout, flushes.
    pub async fn commit(self) -> Result<u64, BackendError> {
        match self.inner {
            Inner::Stdio { mut out, written } => {
                out.flush().await.map_err(|e| BackendError::Other {
                    url: self.url.clone(),
                    cause: e.to_string(),
                })?;
                Ok(written)
            }
            Inner::File(f) => f.commit().await,
            Inner::Object(mut s) => {
                let n = s.commit().await?;
                tracing::debug!(url = self.url, bytes = n, "committed");
                Ok(n)
            }
        }
    }

    /// Like [`commit`](Self::commit), but an object already at the
    /// destination stays: then nothing is written and None is returned.
    /// For a local file the check and the commit are one step (a link,
    /// which never replaces). For an object store it is made just before
    /// the upload completes (object_store 0.14 has no conditional
    /// multipart upload): two writers racing through that moment both
    /// complete, each with a whole object, and the last one stays. For
    /// stdout, the same as `commit`.
    pub async fn commit_if_absent(self) -> Result<Option<u64>, BackendError> {
        match self.inner {
            Inner::File(f) => f.commit_if_absent().await,
            Inner::Object(mut s) => {
                if s.destination_exists().await? {
                    s.abort().await?;
                    return Ok(None);
                }
                let n = s.commit().await?;
                tracing::debug!(url = self.url, bytes = n, "committed");
                Ok(Some(n))
            }
            inner @ Inner::Stdio { .. } => Sink {
                url: self.url,
                inner,
            }
            .commit()
            .await
            .map(Some),
        }
    }

    /// Abandons the upload: nothing new appears at the destination and a
    /// pre-existing object is left as it was. For stdout (where nothing can be
    /// taken back) this only flushes.
    pub async fn abort(self) -> Result<(), BackendError> {
        match self.inner {
            Inner::Stdio { mut out, .. } => {
                tracing::warn!("aborting a stream already written to stdout");
                // Best effort: the reader sees a truncated stream either way.
                let _ = out.flush().await;
                Ok(())
            }
            Inner::File(f) => f.abort().await,
            Inner::Object(mut s) => s.abort().await,
        }
    }

    /// A sink over an existing multipart upload (unit tests of the scheduling).
    #[cfg(test)]
    fn from_upload(
        upload: Box<dyn MultipartUpload>,
        part_size: usize,
        parts_in_flight: usize,
    ) -> Self {
        Self {
            url: "test://sink".to_owned(),
            inner: Inner::Object(ObjectSink::new(
                Arc::new(Diag::local("test://sink")),
                upload,
                Handle::current(),
                part_size,
                parts_in_flight,
            )),
        }
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Stdio { out, written } => {
                let n = ready!(Pin::new(out).poll_write(cx, buf))?;
                *written += n as u64;
                Poll::Ready(Ok(n))
            }
            Inner::File(f) => f.poll_write(cx, buf),
            Inner::Object(s) => s.poll_write(cx, buf),
        }
    }

    /// A frame header and its payload in one write: a local file takes
    /// them in one syscall, which keeps the page cache's large folios (a
    /// separate small write before each payload halves its speed).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::File(f) => f.poll_write_vectored(cx, bufs),
            inner => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                match inner {
                    Inner::Stdio { out, written } => {
                        let n = ready!(Pin::new(out).poll_write(cx, buf))?;
                        *written += n as u64;
                        Poll::Ready(Ok(n))
                    }
                    Inner::Object(s) => s.poll_write(cx, buf),
                    Inner::File(_) => unreachable!(),
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self.inner, Inner::File(_))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Stdio { out, .. } => Pin::new(out).poll_flush(cx),
            Inner::File(f) => Pin::new(&mut f.file).poll_flush(cx),
            Inner::Object(s) => s.poll_drain(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Stdio { out, .. } => Pin::new(out).poll_shutdown(cx),
            Inner::File(f) => Pin::new(&mut f.file).poll_flush(cx),
            Inner::Object(s) => s.poll_drain(cx),
        }
    }
}

/// The part scheduler: fills one part, hands full parts to tasks on the
/// runtime (so they progress while the writer is busy elsewhere), and makes
/// writers wait while `parts_in_flight` parts are uploading.
struct ObjectSink {
    diag: Arc<Diag>,
    /// `None` once completed or aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    buf: Vec<u8>,
    part_size: usize,
    parts_in_flight: usize,
    tasks: JoinSet<object_store::Result<()>>,
    handle: Handle,
    written: u64,
    /// The first error; every later call reports it again.
    failed: Option<BackendError>,
    /// The destination, to look at before committing if absent.
    target: Option<crate::location::Target>,
}

impl ObjectSink {
    fn new(
        diag: Arc<Diag>,
        upload: Box<dyn MultipartUpload>,
        handle: Handle,
        part_size: usize,
        parts_in_flight: usize,
    ) -> Self {
        Self {
            diag,
            upload: Some(upload),
            buf: Vec::new(),
            part_size: part_size.max(1),
            parts_in_flight: parts_in_flight.max(1),
            tasks: JoinSet::new(),
            handle,
            written: 0,
            target: None,
            failed: None,
        }
    }

    /// Records the outcome of a part upload.
    fn check(
        &mut self,
        joined: Result<object_store::Result<()>, JoinError>,
    ) -> Result<(), BackendError> {
        let err = match joined {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => self.diag.classify(&e),
            Err(e) => BackendError::Other {
                url: self.diag.url.clone(),
                cause: format!("part upload task failed: {e}"),
            },
        };
        self.failed.get_or_insert(err.clone());
        Err(err)
    }

    fn fail_if_failed(&self) -> Result<(), BackendError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn gone(&self) -> BackendError {
        BackendError::Other {
            url: self.diag.url.clone(),
            cause: "upload already finished".to_owned(),
        }
    }

    /// Hands the filled buffer to a new part upload task.
    fn ship(&mut self) -> Result<(), BackendError> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(self.gone());
        };
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let part = upload.put_part(PutPayload::from(data));
        self.tasks.spawn_on(part, &self.handle);
        Ok(())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.fail_if_failed()?;
        // Reap finished parts so that a failed upload stops the writer early.
        while let Poll::Ready(Some(r)) = self.tasks.poll_join_next(cx) {
            self.check(r)?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.buf.len() >= self.part_size {
            // Backpressure: the full part waits for a free upload slot.
            while self.tasks.len() >= self.parts_in_flight {
                match ready!(self.tasks.poll_join_next(cx)) {
                    Some(r) => self.check(r)?,
                    None => break,
                }
            }
            self.ship()?;
        }
        let n = data.len().min(self.part_size - self.buf.len());
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            // Grow geometrically but never past one part, so a full part is
            // exactly one allocation of part_size.
            let target = need.max(self.buf.capacity() * 2).min(self.part_size);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() >= self.part_size && self.tasks.len() < self.parts_in_flight {
            self.ship()?;
        }
        Poll::Ready(Ok(n))
    }

    /// Waits for every part handed off so far.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fail_if_failed()?;
        while let Some(r) = ready!(self.tasks.poll_join_next(cx)) {
            self.check(r)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether an object is at the destination now.
    async fn destination_exists(&self) -> Result<bool, BackendError> {
        let Some(t) = &self.target else {
            return Ok(false);
        };
        match crate::source::head(t).await {
            Ok(_) => Ok(true),
            Err(BackendError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn commit(&mut self) -> Result<u64, BackendError> {
        let result = self.finish().await;
        if result.is_err()
            && let Err(e) = self.abort().await
        {
            tracing::warn!("{e}");
        }
        result
    }

    async fn finish(&mut self) -> Result<u64, BackendError> {
        self.fail_if_failed()?;
        while let Some(r) = self.tasks.join_next().await {
            self.check(r)?;
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(self.gone());
        };
        if !self.buf.is_empty() {
            let data = Bytes::from(std::mem::take(&mut self.buf));
            upload
                .put_part(PutPayload::from(data))
                .await
                .map_err(|e| self.diag.classify(&e))?;
        }
        upload
            .complete()
            .await
            .map_err(|e| self.diag.classify(&e))?;
        self.upload = None;
        Ok(self.written)
    }

    async fn abort(&mut self) -> Result<(), BackendError> {
        // Stop the parts first so none lands after the upload is aborted.
        self.tasks.shutdown().await;
        self.buf = Vec::new();
        match self.upload.take() {
            Some(mut upload) => upload.abort().await.map_err(|e| self.diag.classify(&e)),
            None => Ok(()),
        }
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        let mut tasks = std::mem::take(&mut self.tasks);
        tasks.abort_all();
        let url = self.diag.url.clone();
        tracing::debug!(url, "sink dropped without commit: aborting the upload");
        // If the runtime is already gone the task never runs; the upload is
        // then dropped, which is all that can be done (files clean up on drop).
        self.handle.spawn(async move {
            tasks.shutdown().await;
            if let Err(e) = upload.abort().await {
                tracing::warn!(url, "abort of a dropped upload failed: {e}");
            }
        });
    }
}

/// A local file: written to a file with no name in the destination's
/// directory (O_TMPFILE), given a name and renamed into place on commit, so
/// the file appears only when complete and a writer killed by SIGKILL
/// leaves nothing behind. Where the filesystem lacks O_TMPFILE, a hidden
/// temporary file is used instead (removed on abort, not after SIGKILL).
/// Writing straight to the file avoids the part buffers of a multipart
/// upload (memory and a copy) that a local disk does not need.
struct FileSink {
    diag: Arc<Diag>,
    file: tokio::fs::File,
    /// For a regular file, the same file written synchronously: a frame's
    /// write into the page cache takes well under a millisecond, and the
    /// tokio file would copy every byte once more into a buffer of its own
    /// for another thread to write. A FIFO or device, which can block for
    /// as long as its reader likes, goes through the tokio file.
    direct: Option<std::fs::File>,
    /// `None` when writing in place (a device or FIFO).
    tmp: Option<std::path::PathBuf>,
    /// The file has no name until commit (`tmp` is the name it gets then).
    unnamed: bool,
    dest: std::path::PathBuf,
    written: u64,
    /// The file's size as allocated ahead of the writes (see `reserve`);
    /// None where that does not pay, or once the filesystem refused.
    allocated: Option<u64>,
    /// Committed or aborted: nothing left to clean up.
    done: bool,
}

/// Opens a file with no name in `dir` for writing; None where the
/// filesystem does not support it.
fn open_unnamed(dir: &std::path::Path) -> Option<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::from_raw_mode(0o666)).ok()?;
    Some(std::fs::File::from(fd))
}

/// Whether a file is allocated ahead of its writes (`FileSink::reserve`):
/// on ext4 and XFS, which otherwise reserve each block as it is written
/// (delayed allocation). Not on tmpfs, where allocating means zeroing pages
/// the write then copies over, nor on copy-on-write filesystems.
fn allocates_ahead(file: &std::fs::File) -> bool {
    const EXT4: std::ffi::c_long = 0xEF53;
    const XFS: std::ffi::c_long = 0x5846_5342;
    rustix::fs::fstatfs(file).is_ok_and(|s| matches!(s.f_type, EXT4 | XFS))
}

impl FileSink {
    async fn create(diag: Arc<Diag>, dest: std::path::PathBuf) -> Result<Self, BackendError> {
        // A device or FIFO (`-o /dev/null`) is written in place: renaming a
        // temporary file over it would replace the device with a file.
        if let Ok(meta) = std::fs::metadata(&dest)
            && !meta.is_file()
            && !meta.is_dir()
        {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&dest)
                .await
                .map_err(|e| diag.classify_io("opening", &e))?;
            return Ok(Self {
                diag,
                file,
                direct: None,
                tmp: None,
                unnamed: false,
                dest,
                written: 0,
                allocated: None,
                done: true,
            });
        }
        let dir = dest
            .parent()
            .unwrap_or(std::path::Path::new("/"))
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| diag.classify_io(&format!("creating {}", dir.display()), &e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Hidden, named after the destination and this process, so a leftover
        // from a killed upload is recognisable; create_new never clobbers.
        let tmp = dir.join(format!(
            ".{name}.crstream-{}-{}.tmp",
            std::process::id(),
            unique()
        ));
        if let Some(file) = open_unnamed(&dir) {
            return Ok(Self {
                diag,
                direct: file.try_clone().ok(),
                allocated: allocates_ahead(&file).then_some(0),
                file: tokio::fs::File::from_std(file),
                tmp: Some(tmp),
                unnamed: true,
                dest,
                written: 0,
                done: false,
            });
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| diag.classify_io(&format!("creating {}", tmp.display()), &e))?;
        Ok(Self {
            diag,
            direct: file.try_clone().ok(),
            allocated: allocates_ahead(&file).then_some(0),
            file: tokio::fs::File::from_std(file),
            tmp: Some(tmp),
            unnamed: false,
            dest,
            written: 0,
            done: false,
        })
    }

    /// Allocates the file ahead of a write of `len` bytes, in steps that
    /// double up to 128 MiB. Writing into allocated blocks skips the
    /// filesystem's per-block reservation of delayed allocation: on ext4
    /// a 1 GiB image is written in about 0.3 s instead of 0.4-0.8 s. The
    /// file is cut to what was written at commit.
    fn reserve(&mut self, len: usize) {
        let (Some(allocated), Some(file)) = (self.allocated, &self.direct) else {
            return;
        };
        let end = self.written + len as u64;
        if end <= allocated {
            return;
        }
        let step = allocated.clamp(1 << 20, 128 << 20).max(end - allocated);
        let flags = rustix::fs::FallocateFlags::empty();
        self.allocated = match rustix::fs::fallocate(file, flags, allocated, step) {
            Ok(()) => Some(allocated + step),
            // Not supported here, or no room: the write itself will say.
            Err(_) => None,
        };
    }

    /// Cuts the file to what was written (see `reserve`). Whether or not
    /// anything was allocated ahead: a failed allocation may have made the
    /// file longer part of the way, and one call costs nothing.
    fn trim(&self) -> Result<(), BackendError> {
        let Some(file) = &self.direct else {
            return Ok(());
        };
        rustix::fs::ftruncate(file, self.written).map_err(|e| {
            self.diag
                .classify_io("cutting the file to its length", &io::Error::from(e))
        })
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.reserve(buf.len());
        let n = match &mut self.direct {
            Some(file) => loop {
                match io::Write::write(file, buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            },
            None => ready!(Pin::new(&mut self.file).poll_write(cx, buf))?,
        };
        self.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.reserve(bufs.iter().map(|b| b.len()).sum());
        let Some(file) = &mut self.direct else {
            let buf = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, buf);
        };
        let n = loop {
            match io::Write::write_vectored(file, bufs) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.written += n as u64;
        Poll::Ready(Ok(n))
    }

    async fn commit(mut self) -> Result<u64, BackendError> {
        let result = async {
            self.file
                .flush()
                .await
                .map_err(|e| self.diag.classify_io("writing", &e))?;
            self.trim()?;
            if self.unnamed
                && let Some(tmp) = &self.tmp
            {
                // A name, for the rename below (which replaces an existing
                // file atomically, which linking cannot).
                let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    format!("/proc/self/fd/{fd}"),
                    rustix::fs::CWD,
                    tmp,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(|e| {
                    self.diag
                        .classify_io("naming the finished file", &std::io::Error::from(e))
                })?;
                self.unnamed = false;
            }
            // Synchronous: once the name is given, the rename follows in
            // the same poll, so a caller that gives up on the commit (an
            // interrupted dump) never leaves the file named after all.
            // The file it replaces is freed in the background (see
            // `free_in_background`): nobody need wait for that.
            let replaced = std::fs::File::open(&self.dest).ok();
            let renamed = match &self.tmp {
                Some(tmp) => std::fs::rename(tmp, &self.dest).map_err(|e| {
                    self.diag
                        .classify_io("renaming the finished file into place", &e)
                }),
                None => Ok(()),
            };
            if let Some(old) = replaced {
                free_in_background(old);
            }
            renamed
        }
        .await;
        match result {
            Ok(()) => {
                self.done = true;
                tracing::debug!(url = self.diag.url, bytes = self.written, "committed");
                Ok(self.written)
            }
            Err(e) => {
                self.remove_tmp();
                Err(e)
            }
        }
    }

    async fn abort(mut self) -> Result<(), BackendError> {
        self.remove_tmp();
        Ok(())
    }

    /// See `Sink::commit_if_absent`: the finished file gets its name by a
    /// link (an unnamed file) or a rename that refuses to replace.
    async fn commit_if_absent(mut self) -> Result<Option<u64>, BackendError> {
        let Some(tmp) = self.tmp.clone() else {
            return self.commit().await.map(Some); // a device, written in place
        };
        self.file
            .flush()
            .await
            .map_err(|e| self.diag.classify_io("writing", &e))?;
        if let Err(e) = self.trim() {
            self.remove_tmp();
            return Err(e);
        }
        let placed = if self.unnamed {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
            rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{fd}"),
                rustix::fs::CWD,
                &self.dest,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
        } else {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                &self.dest,
                rustix::fs::RenameFlags::NOREPLACE,
            )
        };
        match placed {
            Ok(()) => {
                self.done = true;
                tracing::debug!(url = self.diag.url, bytes = self.written, "committed");
                Ok(Some(self.written))
            }
            Err(rustix::io::Errno::EXIST) => {
                self.remove_tmp();
                Ok(None)
            }
            Err(e) => {
                self.remove_tmp();
                Err(self.diag.classify_io(
                    "putting the finished file into place",
                    &std::io::Error::from(e),
                ))
            }
        }
    }

    fn remove_tmp(&mut self) {
        if !self.done {
            self.done = true;
            if let Some(tmp) = &self.tmp
                && !self.unnamed
                && let Err(e) = std::fs::remove_file(tmp)
            {
                tracing::warn!("removing {}: {e}", tmp.display());
            }
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        self.remove_tmp();
    }
}

/// A number that differs between sinks of one process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Frees a file whose name a commit just replaced, in a process of its
/// own: the last close of a large file frees all its pages and blocks
/// (0.8 s for 1 GiB here), and a thread doing it would hold up crstream's
/// exit (the process ends only once every thread's system call has). A
/// grandchild closes it: it first closes its copies of every other fd (so
/// no pipe or socket of ours stays open because of it: a script reading
/// crstream's output sees its end at once), and, an orphan from the start,
/// it is reaped by init. Without a process, a thread does it.
fn free_in_background(file: std::fs::File) {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    let close_others = |fd: libc::c_int| {
        let fd = fd as libc::c_uint;
        // SAFETY: close_range on fd numbers; no memory is touched.
        unsafe {
            if fd > 0 {
                libc::syscall(libc::SYS_close_range, 0, fd - 1, 0);
            }
            libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
        }
    };
    // SAFETY: between fork and _exit the children make system calls only
    // (async-signal-safe), as a multithreaded parent requires; the parent
    // waits for its own child by PID.
    let child = unsafe { libc::fork() };
    match child {
        0 => unsafe {
            if libc::fork() == 0 {
                close_others(fd);
                libc::close(fd);
            }
            libc::_exit(0)
        },
        -1 => {
            // SAFETY: fd is ours (from into_raw_fd), taken back once.
            let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            std::thread::spawn(move || drop(file));
        }
        _ => unsafe {
            libc::close(fd);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{PutResult, UploadPart};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// A multipart upload whose parts finish only when the test releases them.
    #[derive(Debug, Clone, Default)]
    struct Gated {
        state: Arc<GateState>,
    }

    #[derive(Debug)]
    struct GateState {
        gate: Semaphore,
        running: AtomicUsize,
        max_running: AtomicUsize,
        parts: Mutex<Vec<Bytes>>,
        completed: Mutex<Option<Vec<u8>>>,
        aborted: AtomicUsize,
    }

    impl Default for GateState {
        fn default() -> Self {
            Self {
                gate: Semaphore::new(0),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                parts: Mutex::new(Vec::new()),
                completed: Mutex::new(None),
                aborted: AtomicUsize::new(0),
            }
        }
    }

    #[async_trait::async_trait]
    impl MultipartUpload for Gated {
        fn put_part(&mut self, data: PutPayload) -> UploadPart {
            let s = self.state.clone();
            let idx = {
                let mut parts = s.parts.lock().unwrap();
                parts.push(Bytes::new());
                parts.len() - 1
            };
            Box::pin(async move {
                let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
                s.max_running.fetch_max(now, Ordering::SeqCst);
                s.gate.acquire().await.unwrap().forget();
                s.running.fetch_sub(1, Ordering::SeqCst);
                let bytes: Vec<u8> = data.iter().flat_map(|b| b.iter().copied()).collect();
                s.parts.lock().unwrap()[idx] = Bytes::from(bytes);
                Ok(())
            })
        }
        async fn complete(&mut self) -> object_store::Result<PutResult> {
            let parts = self.state.parts.lock().unwrap();
            let all: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
            *self.state.completed.lock().unwrap() = Some(all);
            Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            })
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.state.aborted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn backpressure_bounds_parts_in_flight() {
        let up = Gated::default();
        let state = up.state.clone();
        let mut sink = Sink::from_upload(Box::new(up), 4, 2);
        let payload = data(40);
        // With every part blocked, only part_size * (in_flight + 1) bytes fit.
        let stuck =
            tokio::time::timeout(Duration::from_millis(200), sink.write_all(&payload)).await;
        assert!(
            stuck.is_err(),
            "write_all must block while uploads are stuck"
        );
        assert_eq!(state.max_running.load(Ordering::SeqCst), 2);
        assert_eq!(state.parts.lock().unwrap().len(), 2);
        if let Inner::Object(s) = &sink.inner {
            assert_eq!(s.written, 12);
        }
        // Release everything; the rest goes through and lands in order.
        state.gate.add_permits(1000);
        sink.write_all(&payload[12..17]).await.unwrap();
        sink.write_all(&payload[17..]).await.unwrap();
        assert_eq!(sink.commit().await.unwrap(), 40);
        assert_eq!(
            state.completed.lock().unwrap().as_deref(),
            Some(&payload[..])
        );
        assert!(state.max_running.load(Ordering::SeqCst) <= 2);
        assert_eq!(state.parts.lock().unwrap().len(), 10);
    }

    #[tokio::test]
    async fn drop_aborts_in_background() {
        let up = Gated::default();
        let state = up.state.clone();
        let mut sink = Sink::from_upload(Box::new(up), 4, 2);
        sink.write_all(&data(6)).await.unwrap();
        drop(sink);
        for _ in 0..100 {
            if state.aborted.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.aborted.load(Ordering::SeqCst), 1);
        assert!(state.completed.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn failed_part_fails_later_writes_and_commit() {
        #[derive(Debug)]
        struct Failing(Arc<AtomicUsize>);
        #[async_trait::async_trait]
        impl MultipartUpload for Failing {
            fn put_part(&mut self, _: PutPayload) -> UploadPart {
                Box::pin(async {
                    Err(object_store::Error::Generic {
                        store: "test",
                        source: "disk on fire".into(),
                    })
                })
            }
            async fn complete(&mut self) -> object_store::Result<PutResult> {
                panic!("must not complete after a failed part");
            }
            async fn abort(&mut self) -> object_store::Result<()> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
        let aborted = Arc::new(AtomicUsize::new(0));
        let mut sink = Sink::from_upload(Box::new(Failing(aborted.clone())), 4, 1);
        let mut err = None;
        for _ in 0..10 {
            if let Err(e) = sink.write_all(&data(4)).await {
                err = Some(e);
                break;
            }
            tokio::task::yield_now().await;
        }
        let err = err.expect("a write must fail after the part failed");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        let e = sink.commit().await.unwrap_err();
        assert_eq!(e.to_string(), "test://sink: disk on fire");
        assert_eq!(aborted.load(Ordering::SeqCst), 1);
    }
}
