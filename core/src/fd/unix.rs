//! Unix sockets: listening (with their backlog), bound, and connected ones
//! with the data queued on them. A connection accepted from a listener of
//! the tree is made again through that listener (connect, then accept), so
//! both ends keep their names; one with a name whose listener is gone (or
//! whose peer is) goes through a listener made at that name for the moment;
//! any other connected socket is rebuilt as one end of a socketpair whose
//! other end is its peer; a socket whose peer is gone comes back with EOF
//! after its queued data. A peer outside the tree is
//! refused, unless dump has --ext-unix-sk (CRIU's name): then a datagram
//! socket connects to its peer's name again, and a stream takes the fd the
//! restorer hands in for it (--inherit-fd fd[N]:socket:[INODE]).

use super::peer_ids::{Maker, Peer};
use super::socket::{
    Created, PeekError, apply_options, finish, fmt_sockaddr, is_socket_of, listener_backlog,
    peek_queue, read, refill, urgent_pending,
};
use super::{DumpFd, FdKind, Reopen, sock_diag, unix_file};
use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpTree, RestoreObjects};
use crate::stub::Stub;
use crate::sys::ids::Ids;
use crate::sys::socket;
use crstream_proto::{OpenFile, PeerIds, SocketFile};
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;

#[derive(Default)]
pub(super) struct UnixSockets {
    /// Dump: connected sockets seen: inode -> (pid, fd, peer inode), to
    /// check at the end that every peer is inside the tree.
    peers: HashMap<u64, (i32, i32, u64)>,
    /// Restore: the sockets created so far.
    created: Created,
    /// Restore: second end of a socketpair (by inode) -> (first end inode,
    /// its shutdown bits), applied once both records are known.
    pair_waiting: HashMap<u64, (u64, u32)>,
    /// Dump: peers outside the tree are allowed (--ext-unix-sk).
    ext_unix: bool,
    /// Dump: what restore needs to know of a connected socket: inode ->
    /// (type, bound, data queued, peer's name).
    connected: HashMap<u64, (i32, bool, bool, Vec<u8>)>,
    /// Dump: sockets whose peer is outside the tree, or a socket of the
    /// tree not connected back (a datagram socket's server).
    external: Vec<u64>,
    /// Dump: every unix socket of the tree, by inode: whether a name
    /// reaches it (bound, its file not removed).
    dumped: HashMap<u64, bool>,
    /// Dump: the files queued messages carry, for `fd/passed.rs`.
    passing: Vec<super::Passing>,
    /// Restore: what goes into the sockets once every fd table is in
    /// place (a file a message carries may be any fd of the tree), in
    /// order: the queues, then the shutdowns, then the ends that go.
    fills: Vec<Fill>,
    shutdowns: Vec<(OwnedFd, u32, String)>,
    closing: Vec<OwnedFd>,
    connects: Vec<(OwnedFd, Vec<u8>, String)>,
    /// Restore: the fd being opened (for the errors of its fill).
    opening_fd: u32,
    /// Restore: the listeners of the image by name (seen by `check`), so
    /// that a connection accepted from one comes back through it.
    listeners: std::cell::RefCell<HashMap<Vec<u8>, SocketFile>>,
    /// Restore: the name by which crstream reaches each socket of the
    /// image bound to a path (see [`reachable_name`]), by inode (seen by
    /// `check`).
    names: std::cell::RefCell<HashMap<u64, Vec<u8>>>,
    /// Restore: the peer each socket of the image held, by inode (seen by
    /// `check`), and crstream's own ids.
    peer_ids: std::cell::RefCell<HashMap<u64, Peer>>,
    own_ids: std::cell::OnceCell<Option<Ids>>,
}

/// A saved queue to send again through `sender` (to `to`, unconnected).
pub(super) struct Fill {
    sender: OwnedFd,
    to: Option<Vec<u8>>,
    pub socket: SocketFile,
    /// Process and fd the queue belongs to (for errors).
    pub pid: i32,
    fd: u32,
}

impl Fill {
    /// Sends the queue, each message with its files (`files`: by message).
    pub(super) fn send(&self, files: &[(u32, Vec<OwnedFd>)]) -> Result<(), RestoreError> {
        let s = &self.socket;
        refill(
            &self.sender,
            &s.queued,
            self.to.as_deref(),
            &s.queued_creds,
            files,
        )
        .map_err(|e| RestoreError::File {
            pid: self.pid,
            fd: self.fd,
            path: format!("socket:[{}]", s.inode),
            reason: format!("writing the queued data again: {e}"),
        })
    }
}

/// What the unix sockets made so far still need once every fd table is in
/// place: their queues, then their shutdowns, then the ends that go.
pub(super) struct Pending {
    pub fills: Vec<Fill>,
    pub shutdowns: Vec<(OwnedFd, u32, String)>,
    pub closing: Vec<OwnedFd>,
    /// Sockets to connect (to this name) once their queues are in.
    pub connects: Vec<(OwnedFd, Vec<u8>, String)>,
}

