//! End-to-end tests of shell jobs (run as root): a job running in the
//! foreground of a shell's terminal is dumped with --shell-job and restored
//! with --shell-job under another terminal, where it goes on printing and
//! reading lines in the foreground.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(30);

/// A pseudo-terminal: the master, read by a thread into `output`, and the
/// slave's path.
struct Pty {
    master: std::fs::File,
    slave: String,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn open() -> Pty {
        // SAFETY: the standard pty calls; the fd is owned by the File.
        let master = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            std::fs::File::from(OwnedFd::from_raw_fd(fd))
        };
        let mut name = [0 as libc::c_char; 64];
        // SAFETY: ptsname_r into a local buffer.
        assert_eq!(
            unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) },
            0
        );
        // SAFETY: NUL-terminated by ptsname_r.
        let slave = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let output = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, out) = (master.try_clone().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once no process holds the slave any more.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            slave,
            output,
        }
    }

    /// Opens the slave three times for a child's stdin, stdout, stderr.
    fn stdio(&self) -> [Stdio; 3] {
        let open = || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.slave)
                .unwrap();
            Stdio::from(f)
        };
        [open(), open(), open()]
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let t = Instant::now();
        loop {
            let s = self.text();
            if s.contains(what) {
                return s;
            }
            assert!(
                t.elapsed() < T,
                "{what:?} never appeared on {}: {s}",
                self.slave
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A job in the foreground of a shell's terminal: dump refuses its terminal
/// without --shell-job (the job runs on), and refuses the shell itself (it
/// leads the terminal's session); restore refuses the image without it; with it, the job comes back twice under another terminal, in that
/// terminal's foreground, counting on from where it stopped and answering
/// what is typed there.
#[test]
fn shell_job_moves_to_the_restoring_terminal_and_keeps_reading_and_writing() {
    let dir = TestDir::new("shell-job");
    let report = dir.path("report");
    let pty = Pty::open();
    let [i, o, e] = pty.stdio();
    let shell = Command::new(example("wl_tty"))
        .arg(&report)
        .stdin(i)
        .stdout(o)
        .stderr(e)
        .spawn()
        .unwrap();
    // Its pid is the "shell"'s; the job is what we dump.
    let shell = Workload::from_child(shell, report.clone());
    let r = shell.wait_report(T, |r| field(r, 0, 1) >= 5 && status(r) == "OK");
    let job = field(&r, 0, 0) as i32;
    pty.wait_for("tick 5");

    let img = dir.path("img");
    let img_s = img.to_str().unwrap();
    let msg = dump_refused(job, &img, &[], &[]);
    assert!(
        msg.contains("a terminal") && msg.contains("--shell-job") && msg.contains(&pty.slave),
        "{msg}"
    );
    // The shell itself leads the terminal's session: that terminal cannot
    // be handed back to it.
    let msg = dump_refused(shell.pid, &img, &["--shell-job"], &[]);
    assert!(msg.contains("leads its own session"), "{msg}");
    assert_running_untraced(shell.pid);
    let before = field(&shell.read_report().unwrap(), 0, 1);
    let r = shell.wait_report(T, |r| field(r, 0, 1) > before + 2);
    assert_eq!(status(&r), "OK", "the job runs on after the refusal: {r}");
    assert_running_untraced(job);

    // Settings of the job's terminal (as a full-screen program changes
    // them), which the restoring terminal must get: no echo, ^H erases.
    let mut t = termios_of(&pty.slave);
    t.c_lflag &= !libc::ECHO;
    t.c_cc[libc::VERASE] = 0x08;
    set_termios(&pty.slave, &t);
    let o = run(
        &["dump", "-t", &job.to_string(), "-o", img_s, "--shell-job"],
        &[],
    );
    assert!(o.status.success(), "dump --shell-job: {}", text(&o));
    assert!(wait_gone(job, T), "the job survived its dump");
    let at_dump = field(&shell.read_report().unwrap(), 0, 1);

    let o = run(&["restore", "-i", img_s, "--detach"], &[]);
    assert!(!o.status.success(), "restore without --shell-job");
    assert!(
        text(&o).contains("restore it with --shell-job"),
        "{}",
        text(&o)
    );
    assert!(!proc_exists(job));

    for round in 0..2 {
        let tty = Pty::open();
        let [i, o, e] = tty.stdio();
        // crstream is the new terminal's session leader, as a shell would be.
        let mut cmd = crstream();
        cmd.args(["restore", "-i", img_s, "--shell-job"])
            .stdin(i)
            .stdout(o)
            .stderr(e);
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut restorer = cmd.spawn().unwrap();
        let r = shell.wait_report(T, |r| {
            field(r, 0, 0) == job as u64 && field(r, 0, 1) > at_dump + 3
        });
        assert_eq!(status(&r), "OK", "round {round}: {r}\n{}", tty.text());
        assert!(
            field(&r, 0, 1) < at_dump + 200,
            "the count restarted or jumped: {r} vs {at_dump}"
        );
        tty.wait_for(&format!("tick {}", at_dump + 2));
        assert_eq!(
            std::fs::read_link(format!("/proc/{job}/fd/1")).unwrap(),
            std::path::Path::new(&tty.slave),
            "the job writes to the restoring terminal"
        );
        let t = termios_of(&tty.slave);
        assert_eq!(
            (t.c_lflag & libc::ECHO, t.c_cc[libc::VERASE]),
            (0, 0x08),
            "round {round}: the job's terminal settings"
        );
        // What is typed on the new terminal reaches the job.
        (&tty.master).write_all(b"ping 7\n").unwrap();
        tty.wait_for("pong 7");
        assert_running_untraced(job);
        // SAFETY: killing the job this test restored.
        unsafe { libc::kill(job, libc::SIGKILL) };
        let st = restorer.wait().unwrap();
        assert_eq!(
            st.code(),
            Some(128 + libc::SIGKILL),
            "crstream passes on the job's end"
        );
        assert!(wait_gone(job, T));
    }
}

fn termios_of(path: &str) -> libc::termios {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .unwrap();
    // SAFETY: tcgetattr into a zeroed local termios.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(tty.as_raw_fd(), &mut t), 0);
        t
    }
}

fn set_termios(path: &str, t: &libc::termios) {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .unwrap();
    // SAFETY: tcsetattr from a termios of ours.
    assert_eq!(
        unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, t) },
        0
    );
}
