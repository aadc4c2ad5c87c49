//! The file a unix socket's bind to a path makes. The socket keeps the
//! name it was bound to whatever becomes of the file: daemons bind to a
//! temporary name and rename the file into place (haproxy), remove it, or
//! chmod and chown it (postgres makes its socket 0777, screen keeps its
//! state in the mode bits). Dump finds the file by the inode unix_diag
//! gives and saves where it is and its mode and owner; restore binds to
//! the same name and makes the file so again. A relative name (postfix's
//! "public/pickup") is found from the process's working directory, and
//! bound again from there. An absolute name of a chrooted process is found
//! under its root, where it was bound after the chroot, or from
//! crstream's root, where it was bound before (haproxy binds its sockets,
//! then chroots), and bound again where it was found.
//!
//! A file already at a path restore binds to is removed only when it is a
//! stale socket file (no live socket is bound to it, as a dumped and
//! killed process leaves it), never another process's live socket; a
//! socket whose file was removed is bound with a root of its own, so the
//! path is not touched at all.

use super::sock_diag;
use super::unix::{bind_under, in_directory, scratch_dir};
use crate::error::RestoreError;
use crate::sys::socket;
use crstream_proto::UnixSocketFile;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The path of a sockaddr_un bound to a path (not abstract, not unnamed).
pub(super) fn path_of(addr: &[u8]) -> Option<PathBuf> {
    let p = addr
        .get(2..)
        .filter(|p| p.first().is_some_and(|&b| b != 0))?;
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    Some(PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&p[..end]),
    ))
}

/// Where the file of a socket of process `pid`, bound to `addr`, is now:
/// `file` is its (inode, device) from unix_diag. None when unix_diag names
/// no file. A name that is a relative path was resolved against the
/// working directory the process had when it bound it: its file must be
/// found from the one it has now (Err: where it is cannot be told).
pub(super) fn saved(
    pid: i32,
    addr: &[u8],
    file: Option<(u64, u64)>,
) -> Result<Option<UnixSocketFile>, String> {
    let Some(name) = path_of(addr) else {
        return Ok(None);
    };
    let Some((ino, dev)) = file else {
        return Ok(None);
    };
    // Where the file may be (a path from our root), each with the root
    // restore binds it under there (empty: ours).
    let mut places = Vec::new();
    let relative_to = if name.is_absolute() {
        // Through the process's root: a chrooted process's paths are its
        // own; or, bound before its chroot, from ours.
        let in_root = Path::new("/proc").join(pid.to_string()).join("root");
        let root = std::fs::read_link(&in_root).map_err(|e| format!("its root: {e}"))?;
        let under = |r: &Path| r.join(name.strip_prefix("/").unwrap_or(&name));
        if root == Path::new("/") {
            places.push((under(&in_root), Vec::new()));
        } else {
            places.push((under(&in_root), root.into_os_string().into_encoded_bytes()));
            places.push((name.clone(), Vec::new()));
        }
        Vec::new()
    } else {
        let cwd = PathBuf::from(format!("/proc/{pid}/cwd"));
        let dir = std::fs::read_link(&cwd).map_err(|e| format!("its working directory: {e}"))?;
        places.push((cwd.join(&name), Vec::new()));
        dir.into_os_string().into_encoded_bytes()
    };
    let is_it = |md: &std::fs::Metadata| md.ino() == ino && md.dev() == dev;
    let kept = |md: std::fs::Metadata, renamed_to: String, root: &[u8]| UnixSocketFile {
        renamed_to,
        removed: false,
        mode: md.permissions().mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        relative_to: relative_to.clone(),
        root: root.to_vec(),
    };
    let found = |(at, root): &(PathBuf, Vec<u8>)| {
        if let Some(md) = std::fs::symlink_metadata(at).ok().filter(is_it) {
            return Some(kept(md, String::new(), root));
        }
        at.parent().and_then(|dir| {
            std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                let md = e.metadata().ok().filter(is_it)?;
                Some(kept(md, e.file_name().to_string_lossy().into_owned(), root))
            })
        })
    };
    let renamed = places.iter().find_map(found);
    if renamed.is_none() && !relative_to.is_empty() {
        return Err(format!(
            "unix socket bound to the relative name {}: its file is not where that name leads \
             from the working directory ({}), so where it is cannot be told",
            name.display(),
            String::from_utf8_lossy(&relative_to)
        ));
    }
    Ok(Some(renamed.unwrap_or(UnixSocketFile {
        removed: true,
        ..Default::default()
    })))
}