impl FdKind for UnixSockets {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let Some((dup, mut sf)) = read(d, |family| family == libc::AF_UNIX)? else {
            return Ok(false);
        };
        let ty = sf.r#type;
        if !matches!(
            ty,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        ) {
            return Err(d.refuse(format!("unix socket of type {ty}")));
        }
        sf.peer_ids = socket::peer_ids(&dup)
            .map_err(|e| d.error("reading the ids it holds for its peer", e))?
            .map(|(pid, ids)| PeerIds {
                uid: ids.uid,
                gid: ids.gid,
                groups: ids.groups,
                pid,
            });
        let diag = sock_diag::unix(sf.inode);
        let bound_file = diag.as_ref().ok().and_then(|q| q.file);
        sf.socket_file =
            unix_file::saved(d.pid, &sf.local_addr, bound_file).map_err(|why| d.refuse(why))?;
        // (No name leads to one whose file was removed.)
        let reachable =
            sf.local_addr.len() > 2 && !sf.socket_file.as_ref().is_some_and(|f| f.removed);
        self.dumped.insert(sf.inode, reachable);
        if sf.listening {
            let what = format!("unix listener {}", fmt_sockaddr(&sf.local_addr));
            let queues = diag.map(|q| (q.rqueue, q.wqueue));
            sf.backlog = listener_backlog(d, &what, queues)?;
        } else {
            match diag {
                Ok(q) => {
                    sf.peer_inode = q.peer;
                    sf.shutdown = q.shutdown as u32;
                    if q.peer == 0
                        && q.state == sock_diag::TCP_ESTABLISHED
                        && ty != libc::SOCK_DGRAM
                        && q.shutdown != 3
                    {
                        return Err(
                            d.refuse("connected unix socket whose peer cannot be identified")
                        );
                    }
                }
                Err(e) if !sf.peer_addr.is_empty() => {
                    return Err(d.refuse(format!(
                        "unix socket connected to {} but its peer cannot be identified (unix_diag: {e})",
                        fmt_sockaddr(&sf.peer_addr)
                    )));
                }
                Err(e) => {
                    tracing::debug!(
                        pid = d.pid,
                        fd = d.fd,
                        "unix_diag failed ({e}) on an unconnected socket"
                    )
                }
            }
            if ty == libc::SOCK_STREAM && urgent_pending(&dup) {
                return Err(d.refuse(
                    "unix stream socket with an out-of-band byte (MSG_OOB) not read yet, which \
                     would come back as ordinary data",
                ));
            }
            // Datagrams go back from sockets without a name (see `create`).
            let unnamed_senders = ty == libc::SOCK_DGRAM;
            let q = peek_queue(&dup, ty, unnamed_senders).map_err(|e| match e {
                PeekError::Io(e) => d.error("peeking the queued data", e),
                PeekError::Refuse(why) => d.refuse(why),
            })?;
            (sf.queued, sf.queued_creds) = (q.messages, q.creds);
            for (message, fds) in q.passed {
                self.passing.push(super::Passing {
                    socket_fd: d.fd,
                    message,
                    fds,
                });
            }
            if sf.peer_inode != 0 {
                self.peers.insert(sf.inode, (d.pid, d.fd, sf.peer_inode));
                self.ext_unix = d.ext_unix;
                self.connected.insert(
                    sf.inode,
                    (
                        ty,
                        sf.local_addr.len() > 2,
                        !sf.queued.is_empty(),
                        sf.peer_addr.clone(),
                    ),
                );
            } else if !sf.queued.is_empty()
                && ty == libc::SOCK_DGRAM
                && sf.local_addr.len() <= 2
                && sf.peer_addr.is_empty()
            {
                // (One whose peer is gone still names it: see `create`.)
                return Err(
                    d.refuse("unbound, unconnected unix datagram socket with queued messages")
                );
            }
        }
        finish(d, &dup, sf, f)?;
        Ok(true)
    }

    /// Unix sockets are rebuilt as pairs: both ends must be in the tree,
    /// connected to each other.
    fn dump_tree(&mut self, t: &mut DumpTree<'_>) -> Result<(), DumpError> {
        self.check_peers()?;
        let dumped: Vec<i32> = t.entries.iter().map(|e| e.pid as i32).collect();
        for p in t.processes.iter_mut() {
            let Some(table) = p.records.get_mut::<crstream_proto::FileTable>() else {
                continue;
            };
            for s in table.files.iter_mut().filter_map(|f| f.socket.as_mut()) {
                if s.family == libc::AF_UNIX && self.external.contains(&s.inode) {
                    s.external_peer = true;
                }
                // A peer outside the tree has no PID the restored tree
                // could give it back.
                if let Some(peer) = s.peer_ids.as_mut().filter(|p| !dumped.contains(&p.pid)) {
                    peer.pid = 0;
                }
            }
        }
        Ok(())
    }

    fn restores(&self, f: &OpenFile) -> bool {
        is_socket_of(f, &[libc::AF_UNIX])
    }

    /// A damaged image must not pass files with a message it lacks (they
    /// would be dropped) or more than one message can carry.
    fn check(&self, pid: i32, f: &OpenFile) -> Result<(), RestoreError> {
        let Some(s) = f.socket.as_ref() else {
            return Ok(());
        };
        if s.listening && s.local_addr.len() > 2 {
            self.listeners
                .borrow_mut()
                .insert(s.local_addr.clone(), s.clone());
        }
        if unix_file::path_of(&s.local_addr).is_some() {
            self.names.borrow_mut().insert(s.inode, reachable_name(s));
        }
        if let Some(peer) = &s.peer_ids {
            self.peer_ids.borrow_mut().insert(
                s.inode,
                Peer {
                    pid: peer.pid,
                    ids: Ids {
                        uid: peer.uid,
                        gid: peer.gid,
                        groups: peer.groups.clone(),
                    },
                },
            );
        }
        for m in &s.passed {
            if m.message as usize >= s.queued.len() || m.files.is_empty() || m.files.len() > 253 {
                return Err(RestoreError::Image(format!(
                    "pid {pid} fd {}: {} files passed with message {} of {}",
                    f.fd,
                    m.files.len(),
                    m.message,
                    s.queued.len()
                )));
            }
        }
        Ok(())
    }

    fn take_passed(&mut self) -> Vec<super::Passing> {
        std::mem::take(&mut self.passing)
    }

    fn take_fills(&mut self) -> Option<Pending> {
        Some(Pending {
            fills: std::mem::take(&mut self.fills),
            shutdowns: std::mem::take(&mut self.shutdowns),
            closing: std::mem::take(&mut self.closing),
            connects: std::mem::take(&mut self.connects),
        })
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |what: &str, e: io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let s = f.socket.as_ref().expect("restores() checked it");
        let stubs = objects.stubs;
        self.opening_fd = f.fd;
        let fd = match self.created.again(pid, f, s.inode) {
            Some(again) => again.map_err(|e| ferr("dup", e))?,
            None => self.create(pid, s, stubs, &ferr)?,
        };
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
        Ok(Reopen::Created(fd))
    }
}

