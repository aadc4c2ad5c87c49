//! Parsers for the /proc files the engine reads. Pure functions over text are
//! split from the readers so they can be unit-tested on /proc/self.

use crate::error::ProcError;
use std::path::Path;

pub fn read_string(path: impl AsRef<Path>) -> Result<String, ProcError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|err| ProcError::Io {
        path: path.display().to_string(),
        err,
    })
}

pub fn read_bytes(path: impl AsRef<Path>) -> Result<Vec<u8>, ProcError> {
    let path = path.as_ref();
    std::fs::read(path).map_err(|err| ProcError::Io {
        path: path.display().to_string(),
        err,
    })
}

/// The target of a /proc link, as bytes (a path need not be UTF-8).
pub fn read_link(path: impl AsRef<Path>) -> Result<Vec<u8>, ProcError> {
    let path = path.as_ref();
    std::fs::read_link(path)
        .map(|p| std::os::unix::ffi::OsStringExt::into_vec(p.into_os_string()))
        .map_err(|err| ProcError::Io {
            path: path.display().to_string(),
            err,
        })
}

fn parse_err(path: &str, detail: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: path.to_string(),
        detail: detail.into(),
    }
}

/// One line of /proc/PID/maps (plus VmFlags from smaps).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub pgoff: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The mapped file, or a kernel name such as "[heap]"; bytes, since a
    /// file name need not be UTF-8.
    pub path: Vec<u8>,
    pub vmflags: Vec<String>,
    /// Its memory protection key (smaps' ProtectionKey; 0: none).
    pub pkey: u32,
}

impl MapEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.vmflags.iter().any(|x| x == f)
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn prot(&self) -> u32 {
        (if self.read { libc::PROT_READ } else { 0 }
            | if self.write { libc::PROT_WRITE } else { 0 }
            | if self.exec { libc::PROT_EXEC } else { 0 }) as u32
    }
}

/// Parses one maps line: `start-end perms offset major:minor inode   path`.
pub fn parse_maps_line(line: &[u8]) -> Option<MapEntry> {
    let mut it = line.splitn(6, |&b| b == b' ');
    let mut field = || std::str::from_utf8(it.next()?).ok();
    let range = field()?;
    let perms = field()?.as_bytes();
    let off = field()?;
    let dev = field()?;
    let inode = field()?;
    let path = it.next().unwrap_or(b"");
    let path = path[path.iter().position(|&b| b != b' ').unwrap_or(path.len())..].to_vec();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        pgoff: u64::from_str_radix(off, 16).ok()?,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
        vmflags: Vec::new(),
        pkey: 0,
    })
}

/// Parses /proc/PID/smaps text: map lines, each followed by `Key: value`
/// lines, of which we keep VmFlags and ProtectionKey.
pub fn parse_smaps(text: &[u8], path: &str) -> Result<Vec<MapEntry>, ProcError> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vmflags = String::from_utf8_lossy(flags)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
            }
            continue;
        }
        if let Some(key) = line.strip_prefix(b"ProtectionKey:") {
            if let Some(last) = out.last_mut() {
                last.pkey = String::from_utf8_lossy(key).trim().parse().unwrap_or(0);
            }
            continue;
        }
        // Key lines look like "Rss:  4 kB"; map lines start with a hex range.
        let first = line.split(|&b| b == b' ').next().unwrap_or(b"");
        if first.contains(&b'-') && first.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-') {
            out.push(parse_maps_line(line).ok_or_else(|| bad_line(path, line))?);
        }
    }
    Ok(out)
}

fn bad_line(path: &str, line: &[u8]) -> ProcError {
    parse_err(
        path,
        format!("bad map line {:?}", String::from_utf8_lossy(line)),
    )
}

pub fn smaps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    let path = format!("/proc/{pid}/smaps");
    parse_smaps(&read_bytes(&path)?, &path)
}

pub fn maps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    let path = format!("/proc/{pid}/maps");
    read_bytes(&path)?
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_maps_line(l).ok_or_else(|| bad_line(&path, l)))
        .collect()
}

/// Fields of /proc/PID/status the engine uses.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub name: String,
    pub umask: u32,
    pub tgid: i32,
    pub ppid: i32,
    pub tracer_pid: i32,
    pub state: char,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u32,
    /// PID, process group and session in each PID namespace the process
    /// is in, from crstream's (as the reader's /proc sees it) inward.
    pub nspid: Vec<i32>,
    pub nspgid: Vec<i32>,
    pub nssid: Vec<i32>,
    pub sig_blk: u64,
    /// Pending signals of the thread, and of the process.
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    /// Signals with a handler.
    pub sig_cgt: u64,
    /// The task's speculation mitigations, as status words them
    /// (Speculation_Store_Bypass, SpeculationIndirectBranch).
    pub speculation_store_bypass: String,
    pub speculation_indirect_branch: String,
    /// Memory in mlocked areas, kB (VmLck): non-zero if any area is
    /// locked; None if the line is missing or unreadable.
    pub vm_lck_kb: Option<u64>,
}

