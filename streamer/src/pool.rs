//! Frame buffers, each handed back when the last reference to its frame is
//! dropped (a written frame, or a page batch written into a process), so
//! the next frames reuse memory that is already faulted in: fresh pages
//! cost more than the copy into them (on this kind of VM, zeroing a fresh
//! page costs as much as copying it twice). Buffers are zeroed once, when
//! made, so a frame can be read or gathered straight into one without
//! clearing it again.

use bytes::Bytes;

#[derive(Clone, Default)]
pub(crate) struct BufferPool(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// Buffers kept at most: about the frames in flight.
    const MAX: usize = 32;

    /// A buffer of `len` bytes (a reused one is cut or zero-extended). A
    /// pooled buffer more than twice as large is not lent: what holds a
    /// frame's pages would hold far more memory than they count for.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut pool| pool.pop());
        match reused {
            Some(mut buf) if buf.capacity() >= len && buf.capacity() / 2 <= len => {
                buf.resize(len, 0);
                buf
            }
            _ => vec![0; len],
        }
    }

    /// `buf[range]` as shared bytes that give `buf` back once dropped.
    pub(crate) fn share(&self, buf: Vec<u8>, range: std::ops::Range<usize>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: std::sync::Arc::downgrade(&self.0),
        })
        .slice(range)
    }
}

/// A buffer on loan from a [`BufferPool`].
struct Pooled {
    buf: Vec<u8>,
    pool: std::sync::Weak<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade()
            && let Ok(mut pool) = pool.lock()
            && pool.len() < BufferPool::MAX
        {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}
