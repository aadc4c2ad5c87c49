//! Pseudo-terminals whose master the tree holds (a terminal multiplexer,
//! an ssh server, `script`): both ends, the pair's state, and the session
//! each one controls.
//!
//! Dump: the master's record carries the pair: termios of both sides,
//! window size, packet mode, lock and exclusive mode, what the slave side
//! wrote that the master has not read yet, and what was typed on the
//! master side that the slave has not read yet (both read out: a dump that
//! fails or leaves the tree running writes them back, see [`PtyHold`]). A slave's record says whether its process leads
//! the session the terminal controls, and the foreground process group.
//! A slave whose master the tree does not hold (or holds in a process
//! dumped after it) is left to `tty.rs` (a shell job's terminal, or
//! refused). Refused by name: a session leader whose controlling terminal
//! it holds no fd of (`tty.rs` checks every session leader). A line being typed in canonical mode, not yet
//! entered, is part of the input, and so are lines ended by VEOF (^D)
//! instead of a newline (`input_eof`); the input is typed again with the
//! characters the line discipline would act on quoted with ^V, as they
//! were when typed (see `write_input`).
//!
//! Restore: the pair is made again with its index (opening /dev/ptmx until
//! the kernel hands out that one), its state set when the master's record
//! comes, the pending output written back through the slave side with
//! output processing off. Slave fds open /dev/pts/N; the session leader's
//! first one without O_NOCTTY, which makes it the controlling terminal
//! again, and sets the foreground process group. /dev/tty opens /dev/tty
//! again, in a session that has its terminal back.

use super::{DumpFd, FdKind, Reopen};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crate::stub::Stub;
use crate::sys::tty;
use crstream_proto::{FileKind, OpenFile, PtyFile};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const TIOCGPTN: u64 = 0x8004_5430;
const TIOCSPTLCK: u64 = 0x4004_5431;
const TIOCGPTLCK: u64 = 0x8004_5439;
const TIOCPKT: u64 = 0x5420;
const TIOCGPKT: u64 = 0x8004_5438;
const TIOCEXCL: u64 = 0x540c;
const TIOCGEXCL: u64 = 0x8004_5440;
const TIOCGWINSZ: u64 = 0x5413;
const TIOCSWINSZ: u64 = 0x5414;
const TIOCINQ: u64 = 0x541b;
const TCGETS2: u64 = 0x802c_542a;
const TCSETS2: u64 = 0x402c_542b;
/// struct termios2 and struct winsize.
const TERMIOS2_LEN: usize = 44;
/// Where c_cc starts in a termios2 (after four flag words and c_line).
const CC_AT: usize = 17;
const WINSIZE_LEN: usize = 8;
/// c_oflag's place in struct termios2, and OPOST.
const OFLAG_AT: usize = 4;
const OPOST: u32 = 1;

/// /dev/ptmx (and /dev/pts/ptmx).
fn is_master(rdev: u64) -> bool {
    libc::major(rdev) == 5 && libc::minor(rdev) == 2
}

/// A slave's index, from its device number (majors 136-143).
pub(super) fn slave_index(rdev: u64) -> Option<u32> {
    let major = libc::major(rdev);
    (136..=143)
        .contains(&major)
        .then(|| (major - 136) * 256 + libc::minor(rdev))
}

/// Pending output read out of the masters during a dump, written back
/// when the tree runs on (dropped) and forgotten once it is dead.
#[derive(Default)]
pub(crate) struct PtyHold {
    /// What was read out of each.
    drained: Vec<Drained>,
}

/// What dump read out of a pair: given back if the tree runs on.
struct Drained {
    master: OwnedFd,
    output: Vec<u8>,
    input: Vec<u8>,
    input_eof: Vec<u32>,
}

impl PtyHold {
    pub(crate) fn after_kill(mut self) {
        self.drained.clear();
    }
}

impl Drop for PtyHold {
    fn drop(&mut self) {
        for Drained {
            master,
            output,
            input,
            input_eof,
        } in self.drained.drain(..)
        {
            if let Err(e) = write_output(&master, &output) {
                tracing::error!("{} bytes of terminal output are lost: {e}", output.len());
            }
            if let Err(e) = write_input(&master, &input, &input_eof) {
                tracing::error!("{} bytes of terminal input are lost: {e}", input.len());
            }
        }
    }
}