/// Binds `sock` to `addr` again, and makes its file as `file` says (see
/// the module comment).
pub(super) fn bind(
    sock: &std::os::fd::OwnedFd,
    addr: &[u8],
    file: Option<&UnixSocketFile>,
    ferr: &dyn Fn(&str, io::Error) -> RestoreError,
) -> Result<(), RestoreError> {
    let what = || format!("bind to {}", super::socket::fmt_sockaddr(addr));
    let Some(path) = path_of(addr) else {
        return socket::bind(sock, addr).map_err(|e| ferr(&what(), e));
    };
    if file.is_some_and(|f| f.removed) {
        let scratch = scratch_dir().map_err(|e| ferr("making a scratch directory", e))?;
        let bound = bind_under(&scratch, sock, addr, &path);
        let _ = std::fs::remove_dir_all(&scratch);
        return bound.map_err(|e| ferr(&what(), e));
    }
    let Some(f) = file else {
        clear_stale(&path).map_err(|e| ferr(&what(), e))?;
        return socket::bind(sock, addr).map_err(|e| ferr(&what(), e));
    };
    // A relative name is bound from the directory it was relative to, an
    // absolute one under the root it was found under.
    let at = from_our_root(&path, f);
    clear_stale(&at).map_err(|e| ferr(&what(), e))?;
    match (directory(f), bytes_path(&f.root)) {
        (Some(dir), _) => in_directory(dir, || socket::bind(sock, addr)),
        (None, Some(root)) => bind_under(root, sock, addr, &path),
        (None, None) => socket::bind(sock, addr),
    }
    .map_err(|e| ferr(&what(), e))?;
    let made = make_as_saved(&at, f).map_err(|(what, e)| ferr(&what, e));
    if made.is_err() {
        // The file this bind made goes with the failed restore.
        let _ = std::fs::remove_file(&at);
    }
    made
}

/// The path, from crstream's root, of the file of a socket bound to `name`
/// (see `saved`), by the name it was bound to.
pub(super) fn from_our_root(name: &Path, f: &UnixSocketFile) -> PathBuf {
    match (directory(f), bytes_path(&f.root)) {
        (Some(dir), _) => dir.join(name),
        (None, Some(root)) => root.join(name.strip_prefix("/").unwrap_or(name)),
        (None, None) => name.to_path_buf(),
    }
}

/// The directory a relative name is relative to (None: an absolute one).
pub(super) fn directory(f: &UnixSocketFile) -> Option<&Path> {
    bytes_path(&f.relative_to)
}

/// A path saved as bytes; None if empty.
fn bytes_path(bytes: &[u8]) -> Option<&Path> {
    let p = Path::new(std::ffi::OsStr::from_bytes(bytes));
    (!p.as_os_str().is_empty()).then_some(p)
}

/// Gives the file a bind just made at `path` the owner and mode `f` says,
/// and moves it to its name there.
fn make_as_saved(path: &Path, f: &UnixSocketFile) -> Result<(), (String, io::Error)> {
    let set = |e| (format!("giving {} its owner and mode", path.display()), e);
    std::os::unix::fs::lchown(path, Some(f.uid), Some(f.gid)).map_err(set)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode)).map_err(set)?;
    if !f.renamed_to.is_empty() {
        let to = path.with_file_name(&f.renamed_to);
        let rename = |e| {
            (
                format!("renaming {} to {}", path.display(), to.display()),
                e,
            )
        };
        clear_stale(&to).map_err(rename)?;
        std::fs::rename(path, &to).map_err(rename)?;
    }
    Ok(())
}

/// Removes a stale socket file at `path` (one a process that is gone left:
/// no live socket is bound to it). Another process's live socket file, or
/// anything that is not a socket, is an error: never removed.
fn clear_stale(path: &Path) -> io::Result<()> {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    if !md.file_type().is_socket() {
        return Err(io::Error::other(format!(
            "{} exists and is not a socket",
            path.display()
        )));
    }
    if sock_diag::unix_file_in_use(md.ino(), md.dev())? {
        return Err(io::Error::other(format!(
            "{} is the file of a live socket (another process's), which restore does not take",
            path.display()
        )));
    }
    std::fs::remove_file(path)
}
