//! The working set of a lazily restored process: the page frames it
//! faulted on before they arrived in its first moments, in order, recorded by a lazy restore in
//! a sidecar object next to the image (`IMAGE.ws`), so that the next lazy
//! restores of the same image prefetch those frames first.
//!
//! The sidecar is a small JSON document (docs/FORMAT.md) naming the image
//! it was recorded for by its length and index checksum; a sidecar of
//! another image is ignored (and replaced by the next recording).

use anyhow::{Context, Result, bail};
use crstream_backends::{open_sink, open_source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the working set of the image at `image` is kept.
pub fn url_of(image: &str) -> String {
    format!("{image}.ws")
}

/// Larger sidecars are not read (a working set of a 1 TiB image, one
/// frame per MiB, fits in a few MiB).
const MAX_LEN: u64 = 16 << 20;

/// The sidecar of the image at `image` as stored, if there is one (read
/// while the image itself is opened: it costs no round trip of its own).
/// Errors are said once, as a warning, and mean none.
pub async fn fetch(image: &str) -> Option<Vec<u8>> {
    let url = url_of(image);
    match fetch_bytes(&url).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!("ignoring the working set at {url}: {e:#}");
            None
        }
    }
}

async fn fetch_bytes(url: &str) -> Result<Option<Vec<u8>>> {
    let source = match open_source(url).await {
        Ok(s) => s,
        Err(e) if e.io_kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if source.size().is_some_and(|n| n > MAX_LEN) {
        bail!("larger than {MAX_LEN} bytes");
    }
    let mut text = Vec::new();
    source
        .into_async_read(Default::default())
        .take(MAX_LEN)
        .read_to_end(&mut text)
        .await
        .context("reading it")?;
    Ok(Some(text))
}

/// The working set a fetched sidecar (`text`) records for the image
/// `identity` (see `RandomReader::identity`): frame offsets, or None when
/// it is of another image or unreadable (said once, as a warning).
pub fn parse(image: &str, text: &[u8], identity: (u64, u32)) -> Option<Vec<u64>> {
    match frames_of(text, identity) {
        Ok(frames) => Some(frames),
        Err(e) => {
            tracing::warn!("ignoring the working set at {}: {e:#}", url_of(image));
            None
        }
    }
}

fn frames_of(text: &[u8], identity: (u64, u32)) -> Result<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_slice(text).context("not JSON")?;
    if v["crstream_working_set"] != 1 {
        bail!("not a crstream working set (version 1)");
    }
    if v["image_bytes"] != identity.0 || v["index_crc32c"] != identity.1 {
        bail!("it was recorded for another image");
    }
    v["frames"]
        .as_array()
        .context("no frames")?
        .iter()
        .map(|f| f.as_u64().context("a frame offset that is not a number"))
        .collect()
}

/// Records the working set of the image `identity` at `image`: the frames
/// of the one it was restored with (`recorded`, maybe none) and after them
/// those this restore still `faulted` on (the last recording missed them: a
/// page of a frame prefetched in time leaves no trace), so that it grows
/// until a restore faults on none. Nothing is written when nothing is new;
/// a failure is a warning (the restore itself succeeded).
pub async fn record(image: &str, identity: (u64, u32), recorded: &[u64], faulted: &[u64]) {
    let known: std::collections::HashSet<u64> = recorded.iter().copied().collect();
    let new: Vec<u64> = faulted
        .iter()
        .filter(|f| !known.contains(f))
        .copied()
        .collect();
    if new.is_empty() {
        return;
    }
    let frames = [recorded, &new].concat();
    match save(image, identity, &frames).await {
        Ok(()) => tracing::info!(
            frames = frames.len(),
            url = url_of(image),
            "recorded the working set"
        ),
        Err(e) => tracing::warn!("could not record the working set: {e:#}"),
    }
}

/// Writes `frames` as the working set of the image `identity` at `image`
/// (replacing what is there, atomically).
async fn save(image: &str, identity: (u64, u32), frames: &[u64]) -> Result<()> {
    let url = url_of(image);
    let doc = serde_json::json!({
        "crstream_working_set": 1,
        "image_bytes": identity.0,
        "index_crc32c": identity.1,
        "frames": frames,
    });
    let mut sink = open_sink(&url, &Default::default())
        .await
        .with_context(|| format!("opening {url}"))?;
    sink.write_all(doc.to_string().as_bytes())
        .await
        .with_context(|| format!("writing {url}"))?;
    sink.commit()
        .await
        .with_context(|| format!("writing {url}"))?;
    Ok(())
}
