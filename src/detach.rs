//! `restore --lazy --detach`: the command returns as soon as the restored
//! process runs, while a server of its own keeps serving the pages.
//!
//! [`split`] forks before any thread exists. The child becomes the server
//! and does the whole restore, in the command's session (so the process
//! can rejoin it, as in any restore); what it
//! prints on stdout (the PID, or the JSON summary) goes through a pipe to
//! the parent, which prints it and exits 0 as soon as the server lets go
//! of the pipe: once the process runs. If the restore fails before that,
//! the server's error goes to the command's stderr as usual and the parent
//! exits with the server's status. From [`Server::running`] on, the server
//! is in a session of its own (the terminal's signals and the command's
//! process group no longer reach it), its stdout and stderr go to the
//! `--log` file (or nowhere), and its
//! failure, which kills the process (it never runs on missing memory), is
//! also sent to syslog (the journal).

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The server's side: see [`split`].
pub struct Server {
    _private: (),
}

/// Forks; returns in the server only (the parent exits with the outcome).
/// Must be called before any thread exists.
pub fn split() -> Result<Server> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .context("creating the detach pipe")?;
    // SAFETY: no other thread exists yet (documented precondition), so
    // the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("forking the lazy restore server"),
        0 => {
            drop(read);
            // Our stdout is the pipe until the process runs.
            dup_onto(&write, 1)?;
            drop(write);
            Ok(Server { _private: () })
        }
        server => {
            drop(write);
            std::process::exit(parent(read, server))
        }
    }
}

/// The parent: passes the server's output on, and returns 0 once the
/// server closes the pipe after printing it, or the server's status if it
/// ends first.
fn parent(read: OwnedFd, server: i32) -> i32 {
    let mut out = Vec::new();
    let _ = std::fs::File::from(read).read_to_end(&mut out);
    if !out.is_empty() {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(&out);
        let _ = stdout.flush();
        return 0;
    }
    crate::exit_code_of(server).map_or(1, i32::from)
}

fn dup_onto(fd: &impl AsRawFd, target: i32) -> Result<()> {
    // SAFETY: dup2 onto a standard descriptor we own.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        bail!("dup2: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Server {
    /// The process runs: the server leaves the command's session, and its
    /// stdout (the pipe, so the command returns) and stderr now go to `log`
    /// (appended), or nowhere.
    pub fn running(&self, log: Option<&Path>) -> Result<()> {
        rustix::process::setsid().context("setsid")?;
        std::io::stdout().flush().context("writing the result")?;
        let sink = match log {
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the log {}", p.display()))?,
            None => std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .context("opening /dev/null")?,
        };
        dup_onto(&sink, 2)?;
        dup_onto(&sink, 1)?;
        let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
        dup_onto(&null, 0)?;
        Ok(())
    }

    /// Reports a failure of the lazy phase to syslog (the journal), where
    /// someone may see it now that nobody reads our stderr.
    pub fn report(&self, what: &str) {
        let Ok(msg) = std::ffi::CString::new(what.replace('\0', " ")) else {
            return;
        };
        // SAFETY: static identity string; "%s" with one C string argument.
        unsafe {
            libc::openlog(c"crstream".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
            libc::syslog(libc::LOG_ERR, c"%s".as_ptr(), msg.as_ptr());
        }
    }
}