/// Puts `data` in the master's read queue, as the slave side wrote it:
/// written on the slave side with output processing off for the while.
fn write_output(master: &OwnedFd, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let slave = tty::peer(master, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
    let saved = tty::get_bytes(&slave, TCGETS2, TERMIOS2_LEN)?;
    let mut raw = saved.clone();
    let oflag = u32::from_ne_bytes(raw[OFLAG_AT..OFLAG_AT + 4].try_into().expect("4 bytes"));
    raw[OFLAG_AT..OFLAG_AT + 4].copy_from_slice(&(oflag & !OPOST).to_ne_bytes());
    tty::set_bytes(&slave, TCSETS2, &raw)?;
    let written = std::fs::File::from(slave.try_clone()?).write_all(data);
    tty::set_bytes(&slave, TCSETS2, &saved)?;
    written
}

/// Puts `data` in the slave's read queue, as typed once already, with a
/// line ended by VEOF (no newline) at each offset of `eof`: typed again
/// with echo, signals and input translation off, and each character the
/// line discipline would act on (erase, kill, end of file or line, and so
/// on) quoted with VLNEXT (^V), as it must have been to be there. Typed
/// through TIOCSTI, which hands each character to the line discipline at
/// once; where that is not allowed, written on the master side, which the
/// line discipline takes later (waited for, as far as TIOCINQ tells).
fn write_input(master: &OwnedFd, data: &[u8], eof: &[u32]) -> io::Result<()> {
    if data.is_empty() && eof.is_empty() {
        return Ok(());
    }
    let slave = tty::peer(master, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
    let saved = tty::get_bytes(&slave, TCGETS2, TERMIOS2_LEN)?;
    let word = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let cc = |i: usize| saved[CC_AT + i];
    let mut raw = saved.clone();
    let iflag = word(&raw, 0)
        & !(libc::ICRNL | libc::INLCR | libc::IGNCR | libc::ISTRIP | libc::IXON | libc::BRKINT);
    let mut lflag =
        word(&raw, 12) & !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ISIG);
    // VLNEXT quotes only with IEXTEN; without a VLNEXT character nothing
    // can be quoted (nor could it have been), and IEXTEN only adds
    // characters to act on.
    let quote = cc(libc::VLNEXT);
    if quote != 0 {
        lflag |= libc::IEXTEN;
    } else {
        lflag &= !libc::IEXTEN;
    }
    raw[0..4].copy_from_slice(&iflag.to_ne_bytes());
    raw[12..16].copy_from_slice(&lflag.to_ne_bytes());
    let canonical = lflag & libc::ICANON != 0;
    let keys = keystrokes(data, eof, canonical, &raw[CC_AT..CC_AT + 19]);
    let before = tty::get_int(&slave, TIOCINQ)? as usize;
    tty::set_bytes(&slave, TCSETS2, &raw)?;
    let typed = keys.iter().try_for_each(|&c| tty::insert_input(&slave, c));
    let written = match typed {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!("TIOCSTI: {e}; writing the input on the master side");
            let written = std::fs::File::from(master.try_clone()?).write_all(&keys);
            // The line discipline takes it later, with the termios it then
            // has; TIOCINQ counts whole lines only, in canonical mode.
            let complete = if canonical {
                data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            } else {
                data.len()
            };
            let started = std::time::Instant::now();
            while written.is_ok()
                && (tty::get_int(&slave, TIOCINQ)? as usize) < before + complete
                && started.elapsed() < std::time::Duration::from_secs(1)
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            written
        }
    };
    tty::set_bytes(&slave, TCSETS2, &saved)?;
    written
}

/// The characters that type `data` again under control characters `cc`
/// (c_cc of termios, IEXTEN on when VLNEXT is set): in canonical mode,
/// those the line discipline would act on are preceded by VLNEXT, and VEOF
/// ends a line at each offset of `eof`.
fn keystrokes(data: &[u8], eof: &[u32], canonical: bool, cc: &[u8]) -> Vec<u8> {
    if !canonical {
        return data.to_vec();
    }
    let quote = cc[libc::VLNEXT];
    let special: Vec<u8> = [
        libc::VERASE,
        libc::VKILL,
        libc::VEOF,
        libc::VEOL,
        libc::VEOL2,
        libc::VWERASE,
        libc::VREPRINT,
        libc::VLNEXT,
    ]
    .iter()
    .map(|&i| cc[i])
    .filter(|&c| c != 0 && quote != 0)
    .collect();
    let end_of_file = cc[libc::VEOF];
    let mut keys = Vec::with_capacity(data.len() + eof.len());
    let mut eofs = eof.iter().peekable();
    for (i, &b) in data.iter().enumerate() {
        while eofs.next_if(|&&at| at as usize == i).is_some() {
            keys.push(end_of_file);
        }
        if b != b'\n' && special.contains(&b) {
            keys.push(quote);
        }
        keys.push(b);
    }
    keys.extend(eofs.map(|_| end_of_file));
    keys
}

#[derive(Default)]
pub(super) struct Ptys {
    /// Dump: the indexes of the masters seen so far.
    masters: Vec<u32>,
}

