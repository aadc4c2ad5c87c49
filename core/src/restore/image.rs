//! The metadata of an image, read up to the end-of-metadata frame: the
//! inventory, the tree, the records of every process and thread (owned by
//! the stream they arrive in), and the objects the tree shares (memfds and
//! deleted files are recreated as their contents arrive).
//!
//! Images of records version 1 carry one `ProcessCore` per process: it is
//! split here into the records of its kinds, so that kinds only ever see
//! the current layout.

use crate::error::RestoreError;
use crate::records::{Owner, Records, body_name};
use crate::unlinked::Recreator;
use crstream_proto::record::Body;
use crstream_proto::{
    FsContext, Inventory, Itimers, PosixTimers, PrctlValues, ProcessCore, ProcessTree, Rlimits,
    StreamKind, SysvShm,
};
use crstream_streamer::{ImageSource, Item};
use std::collections::HashMap;

pub(crate) struct Image {
    pub inventory: Inventory,
    pub tree: ProcessTree,
    processes: HashMap<u32, Records>,
    threads: HashMap<u32, Records>,
    /// Memfds and deleted files, recreated as their contents arrived.
    pub unlinked: Recreator,
    pub sysv: Vec<SysvShm>,
}

impl Image {
    /// The records of process `pid` (none: an empty set, whose lookups
    /// fail with a typed error).
    pub(crate) fn process(&self, pid: u32) -> Option<&Records> {
        self.processes.get(&pid)
    }

    pub(crate) fn thread(&self, tid: u32) -> Option<&Records> {
        self.threads.get(&tid)
    }
}

/// What a record read so far belongs to.
#[derive(Default)]
struct Reading {
    inventory: Option<Inventory>,
    tree: Option<ProcessTree>,
    /// Declared streams: id -> owner of the records it carries.
    owners: HashMap<u32, Owner>,
    processes: HashMap<u32, Records>,
    threads: HashMap<u32, Records>,
    unlinked: Recreator,
    sysv: Vec<SysvShm>,
    /// Blobs of images older than `UnlinkedFile` (deleted fds' contents).
    legacy_blobs: HashMap<u32, Vec<u8>>,
}

pub(crate) fn read_metadata(source: &mut dyn ImageSource) -> Result<Image, RestoreError> {
    let mut r = Reading::default();
    loop {
        match source.next_item()? {
            None | Some(Item::End { .. }) => {
                return Err(RestoreError::Image(
                    "the image ends before the end of metadata".into(),
                ));
            }
            Some(Item::MetadataEnd) => return r.finish(),
            Some(Item::Blob { stream_id, data }) if r.unlinked.takes(stream_id) => {
                r.unlinked.write(stream_id, &data)?
            }
            Some(Item::Blob { stream_id, data }) => {
                // Only an old image's deleted fd names its blob itself.
                let named = r
                    .processes
                    .values()
                    .filter_map(|p| p.get::<crstream_proto::FileTable>())
                    .flat_map(|t| &t.files)
                    .any(|f| f.deleted && f.unlinked_file == 0 && f.contents_stream == stream_id);
                if !named {
                    return Err(RestoreError::Image(format!(
                        "blob stream {stream_id} belongs to no UnlinkedFile or deleted fd \
                         record before it"
                    )));
                }
                r.legacy_blobs
                    .entry(stream_id)
                    .or_default()
                    .extend_from_slice(&data)
            }
            Some(Item::Pages { .. }) => {
                return Err(RestoreError::Image(
                    "pages before the end of metadata".into(),
                ));
            }
            Some(Item::Record { stream_id, body }) => r.record(stream_id, body)?,
        }
    }
}