impl UnixSockets {
    fn check_peers(&mut self) -> Result<(), DumpError> {
        let mut v: Vec<_> = self.peers.iter().collect();
        v.sort();
        for (ino, &(pid, fd, peer)) in v {
            match self.peers.get(&peer) {
                Some(&(_, _, back)) if back == *ino => {}
                Some(&(ppid, pfd, _)) => {
                    return Err(DumpError::UnsupportedFile {
                        pid,
                        fd,
                        what: format!(
                            "socket:[{ino}] (unix socket connected to socket:[{peer}] (pid {ppid} fd {pfd}), which is connected elsewhere: one-way unix connections are not supported)"
                        ),
                    });
                }
                None => {
                    let (ty, bound, queued, name) = self.connected[ino].clone();
                    // A datagram socket connected to one of the tree that
                    // is not connected back (its server): it connects to
                    // that socket's name again, as to one outside.
                    let one_way = ty == libc::SOCK_DGRAM && self.dumped.get(&peer) == Some(&true);
                    let refuse = |why: String| DumpError::UnsupportedFile {
                        pid,
                        fd,
                        what: format!(
                            "socket:[{ino}] (unix socket connected to socket:[{peer}]{}, which is \
                             outside the dumped process tree{why})",
                            if name.len() > 2 {
                                format!(" at {}", fmt_sockaddr(&name))
                            } else {
                                String::new()
                            }
                        ),
                    };
                    if !self.ext_unix && !one_way {
                        return Err(refuse(
                            ": --ext-unix-sk saves it (a datagram socket connects to the same \
                             name again; a stream is handed in with --inherit-fd at restore)"
                                .into(),
                        ));
                    }
                    if queued && (ty != libc::SOCK_DGRAM || !bound) {
                        return Err(refuse(": data is queued on it, which would be lost".into()));
                    }
                    self.external.push(*ino);
                }
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        pid: i32,
        s: &SocketFile,
        stubs: &[&Stub],
        ferr: &dyn Fn(&str, io::Error) -> RestoreError,
    ) -> Result<OwnedFd, RestoreError> {
        if s.external_peer {
            return self.create_external(pid, s, stubs, ferr);
        }
        // Connected to a peer closed at dump time: a stream (shut down both
        // ways), or a datagram socket (getpeername still answers: the end
        // of a socketpair, with the messages its peer sent before it went,
        // or a socket connected to a named one; its next send fails with
        // ECONNREFUSED).
        let orphan = s.peer_inode == 0
            && !s.listening
            && if s.r#type == libc::SOCK_DGRAM {
                !s.peer_addr.is_empty()
            } else {
                s.shutdown == 3
            };
        if s.peer_inode == 0 && !orphan {
            return self.create_unpaired(pid, s, stubs, ferr);
        }
        if self.created.get(s.inode).is_some() {
            // Second end of a pair created for its peer.
            let mine = self.created.hand_out(s.inode).map_err(|e| ferr("dup", e))?;
            apply_options(&mine, &s.options).map_err(|e| ferr("socket options", e))?;
            let peer = self
                .created
                .get(s.peer_inode)
                .ok_or_else(|| ferr("registry", io::Error::other("peer socket missing")))?;
            let (sender, peer) = (super::dup(peer), super::dup(peer));
            self.fill(pid, s, sender.map_err(|e| ferr("dup", e))?, None);
            // Once data of both directions is in: the shutdowns.
            if let Some((first, bits)) = self.pair_waiting.remove(&s.inode) {
                let peer = peer.map_err(|e| ferr("dup", e))?;
                self.shutdowns
                    .push((peer, bits, format!("shutdown of socket:[{first}]")));
            }
            let own = super::dup(&mine).map_err(|e| ferr("dup", e))?;
            self.shutdowns.push((own, s.shutdown, "shutdown".into()));
            return Ok(mine);
        }
        let (a, b) = match self.through_listener(pid, s, orphan, stubs, ferr)? {
            Some(pair) => pair,
            None => self
                .maker(s.inode, stubs)
                .socketpair(s.r#type)
                .map_err(|e| ferr("socketpair", e))?,
        };
        apply_options(&a, &s.options).map_err(|e| ferr("socket options", e))?;
        if orphan && s.r#type == libc::SOCK_DGRAM {
            if s.local_addr.len() > 2 {
                unix_file::bind(&a, &s.local_addr, s.socket_file.as_ref(), ferr)?;
            }
            name_the_gone_peer(&b, &s.peer_addr);
        }
        self.fill(pid, s, super::dup(&b).map_err(|e| ferr("dup", e))?, None);
        if orphan {
            // The peer was closed at dump time: closing ours (once the
            // queue is in) gives EOF after the queued data, as the process
            // saw it.
            self.closing.push(b);
            let own = super::dup(&a).map_err(|e| ferr("dup", e))?;
            self.shutdowns
                .push((own, s.shutdown & 1, "shutdown".into()));
        } else {
            self.created.keep(s.peer_inode, b);
            self.pair_waiting
                .insert(s.peer_inode, (s.inode, s.shutdown));
        }
        self.created.keep(s.inode, a);
        self.created.hand_out(s.inode).map_err(|e| ferr("dup", e))
    }

    /// The peer socket `inode` held, if any.
    fn peer_of(&self, inode: u64) -> Option<Peer> {
        self.peer_ids.borrow().get(&inode).cloned()
    }

    /// Who makes the call (socketpair, listen or connect) that gives
    /// socket `inode` its peer again (SO_PEERCRED, SO_PEERGROUPS): that
    /// process, if it is in the tree, acting as the saved ids; otherwise a
    /// thread of crstream acting as them (or crstream, where they are its
    /// own).
    fn maker<'s>(&self, inode: u64, stubs: &[&'s Stub]) -> Maker<'s> {
        let Some(peer) = self.peer_of(inode) else {
            return Maker::Crstream;
        };
        if let Some(stub) = stubs.iter().find(|s| peer.pid > 0 && s.vpid == peer.pid) {
            return Maker::Stub(stub, peer.ids);
        }
        let own = self.own_ids.get_or_init(|| Ids::current().ok());
        match own.as_ref() == Some(&peer.ids) {
            true => Maker::Crstream,
            false => Maker::As(peer.ids),
        }
    }

    /// A connection accepted from a listener of the image, made again
    /// through that listener (made now if it is not yet): (`s`'s end, its
    /// peer's), both with their names as they were: the accepted end has
    /// the listener's, which its client sees as its peer's, and the client
    /// its own if it bound one. None (a socketpair then, nameless) for
    /// other pairs.
    fn through_listener(
        &mut self,
        pid: i32,
        s: &SocketFile,
        orphan: bool,
        stubs: &[&Stub],
        ferr: &dyn Fn(&str, io::Error) -> RestoreError,
    ) -> Result<Option<(OwnedFd, OwnedFd)>, RestoreError> {
        if s.r#type == libc::SOCK_DGRAM {
            return Ok(None);
        }
        // The accepted end has the listener's name; its client, a name of
        // its own if it bound one.
        let listeners = self.listeners.borrow();
        let found = match (listeners.get(&s.local_addr), listeners.get(&s.peer_addr)) {
            (Some(l), None) => Some((true, l.clone())),
            (None, Some(l)) => Some((false, l.clone())),
            _ => None,
        };
        drop(listeners);
        let Some((accepted_end, listener)) = found.filter(|(_, l)| l.r#type == s.r#type && !orphan)
        else {
            return self.through_temporary_listener(s, stubs, ferr);
        };
        let (name, client_name) = if accepted_end {
            (&s.local_addr, &s.peer_addr)
        } else {
            (&s.peer_addr, &s.local_addr)
        };
        if self.created.get(listener.inode).is_none() {
            // Its own fd shares this one later (`Created::again`).
            drop(self.create_unpaired(pid, &listener, stubs, ferr)?);
        }
        let l = self
            .created
            .get(listener.inode)
            .ok_or_else(|| ferr("registry", io::Error::other("listener missing")))?;
        let client = client_socket(s.r#type, client_name, ferr)?;
        let (accepted_inode, client_inode) = match accepted_end {
            true => (s.inode, s.peer_inode),
            false => (s.peer_inode, s.inode),
        };
        // The client gets the ids the listener holds at its connect: those
        // of the listen() before, which may have been called again since
        // with other ids.
        let relisten = self.peer_of(client_inode) != self.peer_of(listener.inode);
        if relisten {
            self.maker(client_inode, stubs)
                .listen(l, backlog(&listener))
                .map_err(|e| ferr("listen as the client's peer", e))?;
        }
        // By the name crstream reaches it by (a relative one from its
        // directory); the accepted end's name is the listener's all the same.
        self.maker(accepted_inode, stubs)
            .connect(&client, &reachable_name(&listener))
            .map_err(|e| ferr(&format!("connect to {}", fmt_sockaddr(name)), e))?;
        if relisten {
            self.maker(listener.inode, stubs)
                .listen(l, backlog(&listener))
                .map_err(|e| ferr("listen", e))?;
        }
        let client_inode = rustix::fs::fstat(&client)
            .map_err(|e| ferr("fstat", e.into()))?
            .st_ino;
        // Ours, not a connection from outside that came meanwhile (it
        // would be ours to drop).
        let accepted = loop {
            let a = rustix::net::accept_with(l, rustix::net::SocketFlags::CLOEXEC)
                .map_err(|e| ferr("accept", e.into()))?;
            let inode = rustix::fs::fstat(&a)
                .map_err(|e| ferr("fstat", e.into()))?
                .st_ino;
            if sock_diag::unix(inode).is_ok_and(|d| d.peer == client_inode) {
                break a;
            }
        };
        Ok(Some(if accepted_end {
            (accepted, client)
        } else {
            (client, accepted)
        }))
    }

    /// A connection with a name whose listener is not in the image (closed
    /// since, or the peer was closed): made through a listener that exists
    /// only for the moment, so that both ends still have their names (a
    /// socketpair has none). `s` is taken as the accepted end when it has a
    /// name (the names come out the same either way). None when neither
    /// end has a name.
    fn through_temporary_listener(
        &mut self,
        s: &SocketFile,
        stubs: &[&Stub],
        ferr: &dyn Fn(&str, io::Error) -> RestoreError,
    ) -> Result<Option<(OwnedFd, OwnedFd)>, RestoreError> {
        let named = |a: &[u8]| a.len() > 2;
        let accepted_end = named(&s.local_addr);
        let (name, client_name) = match (named(&s.local_addr), named(&s.peer_addr)) {
            (false, false) => return Ok(None),
            (true, _) => (&s.local_addr, &s.peer_addr),
            (false, true) => (&s.peer_addr, &s.local_addr),
        };
        let client = client_socket(s.r#type, client_name, ferr)?;
        let (accepted_inode, client_inode) = match accepted_end {
            true => (s.inode, s.peer_inode),
            false => (s.peer_inode, s.inode),
        };
        let accepted = connect_through_temporary_listener(
            &client,
            s.r#type,
            name,
            [
                self.maker(client_inode, stubs),
                self.maker(accepted_inode, stubs),
            ],
        )
        .map_err(|e| {
            ferr(
                &format!("a listener at {} for the moment", fmt_sockaddr(name)),
                e,
            )
        })?;
        Ok(Some(if accepted_end {
            (accepted, client)
        } else {
            (client, accepted)
        }))
    }

    /// Sends `s`'s saved queue through `sender` (to `to`) once every fd
    /// table is in place ([`UnixSockets::take_fills`]).
    fn fill(&mut self, pid: i32, s: &SocketFile, sender: OwnedFd, to: Option<Vec<u8>>) {
        if s.queued.is_empty() {
            return;
        }
        self.fills.push(Fill {
            sender,
            to,
            socket: s.clone(),
            pid,
            fd: self.opening_fd,
        });
    }

    /// A socket connected outside the tree (not handed in: see
    /// `fd::inherited`): a datagram socket connects to its peer's name.
    fn create_external(
        &mut self,
        pid: i32,
        s: &SocketFile,
        stubs: &[&Stub],
        ferr: &dyn Fn(&str, io::Error) -> RestoreError,
    ) -> Result<OwnedFd, RestoreError> {
        if s.r#type != libc::SOCK_DGRAM || s.peer_addr.len() <= 2 {
            return Err(ferr(
                "unix socket connected outside the tree",
                io::Error::other(format!(
                    "hand in a socket for it: --inherit-fd fd[N]:socket:[{}]",
                    s.inode
                )),
            ));
        }
        let sock = self.create_unpaired(pid, s, stubs, ferr)?;
        // After its queue is in (datagrams queued before the connect,
        // which a connected socket would refuse).
        let own = super::dup(&sock).map_err(|e| ferr("dup", e))?;
        let what = format!("connect to {}", fmt_sockaddr(&s.peer_addr));
        // A peer of the tree by the name crstream reaches it by (getpeername
        // says the name the peer was bound to, however it was reached).
        let to = (self.names.borrow().get(&s.peer_inode).cloned()).unwrap_or(s.peer_addr.clone());
        self.connects.push((own, to, what));
        Ok(sock)
    }

    /// A listening, bound or unbound socket with no peer.
    fn create_unpaired(
        &mut self,
        pid: i32,
        s: &SocketFile,
        stubs: &[&Stub],
        ferr: &dyn Fn(&str, io::Error) -> RestoreError,
    ) -> Result<OwnedFd, RestoreError> {
        let sock =
            socket::socket(libc::AF_UNIX, s.r#type, s.protocol).map_err(|e| ferr("socket", e))?;
        apply_options(&sock, &s.options).map_err(|e| ferr("socket options", e))?;
        let bound = s.local_addr.len() > 2;
        if bound {
            unix_file::bind(&sock, &s.local_addr, s.socket_file.as_ref(), ferr)?;
        }
        if s.listening {
            self.maker(s.inode, stubs)
                .listen(&sock, backlog(s))
                .map_err(|e| ferr("listen", e))?;
        } else if bound && !s.queued.is_empty() {
            // Datagrams queued on a bound, unconnected socket: send them
            // again to its name (their senders' addresses are lost).
            let tmp = socket::socket(libc::AF_UNIX, s.r#type, 0).map_err(|e| ferr("socket", e))?;
            self.fill(pid, s, tmp, Some(reachable_name(s)));
        }
        self.created.keep(s.inode, sock);
        self.created.hand_out(s.inode).map_err(|e| ferr("dup", e))
    }
}

/// Gives `peer`, the stand-in for a datagram socket's peer that was closed
/// by the dump (closed again once the queue is in), that peer's name, so
/// that getpeername says it still: a path under a private root (the real
/// one is neither needed nor touched), an abstract name where it is free.
fn name_the_gone_peer(peer: &OwnedFd, name: &[u8]) {
    let named = match unix_file::path_of(name) {
        Some(path) => scratch_dir().and_then(|scratch| {
            let bound = bind_under(&scratch, peer, name, &path);
            let _ = std::fs::remove_dir_all(&scratch);
            bound
        }),
        None if name.len() > 2 => socket::bind(peer, name),
        None => Ok(()),
    };
    if let Err(e) = named {
        tracing::debug!(
            "naming the stand-in of a closed peer {}: {e}",
            fmt_sockaddr(name)
        );
    }
}

/// The name by which crstream reaches socket `s` bound to a path: its own,
/// or for a relative one, the path from the directory it is relative to,
/// where its file is now (renamed since: its new name), when that fits a
/// sockaddr_un.
fn reachable_name(s: &SocketFile) -> Vec<u8> {
    let Some(name) = unix_file::path_of(&s.local_addr) else {
        return s.local_addr.clone();
    };
    let file = s.socket_file.clone().unwrap_or_default();
    let mut path = unix_file::from_our_root(&name, &file);
    // Renamed into place since (restore renames it as well).
    if !file.renamed_to.is_empty() {
        path.set_file_name(&file.renamed_to);
    }
    unix_sockaddr(&path).unwrap_or_else(|| s.local_addr.clone())
}

/// The client end of a connection remade through a listener: a socket of
/// type `ty`, bound to `name` again if it had one.
fn client_socket(
    ty: i32,
    name: &[u8],
    ferr: &dyn Fn(&str, io::Error) -> RestoreError,
) -> Result<OwnedFd, RestoreError> {
    let client = socket::socket(libc::AF_UNIX, ty, 0).map_err(|e| ferr("socket", e))?;
    if name.len() > 2 {
        unix_file::bind(&client, name, None, ferr)?;
    }
    Ok(client)
}

/// Connects `client` to a listener of type `ty` made at `name` for the
/// moment and returns the accepted end, whose name is `name`. A path is
/// bound by a thread with a root of its own (chroot into a scratch
/// directory), so the real path is neither needed nor touched, whatever is
/// there now; an abstract name is bound where it is, and must be free.
/// `as_listener` listens and `as_client` connects.
fn connect_through_temporary_listener(
    client: &OwnedFd,
    ty: i32,
    name: &[u8],
    [as_listener, as_client]: [Maker<'_>; 2],
) -> io::Result<OwnedFd> {
    let accept = |l: &OwnedFd| -> io::Result<OwnedFd> {
        Ok(rustix::net::accept_with(
            l,
            rustix::net::SocketFlags::CLOEXEC,
        )?)
    };
    let Some(path) = unix_file::path_of(name) else {
        let l = socket::socket(libc::AF_UNIX, ty, 0)?;
        socket::bind(&l, name)?;
        as_listener.listen(&l, 1)?;
        as_client.connect(client, name)?;
        return accept(&l);
    };
    let scratch = scratch_dir()?;
    let made = (|| {
        let l = socket::socket(libc::AF_UNIX, ty, 0)?;
        bind_under(&scratch, &l, name, &path)?;
        as_listener.listen(&l, 1)?;
        // Seen from outside, the listener's path is under the scratch
        // directory; too long a path there is connected to from inside, by
        // crstream acting as the client's ids.
        // ("..": inside, it stops at the private root; outside, it would
        // leave the scratch directory.)
        let outside = scratch.join(path.strip_prefix("/").unwrap_or(&path));
        let goes_up = path
            .components()
            .any(|c| c == std::path::Component::ParentDir);
        match unix_sockaddr(&outside).filter(|_| !goes_up) {
            Some(outside) => as_client.connect(client, &outside)?,
            None => {
                let inside = as_client.in_crstream();
                in_private_root(&scratch, || inside.connect(client, name))?
            }
        }
        accept(&l)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    made
}

/// A new empty directory of crstream's, to chroot a binding thread into.
pub(super) fn scratch_dir() -> io::Result<std::path::PathBuf> {
    let scratch = std::env::temp_dir().join(format!(
        ".crstream-unix-{}-{}",
        std::process::id(),
        NEXT_SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&scratch)?;
    Ok(scratch)
}

/// Binds `sock` to `addr`, a name for `path`, on a thread whose root is
/// `root` (made with the directories the path needs there): the real
/// path is neither needed nor touched.
pub(super) fn bind_under(
    root: &std::path::Path,
    sock: &OwnedFd,
    addr: &[u8],
    path: &std::path::Path,
) -> io::Result<()> {
    in_private_root(root, || {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        socket::bind(sock, addr)
    })
}

/// Runs `f` on a thread whose working directory is `dir`.
pub(super) fn in_directory<T: Send>(
    dir: &std::path::Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    on_thread_of_its_own_fs(|| {
        std::env::set_current_dir(dir)?;
        f()
    })
}

/// Runs `f` on a thread whose root and working directory are `root`.
fn in_private_root<T: Send>(
    root: &std::path::Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    on_thread_of_its_own_fs(|| {
        std::os::unix::fs::chroot(root)?;
        std::env::set_current_dir("/")?;
        f()
    })
}

/// Runs `f` on a thread with a root and working directory of its own
/// (unshared), which `f` may change: crstream's other threads keep theirs.
fn on_thread_of_its_own_fs<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a plain syscall.
                if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread binding it panicked")))
    })
}

/// A raw sockaddr_un naming `path`, if it fits.
fn unix_sockaddr(path: &std::path::Path) -> Option<Vec<u8>> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= 108 {
        return None;
    }
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(bytes);
    a.push(0);
    Some(a)
}

static NEXT_SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The listen() backlog to set again.
pub(super) fn backlog(s: &SocketFile) -> i32 {
    if s.backlog == 0 {
        libc::SOMAXCONN
    } else {
        s.backlog.min(i32::MAX as u32) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::super::socket::send_all;
    use super::super::testing::{created, dump_own, dump_with, read_avail};
    use super::*;
    use crate::sys::ids;
    use std::os::fd::AsRawFd;

    #[test]
    fn unix_stream_pair_with_queued_data() {
        let (a, b) = socket::socketpair(libc::SOCK_STREAM).unwrap();
        send_all(&b, b"hello ", None).unwrap();
        send_all(&b, b"there", None).unwrap();
        send_all(&a, b"world", None).unwrap();
        let mut kind = UnixSockets::default();
        let fa = dump_with(&mut kind, a.as_raw_fd()).unwrap();
        let fb = dump_with(&mut kind, b.as_raw_fd()).unwrap();
        kind.check_peers().unwrap();
        let (sa, sb) = (fa.socket.as_ref().unwrap(), fb.socket.as_ref().unwrap());
        assert_eq!(sa.family, libc::AF_UNIX);
        assert_eq!(sa.peer_inode, sb.inode);
        assert_eq!(sb.peer_inode, sa.inode);
        assert_eq!(sa.queued, vec![b"hello there".to_vec()]);
        assert_eq!(sb.queued, vec![b"world".to_vec()]);
        // Nothing consumed and the peek offset is disabled again.
        assert_eq!(
            socket::getsockopt_int(&a, libc::SOL_SOCKET, socket::SO_PEEK_OFF).unwrap(),
            -1
        );
        assert_eq!(read_avail(&a), b"hello there");
        assert_eq!(read_avail(&b), b"world");

        let mut kind = UnixSockets::default();
        let na = created(&mut kind, &fa);
        let nb = created(&mut kind, &fb);
        assert_eq!(read_avail(&na), b"hello there");
        assert_eq!(read_avail(&nb), b"world");
        send_all(&na, b"ping", None).unwrap();
        assert_eq!(read_avail(&nb), b"ping");
    }

    #[test]
    fn unix_dgram_pair_keeps_message_boundaries() {
        let (a, b) = socket::socketpair(libc::SOCK_DGRAM).unwrap();
        let big = vec![0x5au8; 100_000];
        for m in [&b"m1"[..], b"message two", &big] {
            send_all(&b, m, None).unwrap();
        }
        let mut kind = UnixSockets::default();
        let fa = dump_with(&mut kind, a.as_raw_fd()).unwrap();
        let fb = dump_with(&mut kind, b.as_raw_fd()).unwrap();
        kind.check_peers().unwrap();
        let sa = fa.socket.as_ref().unwrap();
        assert_eq!(
            sa.queued,
            vec![b"m1".to_vec(), b"message two".to_vec(), big.clone()]
        );
        assert_eq!(
            socket::getsockopt_int(&a, libc::SOL_SOCKET, socket::SO_PEEK_OFF).unwrap(),
            -1
        );
        drop((a, b));
        let mut kind = UnixSockets::default();
        let na = created(&mut kind, &fa);
        let _nb = created(&mut kind, &fb);
        let mut buf = vec![0u8; 200_000];
        for want in [&b"m1"[..], b"message two", &big] {
            let (n, _) =
                rustix::net::recv(&na, &mut buf[..], rustix::net::RecvFlags::DONTWAIT).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }

    /// Messages queued on a socket that gets its senders' credentials
    /// (SO_PASSCRED) come back with them; so do its other SO_PASS* options
    /// (SO_PASSSEC was lost).
    #[test]
    fn queued_messages_keep_their_senders_credentials() {
        let (a, b) = socket::socketpair(libc::SOCK_DGRAM).unwrap();
        socket::setsockopt_int(&a, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        const SO_PASSSEC: i32 = 34;
        const SO_PASSPIDFD: i32 = 76;
        for o in [SO_PASSSEC, SO_PASSPIDFD] {
            socket::setsockopt_int(&a, libc::SOL_SOCKET, o, 1).unwrap();
        }
        let me = std::process::id() as i32;
        for (m, uid, gid) in [(&b"first"[..], 1234, 5678), (b"second", 0, 0)] {
            socket::send_with_creds(&b, m, None, (me, uid, gid)).unwrap();
        }
        let mut kind = UnixSockets::default();
        let fa = dump_with(&mut kind, a.as_raw_fd()).unwrap();
        let fb = dump_with(&mut kind, b.as_raw_fd()).unwrap();
        let sa = fa.socket.as_ref().unwrap();
        assert_eq!(sa.queued_creds.len(), 2);
        assert_eq!(
            (sa.queued_creds[0].uid, sa.queued_creds[0].gid),
            (1234, 5678)
        );
        drop((a, b));
        let mut kind = UnixSockets::default();
        let na = created(&mut kind, &fa);
        let _nb = created(&mut kind, &fb);
        for o in [libc::SO_PASSCRED, SO_PASSSEC, SO_PASSPIDFD] {
            assert_eq!(
                socket::getsockopt_int(&na, libc::SOL_SOCKET, o).unwrap(),
                1,
                "{o}"
            );
        }
        let mut buf = [0u8; 64];
        for (want, uid, gid) in [(&b"first"[..], 1234, 5678), (b"second", 0, 0)] {
            let (n, anc) = socket::peek(&na, &mut buf, true).unwrap().unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(anc.creds, Some((me, uid, gid)));
            rustix::net::recv(&na, &mut buf[..], rustix::net::RecvFlags::DONTWAIT).unwrap();
        }
    }

    /// Bytes queued on a stream socket that gets its senders' credentials
    /// (SO_PASSCRED) come back with them, in runs by sender.
    #[test]
    fn stream_bytes_keep_their_senders_credentials() {
        let (a, b) = socket::socketpair(libc::SOCK_STREAM).unwrap();
        socket::setsockopt_int(&a, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        let me = std::process::id() as i32;
        for (m, uid, gid) in [
            (&b"one "[..], 1234, 5678),
            (b"two ", 1234, 5678),
            (b"three", 0, 0),
        ] {
            socket::send_with(&b, m, None, Some((me, uid, gid)), &[]).unwrap();
        }
        let mut kind = UnixSockets::default();
        let fa = dump_with(&mut kind, a.as_raw_fd()).unwrap();
        let fb = dump_with(&mut kind, b.as_raw_fd()).unwrap();
        let sa = fa.socket.as_ref().unwrap();
        assert_eq!(sa.queued, vec![b"one two ".to_vec(), b"three".to_vec()]);
        let ids: Vec<_> = sa.queued_creds.iter().map(|c| (c.uid, c.gid)).collect();
        assert_eq!(ids, vec![(1234, 5678), (0, 0)]);
        drop((a, b));
        let mut kind = UnixSockets::default();
        let na = created(&mut kind, &fa);
        let _nb = created(&mut kind, &fb);
        let mut buf = [0u8; 64];
        for (want, uid, gid) in [(&b"one two "[..], 1234, 5678), (b"three", 0, 0)] {
            let (n, anc) = socket::peek(&na, &mut buf, false).unwrap().unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(anc.creds, Some((me, uid, gid)));
            rustix::net::recv(&na, &mut buf[..n], rustix::net::RecvFlags::DONTWAIT).unwrap();
        }
    }

    /// A stream's queue is cut after each message that carries files;
    /// where such a message begins no peek tells, so the bytes queued
    /// before it since the last cut go with it.
    #[test]
    fn a_stream_queue_is_cut_after_each_message_with_files() {
        use std::os::fd::AsFd;
        let (a, b) = socket::socketpair(libc::SOCK_STREAM).unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        send_all(&b, b"abc", None).unwrap();
        socket::send_with(&b, b"def", None, None, &[r.as_fd()]).unwrap();
        send_all(&b, b"ghi", None).unwrap();
        let mut kind = UnixSockets::default();
        let fa = dump_with(&mut kind, a.as_raw_fd()).unwrap();
        let sa = fa.socket.as_ref().unwrap();
        assert_eq!(sa.queued, vec![b"abcdef".to_vec(), b"ghi".to_vec()]);
        let passed = kind.take_passed();
        assert_eq!(passed.len(), 1);
        assert_eq!((passed[0].message, passed[0].fds.len()), (0, 1));
        assert_eq!(read_avail(&a), b"abcdefghi", "nothing consumed");
    }

    /// The end of a datagram socketpair whose peer was closed: the
    /// messages the peer sent come back, then the send fails as before.
    #[test]
    fn a_datagram_socket_whose_peer_is_gone_keeps_its_messages() {
        let (a, b) = socket::socketpair(libc::SOCK_DGRAM).unwrap();
        for m in [&b"one"[..], b"two"] {
            send_all(&b, m, None).unwrap();
        }
        drop(b);
        let mut kind = UnixSockets::default();
        let fa = dump_with(&mut kind, a.as_raw_fd()).unwrap();
        kind.check_peers().unwrap();
        let sa = fa.socket.as_ref().unwrap();
        assert_eq!(sa.queued, vec![b"one".to_vec(), b"two".to_vec()]);
        let n = created(&mut UnixSockets::default(), &fa);
        let mut buf = [0u8; 16];
        for sock in [&a, &n] {
            for want in [&b"one"[..], b"two"] {
                let (len, _) =
                    rustix::net::recv(sock, &mut buf[..], rustix::net::RecvFlags::DONTWAIT)
                        .unwrap();
                assert_eq!(&buf[..len], want);
            }
            assert_eq!(
                rustix::net::send(sock, b"x", rustix::net::SendFlags::DONTWAIT),
                Err(rustix::io::Errno::CONNREFUSED)
            );
        }
    }

    /// A datagram queued from a sender with a name would come back from
    /// none (the receiver's answer would go nowhere): refused by name.
    #[test]
    fn a_queued_datagram_from_a_named_sender_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, tx) = (dir.path().join("rx"), dir.path().join("tx"));
        let r = std::os::unix::net::UnixDatagram::bind(&rx).unwrap();
        let t = std::os::unix::net::UnixDatagram::unbound().unwrap();
        t.send_to(b"anonymous", &rx).unwrap();
        let f = dump_own(r.as_raw_fd()).unwrap();
        assert_eq!(f.socket.unwrap().queued, vec![b"anonymous".to_vec()]);
        let named = std::os::unix::net::UnixDatagram::bind(&tx).unwrap();
        named.send_to(b"answer me", &rx).unwrap();
        let e = dump_own(r.as_raw_fd()).unwrap_err().to_string();
        assert!(
            e.contains("a queued message from") && e.contains("/tx"),
            "{e}"
        );
    }

    #[test]
    fn unix_peer_outside_the_tree_is_refused() {
        let (a, _b) = socket::socketpair(libc::SOCK_STREAM).unwrap();
        let mut kind = UnixSockets::default();
        dump_with(&mut kind, a.as_raw_fd()).unwrap();
        let e = kind.check_peers().unwrap_err().to_string();
        assert!(e.contains("outside the dumped process tree"), "{e}");
    }

    /// Each restored socket holds for its peer the ids the saved one held,
    /// however its connection comes back: a socketpair, a listener (called
    /// listen() again with other ids since its client connected), its
    /// connection, and connections whose listener is gone (one named by a
    /// path with ".." above /). Both ends keep their names.
    fn peer_ids(fd: &OwnedFd) -> Option<Ids> {
        socket::peer_ids(fd).unwrap().map(|(_, ids)| ids)
    }

    #[test]
    fn the_ids_sockets_hold_for_their_peers_come_back() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let as_ids = |uid: u32, groups: &[u32]| Ids {
            uid,
            gid: uid + 1,
            groups: groups.to_vec(),
        };
        let (pair, first, again, client, gone, client2) = (
            as_ids(1001, &[7]),
            as_ids(1003, &[]),
            as_ids(1005, &[8, 9]),
            as_ids(1007, &[10]),
            as_ids(1009, &[]),
            as_ids(1011, &[12]),
        );
        let (a, b) = ids::run_as(&pair, || socket::socketpair(libc::SOCK_STREAM)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The third name climbs above / (where ".." stops).
        let up = std::path::Path::new("/..").join(dir.path().strip_prefix("/").unwrap());
        let (name, name2, name3) = (
            unix_sockaddr(&dir.path().join("l")).unwrap(),
            unix_sockaddr(&dir.path().join("gone")).unwrap(),
            unix_sockaddr(&up.join("up")).unwrap(),
        );
        let stream = || socket::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).unwrap();
        let connect_as = |ids: &Ids, name: &[u8]| {
            let c = stream();
            ids::run_as(ids, || socket::connect(&c, name)).unwrap();
            c
        };
        let accept = |l: &OwnedFd| rustix::net::accept(l).unwrap();
        let l = stream();
        socket::bind(&l, &name).unwrap();
        ids::run_as(&first, || socket::listen(&l, 4)).unwrap();
        let c = connect_as(&client, &name);
        let ac = accept(&l);
        ids::run_as(&again, || socket::listen(&l, 4)).unwrap();
        // A connection whose listener (made as `gone`) is closed since.
        let listener_gone = |name: &[u8]| {
            let l = stream();
            socket::bind(&l, name).unwrap();
            ids::run_as(&gone, || socket::listen(&l, 4)).unwrap();
            let c = connect_as(&client2, name);
            (c, accept(&l))
        };
        let (c2, ac2) = listener_gone(&name2);
        let (c3, ac3) = listener_gone(&name3);
        // What each holds for its peer.
        let cases = [
            (a, &pair),
            (b, &pair),
            (l, &again),
            (c, &first),
            (ac, &client),
            (c2, &gone),
            (ac2, &client2),
            (c3, &gone),
            (ac3, &client2),
        ];
        let mut kind = UnixSockets::default();
        let files: Vec<OpenFile> = cases
            .iter()
            .map(|(fd, ids)| {
                assert_eq!(peer_ids(fd).as_ref(), Some(*ids));
                dump_with(&mut kind, fd.as_raw_fd()).unwrap()
            })
            .collect();
        kind.check_peers().unwrap();
        let (originals, expected): (Vec<OwnedFd>, Vec<&Ids>) = cases.into_iter().unzip();
        drop(originals);
        let mut kind = UnixSockets::default();
        for f in &files {
            kind.check(0, f).unwrap();
        }
        let restored: Vec<OwnedFd> = files.iter().map(|f| created(&mut kind, f)).collect();
        for (ids, (fd, f)) in expected.iter().zip(restored.iter().zip(&files)) {
            assert_eq!(peer_ids(fd).as_ref(), Some(*ids), "fd {}", f.fd);
        }
        assert_eq!(socket::name(&restored[7], true).unwrap(), name3);
        assert_eq!(socket::name(&restored[8], false).unwrap(), name3);
        // The listener's next client gets the ids of its last listen().
        let next = stream();
        socket::connect(&next, &name).unwrap();
        assert_eq!(peer_ids(&next), Some(again));
        assert_eq!(Ids::current().unwrap().uid, 0);
    }

    #[test]
    fn unix_listener_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // listen() again only updates the backlog.
        socket::listen(&l, 9).unwrap();
        let f = dump_own(l.as_raw_fd()).unwrap();
        let s = f.socket.as_ref().unwrap();
        assert!(s.listening);
        assert_eq!(s.backlog, 9);
        drop(l); // leaves the socket file behind, as a dead process would
        let n = created(&mut UnixSockets::default(), &f);
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        rustix::net::accept(&n).unwrap();
    }
}
