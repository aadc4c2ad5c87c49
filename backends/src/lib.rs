//! Where crstream's bytes live: a URL becomes a [`Sink`] to write a stream to
//! or a [`Source`] to read it from. Knows nothing about images or the stream
//! format.
//!
//! Locations (see [`parse_location`]):
//! - `-`: stdout / stdin;
//! - a path or `file:///abs/path`: a local file;
//! - `s3://bucket/key`, `gs://bucket/key`, `az://container/key`: object
//!   stores, configured from the environment like the `object_store` crate
//!   (`AWS_*`, `GOOGLE_*`, `AZURE_*`; see [`Env`]);
//! - `memory://name/key`: an in-process store shared by name, for tests.
//!
//! Writes are multipart uploads with several parts in flight and become
//! visible only on [`Sink::commit`]; reads of objects are parallel ranged GETs
//! delivered in order.

mod error;
mod http;
mod location;
mod sink;
mod source;

pub use error::BackendError;
pub use location::{Env, Location, parse_location};
pub use sink::{Sink, SinkOptions, open_sink};
pub use source::{ObjectReader, ReadOptions, Source, delete, exists, open_source};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_unpin<T: Send + Unpin>() {}
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_cross_tasks() {
        send_unpin::<Sink>();
        send_unpin::<Source>();
        send_unpin::<Box<dyn tokio::io::AsyncRead + Send + Unpin>>();
        send_sync::<ObjectReader>();
        send_sync::<Location>();
        send_sync::<BackendError>();
        send_sync::<Env>();
    }
}