impl Reading {
    fn record(&mut self, stream: u32, body: Body) -> Result<(), RestoreError> {
        if stream != 0 {
            let owner = self.owners.get(&stream).copied().ok_or_else(|| {
                RestoreError::Image(format!(
                    "{} record in stream {stream}, which is not a process or thread stream",
                    body_name(&body)
                ))
            })?;
            return match owner {
                Owner::Process(pid) => self
                    .processes
                    .entry(pid)
                    .or_insert_with(|| Records::new(owner))
                    .insert(body),
                Owner::Thread(tid) => self
                    .threads
                    .entry(tid)
                    .or_insert_with(|| Records::new(owner))
                    .insert(body),
            };
        }
        match body {
            Body::Inventory(i) => self.inventory = Some(i),
            Body::ProcessTree(t) => self.tree = Some(t),
            Body::UnlinkedFile(u) => self.unlinked.add(u)?,
            Body::SysvShm(seg) => self.sysv.push(seg),
            Body::StreamDecl(d) => {
                let owner = match d.kind() {
                    StreamKind::Process => Owner::Process(d.pid),
                    StreamKind::Thread => Owner::Thread(d.tid),
                    _ => return Ok(()),
                };
                self.owners.insert(d.id, owner);
            }
            Body::BlobInfo(_) => {}
            other => {
                return Err(RestoreError::Image(format!(
                    "{} record in the control stream (stream 0)",
                    body_name(&other)
                )));
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Image, RestoreError> {
        let inventory = self.inventory.take().ok_or(RestoreError::MissingRecord {
            what: "Inventory",
            owner: "the image".into(),
        })?;
        if inventory.format_version > crstream_proto::RECORDS_VERSION {
            return Err(RestoreError::Incompatible(format!(
                "the image has records version {}; this crstream reads versions up to {}",
                inventory.format_version,
                crstream_proto::RECORDS_VERSION
            )));
        }
        let mut tree = self.tree.take().ok_or(RestoreError::MissingRecord {
            what: "ProcessTree",
            owner: "the image".into(),
        })?;
        self.check_owners()?;
        upgrade_v1(&mut tree, &mut self.processes)?;
        self.adopt_legacy_deleted()?;
        self.unlinked.check_complete()?;
        Ok(Image {
            inventory,
            tree,
            processes: self.processes,
            threads: self.threads,
            unlinked: self.unlinked,
            sysv: self.sysv,
        })
    }

    /// Records that name their process or thread must name the one whose
    /// stream carries them.
    fn check_owners(&self) -> Result<(), RestoreError> {
        let mismatch = |what: &str, named: u32, owner: Owner| {
            RestoreError::Image(format!(
                "a {what} record of {named} in the stream of {owner}"
            ))
        };
        for (&pid, r) in &self.processes {
            let owner = r.owner();
            let named = [
                r.get::<crstream_proto::MemoryMap>()
                    .map(|m| ("MemoryMap", m.pid)),
                r.get::<crstream_proto::FileTable>()
                    .map(|m| ("FileTable", m.pid)),
                r.get::<crstream_proto::SignalState>()
                    .map(|m| ("SignalState", m.pid)),
                r.get::<ProcessCore>().map(|m| ("ProcessCore", m.pid)),
            ];
            for (what, n) in named.into_iter().flatten() {
                if n != pid {
                    return Err(mismatch(what, n, owner));
                }
            }
        }
        for (&tid, r) in &self.threads {
            if let Some(t) = r.get::<crstream_proto::ThreadCore>()
                && t.tid != tid
            {
                return Err(mismatch("ThreadCore", t.tid, r.owner()));
            }
        }
        Ok(())
    }

    /// Deleted fds of images written before `UnlinkedFile` existed carry
    /// their contents in a blob of their own.
    fn adopt_legacy_deleted(&mut self) -> Result<(), RestoreError> {
        for records in self.processes.values_mut() {
            let Some(table) = records.get_mut::<crstream_proto::FileTable>() else {
                continue;
            };
            for f in table.files.iter_mut() {
                if f.deleted && f.unlinked_file == 0 && f.dup_of_fd.is_none() {
                    let data = self.legacy_blobs.get(&f.contents_stream).ok_or_else(|| {
                        RestoreError::Image(format!(
                            "pid {} fd {}: contents of deleted {} (blob stream {}) missing",
                            table.pid,
                            f.fd,
                            crate::paths::show(&f.path),
                            f.contents_stream
                        ))
                    })?;
                    if data.len() as u64 != f.size {
                        return Err(RestoreError::Image(format!(
                            "pid {} fd {}: saved contents hold {} bytes, the file had {}",
                            table.pid,
                            f.fd,
                            data.len(),
                            f.size
                        )));
                    }
                    self.unlinked.adopt_legacy(f, data)?;
                }
            }
        }
        self.legacy_blobs.clear();
        Ok(())
    }
}

/// Records version 1: splits each process's `ProcessCore` into the records
/// of its kinds, and moves what belongs to the tree into its entry.
fn upgrade_v1(
    tree: &mut ProcessTree,
    processes: &mut HashMap<u32, Records>,
) -> Result<(), RestoreError> {
    for (&pid, records) in processes.iter_mut() {
        let Some(core) = records.take::<ProcessCore>() else {
            continue;
        };
        if let Some(e) = tree.processes.iter_mut().find(|e| e.pid == pid) {
            e.exit_signal = core.exit_signal;
            e.cmdline = core.cmdline.clone();
            e.comm = core.comm.clone();
        }
        let split = [
            Body::FsContext(FsContext {
                cwd: core.cwd,
                root: core.root,
                umask: core.umask,
                cwd_unlinked: 0,
            }),
            Body::PrctlValues(PrctlValues {
                personality: core.personality,
                pdeath_signal: core.pdeath_signal,
                child_subreaper: core.child_subreaper != 0,
                ..Default::default()
            }),
            Body::Rlimits(Rlimits {
                limits: core.rlimits,
            }),
            Body::Itimers(Itimers {
                real: core.itimer_real,
                r#virtual: core.itimer_virtual,
                prof: core.itimer_prof,
            }),
            Body::PosixTimers(PosixTimers {
                timers: core.posix_timers,
            }),
        ];
        for body in split
            .into_iter()
            .chain(core.creds.map(Body::Credentials))
            .chain(core.mm.map(Body::MmFields))
        {
            records.insert(body)?;
        }
    }
    Ok(())
}
