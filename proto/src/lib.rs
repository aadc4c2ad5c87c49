//! crstream image records, generated from `proto/crstream.proto`.
//!
//! This crate knows nothing but the records: see docs/FORMAT.md for how they
//! travel in a stream.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/crstream.v1.rs"));

/// Format version written in stream headers and `Inventory.format_version`.
pub const FORMAT_VERSION: u16 = 1;

/// Version of the record layout, written in `Inventory.format_version`:
/// 1 = one `ProcessCore` per process (crstream 0.1.0); 2 = one record per
/// kind of process state; 3 = credentials, seccomp and scheduling per
/// thread, oom_score_adj and login uid; 4 = pages shared copy-on-write
/// with the parent (`VmArea.inherited`); 5 = PIDs inside the tree's own PID
/// namespace (`Inventory.pid_namespace`), pipes whose other end is outside
/// (`PipeFile.external`); 6 = files passed in queued unix messages
/// (`SocketFile.passed`); 7 = terminals outside the tree
/// (`OpenFile.external_tty`) and typed lines ended by VEOF
/// (`PtyFile.input_eof`); 8 = connections in a listener's accept queue
/// (`SocketFile.accept_queue`); 9 = the PID and ids a unix socket holds
/// for its peer, where the peer is in the tree or its ids are not root's
/// (`SocketFile.peer_ids`); 10 = where the file of a unix socket bound to
/// a path is now, its mode and owner (`SocketFile.socket_file`); 11 =
/// files made with O_TMPFILE made so again (`UnlinkedFile.tmpfile_flags`),
/// files removed under the name they were opened by but linked under
/// another (`OpenFile.handle`); 12 = state a reader of 11 would drop
/// (`VmArea.madvise` bits for mseal and whether a shared area may be made
/// writable, `VmArea.handle`, `PrctlValues.mdwe` and `coredump_filter`);
/// 13 = guard regions (`VmArea.guards`), multicast memberships
/// (`SocketFile.ip_memberships`) and the directory a unix socket's
/// relative name is relative to (`UnixSocketFile.relative_to`), an
/// autogroup's nice value (`PrctlValues.autogroup_nice`), memory protection
/// keys (`PrctlValues.pkeys`, `VmArea.pkey`), a thread's memory policy and
/// speculation mitigations (`ThreadCore.mempolicy`, `spec_*`), the packets
/// of a packet-mode pipe (`PipeFile.packets`), mlockall's MCL_FUTURE
/// (`PrctlValues.mlockall`); 14 = a timerfd's settime flags
/// (`TimerFdFile.settime_flags`); 15 = files of a temporary file system
/// mapped shared, saved with their contents to be made again if gone
/// (`UnlinkedKind::Transient`, `UnlinkedFile.dir_*`); 16 = a thread's
/// machine-check kill policy and whether RDTSC or CPUID fault in it
/// (`ThreadCore.machine_check_kill`, `tsc_faults`, `cpuid_faults`). Readers
/// read every version up to theirs.
pub const RECORDS_VERSION: u32 = 16;

/// The version written for an image with nothing of version 16 in it.
pub const RECORDS_VERSION_WITHOUT_THREAD_TRAPS: u32 = 15;

/// The version written for an image with nothing of version 15 in it.
pub const RECORDS_VERSION_WITHOUT_TRANSIENT_FILES: u32 = 14;

/// The version written for an image with nothing of version 14 in it.
pub const RECORDS_VERSION_WITHOUT_TIMER_FLAGS: u32 = 13;

/// The version written for an image with nothing of version 13 in it.
pub const RECORDS_VERSION_WITHOUT_GUARDS: u32 = 12;

/// The version written for an image with nothing of version 12 in it.
pub const RECORDS_VERSION_WITHOUT_SEALS: u32 = 11;

/// The version written for an image with nothing of version 11 in it.
pub const RECORDS_VERSION_WITHOUT_FILE_HANDLES: u32 = 10;

/// The version written for an image with nothing of version 10 in it.
pub const RECORDS_VERSION_WITHOUT_SOCKET_FILES: u32 = 9;

/// The version written for an image with nothing of version 9 in it.
pub const RECORDS_VERSION_WITHOUT_PEER_IDS: u32 = 8;

/// The version written for an image with nothing of version 8 in it.
pub const RECORDS_VERSION_WITHOUT_ACCEPT_QUEUES: u32 = 7;

/// The version written for an image with nothing of version 7 in it.
pub const RECORDS_VERSION_WITHOUT_EXTERNAL_TERMINALS: u32 = 6;

/// The version written for an image with nothing of version 6 in it.
pub const RECORDS_VERSION_WITHOUT_PASSED_FILES: u32 = 5;

/// The version written for an image with nothing of version 5 in it (a
/// tree in crstream's PID namespace, no external pipe), which readers of
/// version 4 can read.
pub const RECORDS_VERSION_WITHOUT_PID_NAMESPACE: u32 = 4;
