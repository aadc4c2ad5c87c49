//! Command-line interface definition (clap).

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "crstream",
    version,
    about = "Checkpoint and restore Linux processes as one stream, straight to and from object storage",
    long_about = "Checkpoint and restore Linux processes as one stream, straight to and from object storage.\n\n\
Locations: `-` is stdin/stdout; a path or file:///path is a local file; s3://BUCKET/KEY, gs://BUCKET/KEY and \
az://CONTAINER/KEY use the usual AWS_*, GOOGLE_* and AZURE_* environment variables (AWS_ENDPOINT_URL and \
AWS_ALLOW_HTTP=true for S3-compatible servers); memory://NAME/KEY is an in-process store for tests.",
    after_help = "Examples:\n  crstream dump -t 1234 | crstream upload s3://bucket/app.img\n  crstream restore -i s3://bucket/app.img\n  crstream inspect app.img --json"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); CRSTREAM_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Checkpoint a running process into a stream
    Dump(DumpArgs),
    /// Restore a process from a stream
    Restore(RestoreArgs),
    /// Check whether this kernel and these privileges support dump and restore
    Check(CheckArgs),
    /// Copy stdin to a location (atomically: the object appears only when complete)
    Upload(UploadArgs),
    /// Copy a location to stdout
    Download(DownloadArgs),
    /// Show what a stream holds, verifying every checksum
    Inspect(InspectArgs),
    /// Start a service warm from a cached checkpoint, or cold and checkpoint it once ready
    /// (CI caching of warm processes)
    Run(RunArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecArg {
    /// none into a local file (compressing costs more time than writing the
    /// bytes), zstd anywhere else (a pipe, an object store)
    Auto,
    Zstd,
    Lz4,
    None,
}

impl CodecArg {
    /// The codec for a destination; `local_file`: see `Sink::is_local_file`.
    pub fn codec(self, local_file: bool) -> crstream_proto::Codec {
        match self {
            Self::Auto if local_file => crstream_proto::Codec::None,
            Self::Auto => crstream_proto::Codec::Zstd,
            Self::Zstd => crstream_proto::Codec::Zstd,
            Self::Lz4 => crstream_proto::Codec::Lz4,
            Self::None => crstream_proto::Codec::None,
        }
    }
}

/// Storage tuning shared by the commands that write to a location.
#[derive(Args, Debug, Clone)]
pub struct SinkArgs {
    /// Multipart upload part size in MiB (S3 needs at least 5)
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub part_size: usize,
    /// Parts uploaded at the same time. Memory used is about part-size x (parts-in-flight + 1)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parts_in_flight: usize,
}

/// Storage tuning shared by the commands that read from a location.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Size of each ranged read in MiB
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub chunk_size: usize,
    /// Ranged reads in flight (read-ahead). Memory used is about chunk-size x reads-in-flight
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub reads_in_flight: usize,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// PID of the process to checkpoint
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub pid: i32,
    /// Where to write the image: -, a path, file://, s3://, gs://, az://, memory://
    #[arg(short, long, default_value = "-", value_name = "DEST")]
    pub output: String,
    /// Let the process continue after the dump (default: it is killed after a successful
    /// dump). It is frozen only while its state is read: its pages are written afterwards
    /// from a copy-on-write snapshot, as they were at the freeze
    #[arg(long)]
    pub leave_running: bool,
    /// With --leave-running: keep the process frozen until all its pages are written
    #[arg(long, requires = "leave_running")]
    pub no_live: bool,
    /// The tree is a job started from an interactive shell: save its terminal fds
    /// (restore --shell-job gives it the restorer's terminal) instead of refusing them
    #[arg(long)]
    pub shell_job: bool,
    /// Accepted for CRIU's command lines: file locks (flock, POSIX, OFD, leases)
    /// are always saved, and taken again on restore
    #[arg(long)]
    pub file_locks: bool,
    /// Save established TCP connections (TCP_REPAIR) and restore them connected: the
    /// network is locked for them (an nftables table; needs the nft program) from the
    /// dump until the restore, so the peers see no reset and lose no byte. The local
    /// addresses must exist where the tree is restored
    #[arg(long, conflicts_with = "tcp_close")]
    pub tcp_established: bool,
    /// Keep only the addresses of established TCP connections and restore them closed
    /// (the process's next call on one fails with ECONNABORTED)
    #[arg(long)]
    pub tcp_close: bool,
    /// Save unix sockets connected to a peer outside the tree instead of refusing them:
    /// at restore a datagram socket connects to its peer's name again (say /dev/log),
    /// and a stream needs a socket handed in with --inherit-fd
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// A resource outside the tree the image may name, as in CRIU: pipe:[INODE] (as
    /// /proc/PID/fd shows it) is a pipe whose other end a process outside the tree holds
    /// (the reader of `app | tee`); restore then needs a pipe handed in for it
    /// (--inherit-fd fd[N]:pipe:[INODE]). tty[RDEV:DEV] (hex, as dump's refusal names
    /// it) is a terminal another program holds (a terminal emulator, tmux, sshd): restore
    /// needs a terminal handed in for it (--inherit-fd fd[N]:tty[RDEV:DEV]), which becomes
    /// the controlling terminal of a session it controlled. Repeatable
    #[arg(long, value_name = "pipe:[INODE]|tty[RDEV:DEV]", value_parser = parse_external)]
    pub external: Vec<External>,
    /// Drop the connections waiting in a listener's accept queue (not accepted yet)
    /// instead of refusing the tree (or saving them, with --tcp-established): their clients
    /// see them reset and connect again
    #[arg(long)]
    pub skip_in_flight: bool,
    /// NAME=VALUE recorded in the image (shown by inspect; restore --require-label checks
    /// it). Repeatable
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Write the image only if nothing exists at DEST yet: an existing image stays, nothing
    /// is written and the process runs on (with --json, "created": false). Atomic for a
    /// local file; for an object store checked just before the upload completes
    #[arg(long)]
    pub if_absent: bool,
    /// Compression of the image frames (frames that do not shrink are stored raw)
    #[arg(long, value_enum, default_value_t = CodecArg::Auto)]
    pub compress: CodecArg,
    /// Compression level (zstd: 1 fast .. 19 small)
    #[arg(long, default_value_t = 1)]
    pub level: i32,
    /// Print the summary as JSON on stdout (only when the image does not go to stdout)
    #[arg(long)]
    pub json: bool,
    /// Give up when the destination accepts no data for SECS seconds while the
    /// process is frozen (or commits nothing in that time): the dump is
    /// abandoned, nothing partial is left at DEST and the process runs on
    #[arg(long, default_value_t = 20.0, value_name = "SECS")]
    pub timeout: f64,
    #[command(flatten)]
    pub sink: SinkArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Where to read the image from: -, a path, file://, s3://, gs://, az://, memory://
    #[arg(short, long, default_value = "-", value_name = "SRC")]
    pub input: String,
    /// Print the restored PID and return once the process runs (default: wait for it and exit with its status)
    #[arg(short, long)]
    pub detach: bool,
    /// Print the restored PID as JSON
    #[arg(long)]
    pub json: bool,
    /// Resume the process before its memory is loaded: private anonymous memory is
    /// fetched on demand (userfaultfd: one ranged read per missing frame) and
    /// prefetched in the background. Needs a file or object, not a pipe. crstream
    /// stays alive until every page is in; with --detach the command prints the PID
    /// and returns as soon as the process runs, while a crstream server of its own
    /// (its PID is "server_pid" in --json) serves the pages and exits once every page
    /// is in. If a frame cannot be fetched (retried for 30 s), or the process uses
    /// mremap or fork on memory still arriving, the process is killed and crstream
    /// fails (detached: the error goes to --log and to syslog).
    #[arg(long)]
    pub lazy: bool,
    /// With --lazy --detach: where the server writes its log and errors once the
    /// command has returned (appended; default: nowhere but syslog for errors)
    #[arg(long, value_name = "FILE", requires = "lazy")]
    pub log: Option<std::path::PathBuf>,
    /// With --lazy: neither prefetch the working set recorded next to the image
    /// (SRC.ws: the frames an earlier lazy restore faulted on first) nor record one
    /// (by default the first lazy restore of an image records it, and the next ones
    /// prefetch those frames before the rest)
    #[arg(long, requires = "lazy")]
    pub no_working_set: bool,
    /// With --lazy (for `run --cache`): if the restore fails because the image is
    /// damaged, remove the image, unless it was replaced meanwhile
    #[arg(long, requires = "lazy", hide = true)]
    pub remove_if_damaged: bool,
    /// Restore a shell job (dumped with --shell-job): its terminal fds open crstream's
    /// controlling terminal, and it joins crstream's session and process group, so the
    /// shell's job control (foreground, Ctrl-Z, Ctrl-C) covers both. Without --detach
    /// it keeps the foreground; with --detach it loses it when crstream exits
    #[arg(long)]
    pub shell_job: bool,
    /// Restore the established TCP connections of the image closed, whatever the
    /// dump saved (the process's next call on one fails with ECONNABORTED): for a
    /// second copy, or when the peers are gone. Without it they come back connected
    #[arg(long)]
    pub tcp_close: bool,
    /// Accepted for CRIU's command lines: connections saved with --tcp-established
    /// come back connected unless --tcp-close is given
    #[arg(long, conflicts_with = "tcp_close")]
    pub tcp_established: bool,
    /// fd[N]:KEY — crstream's open fd N stands for the file KEY of the image, which
    /// the restored process gets in its place: "socket:[INODE]" (as /proc/PID/fd shows
    /// it at dump time; say, a unix socket connected outside the tree) or a path.
    /// Repeatable
    #[arg(long, value_name = "fd[N]:KEY", value_parser = parse_inherit_fd)]
    pub inherit_fd: Vec<(i32, String)>,
    /// Restore into a new PID namespace, in which every process has its saved PID
    /// whatever PIDs are taken here (so that any number of copies of one image run
    /// side by side); the tree also gets a mount namespace with its own /proc. PID 1
    /// of the namespace is the root if it had PID 1 (a tree dumped from its own
    /// namespace), otherwise a small init of crstream's that reaps orphans and ends
    /// the namespace when the root exits. The printed PID is the root's outside
    #[arg(long)]
    pub pidns: bool,
    /// NAME=VALUE the image must carry (dump --label), checked before anything is
    /// created. Repeatable
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_label)]
    pub require_label: Vec<(String, String)>,
    /// Restore even where the CPU lacks register state or instruction sets the dumping
    /// CPU had, or a privately mapped file (an executable, a library) is not the same
    /// (other build-id, or other size or modification time): for experts who know the
    /// process will not notice
    #[arg(long)]
    pub skip_validation: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `crstream run --cache URL --ready-when COND -- CMD [ARGS...]`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where the checkpoint is kept: a path, file://, s3://, gs://, az://, with {key}
    /// standing for the cache key (e.g. s3://ci-cache/warm/{key}.img)
    #[arg(long, value_name = "URL")]
    pub cache: String,
    /// The cache key, in place of the default (a hash of the command line, the working
    /// directory, the environment variables PATH, HOME, USER, LANG, LC_ALL, LC_CTYPE, TZ,
    /// LD_LIBRARY_PATH, LD_PRELOAD, PYTHONPATH, PYTHONHOME, VIRTUAL_ENV, JAVA_HOME,
    /// JAVA_TOOL_OPTIONS, CLASSPATH, NODE_OPTIONS, NODE_PATH and the --key-env ones, and
    /// the executable's build-id or content)
    #[arg(long)]
    pub key: Option<String>,
    /// One more environment variable in the default key. Repeatable
    #[arg(long = "key-env", value_name = "NAME")]
    pub key_env: Vec<String>,
    /// When the service is ready: tcp:[HOST:]PORT (accepts a connection), file:PATH
    /// (exists), log:REGEX (a line of its stdout or stderr), exec:COMMAND (sh -c COMMAND
    /// exits 0)
    #[arg(long, value_name = "COND", required_unless_present = "print_key")]
    pub ready_when: Option<crate::run::ready::Ready>,
    /// Seconds to wait for readiness (a cold start that takes longer fails; a restored
    /// copy that does falls back to a cold start)
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub timeout: f64,
    /// Stay in the foreground until the service exits, and exit with its status
    #[arg(long)]
    pub wait: bool,
    /// Restore a hit eagerly: the service runs once all its memory is in and checked.
    /// By default a hit is restored lazily where it can be (a single process; a tree is
    /// restored eagerly): the service runs at once and its memory follows, served by a
    /// background crstream until complete. Its frames are checked as they arrive: one
    /// found damaged after the service runs kills the service (never wrong memory) and
    /// removes the entry, so that the next run starts cold
    #[arg(long)]
    pub eager: bool,
    /// Print what happened as JSON on stdout (hit or miss, times, sizes)
    #[arg(long)]
    pub json: bool,
    /// Print the cache key and exit
    #[arg(long)]
    pub print_key: bool,
    /// The service's command line
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    pub fn ready(&self) -> &crate::run::ready::Ready {
        self.ready_when
            .as_ref()
            .expect("clap requires --ready-when")
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.timeout.clamp(0.0, 1e9))
    }
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Destination: a path, file://, s3://, gs://, az://, memory://
    #[arg(value_name = "DEST")]
    pub dest: String,
    #[command(flatten)]
    pub sink: SinkArgs,
    /// Print a JSON summary on stdout at the end
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Source: a path, file://, s3://, gs://, az://, memory://
    #[arg(value_name = "SRC")]
    pub src: String,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The stream to inspect: -, a path, file://, s3://, gs://, az://, memory://
    #[arg(value_name = "SRC", default_value = "-")]
    pub src: String,
    /// Machine-readable output (stable JSON)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `pipe:[INODE]` of --external.
