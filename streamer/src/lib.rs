//! The crstream stream format (docs/FORMAT.md): frames, codecs, checksums,
//! the index; a pipelined writer and sequential and random-access readers.
//!
//! Knows nothing about ptrace or URLs: it works over `AsyncRead`/`AsyncWrite`
//! and over the ranged-read trait [`RangeRead`].

pub mod codec;
pub mod error;
pub mod format;
pub mod image;
pub mod inspect;
pub mod mapped;
pub mod pages;
mod pool;
pub mod random;
pub mod reader;
#[cfg(feature = "testing")]
pub mod testing;
pub mod writer;

pub use error::{Result, StreamError};
pub use image::{Frame, ImageSink, ImageSource, Item, ItemDecoder};
pub use mapped::{MappedRange, Mapping};
pub use pages::{PAGE_SIZE, PageBatch, PageRun};
pub use random::{RandomReader, RangeRead};
pub use reader::{BlockingItems, SequentialReader, StoredFrame};
pub use writer::{BlockingWriter, StreamWriter, WriteSummary, WriterOptions};
