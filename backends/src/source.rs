//! Reading: stdin sequentially, objects by ranged reads with read-ahead.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use crate::error::{BackendError, Diag};
use crate::location::{Env, Resolved, Target};

/// How [`Source::into_async_read`] reads an object.
///
/// Memory is bounded by about `chunk_size * in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Bytes per ranged GET (default 8 MiB).
    pub chunk_size: usize,
    /// Ranged GETs running ahead of the reader (default 4).
    pub in_flight: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            chunk_size: 8 << 20,
            in_flight: 4,
        }
    }
}

/// Where a stream is read from.
pub struct Source {
    url: String,
    kind: Kind,
}

enum Kind {
    Stdin,
    /// A FIFO or a device given by path: read as it comes, like stdin.
    Special(std::fs::File),
    /// A local regular file: read straight from the opened file (no ranged
    /// requests, no chunk buffers), ranged reads through the store.
    LocalFile(ObjectReader, std::fs::File),
    Object(ObjectReader),
}

/// Opens a source at `url` (see [`parse_location`](crate::parse_location)),
/// configured from the process environment. For objects and files this asks
/// for the size (one HEAD), so a missing object fails here.
pub async fn open_source(url: &str) -> Result<Source, BackendError> {
    Env::process().open_source(url).await
}

impl Env {
    /// Opens a source; see [`open_source`].
    pub async fn open_source(&self, url: &str) -> Result<Source, BackendError> {
        let kind = match self.resolve(url)? {
            Resolved::Stdio => Kind::Stdin,
            Resolved::Store(t) => {
                t.check_not_dir()?;
                let local = match &t.local_path {
                    Some(p) => Some(open_local(&t.diag, p)?),
                    None => None,
                };
                if let Some((file, false)) = local {
                    return Ok(Source {
                        url: url.to_owned(),
                        kind: Kind::Special(file),
                    });
                }
                // A local file is read where it was opened: the size and
                // every range are those of the file this source holds, even
                // if its path is replaced meanwhile (no ETag needed).
                let file = match (&local, &t.local_path) {
                    (Some((file, _)), Some(path)) => Some((
                        file.try_clone()
                            .map_err(|e| t.diag.classify_io("duplicating", &e))?,
                        path.clone(),
                    )),
                    _ => None,
                };
                let (size, e_tag) = match &file {
                    Some((f, _)) => (
                        f.metadata()
                            .map_err(|e| t.diag.classify_io("reading the metadata", &e))?
                            .len(),
                        None,
                    ),
                    None => {
                        let meta = head(&t).await?;
                        (meta.size, meta.e_tag)
                    }
                };
                let reader = ObjectReader {
                    inner: Arc::new(ReaderInner {
                        store: t.store,
                        path: t.path,
                        size,
                        e_tag,
                        file,
                        diag: t.diag,
                    }),
                };
                match local {
                    Some((file, _)) => Kind::LocalFile(reader, file),
                    None => Kind::Object(reader),
                }
            }
        };
        Ok(Source {
            url: url.to_owned(),
            kind,
        })
    }
}

impl Source {
    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The size in bytes; `None` for stdin.
    pub fn size(&self) -> Option<u64> {
        match &self.kind {
            Kind::Stdin | Kind::Special(_) => None,
            Kind::LocalFile(r, _) | Kind::Object(r) => Some(r.size()),
        }
    }

    /// The open file, when the source is a local regular file.
    pub fn local_file(&self) -> Option<&std::fs::File> {
        match &self.kind {
            Kind::LocalFile(_, file) => Some(file),
            _ => None,
        }
    }

    /// A handle for ranged reads; `None` for stdin.
    pub fn ranged(&self) -> Option<ObjectReader> {
        match &self.kind {
            Kind::Stdin | Kind::Special(_) => None,
            Kind::LocalFile(r, _) | Kind::Object(r) => Some(r.clone()),
        }
    }

    /// The whole stream, in order. Stdin, FIFOs and local files are read as
    /// they are; an object is read as ranged GETs of `opts.chunk_size`,
    /// `opts.in_flight` of them running ahead of the reader (several
    /// connections wide, bounded memory).
    ///
    /// Errors are `io::Error`s whose message is the [`BackendError`] line
    /// (the `BackendError` itself is the error's `get_ref()`).
    pub fn into_async_read(self, opts: ReadOptions) -> Box<dyn AsyncRead + Send + Unpin> {
        match self.kind {
            Kind::Stdin => Box::new(tokio::io::stdin()),
            Kind::LocalFile(_, file) => Box::new(LocalRead::new(file)),
            Kind::Special(file) => Box::new(tokio::io::BufReader::with_capacity(
                LOCAL_READ_BUFFER,
                tokio::fs::File::from_std(file),
            )),
            Kind::Object(r) => Box::new(r.read_ahead(opts)),
        }
    }
}

/// Read size for FIFOs and devices: large enough for few blocking-pool
/// round trips.
const LOCAL_READ_BUFFER: usize = 1 << 20;

