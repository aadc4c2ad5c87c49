//! Dump runs in a worker process so that a signal to crstream never stops
//! it half way: whatever ends the crstream command (Ctrl-C, SIGTERM,
//! SIGHUP, SIGKILL, a signal to its process group), the worker hears of it
//! and stops at the next safe point, with the target running on unharmed
//! and nothing partial left at the destination.
//!
//! [`split`] forks before any thread exists. The parent stays in the
//! foreground as a supervisor: it passes the signals it receives to the
//! worker through a pipe and exits with the worker's status (128+signal if
//! it was interrupted). The child becomes the worker, in a session of its
//! own (the terminal's and the command's process group signals do not
//! reach it); a thread of its own watches the pipe and its own signals
//! and raises the [`Interrupt`] flag.

use anyhow::{Context, Result};
use crstream_core::Handed;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Signals that end a command and instead interrupt its worker.
const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Raised when the worker must stop: why, once known.
#[derive(Clone, Default)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    why: Arc<Mutex<Option<String>>>,
}

impl Interrupt {
    /// The flag to hand to the engine and the stream writer.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    pub fn raised(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Why it was raised.
    pub fn why(&self) -> String {
        self.why
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_else(|| "crstream was interrupted".into())
    }

    fn raise(&self, why: String) {
        let mut w = self.why.lock().expect("not poisoned");
        if w.is_none() {
            *w = Some(why);
        }
        self.flag.store(true, Ordering::Relaxed);
    }
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

/// Blocks SIGNALS in this thread (and every thread it creates) and returns
/// a signalfd that reads them.
fn signalfd() -> Result<SignalFd> {
    let set: SigSet = SIGNALS.into_iter().collect();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).context("blocking signals")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("signalfd")
}

/// The number of the signal read from `fd` (0 if none).
fn read_signal(fd: &SignalFd) -> i32 {
    fd.read_signal()
        .ok()
        .flatten()
        .map_or(0, |info| info.ssi_signo as i32)
}

/// Forks the worker of a dump of `target`; returns in it, with its end of
/// the socket on which it hands the supervisor the connections it takes
/// from accept queues and its memory snapshots (`DumpOptions::handoff`).
/// The supervisor never returns: it exits once the worker has.
pub fn split(target: i32) -> Result<(Interrupt, Arc<OwnedFd>)> {
    let (from_supervisor, to_worker) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let (handoff, handed) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .context("socketpair")?;
    // SAFETY: called before any other thread exists (no runtime, no
    // thread started yet), so the child may run anything.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { child } => {
            drop((from_supervisor, handoff));
            std::process::exit(supervise(child, to_worker, &handed, target));
        }
        nix::unistd::ForkResult::Child => drop((to_worker, handed)),
    }
    // A session of its own: the terminal's signals and those sent to the
    // command's process group are the supervisor's to pass on.
    let _ = rustix::process::setsid();
    let interrupt = Interrupt::default();
    let signals = signalfd()?;
    let watch = interrupt.clone();
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || watch_interrupts(&watch, &from_supervisor, &signals))
        .context("starting the interrupt watcher")?;
    Ok((interrupt, Arc::new(handoff)))
}

/// The worker's watcher: a message from the supervisor (the signal it
/// received), the supervisor's end of the pipe closing (it was killed), or
/// a signal to the worker itself raise the interrupt.
fn watch_interrupts(interrupt: &Interrupt, pipe: &OwnedFd, signals: &SignalFd) {
    loop {
        let mut fds = [
            PollFd::new(pipe, PollFlags::IN),
            PollFd::new(signals, PollFlags::IN),
        ];
        if rustix::event::poll(&mut fds, None).is_err() {
            continue;
        }
        if !fds[1].revents().is_empty() {
            let sig = read_signal(signals);
            interrupt.raise(format!("crstream received {}", signal_name(sig)));
        }
        if !fds[0].revents().is_empty() {
            let mut b = [0u8; 4];
            match rustix::io::read(pipe, &mut b) {
                Ok(4) => {
                    let sig = i32::from_ne_bytes(b);
                    interrupt.raise(format!("crstream received {}", signal_name(sig)));
                }
                Ok(_) => {
                    interrupt.raise("the crstream command was killed".into());
                    return;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// The supervisor: passes SIGNALS to the worker and waits for it.
/// `handoff`: where the worker hands what it takes (connections taken from
/// accept queues, memory snapshots), taken from as it comes.
fn supervise(worker: Pid, to_worker: OwnedFd, handoff: &OwnedFd, target: i32) -> i32 {
    let mut handed = Handed::default();
    let wait_for = |received, handed| wait_for(worker, received, handed, handoff, target);
    let Ok(signals) = signalfd() else {
        return wait_for(None, handed);
    };
    let Ok(pidfd) = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(worker.as_raw()).expect("a child's pid"),
        rustix::process::PidfdFlags::empty(),
    ) else {
        return wait_for(None, handed);
    };
    let mut received = None;
    loop {
        let mut fds = [
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(&signals, PollFlags::IN),
            PollFd::new(handoff, PollFlags::IN),
        ];
        if rustix::event::poll(&mut fds, None).is_err() {
            continue;
        }
        if !fds[1].revents().is_empty() {
            let sig = read_signal(&signals);
            if received.is_none() {
                received = Some(sig);
            }
            let _ = rustix::io::write(to_worker.as_fd(), &sig.to_ne_bytes());
        }
        if !fds[2].revents().is_empty() {
            // What is left is taken once the worker is gone.
            let _ = handed.take_from(handoff);
        }
        if !fds[0].revents().is_empty() {
            return wait_for(received, handed);
        }
    }
}

/// The worker's exit status, or 128+signal if the command was interrupted.
/// A worker killed outright (SIGKILL, the OOM killer) could not say so
/// itself: the supervisor does.
fn wait_for(
    worker: Pid,
    received: Option<i32>,
    handed: Handed,
    handoff: &OwnedFd,
    target: i32,
) -> i32 {
    let status = loop {
        match waitpid(worker, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(status) => break status,
            Err(_) => return 1,
        }
    };
    match (received, status) {
        // The signal came once the image was committed: the dump is done.
        (Some(_), WaitStatus::Exited(_, 0)) => 0,
        // The worker blocks the signals the supervisor passes on: killed
        // by one, it was killed outright, whatever came before.
        (_, WaitStatus::Signaled(_, sig, _)) => {
            let alive = std::path::Path::new(&format!("/proc/{target}")).exists();
            let now = if alive { "it runs on" } else { "it is gone" };
            // Its TCP connections may be in repair mode behind a network
            // lock or taken from an accept queue, and its memory snapshots
            // unreaped: only the worker could have put them right.
            if alive {
                let problems = crstream_core::recover_from_dead_dump(
                    worker.as_raw(),
                    target,
                    handed,
                    Some(handoff),
                );
                for problem in problems {
                    eprintln!("crstream: error: {problem}");
                }
            }
            eprintln!(
                "crstream: error: dump of pid {target} interrupted (its worker, pid {worker}, \
                 was killed by {}); {now}",
                sig.as_str()
            );
            // Interrupted first: as any interrupted command.
            128 + received.unwrap_or(sig as i32)
        }
        (Some(sig), _) => 128 + sig,
        (None, WaitStatus::Exited(_, code)) => code,
        _ => 1,
    }
}