pub fn parse_status(text: &str, path: &str) -> Result<Status, ProcError> {
    let mut s = Status::default();
    let hex = |v: &str| {
        u64::from_str_radix(v.trim(), 16).map_err(|e| parse_err(path, format!("{v:?}: {e}")))
    };
    let four = |v: &str| -> Result<[u32; 4], ProcError> {
        let n: Vec<u32> = v
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        n.try_into()
            .map_err(|_| parse_err(path, format!("bad id list {v:?}")))
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => s.name = v.to_string(),
            "Umask" => {
                s.umask =
                    u32::from_str_radix(v, 8).map_err(|e| parse_err(path, format!("Umask: {e}")))?
            }
            "State" => s.state = v.chars().next().unwrap_or('?'),
            "Tgid" => s.tgid = v.parse().unwrap_or(0),
            "PPid" => s.ppid = v.parse().unwrap_or(0),
            "TracerPid" => s.tracer_pid = v.parse().unwrap_or(0),
            "Uid" => s.uids = four(v)?,
            "Gid" => s.gids = four(v)?,
            "Groups" => {
                s.groups = v
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            }
            "CapInh" => s.cap_inh = hex(v)?,
            "CapPrm" => s.cap_prm = hex(v)?,
            "CapEff" => s.cap_eff = hex(v)?,
            "CapBnd" => s.cap_bnd = hex(v)?,
            "CapAmb" => s.cap_amb = hex(v)?,
            "NoNewPrivs" => s.no_new_privs = v == "1",
            "Seccomp" => s.seccomp = v.parse().unwrap_or(0),
            "NSpid" | "NSpgid" | "NSsid" => {
                let ids = v
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                match k {
                    "NSpid" => s.nspid = ids,
                    "NSpgid" => s.nspgid = ids,
                    _ => s.nssid = ids,
                }
            }
            "SigBlk" => s.sig_blk = hex(v)?,
            "SigPnd" => s.sig_pnd = hex(v)?,
            "ShdPnd" => s.shd_pnd = hex(v)?,
            "SigCgt" => s.sig_cgt = hex(v)?,
            "Speculation_Store_Bypass" => s.speculation_store_bypass = v.to_string(),
            "SpeculationIndirectBranch" => s.speculation_indirect_branch = v.to_string(),
            "VmLck" => s.vm_lck_kb = v.trim_end_matches("kB").trim().parse().ok(),
            _ => {}
        }
    }
    Ok(s)
}

pub fn status(pid: i32) -> Result<Status, ProcError> {
    let path = format!("/proc/{pid}/status");
    parse_status(&read_string(&path)?, &path)
}

/// /proc/PID/stat, with `field(n)` using the 1-based numbering of proc(5).
#[derive(Debug, Clone)]
pub struct Stat {
    pub comm: String,
    rest: Vec<String>,
}

impl Stat {
    /// Field `n` (1-based as in proc(5); n >= 3) as u64, 0 if absent.
    pub fn field(&self, n: usize) -> u64 {
        self.rest
            .get(n.wrapping_sub(3))
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |v| v as u64)
    }
    pub fn state(&self) -> char {
        self.rest
            .first()
            .and_then(|s| s.chars().next())
            .unwrap_or('?')
    }
}