/// A resource outside the tree (`--external`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum External {
    /// pipe:[INODE]
    Pipe(u64),
    /// tty[RDEV:DEV]: device number and devpts device, hex
    Tty(u64, u64),
}

fn parse_external(v: &str) -> Result<External, String> {
    let bad = || format!("{v:?}: expected pipe:[INODE] or tty[RDEV:DEV]");
    if let Some(n) = v.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')) {
        return n.parse().map(External::Pipe).map_err(|_| bad());
    }
    let (rdev, dev) = v
        .strip_prefix("tty[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.split_once(':'))
        .ok_or_else(bad)?;
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    Ok(External::Tty(hex(rdev)?, hex(dev)?))
}

/// `NAME=VALUE` of --label and --require-label.
fn parse_label(v: &str) -> Result<(String, String), String> {
    match v.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{v:?}: expected NAME=VALUE")),
    }
}

/// `fd[N]:KEY` of --inherit-fd.
fn parse_inherit_fd(v: &str) -> Result<(i32, String), String> {
    let bad = || format!("{v:?}: expected fd[N]:KEY, e.g. fd[3]:socket:[12345]");
    let rest = v.strip_prefix("fd[").ok_or_else(bad)?;
    let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
    let n: i32 = n.parse().map_err(|_| bad())?;
    if n < 0 || key.is_empty() {
        return Err(bad());
    }
    // SAFETY: F_GETFD only asks whether fd n is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(format!("{v:?}: fd {n} is not open in crstream"));
    }
    Ok((n, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_names_a_pipe_or_a_terminal() {
        assert_eq!(parse_external("pipe:[123]"), Ok(External::Pipe(123)));
        assert_eq!(
            parse_external("tty[8803:1a]"),
            Ok(External::Tty(0x8803, 0x1a))
        );
        for bad in [
            "pipe:[x]",
            "tty[8803]",
            "tty[zz:1]",
            "socket:[1]",
            "tty[1:2",
        ] {
            assert!(parse_external(bad).is_err(), "{bad}");
        }
    }
}
