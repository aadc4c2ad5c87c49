//! Paths as the image keeps them: bytes, since a Linux file name need not
//! be UTF-8 (any byte but NUL and '/' may be in it). They become `Path`s
//! to open and are shown lossily in messages only.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What /proc appends to the link of a file that was unlinked.
pub(crate) const DELETED: &[u8] = b" (deleted)";

/// The path to open.
pub(crate) fn path(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

/// The path for a message.
pub(crate) fn show(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Whether a /proc link names a file that cannot be reopened by its path.
pub(crate) fn is_deleted(link: &[u8]) -> bool {
    link.ends_with(DELETED)
}

/// A /proc link without its " (deleted)" mark.
pub(crate) fn undeleted(link: &[u8]) -> &[u8] {
    link.strip_suffix(DELETED).unwrap_or(link)
}