pub fn parse_stat(text: &str, path: &str) -> Result<Stat, ProcError> {
    // comm may contain spaces and parentheses: it ends at the last ')'.
    let open = text.find('(').ok_or_else(|| parse_err(path, "no '('"))?;
    let close = text.rfind(')').ok_or_else(|| parse_err(path, "no ')'"))?;
    let comm = text[open + 1..close].to_string();
    let rest = text[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok(Stat { comm, rest })
}

pub fn stat(pid: i32) -> Result<Stat, ProcError> {
    let path = format!("/proc/{pid}/stat");
    parse_stat(&read_string(&path)?, &path)
}

/// The numeric entries of a /proc directory (tasks, fds), sorted.
fn numeric_entries(path: String) -> Result<Vec<i32>, ProcError> {
    let rd = std::fs::read_dir(&path).map_err(|err| ProcError::Io {
        path: path.clone(),
        err,
    })?;
    let mut v: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Every process this /proc shows.
pub fn processes() -> Result<Vec<i32>, ProcError> {
    numeric_entries("/proc".into())
}

pub fn tasks(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut v = numeric_entries(format!("/proc/{pid}/task"))?;
    // The thread-group leader first.
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    Ok(v)
}

/// Child processes of every thread of `pid` (CONFIG_PROC_CHILDREN).
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for tid in tasks(pid)? {
        let path = format!("/proc/{pid}/task/{tid}/children");
        match read_string(&path) {
            Ok(list) => out.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            ),
            // The thread exited meanwhile.
            Err(ProcError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

pub fn fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    numeric_entries(format!("/proc/{pid}/fd"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// Octal `flags:` field: O_* flags including O_CLOEXEC (02000000).
    pub flags: u32,
    pub mnt_id: u64,
}

pub fn parse_fdinfo(text: &str, path: &str) -> Result<FdInfo, ProcError> {
    let mut fi = FdInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => {
                fi.pos = v
                    .parse()
                    .map_err(|e| parse_err(path, format!("pos: {e}")))?
            }
            "flags" => {
                fi.flags =
                    u32::from_str_radix(v, 8).map_err(|e| parse_err(path, format!("flags: {e}")))?
            }
            "mnt_id" => fi.mnt_id = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(fi)
}

pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    parse_fdinfo(&read_string(&path)?, &path)
}

/// Whether /proc/PID exists (the pid is taken by a process or a thread).
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether process `pid` exists and has not ended (neither gone, nor a
/// zombie, nor exiting).
pub fn alive(pid: i32) -> bool {
    pid_exists(pid) && !ending(pid)
}

/// Whether every thread of `pid` is exiting or a zombie (true if it is
/// gone). A main thread that ended alone (pthread_exit) shows Z and
/// PF_EXITING while its other threads run on: that process is not ending.
pub fn ending(pid: i32) -> bool {
    let Ok(tids) = tasks(pid) else {
        return true;
    };
    // /proc/TID/stat: the thread's own state and flags.
    tids.into_iter().all(|tid| {
        stat(tid).map_or(true, |s| {
            matches!(s.state(), 'Z' | 'X') || s.field(9) & PF_EXITING != 0
        })
    })
}

/// The kernel's PF_EXITING task flag (field 9 of /proc/PID/stat): set from
/// the start of the exit, while the process is still freeing its memory
/// and files, before it becomes a zombie.
const PF_EXITING: u64 = 0x4;

/// How long a PID held by an exit is waited for: a killed process frees
/// its memory first (about 0.15 s per GiB here), and a zombie whose parent
/// is PID 1 is reaped 1-2 s late.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `pid` is free, waiting (up to `EXIT_WAIT`) while it is held by a
/// process that is exiting or a zombie not yet reaped: the tree a dump has
/// just killed (dump does not wait for the exits). False at once when a
/// live process holds it.
pub fn wait_pid_released(pid: i32) -> bool {
    wait_exit(pid, true)
}

/// Waits (up to `EXIT_WAIT`) while `pid` is held by a process that is still
/// exiting, which still holds its files, sockets and locks; a zombie or a
/// live process is not waited for. For restores into a new PID namespace,
/// whose PIDs do not clash: the tree dumped just before (with the image's
/// PIDs) may still hold the addresses and locks the restore takes again.
pub fn wait_exiting(pid: i32) {
    wait_exit(pid, false);
}

fn wait_exit(pid: i32, zombies_too: bool) -> bool {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let Ok(stat) = stat(pid) else {
            return !pid_exists(pid);
        };
        // A leader that ended alone (pthread_exit) shows Z while its
        // threads run on: that process is alive.
        let zombie = matches!(stat.state(), 'Z' | 'X') && stat.field(20) <= 1;
        let exiting = !zombie && stat.field(9) & PF_EXITING != 0 && ending(pid);
        if !(exiting || zombies_too && zombie) || started.elapsed() > EXIT_WAIT {
            return false;
        }
        if !told && started.elapsed() > std::time::Duration::from_secs(2) {
            told = true;
            let holder = match zombie {
                true => format!("a zombie its parent (PID {}) has not reaped", stat.field(4)),
                false => "a process that is still exiting".to_string(),
            };
            tracing::warn!("PID {pid} is held by {holder}: waiting up to {EXIT_WAIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Capability numbers (linux/capability.h).
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_SYS_RESOURCE: u32 = 24;
pub(crate) const CAP_AUDIT_CONTROL: u32 = 30;

/// Whether crstream has capability `bit` in its effective set.
pub(crate) fn own_capability(bit: u32) -> bool {
    status(std::process::id() as i32).is_ok_and(|s| s.cap_eff & (1u64 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID held by an exit is waited for, a live one is not: a child
    /// with 1 GiB of memory, killed, is exiting while it frees that
    /// memory, then a zombie until reaped (here 300 ms later).
    #[test]
    fn a_pid_held_by_an_exit_is_waited_for() {
        use std::time::{Duration, Instant};
        const SIZE: usize = 1 << 30;
        // SAFETY: the child makes system calls only, then waits to be
        // killed; the parent reaps it below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
                let prot = libc::PROT_READ | libc::PROT_WRITE;
                libc::mmap(std::ptr::null_mut(), SIZE, prot, flags, -1, 0);
                loop {
                    libc::pause();
                }
            }
        }
        /// Kills and reaps the child should the test fail half way.
        struct Reap(i32);
        impl Drop for Reap {
            fn drop(&mut self) {
                if self.0 == 0 {
                    return;
                }
                // SAFETY: signalling and reaping our own child, not reaped yet.
                unsafe {
                    libc::kill(self.0, libc::SIGKILL);
                    libc::waitpid(self.0, std::ptr::null_mut(), libc::WNOHANG);
                }
            }
        }
        let mut guard = Reap(pid);
        // Resident pages: field 24.
        let rss = || stat(pid).map_or(0, |s| s.field(24));
        let t = Instant::now();
        while rss() < (SIZE >> 12) as u64 {
            assert!(t.elapsed() < Duration::from_secs(20), "child never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!wait_pid_released(pid), "a live process is not waited for");

        // SAFETY: killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let flags_state = || stat(pid).map(|s| (s.field(9), s.state())).unwrap();
        while flags_state().0 & PF_EXITING == 0 {}
        wait_exiting(pid);
        assert_eq!(flags_state().1, 'Z', "returned before the exit was done");

        let waiter = std::thread::spawn(move || wait_pid_released(pid));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "a zombie is waited for");
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        guard.0 = 0;
        assert!(waiter.join().unwrap(), "the PID is free once reaped");
    }

    #[test]
    fn maps_line() {
        let e = parse_maps_line(
            b"7f795bece000-7f795bed0000 r-xp 00001000 fe:00 325843                     /usr/lib/x y.so",
        )
        .unwrap();
        assert_eq!(
            (e.start, e.end, e.pgoff, e.inode),
            (0x7f795bece000, 0x7f795bed0000, 0x1000, 325843)
        );
        assert!(e.read && !e.write && e.exec && !e.shared);
        assert_eq!((e.dev_major, e.dev_minor), (0xfe, 0));
        assert_eq!(e.path, b"/usr/lib/x y.so");
        let anon = parse_maps_line(b"7f0000000000-7f0000001000 rw-s 00000000 00:00 0 ").unwrap();
        assert!(anon.shared && anon.path.is_empty());
    }

    #[test]
    fn smaps_self() {
        let all = smaps(std::process::id() as i32).unwrap();
        assert!(all.iter().any(|m| m.path == b"[stack]" && m.has_flag("gd")));
        assert!(all.iter().any(|m| m.path == b"[vdso]"));
        assert!(all.iter().all(|m| !m.vmflags.is_empty()));
    }

    #[test]
    fn status_self() {
        let s = status(std::process::id() as i32).unwrap();
        assert_eq!(s.tgid, std::process::id() as i32);
        assert_eq!(s.uids[0], rustix::process::getuid().as_raw());
        assert_eq!(s.nspid.last().copied(), Some(std::process::id() as i32));
        // umask is process-wide: set it back right away.
        let m = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        rustix::process::umask(m);
        assert_eq!(s.umask, m.as_raw_mode());
    }

    #[test]
    fn stat_parses_odd_comm() {
        let st = parse_stat("42 (a) b (c)) S 1 42 42 0 -1", "x").unwrap();
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!(st.state(), 'S');
        assert_eq!(st.field(4), 1);
        let me = stat(std::process::id() as i32).unwrap();
        assert!(
            me.field(48) > 0 && me.field(49) > me.field(48),
            "arg_start/arg_end"
        );
    }

    #[test]
    fn fdinfo_self() {
        use std::io::{Seek, SeekFrom};
        use std::os::fd::AsRawFd;
        let mut f = std::fs::File::open("/proc/self/status").unwrap();
        f.seek(SeekFrom::Start(7)).unwrap();
        let fi = fdinfo(std::process::id() as i32, f.as_raw_fd()).unwrap();
        assert_eq!(fi.pos, 7);
        assert_eq!(fi.flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32);
        assert_ne!(
            fi.flags & libc::O_CLOEXEC as u32,
            0,
            "std opens with O_CLOEXEC"
        );
    }

    #[test]
    fn tasks_leader_first() {
        let me = std::process::id() as i32;
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let v = tasks(me).unwrap();
        assert_eq!(v[0], me);
        assert!(v.len() >= 2);
        t.join().unwrap();
    }
}
