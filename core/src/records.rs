//! Records by kind and owner. Dump collects the records of each process
//! (and thread) as its kinds produce them; restore looks each up by type
//! and owner, and a record that is not there is a typed error naming both.

use crate::error::RestoreError;
use crstream_proto::record::Body;
use crstream_proto::{
    AioContexts, Credentials, FileLocks, FileOwners, FileTable, FsContext, Itimers, LoginUid,
    Membarrier, MemoryMap, MmFields, OomScoreAdj, PosixTimers, PrctlValues, ProcessCore,
    ProcessEntry, Rlimits, Scheduling, Seccomp, SignalState, SysvSemaphores, ThreadCore,
};

/// A record type: one variant of `Record.body`.
pub(crate) trait Record: Sized {
    const NAME: &'static str;
    fn into_body(self) -> Body;
    fn from_body(body: Body) -> Option<Self>;
    fn of(body: &Body) -> Option<&Self>;
    fn of_mut(body: &mut Body) -> Option<&mut Self>;
}

macro_rules! records {
    ($($ty:ident),* $(,)?) => {$(
        impl Record for $ty {
            const NAME: &'static str = stringify!($ty);
            fn into_body(self) -> Body {
                Body::$ty(self)
            }
            fn from_body(body: Body) -> Option<Self> {
                match body {
                    Body::$ty(r) => Some(r),
                    _ => None,
                }
            }
            fn of(body: &Body) -> Option<&Self> {
                match body {
                    Body::$ty(r) => Some(r),
                    _ => None,
                }
            }
            fn of_mut(body: &mut Body) -> Option<&mut Self> {
                match body {
                    Body::$ty(r) => Some(r),
                    _ => None,
                }
            }
        }
    )*};
}

records!(
    MemoryMap,
    FileTable,
    SignalState,
    ThreadCore,
    Credentials,
    Rlimits,
    FsContext,
    PrctlValues,
    MmFields,
    Itimers,
    PosixTimers,
    Scheduling,
    OomScoreAdj,
    LoginUid,
    Seccomp,
    FileLocks,
    FileOwners,
    Membarrier,
    AioContexts,
    SysvSemaphores,
    ProcessCore,
);

/// Whom a set of records belongs to, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Process(u32),
    Thread(u32),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Process(pid) => write!(f, "pid {pid}"),
            Owner::Thread(tid) => write!(f, "tid {tid}"),
        }
    }
}

/// The records of one process or thread: at most one of each type.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    owner: Owner,
    bodies: Vec<Body>,
}

impl Records {
    pub(crate) fn new(owner: Owner) -> Self {
        Self {
            owner,
            bodies: Vec::new(),
        }
    }

    pub(crate) fn owner(&self) -> Owner {
        self.owner
    }

    /// Adds a record; a second one of the same type replaces nothing and
    /// is a bug of the kind that made it (dump) or a bad image (restore).
    pub(crate) fn push<R: Record>(&mut self, r: R) {
        let body = r.into_body();
        debug_assert!(
            self.bodies
                .iter()
                .all(|b| std::mem::discriminant(b) != std::mem::discriminant(&body)),
            "two {} records for {}",
            R::NAME,
            self.owner
        );
        self.bodies.push(body);
    }

    /// Adds a record read from an image: refuses a second one of a type.
    pub(crate) fn insert(&mut self, body: Body) -> Result<(), RestoreError> {
        if self
            .bodies
            .iter()
            .any(|b| std::mem::discriminant(b) == std::mem::discriminant(&body))
        {
            return Err(RestoreError::DuplicateRecord {
                what: body_name(&body),
                owner: self.owner.to_string(),
            });
        }
        self.bodies.push(body);
        Ok(())
    }

    pub(crate) fn get<R: Record>(&self) -> Option<&R> {
        self.bodies.iter().find_map(R::of)
    }

    pub(crate) fn get_mut<R: Record>(&mut self) -> Option<&mut R> {
        self.bodies.iter_mut().find_map(R::of_mut)
    }

