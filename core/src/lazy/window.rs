//! The memory a lazy restore holds: bytes fetched and not yet copied into
//! the process, bounded by a window. A fetch waits for room first, and the
//! room comes back only when the last page of its batches is gone (copied
//! and dropped), however far the fetches run ahead of the copies.

use crstream_streamer::PageBatch;
use std::sync::{Arc, Condvar, Mutex};

/// Bytes fetched and not yet written at most, by default (plus the frames
/// faults wait for, which never wait for room): four requests of
/// [`super::fetch::RUN_BYTES`] in flight, which keeps an object store busy.
pub(crate) const DEFAULT_WINDOW: u64 = 64 << 20;

pub(crate) struct Window {
    used: Mutex<u64>,
    freed: Condvar,
    max: u64,
}

impl Window {
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max,
        })
    }

    /// Waits until `bytes` fit (a request larger than the whole window goes
    /// alone) and takes them.
    pub(crate) fn take(self: &Arc<Self>, bytes: u64) -> Room {
        let mut used = self.used.lock().unwrap();
        while *used > 0 && *used + bytes > self.max {
            used = self.freed.wait(used).unwrap();
        }
        *used += bytes;
        Room {
            window: self.clone(),
            bytes,
        }
    }

    /// Takes `bytes` without waiting: a fault must not wait behind the
    /// prefetch's copies.
    pub(crate) fn take_now(self: &Arc<Self>, bytes: u64) -> Room {
        *self.used.lock().unwrap() += bytes;
        Room {
            window: self.clone(),
            bytes,
        }
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        *self.used.lock().unwrap()
    }
}

/// Room taken in a window, given back when dropped.
pub(crate) struct Room {
    window: Arc<Window>,
    bytes: u64,
}

impl Room {
    /// Gives back what this room holds beyond `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        if self.bytes > bytes {
            let extra = self.bytes - bytes;
            self.bytes = bytes;
            *self.window.used.lock().unwrap() -= extra;
            self.window.freed.notify_all();
        }
    }

    /// Takes more room, without waiting, so that this one holds `bytes`
    /// (pages that decompressed to more than they were stored as).
    pub(crate) fn grow_to(&mut self, bytes: u64) {
        if bytes > self.bytes {
            *self.window.used.lock().unwrap() += bytes - self.bytes;
            self.bytes = bytes;
        }
    }

    /// Moves `bytes` of this room to `batch`: they come back when the
    /// batch's pages (every slice of them) are dropped.
    pub(crate) fn attach(&mut self, batch: &mut PageBatch, bytes: u64) {
        let part = Room {
            window: self.window.clone(),
            bytes: bytes.min(self.bytes),
        };
        self.bytes -= part.bytes;
        let data = std::mem::take(&mut batch.data);
        batch.data = bytes::Bytes::from_owner(Held { data, _room: part });
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.bytes > 0 {
            *self.window.used.lock().unwrap() -= self.bytes;
            self.window.freed.notify_all();
        }
    }
}

/// A batch's pages with their share of the window.
struct Held {
    data: bytes::Bytes,
    _room: Room,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn batch(len: usize) -> PageBatch {
        PageBatch {
            pid: 1,
            area: 0,
            runs: Vec::new(),
            data: bytes::Bytes::from(vec![7u8; len]),
        }
    }

    #[test]
    fn room_comes_back_when_the_last_slice_of_a_batch_is_gone() {
        let w = Window::new(100);
        let mut room = w.take(60);
        let (mut a, mut b) = (batch(30), batch(30));
        room.attach(&mut a, 30);
        room.attach(&mut b, 30);
        drop(room);
        assert_eq!(w.used(), 60);
        let slice = a.data.slice(1..2);
        drop(a);
        assert_eq!(w.used(), 60, "a slice still holds the pages");
        drop(slice);
        assert_eq!(w.used(), 30);
        assert_eq!(b.data[..], [7u8; 30][..]);
        drop(b);
        assert_eq!(w.used(), 0);
    }

    #[test]
    fn a_fetch_waits_for_room_but_a_fault_does_not() {
        let w = Window::new(100);
        let first = w.take(80);
        let fault = w.take_now(50);
        assert_eq!(w.used(), 130);
        let w2 = w.clone();
        let waiting = std::thread::spawn(move || w2.take(40).bytes);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "no room yet");
        drop(first);
        drop(fault);
        assert_eq!(waiting.join().unwrap(), 40);
        // Larger than the whole window: goes alone, at once when empty.
        assert_eq!(w.take(500).bytes, 500);
    }

    #[test]
    fn a_room_shrinks_to_what_was_fetched_and_grows_to_what_it_holds() {
        let w = Window::new(100);
        let mut room = w.take(64);
        room.shrink_to(10);
        assert_eq!(w.used(), 10);
        room.grow_to(30);
        assert_eq!(w.used(), 30);
        let mut b = batch(30);
        room.attach(&mut b, 30);
        drop(room);
        assert_eq!(w.used(), 30);
        drop(b);
        assert_eq!(w.used(), 0);
    }
}