/// A local regular file, read synchronously. A read from the page cache is
/// a copy that takes well under a millisecond per frame, where tokio's file
/// and a buffer in front of it would copy every byte twice more and hand
/// each read to another thread. Reads of at least [`LocalRead::SMALL`]
/// bytes go straight into the caller's buffer; smaller ones (frame headers)
/// are served from a buffer of its own.
struct LocalRead {
    file: std::fs::File,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl LocalRead {
    const SMALL: usize = 64 << 10;

    fn new(file: std::fs::File) -> Self {
        Self {
            file,
            buf: vec![0; Self::SMALL].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }
}

fn read_retrying(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match io::Read::read(file, buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl AsyncRead for LocalRead {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos == me.end {
            if out.remaining() >= Self::SMALL {
                let n = read_retrying(&mut me.file, out.initialize_unfilled())?;
                out.advance(n);
                return Poll::Ready(Ok(()));
            }
            me.end = read_retrying(&mut me.file, &mut me.buf)?;
            me.pos = 0;
        }
        let n = out.remaining().min(me.end - me.pos);
        out.put_slice(&me.buf[me.pos..me.pos + n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Opens a local path for reading; true if it is a regular file (false: a
/// FIFO or device, which has no size and no ranges).
fn open_local(diag: &Diag, path: &std::path::Path) -> Result<(std::fs::File, bool), BackendError> {
    let file = std::fs::File::open(path).map_err(|e| diag.classify_io("opening", &e))?;
    let meta = file
        .metadata()
        .map_err(|e| diag.classify_io("reading the metadata", &e))?;
    Ok((file, meta.is_file()))
}

/// A cheap, clone-able handle for ranged reads of one object.
///
/// Reads are pinned to the version seen when the source was opened: a
/// local file is read where it was opened (replacing its path changes
/// nothing); an object by ETag where the store has one: if it is replaced
/// meanwhile, reads fail with [`BackendError::Changed`] instead of mixing
/// two versions.
#[derive(Clone)]
pub struct ObjectReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    e_tag: Option<String>,
    /// A local file's open descriptor, read with pread (no store call, an
    /// open, a stat and a thread hop each, per range), and its path.
    file: Option<(std::fs::File, std::path::PathBuf)>,
    diag: Arc<Diag>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("url", &self.url())
            .field("size", &self.size())
            .finish()
    }
}

impl ObjectReader {
    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.inner.diag.url
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Whether this is a local file (read with pread: no round trips).
    pub fn is_local_file(&self) -> bool {
        self.inner.file.is_some()
    }

    /// Exactly the bytes of `range`, or an error (a range outside the object
    /// is [`BackendError::InvalidRange`], never a shorter answer).
    pub async fn read_range(&self, range: Range<u64>) -> Result<Bytes, BackendError> {
        let me = &self.inner;
        if range.start > range.end || range.end > me.size {
            return Err(BackendError::InvalidRange {
                url: me.diag.url.clone(),
                start: range.start,
                end: range.end,
                size: me.size,
            });
        }
        if range.is_empty() {
            // Services reject empty ranges; there is nothing to ask for.
            return Ok(Bytes::new());
        }
        let expected = range.end - range.start;
        if let Some((file, _)) = &me.file {
            use std::os::unix::fs::FileExt;
            // Page-cache reads: done here, as the file's sequential reads are.
            let mut buf = vec![0u8; expected as usize];
            return match file.read_exact_at(&mut buf, range.start) {
                Ok(()) => Ok(Bytes::from(buf)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(BackendError::ShortRead {
                        url: me.diag.url.clone(),
                        offset: range.start,
                        expected,
                        got: 0,
                    })
                }
                Err(e) => Err(me.diag.classify_io("reading", &e)),
            };
        }
        let opts = GetOptions::new()
            .with_range(Some(GetRange::Bounded(range.clone())))
            .with_if_match(me.e_tag.clone());
        let bytes = async { me.store.get_opts(&me.path, opts).await?.bytes().await }
            .await
            .map_err(|e| me.diag.classify(&e))?;
        if bytes.len() as u64 != expected {
            return Err(BackendError::ShortRead {
                url: me.diag.url.clone(),
                offset: range.start,
                expected,
                got: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Deletes the object if it is still the version this reader reads (a
    /// local file: the same inode at its path; an object: by ETag):
    /// Ok(false) if it was replaced meanwhile (the new one stays) or is gone.
    /// For an image found damaged, so that the next writer replaces it.
    pub async fn remove_if_unchanged(&self) -> Result<bool, BackendError> {
        let me = &self.inner;
        if let Some((file, path)) = &me.file {
            // The file read is the one at the path: same device and inode.
            use std::os::unix::fs::MetadataExt;
            let ours = file
                .metadata()
                .map_err(|e| me.diag.classify_io("reading the metadata", &e))?;
            return match std::fs::metadata(path) {
                Ok(m) if (m.dev(), m.ino()) == (ours.dev(), ours.ino()) => {
                    match std::fs::remove_file(path) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                        Err(e) => Err(me.diag.classify_io("removing", &e)),
                    }
                }
                Ok(_) => Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(me.diag.classify_io("reading the metadata", &e)),
            };
        }
        let meta = match me.store.head(&me.path).await {
            Ok(meta) => meta,
            Err(e) => match me.diag.classify(&e) {
                BackendError::NotFound { .. } => return Ok(false),
                other => return Err(other),
            },
        };
        if meta.e_tag.is_none() || meta.e_tag != me.e_tag || meta.size != me.size {
            return Ok(false);
        }
        match me.store.delete(&me.path).await {
            Ok(()) => Ok(true),
            Err(e) => match me.diag.classify(&e) {
                BackendError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// The whole object as an ordered stream of chunks fetched ahead.
    fn read_ahead(self, opts: ReadOptions) -> ChunkReader {
        let chunk = opts.chunk_size.max(1) as u64;
        let size = self.size();
        let ranges = (0..size.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(size));
        // Each GET runs as its own task so read-ahead progresses while the
        // consumer is busy; `buffered` keeps at most `in_flight` of them and
        // yields them in order.
        let handle = tokio::runtime::Handle::try_current().ok();
        let chunks = stream::iter(ranges)
            .map(move |r| {
                let reader = self.clone();
                let fut = async move { reader.read_range(r).await };
                match &handle {
                    Some(h) => Fetch::Task(AbortOnDrop(h.spawn(fut)), self.url().to_owned()),
                    None => Fetch::Inline(Box::pin(fut)),
                }
            })
            .buffered(opts.in_flight.max(1))
            .boxed();
        ChunkReader {
            chunks,
            current: Bytes::new(),
            done: false,
        }
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A ranged GET: a task on the runtime, or (without one) a plain future.
enum Fetch {
    Task(AbortOnDrop<Result<Bytes, BackendError>>, String),
    Inline(BoxFut<Result<Bytes, BackendError>>),
}

impl Future for Fetch {
    type Output = Result<Bytes, BackendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Fetch::Inline(f) => f.as_mut().poll(cx),
            Fetch::Task(t, url) => Poll::Ready(match ready!(Pin::new(&mut t.0).poll(cx)) {
                Ok(r) => r,
                Err(e) => Err(BackendError::Other {
                    url: url.clone(),
                    cause: format!("read task failed: {e}"),
                }),
            }),
        }
    }
}

/// Cancels the read-ahead when the reader is dropped early.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `AsyncRead` over an ordered stream of chunks.
struct ChunkReader {
    chunks: BoxStream<'static, Result<Bytes, BackendError>>,
    current: Bytes,
    done: bool,
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if !me.current.is_empty() {
                let n = me.current.len().min(buf.remaining());
                buf.put_slice(&me.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if me.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(me.chunks.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => me.current = chunk,
                Some(Err(e)) => {
                    me.done = true;
                    return Poll::Ready(Err(e.into()));
                }
                None => me.done = true,
            }
        }
    }
}

/// The object's metadata.
pub(crate) async fn head(t: &Target) -> Result<ObjectMeta, BackendError> {
    let err = match t.store.head(&t.path).await {
        Ok(meta) => return Ok(meta),
        Err(e) => t.diag.classify(&e),
    };
    if matches!(err, BackendError::NotFound { .. }) && t.local_path.is_none() {
        // Answers to HEAD have no body, so a missing bucket looks like a
        // missing object; the error body of a GET tells them apart.
        let probe = GetOptions::new().with_range(Some(GetRange::Bounded(0..1)));
        if let Err(e) = t.store.get_opts(&t.path, probe).await
            && let e @ BackendError::NoSuchBucket { .. } = t.diag.classify(&e)
        {
            return Err(e);
        }
    }
    Err(err)
}

/// Whether an object (or file) exists at `url`, configured from the process environment.
pub async fn exists(url: &str) -> Result<bool, BackendError> {
    Env::process().exists(url).await
}

/// Deletes the object (or file) at `url`; deleting something absent is not
/// an error. Configured from the process environment.
pub async fn delete(url: &str) -> Result<(), BackendError> {
    Env::process().delete(url).await
}

impl Env {
    /// See [`exists`].
    pub async fn exists(&self, url: &str) -> Result<bool, BackendError> {
        let t = self.store_target(url)?;
        match head(&t).await {
            Ok(_) => Ok(true),
            Err(BackendError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// See [`delete`].
    pub async fn delete(&self, url: &str) -> Result<(), BackendError> {
        let t = self.store_target(url)?;
        match t.store.delete(&t.path).await {
            Ok(()) => Ok(()),
            Err(e) => match t.diag.classify(&e) {
                BackendError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn store_target(&self, url: &str) -> Result<Target, BackendError> {
        match self.resolve(url)? {
            Resolved::Store(t) => Ok(t),
            Resolved::Stdio => Err(BackendError::InvalidUrl {
                url: url.to_owned(),
                reason: "not an object".to_owned(),
            }),
        }
    }
}