/// Restore: the pairs made so far, for the whole restore (a session's
/// terminal is made before its fds are, see [`acquire_session_terminal`]).
#[derive(Default)]
pub(crate) struct Masters {
    /// The master of each pair, by index.
    made: std::cell::RefCell<HashMap<u32, OwnedFd>>,
    /// Slaves crstream holds open until the restore ends: a session keeps
    /// its controlling terminal only while some fd of it is open.
    held: std::cell::RefCell<Vec<OwnedFd>>,
}

impl Masters {
    /// A new fd for the master of pair `index`, made now if need be.
    fn master(&self, index: u32) -> io::Result<OwnedFd> {
        let mut made = self.made.borrow_mut();
        let master = match made.entry(index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(open_index(index)?),
        };
        master.try_clone()
    }
}

/// The terminal that `image` (a session leader) had as its session's
/// controlling terminal, if it comes back: a pseudo-terminal of the tree,
/// or one handed in for a terminal outside it (crstream's fd of it).
pub(crate) fn session_terminal(
    image: &crate::records::ProcessImage<'_>,
    inherit: &[(i32, String)],
) -> Option<SessionTerminal> {
    let files = &image.records.get::<crstream_proto::FileTable>()?.files;
    if let Some(p) = files
        .iter()
        .filter_map(|f| f.pty.as_ref())
        .find(|p| p.controls_session && !p.master)
    {
        return Some(SessionTerminal::Pty(p.index));
    }
    let f = files
        .iter()
        .find(|f| f.external_tty.as_ref().is_some_and(|t| t.controls_session))?;
    let key = super::inherit_key(f);
    inherit
        .iter()
        .find(|(_, k)| *k == key)
        .map(|&(fd, _)| SessionTerminal::HandedIn(fd))
}

/// A session's controlling terminal, as restore gives it back.
pub(crate) enum SessionTerminal {
    /// The slave of the pair with this index, made by restore.
    Pty(u32),
    /// The terminal crstream's fd stands for (--inherit-fd).
    HandedIn(i32),
}

/// Makes `terminal` the controlling terminal of the session `stub` has
/// just made (setsid), before any other process of the session is forked
/// from it: a controlling terminal passes to a process only by fork, or to
/// a session leader (TIOCSCTTY, or opening it), and only while some fd of
/// it is open (crstream holds one until the restore ends). Its fds,
/// restored later, then open a terminal the session already has.
pub(crate) fn acquire_session_terminal(
    masters: &Masters,
    stub: &Stub,
    terminal: &SessionTerminal,
) -> Result<(), RestoreError> {
    let what = match *terminal {
        SessionTerminal::Pty(index) => format!("/dev/pts/{index}"),
        SessionTerminal::HandedIn(fd) => format!("the terminal handed in at fd {fd}"),
    };
    let err = |reason: String| RestoreError::Session {
        pid: stub.vpid,
        reason: format!("giving it {what} as its controlling terminal again: {reason}"),
    };
    let own = match *terminal {
        SessionTerminal::Pty(index) => {
            let master = masters
                .master(index)
                .map_err(|e| err(format!("making the pseudo-terminal: {e}")))?;
            open_peer(&master, libc::O_RDWR | libc::O_NOCTTY)
                .map_err(|e| err(format!("opening it: {e}")))?
        }
        // SAFETY: the restorer said fd is open in crstream (--inherit-fd);
        // it is duplicated, never closed here.
        SessionTerminal::HandedIn(fd) => unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| err(e.to_string()))?,
    };
    // Handed to the stub (a session leader with no terminal), which takes
    // it: not by a path, which a new PID namespace's /proc would not show.
    let fd = super::take_from_crstream(stub, &own).map_err(|e| err(e.to_string()))?;
    let taken = stub.call(
        "ioctl(TIOCSCTTY)",
        libc::SYS_ioctl,
        &[fd as u64, super::tty::TIOCSCTTY, 0],
    );
    stub.call("close", libc::SYS_close, &[fd as u64])
        .map_err(|e| err(e.to_string()))?;
    taken.map_err(|e| match terminal {
        SessionTerminal::HandedIn(_)
            if matches!(
                e,
                crate::error::TaskError::Syscall {
                    errno: libc::EPERM,
                    ..
                }
            ) =>
        {
            err(format!(
                "{e}: another session controls it (the restorer's own terminal, say); hand in \
                 a terminal no session controls, such as a new pseudo-terminal's slave"
            ))
        }
        _ => err(e.to_string()),
    })?;
    if let SessionTerminal::Pty(_) = terminal {
        masters.held.borrow_mut().push(own);
    }
    Ok(())
}