    /// The record of type R, or the typed error of a bad image.
    pub(crate) fn need<R: Record>(&self) -> Result<&R, RestoreError> {
        self.get().ok_or_else(|| RestoreError::MissingRecord {
            what: R::NAME,
            owner: self.owner.to_string(),
        })
    }

    /// Removes and returns the record of type R.
    pub(crate) fn take<R: Record>(&mut self) -> Option<R> {
        let i = self.bodies.iter().position(|b| R::of(b).is_some())?;
        R::from_body(self.bodies.remove(i))
    }

    /// Every record, in the order they were added.
    pub(crate) fn bodies(&self) -> &[Body] {
        &self.bodies
    }
}

/// The name of a record body, for messages.
pub(crate) fn body_name(body: &Body) -> &'static str {
    match body {
        Body::StreamDecl(_) => "StreamDecl",
        Body::Inventory(_) => "Inventory",
        Body::ProcessTree(_) => "ProcessTree",
        Body::ProcessCore(_) => "ProcessCore",
        Body::ThreadCore(_) => "ThreadCore",
        Body::MemoryMap(_) => "MemoryMap",
        Body::FileTable(_) => "FileTable",
        Body::SignalState(_) => "SignalState",
        Body::BlobInfo(_) => "BlobInfo",
        Body::UnlinkedFile(_) => "UnlinkedFile",
        Body::SysvShm(_) => "SysvShm",
        Body::Credentials(_) => "Credentials",
        Body::Rlimits(_) => "Rlimits",
        Body::FsContext(_) => "FsContext",
        Body::PrctlValues(_) => "PrctlValues",
        Body::MmFields(_) => "MmFields",
        Body::Itimers(_) => "Itimers",
        Body::PosixTimers(_) => "PosixTimers",
        Body::Scheduling(_) => "Scheduling",
        Body::OomScoreAdj(_) => "OomScoreAdj",
        Body::LoginUid(_) => "LoginUid",
        Body::Seccomp(_) => "Seccomp",
        Body::FileLocks(_) => "FileLocks",
        Body::FileOwners(_) => "FileOwners",
        Body::Membarrier(_) => "Membarrier",
        Body::AioContexts(_) => "AioContexts",
        Body::SysvSemaphores(_) => "SysvSemaphores",
    }
}

/// One live process of an image: its tree entry, its records and the
/// records of its threads (leader first), as kinds check and restore it.
pub(crate) struct ProcessImage<'a> {
    pub pid: i32,
    pub entry: &'a ProcessEntry,
    pub records: &'a Records,
    pub threads: Vec<&'a ThreadCore>,
    /// The records of each thread, leader first.
    pub thread_records: Vec<&'a Records>,
    /// The image's records version (`Inventory.format_version`).
    pub version: u32,
    /// Files the restorer hands in (`--inherit-fd`): (its fd, the key of
    /// the file of the image it stands for).
    pub inherit: &'a [(i32, String)],
}

impl ProcessImage<'_> {
    /// The record of type R of this process (see [`Records::need`]).
    pub(crate) fn need<R: Record>(&self) -> Result<&R, RestoreError> {
        self.records.need()
    }

    /// The record of type R of this process, for a record only a process
    /// with that kind of state has.
    pub(crate) fn get<R: Record>(&self) -> Option<&R> {
        self.records.get()
    }

    /// The record of type R of this process, which images of records
    /// version `since` and later always carry (None in older images).
    pub(crate) fn need_since<R: Record>(&self, since: u32) -> Result<Option<&R>, RestoreError> {
        need_since(self.records, self.version, since)
    }

    /// The same, for thread `i` (leader: 0).
    pub(crate) fn thread_need_since<R: Record>(
        &self,
        i: usize,
        since: u32,
    ) -> Result<Option<&R>, RestoreError> {
        need_since(self.thread_records[i], self.version, since)
    }
}

fn need_since<R: Record>(
    records: &Records,
    version: u32,
    since: u32,
) -> Result<Option<&R>, RestoreError> {
    if version < since {
        Ok(records.get())
    } else {
        records.need().map(Some)
    }
}
