//! What a dump hands its supervisor as it goes (`DumpOptions::handoff`), so
//! that should the dumping process die outright, the supervisor can undo
//! what it left half done: connections taken from accept queues go back,
//! and memory snapshots (children of the tree's processes that report no
//! exit) are reaped by their processes. Each item is one message: a tag
//! byte and one fd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A connection taken from a listener's accept queue.
pub(crate) const CONNECTION: u8 = b'q';
/// A pidfd of a live dump's memory snapshot.
pub(crate) const SNAPSHOT: u8 = b's';

/// Hands `fd` (a `kind` item) to the supervisor through `to`.
pub(crate) fn hand(to: &OwnedFd, kind: u8, fd: BorrowedFd<'_>) -> io::Result<()> {
    crate::sys::socket::send_with(to, &[kind], None, None, &[fd]).map(|_| ())
}

/// What the supervisor holds of a dump's handoff, taken from its end of
/// the socket as items come (the socket's buffer, not read, would take
/// only a few hundred of them).
#[derive(Default)]
pub struct Handed {
    connections: Vec<OwnedFd>,
    snapshots: Vec<OwnedFd>,
}

impl Handed {
    /// Takes every item waiting on `from`, without blocking.
    pub fn take_from(&mut self, from: impl AsFd) -> io::Result<()> {
        for (tag, fd) in crate::sys::socket::receive_tagged_fds(from)? {
            match tag {
                SNAPSHOT => self.snapshots.push(fd),
                _ => self.connections.push(fd),
            }
        }
        Ok(())
    }
}

/// After a dump's worker (`worker`) died outright while the tree of `root`
/// runs on: the TCP connections are put right (see
/// `fd::tcp::recover_tcp`), then each snapshot still there is reaped by its
/// process, last since that stops the process a moment. `from`: the
/// supervisor's end of the handoff, for items not taken yet. Returns what
/// could not be done.
pub fn recover_from_dead_dump(
    worker: i32,
    root: i32,
    mut handed: Handed,
    from: Option<&OwnedFd>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(from) = from
        && let Err(e) = handed.take_from(from)
    {
        problems.push(format!("what the dump handed over: {e}"));
    }
    let tree = tree_of(root);
    problems.extend(crate::fd::tcp::recover_tcp(
        worker,
        &tree,
        handed.connections,
    ));
    problems.extend(
        handed
            .snapshots
            .iter()
            .filter_map(|s| crate::snapshot::reap_abandoned(s, &tree)),
    );
    problems
}

/// `root` and every process under it (one gone meanwhile has none).
fn tree_of(root: i32) -> Vec<i32> {
    let mut pids = vec![root];
    let mut i = 0;
    while let Some(&pid) = pids.get(i) {
        i += 1;
        pids.extend(crate::proc::children(pid).unwrap_or_default());
    }
    pids
}