impl FdKind for Ptys {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        let Some(md) = d.md.filter(|md| md.file_type().is_char_device()) else {
            return Ok(false);
        };
        let rdev = md.rdev();
        let pty = if is_master(rdev) {
            let dup = d.take()?;
            let pty = read_master(d, &dup)?;
            if !pty.output.is_empty() || !pty.input.is_empty() || !pty.input_eof.is_empty() {
                d.objects.pty.drained.push(Drained {
                    master: dup,
                    output: pty.output.clone(),
                    input: pty.input.clone(),
                    input_eof: pty.input_eof.clone(),
                });
            }
            self.masters.push(pty.index);
            pty
        } else if rdev == libc::makedev(5, 0) {
            // /dev/tty: the controlling terminal, if it is one of these.
            match slave_index(d.stat.field(7)) {
                Some(index) if self.masters.contains(&index) => PtyFile {
                    index,
                    dev_tty: true,
                    ..Default::default()
                },
                _ => return Ok(false),
            }
        } else if let Some(index) = slave_index(rdev) {
            // A terminal whose master the tree does not hold (seen first,
            // parents before children) is `tty.rs`'s: a shell job's, or
            // refused there.
            if !self.masters.contains(&index) {
                return Ok(false);
            }
            let leads = d.stat.field(6) as i32 == d.pid && d.stat.field(7) == rdev;
            PtyFile {
                index,
                master: false,
                controls_session: leads,
                foreground: if leads { d.stat.field(8) as i32 } else { 0 },
                ..Default::default()
            }
        } else {
            return Ok(false);
        };
        f.kind = FileKind::Pty as i32;
        f.path = d.link.to_vec();
        f.rdev = rdev;
        f.pty = Some(pty);
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        f.kind() == FileKind::Pty && f.pty.is_some()
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let p = f.pty.as_ref().expect("restores() checked it");
        let ferr = |what: &str, e: io::Error| super::file_error(pid, f, format!("{what}: {e}"));
        let master = objects
            .ptys
            .master(p.index)
            .map_err(|e| ferr("making the pseudo-terminal", e))?;
        if p.master {
            set_state(&master, p).map_err(|e| ferr("its state", e))?;
            super::set_status_flags(&master, f.open_flags).map_err(|e| ferr("F_SETFL", e))?;
            return Ok(Reopen::Created(master));
        }
        let flags = (f.open_flags as i32)
            & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW);
        if p.dev_tty {
            // The session has its controlling terminal again by now (its
            // leader, restored first, opened it).
            return Ok(Reopen::Path {
                path: b"/dev/tty".to_vec(),
                flags,
                offset: 0,
            });
        }
        // Opened through the master (TIOCGPTPEER), which gives the file
        // exactly the saved flags: an open by path would add O_LARGEFILE
        // to a slave openpty, sshd or script made that way, without it.
        // O_NOCTTY: the session has it as its controlling terminal already
        // (see `acquire_session_terminal`); crstream must not take it.
        let fd = open_peer(&master, flags | libc::O_NOCTTY).map_err(|e| ferr("TIOCGPTPEER", e))?;
        Ok(Reopen::Created(fd))
    }

    fn after_table(&mut self, stub: &Stub, f: &OpenFile) -> Result<(), RestoreError> {
        let Some(p) = f
            .pty
            .as_ref()
            .filter(|p| p.controls_session && p.foreground > 0)
        else {
            return Ok(());
        };
        super::tty::set_foreground(stub, f, p.foreground)
    }
}

/// The pair's state, through a duplicate of its master; its pending
/// output is read out (see [`PtyHold`]).
fn read_master(d: &DumpFd<'_>, dup: &OwnedFd) -> Result<PtyFile, DumpError> {
    let err = |what: &'static str| move |e: io::Error| d.error(what, e);
    let index = tty::get_int(dup, TIOCGPTN).map_err(err("TIOCGPTN"))? as u32;
    let packet_mode = tty::get_int(dup, TIOCGPKT).map_err(err("TIOCGPKT"))? != 0;
    let winsize = tty::get_bytes(dup, TIOCGWINSZ, WINSIZE_LEN).map_err(err("TIOCGWINSZ"))?;
    let locked = tty::get_int(dup, TIOCGPTLCK).map_err(err("TIOCGPTLCK"))? != 0;
    // The master's termios requests reach the slave's termios.
    let termios = tty::get_bytes(dup, TCGETS2, TERMIOS2_LEN).map_err(err("TCGETS2"))?;
    let (never_opened, echoed) = slave_never_opened(dup, index);
    if never_opened {
        // Opening the slave side now would leave the master "other side
        // closed" once we close it (its reads fail with EIO): the pair is
        // read through the master alone, and restore opens no slave
        // either. Input typed for it could only be read on the slave: its
        // echo says there is some.
        if echoed {
            return Err(d.refuse(format!(
                "pseudo-terminal /dev/pts/{index}, which no process ever opened, with input \
                 typed into it"
            )));
        }
        return Ok(PtyFile {
            index,
            master: true,
            slave_termios: termios.clone(),
            master_termios: termios,
            winsize,
            packet_mode,
            locked,
            slave_never_opened: true,
            ..Default::default()
        });
    }
    let slave = tty::peer(dup, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
        .map_err(err("TIOCGPTPEER"))?;
    let exclusive = tty::get_int(&slave, TIOCGEXCL).map_err(err("TIOCGEXCL"))? != 0;
    let owner = rustix::fs::fstat(&slave).map_err(|e| err("stat of the slave")(e.into()))?;
    // Typed, not read yet: read out (complete lines, in canonical mode),
    // then the line being typed; written back if a later step fails (on
    // success, `PtyHold` does that when the tree runs on).
    let (mut input, input_eof) =
        drain_lines(&slave, &termios).map_err(err("reading the pending input"))?;
    let give_back = |input: &[u8]| {
        if let Err(e) = write_input(dup, input, &input_eof) {
            tracing::error!("{} bytes of terminal input are lost: {e}", input.len());
        }
    };
    match typed_line(&slave) {
        Ok(line) => input.extend(line),
        Err(e) => {
            give_back(&input);
            return Err(err("reading the line being typed")(e));
        }
    }
    let output = match drain(dup, packet_mode) {
        Ok(o) => o,
        Err(e) => {
            give_back(&input);
            return Err(err("reading the pending output")(e));
        }
    };
    Ok(PtyFile {
        index,
        master: true,
        slave_termios: termios.clone(),
        master_termios: termios,
        winsize,
        packet_mode,
        locked,
        exclusive,
        output,
        input,
        input_eof,
        slave_mode: Some(owner.st_mode & 0o7777),
        slave_uid: owner.st_uid,
        slave_gid: owner.st_gid,
        ..Default::default()
    })
}

/// Whether no process ever opened the slave side of the pair (and whether
/// its master has something to read: the echo of input typed for it).
/// Once one was opened, the master reports POLLHUP while none is open;
/// otherwise a process holds the slave now (found by device number, or as
/// its controlling terminal, which /dev/tty opens), or none ever did.
/// Anything else unreadable counts as held: opening the slave is then
/// harmless or unavoidable, as before.
fn slave_never_opened(master: &OwnedFd, index: u32) -> (bool, bool) {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(master, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&zero)).is_err() || fds[0].revents().contains(PollFlags::HUP) {
        return (false, false);
    }
    let echoed = fds[0].revents().contains(PollFlags::IN);
    let rdev = libc::makedev(136 + index / 256, index % 256);
    let held = || -> io::Result<bool> {
        for p in std::fs::read_dir("/proc")? {
            let p = p?;
            if !p
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
            match crate::proc::read_string(p.path().join("stat")) {
                Ok(text) => {
                    let stat = crate::proc::parse_stat(&text, "stat");
                    if stat.is_ok_and(|s| s.field(7) == rdev) {
                        return Ok(true);
                    }
                }
                Err(_) if !p.path().exists() => continue,
                Err(_) => return Ok(true),
            }
            let fd_dir = match std::fs::read_dir(p.path().join("fd")) {
                Ok(dir) => dir,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            for fd in fd_dir {
                let fd = fd?;
                match std::fs::metadata(fd.path()) {
                    Ok(md) if md.file_type().is_char_device() && md.rdev() == rdev => {
                        return Ok(true);
                    }
                    Ok(_) => {}
                    Err(e) if gone(&e) => {}
                    // A process crstream may not look into (the sandbox's
                    // init, in another user namespace): not one of the
                    // tree, and passed over.
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(false)
    };
    match held() {
        Ok(held) => (!held, echoed),
        Err(_) => (false, false),
    }
}

/// The line being typed in canonical mode, not yet entered, which no read
/// returns: readable once canonical mode is off for a moment (the line
/// discipline then hands out everything it holds), with VMIN and VTIME 0
/// so that a read never waits for more. Written back like the rest of the
/// input, it is a line being typed again.
fn typed_line(slave: &OwnedFd) -> io::Result<Vec<u8>> {
    let saved = tty::get_bytes(slave, TCGETS2, TERMIOS2_LEN)?;
    let lflag = u32::from_ne_bytes(saved[12..16].try_into().expect("4 bytes"));
    if lflag & libc::ICANON == 0 {
        return Ok(Vec::new());
    }
    let mut raw = saved.clone();
    raw[12..16].copy_from_slice(&(lflag & !libc::ICANON).to_ne_bytes());
    raw[CC_AT + libc::VMIN] = 0;
    raw[CC_AT + libc::VTIME] = 0;
    tty::set_bytes(slave, TCSETS2, &raw)?;
    let line = drain(slave, false);
    tty::set_bytes(slave, TCSETS2, &saved)?;
    line
}

/// Reads everything one side has pending (its reader is frozen: nothing
/// else reads it): what TIOCINQ counts and what the tty layer still moves
/// in behind it, until nothing comes for a few milliseconds.
/// Only when poll says so, so that the shared description's flags stay as
/// they are; in packet mode (TIOCPKT), which puts a status byte before
/// each read's data, with packet mode off for the while.
fn drain(master: &OwnedFd, packet_mode: bool) -> io::Result<Vec<u8>> {
    drain_reads(master, packet_mode, &mut |_, _| {})
}

/// The complete lines typed and not read yet (the slave side in canonical
/// mode: one line per read), and the offsets at which a line ended with
/// VEOF, which a read returns without newline (an empty one too). Outside
/// canonical mode, everything pending and no offsets.
fn drain_lines(slave: &OwnedFd, termios: &[u8]) -> io::Result<(Vec<u8>, Vec<u32>)> {
    let lflag = u32::from_ne_bytes(termios[12..16].try_into().expect("4 bytes"));
    let canonical = lflag & libc::ICANON != 0;
    let ends = [
        b'\n',
        termios[CC_AT + libc::VEOL],
        termios[CC_AT + libc::VEOL2],
    ];
    let mut eof = Vec::new();
    let data = drain_reads(slave, false, &mut |read: &[u8], end: usize| {
        let ended = read.last().is_some_and(|c| *c != 0 && ends.contains(c));
        if canonical && !ended {
            eof.push(end as u32);
        }
    })?;
    Ok((data, eof))
}

/// [`drain`], calling `each` with every read's bytes and where they end.
fn drain_reads(
    master: &OwnedFd,
    packet_mode: bool,
    each: &mut dyn FnMut(&[u8], usize),
) -> io::Result<Vec<u8>> {
    use rustix::event::{PollFd, PollFlags, poll};
    /// More than any pty buffers.
    const MAX: usize = 1 << 20;
    if packet_mode {
        tty::set_int(master, TIOCPKT, 0)?;
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut file = std::fs::File::from(master.try_clone()?);
    let r = (|| {
        let mut quiet = 0;
        while quiet < 3 && out.len() < MAX {
            let mut fds = [PollFd::new(master, PollFlags::IN)];
            let ready = poll(
                &mut fds,
                Some(&rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 2_000_000,
                }),
            )? > 0
                && fds[0].revents().contains(PollFlags::IN);
            if !ready {
                quiet += 1;
                continue;
            }
            quiet = 0;
            match file.read(&mut buf) {
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    each(&buf[..n], out.len());
                }
                // No slave open: nothing pending.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })();
    if packet_mode {
        tty::set_int(master, TIOCPKT, 1)?;
    }
    r.map(|()| out)
}

/// A new pseudo-terminal pair with index `index`: /dev/ptmx hands out the
/// lowest free index, so the ones below are held until it comes.
fn open_index(index: u32) -> io::Result<OwnedFd> {
    let mut held = Vec::new();
    loop {
        let m = rustix::fs::open(
            "/dev/ptmx",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let got = tty::get_int(&m, TIOCGPTN)? as u32;
        if got == index {
            tty::set_int(&m, TIOCSPTLCK, 0)?;
            return Ok(m);
        }
        if got > index || held.len() > 4096 {
            return Err(io::Error::other(format!(
                "/dev/pts/{index} is in use here (the kernel handed out {got})"
            )));
        }
        held.push(m);
    }
}

/// A new fd of the slave of `master`, opened through it with `flags`.
fn open_peer(master: &OwnedFd, flags: i32) -> io::Result<OwnedFd> {
    /// _IO('T', 0x41)
    const TIOCGPTPEER: u64 = 0x5441;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns
    // a new fd, which is ours.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not in `flags`: TIOCGPTPEER would keep O_CLOEXEC in the file's flags.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// The pair's state from the master's record.
fn set_state(master: &OwnedFd, p: &PtyFile) -> io::Result<()> {
    let check = |b: &[u8], len: usize, what: &str| {
        if b.len() == len {
            Ok(())
        } else {
            Err(io::Error::other(format!("{what} of {} bytes", b.len())))
        }
    };
    check(&p.slave_termios, TERMIOS2_LEN, "termios")?;
    check(&p.master_termios, TERMIOS2_LEN, "termios")?;
    check(&p.winsize, WINSIZE_LEN, "winsize")?;
    tty::set_bytes(master, TCSETS2, &p.master_termios)?;
    tty::set_bytes(master, TIOCSWINSZ, &p.winsize)?;
    if p.slave_never_opened {
        // Opening the slave would change the pair (see `read_master`);
        // the master's TCSETS2 set the slave's termios already.
        if p.packet_mode {
            tty::set_int(master, TIOCPKT, 1)?;
        }
        if p.locked {
            tty::set_int(master, TIOCSPTLCK, 1)?;
        }
        return Ok(());
    }
    let slave = tty::peer(master, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
    if let Some(mode) = p.slave_mode {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(p.slave_uid),
            rustix::fs::Gid::from_raw(p.slave_gid),
        );
        rustix::fs::fchown(&slave, Some(uid), Some(gid))?;
        rustix::fs::fchmod(&slave, rustix::fs::Mode::from_raw_mode(mode))?;
    }
    tty::set_bytes(&slave, TCSETS2, &p.slave_termios)?;
    write_output(master, &p.output)?;
    write_input(master, &p.input, &p.input_eof)?;
    if p.packet_mode {
        tty::set_int(master, TIOCPKT, 1)?;
    }
    if p.exclusive {
        tty::call(&slave, TIOCEXCL)?;
    }
    if p.locked {
        tty::set_int(master, TIOCSPTLCK, 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{PTY_INDEXES, created, dump_own};
    use super::*;
    use std::os::fd::AsRawFd;

    fn write_to(fd: &OwnedFd, bytes: &[u8]) {
        std::fs::File::from(fd.try_clone().unwrap())
            .write_all(bytes)
            .unwrap();
    }

    /// Exactly `n` bytes read from `fd`.
    fn read_from(fd: &OwnedFd, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        std::fs::File::from(fd.try_clone().unwrap())
            .read_exact(&mut b)
            .unwrap();
        b
    }

    /// A pair's state comes back on a pair with the same index: termios
    /// of both sides, window size, packet mode, exclusive mode, and the
    /// output the master had not read (which the original keeps too).
    #[test]
    fn a_pseudo_terminal_pair_comes_back_with_its_state_and_pending_output() {
        let _indexes = PTY_INDEXES.lock().unwrap_or_else(|e| e.into_inner());
        let master = open_index_any();
        let index = tty::get_int(&master, TIOCGPTN).unwrap() as u32;
        let slave = tty::peer(&master, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        let mut t = tty::get_bytes(&slave, TCGETS2, TERMIOS2_LEN).unwrap();
        // c_lflag (offset 12): ECHO off; c_cc[VMIN] (17 + 6) = 3.
        let lflag = u32::from_ne_bytes(t[12..16].try_into().unwrap()) & !libc::ECHO;
        t[12..16].copy_from_slice(&lflag.to_ne_bytes());
        t[17 + libc::VMIN] = 3;
        tty::set_bytes(&slave, TCSETS2, &t).unwrap();
        let ws = [24u16, 80, 0, 0].map(u16::to_ne_bytes).concat();
        tty::set_bytes(&master, TIOCSWINSZ, &ws).unwrap();
        tty::call(&slave, TIOCEXCL).unwrap();
        write_to(&slave, b"hello\n");
        // Typed, not read: a whole line, and nothing echoed (ECHO is off).
        write_to(&master, b"typed line\nhalf a li");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = dump_own(master.as_raw_fd()).unwrap();
        let p = f.pty.as_ref().unwrap();
        assert!(p.master && p.index == index && p.exclusive);
        assert_eq!(p.output, b"hello\r\n");
        assert_eq!(p.input, b"typed line\nhalf a li");
        // Still pending on the original (once the tty layer has moved it),
        // the line being typed too (TIOCINQ counts whole lines only).
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(tty::get_int(&master, TIOCINQ).unwrap(), 7);
        assert_eq!(tty::get_int(&slave, TIOCINQ).unwrap(), 11);
        assert_eq!(tty::get_bytes(&slave, TCGETS2, TERMIOS2_LEN).unwrap(), t);
        write_to(&master, b"ne\n");
        let lines = read_from(&slave, 23);
        assert_eq!(&lines, b"typed line\nhalf a line\n");
        drop((master, slave));
        let n = created(&mut Ptys::default(), &f);
        assert_eq!(tty::get_int(&n, TIOCGPTN).unwrap() as u32, index);
        let peer = tty::peer(&n, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        assert_eq!(tty::get_bytes(&peer, TCGETS2, TERMIOS2_LEN).unwrap(), t);
        assert_eq!(tty::get_bytes(&n, TIOCGWINSZ, WINSIZE_LEN).unwrap(), ws);
        assert_eq!(tty::get_int(&peer, TIOCGEXCL).unwrap(), 1);
        let line = read_from(&peer, 11);
        assert_eq!(&line, b"typed line\n");
        // The line being typed is one still: it ends when entered.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(tty::get_int(&peer, TIOCINQ).unwrap(), 0);
        write_to(&n, b"ne\n");
        let rest = read_from(&peer, 12);
        assert_eq!(&rest, b"half a line\n");
        let got = read_from(&n, 7);
        assert_eq!(&got, b"hello\r\n");
    }

    /// Typed lines holding characters quoted with ^V (erase, kill, end of
    /// file), lines ended by ^D (one empty), and a line being typed with a
    /// quoted ^D come back as they were: read line by line, the same.
    #[test]
    fn quoted_characters_and_lines_ended_by_eof_come_back_as_typed() {
        let _indexes = PTY_INDEXES.lock().unwrap_or_else(|e| e.into_inner());
        let master = open_index_any();
        let slave = tty::peer(&master, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        let mut t = tty::get_bytes(&slave, TCGETS2, TERMIOS2_LEN).unwrap();
        let lflag = u32::from_ne_bytes(t[12..16].try_into().unwrap()) & !libc::ECHO;
        t[12..16].copy_from_slice(&lflag.to_ne_bytes());
        tty::set_bytes(&slave, TCSETS2, &t).unwrap();
        let (erase, kill, eof, lnext) = (
            t[CC_AT + libc::VERASE],
            t[CC_AT + libc::VKILL],
            t[CC_AT + libc::VEOF],
            t[CC_AT + libc::VLNEXT],
        );
        write_to(
            &master,
            &[b'a', lnext, erase, b'b', lnext, kill, b'c', b'\n'],
        );
        write_to(&master, &[b'a', b'b', b'c', eof, eof]);
        write_to(&master, &[b'x', lnext, eof, b'y']);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = dump_own(master.as_raw_fd()).unwrap();
        let p = f.pty.as_ref().unwrap();
        assert_eq!(
            p.input,
            [
                b'a', erase, b'b', kill, b'c', b'\n', b'a', b'b', b'c', b'x', eof, b'y'
            ]
        );
        assert_eq!(p.input_eof, [9, 9]);
        drop((master, slave));
        let n = created(&mut Ptys::default(), &f);
        let peer = tty::peer(&n, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        let line = || {
            let mut b = vec![0u8; 64];
            let got = std::fs::File::from(peer.try_clone().unwrap())
                .read(&mut b)
                .unwrap();
            b.truncate(got);
            b
        };
        assert_eq!(line(), [b'a', erase, b'b', kill, b'c', b'\n']);
        assert_eq!(line(), b"abc");
        assert_eq!(line(), b"");
        write_to(&n, b"\n");
        assert_eq!(line(), [b'x', eof, b'y', b'\n']);
    }

    /// A pair whose slave nobody ever opened: dump and restore open none
    /// (the master's reads would fail with EIO after), and its termios
    /// still comes back.
    #[test]
    fn a_pair_whose_slave_was_never_opened_stays_so() {
        let _indexes = PTY_INDEXES.lock().unwrap_or_else(|e| e.into_inner());
        let master = open_index_any();
        let mut t = tty::get_bytes(&master, TCGETS2, TERMIOS2_LEN).unwrap();
        let lflag = u32::from_ne_bytes(t[12..16].try_into().unwrap()) & !libc::ECHO;
        t[12..16].copy_from_slice(&lflag.to_ne_bytes());
        tty::set_bytes(&master, TCSETS2, &t).unwrap();
        let hup = |m: &OwnedFd| {
            let mut fds = [rustix::event::PollFd::new(m, rustix::event::PollFlags::IN)];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut fds, Some(&zero)).unwrap();
            fds[0].revents().contains(rustix::event::PollFlags::HUP)
        };
        let f = dump_own(master.as_raw_fd()).unwrap();
        assert!(f.pty.as_ref().unwrap().slave_never_opened);
        assert!(!hup(&master), "the dump opened the slave");
        let index = tty::get_int(&master, TIOCGPTN).unwrap();
        drop(master);
        let n = created(&mut Ptys::default(), &f);
        assert_eq!(tty::get_int(&n, TIOCGPTN).unwrap(), index);
        assert!(!hup(&n), "the restore opened the slave");
        let peer = tty::peer(&n, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        assert_eq!(tty::get_bytes(&peer, TCGETS2, TERMIOS2_LEN).unwrap(), t);
        drop((n, peer));
        // Input typed for it (its echo is there) could not be read without
        // opening it: refused by name.
        let master = open_index_any();
        write_to(&master, b"typed");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let e = dump_own(master.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("which no process ever opened"), "{e}");
        assert!(!hup(&master));
    }

    fn open_index_any() -> OwnedFd {
        let m = rustix::fs::open(
            "/dev/ptmx",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        tty::set_int(&m, TIOCSPTLCK, 0).unwrap();
        m
    }

    #[test]
    fn slave_indexes() {
        assert_eq!(slave_index(libc::makedev(136, 3)), Some(3));
        assert_eq!(slave_index(libc::makedev(137, 1)), Some(257));
        assert_eq!(slave_index(libc::makedev(4, 1)), None);
        assert!(is_master(libc::makedev(5, 2)));
    }
}
