//! `crstream check`: does this kernel and this process have what dump and
//! restore need?

use std::os::fd::AsRawFd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureCheck {
    pub name: String,
    pub required: bool,
    pub ok: bool,
    pub detail: String,
}

fn feature(name: &str, required: bool, r: Result<String, String>) -> FeatureCheck {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    FeatureCheck {
        name: name.into(),
        required,
        ok,
        detail,
    }
}

fn cap(status: &crate::proc::Status, bit: u32, name: &str) -> Result<String, String> {
    if status.cap_eff & (1u64 << bit) != 0 {
        Ok(format!("{name} in the effective set"))
    } else {
        Err(format!("{name} missing"))
    }
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

pub fn check() -> Vec<FeatureCheck> {
    let me = std::process::id() as i32;
    let status = crate::proc::status(me).unwrap_or_default();
    let mut out = Vec::new();
    out.push(feature(
        "architecture x86_64",
        true,
        if cfg!(target_arch = "x86_64") {
            Ok("x86_64".into())
        } else {
            Err("not x86_64".into())
        },
    ));
    out.push(feature(
        "ptrace (CAP_SYS_PTRACE)",
        true,
        cap(&status, 19, "CAP_SYS_PTRACE"),
    ));
    let cr = if status.cap_eff & (1 << 40) != 0 {
        Ok("CAP_CHECKPOINT_RESTORE in the effective set".into())
    } else {
        cap(&status, 21, "CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE)")
    };
    out.push(feature(
        "clone3 set_tid and PR_SET_MM_MAP (CAP_CHECKPOINT_RESTORE)",
        true,
        cr,
    ));
    // SAFETY: prctl reading our own clear_child_tid into a local.
    let mut addr = 0u64;
    let r = unsafe {
        libc::prctl(40 /* PR_GET_TID_ADDRESS */, &mut addr as *mut u64)
    };
    out.push(feature(
        "CONFIG_CHECKPOINT_RESTORE (PR_GET_TID_ADDRESS)",
        true,
        if r == 0 {
            Ok("available".into())
        } else {
            Err(errno())
        },
    ));
    let vdso = crate::proc::maps(me)
        .ok()
        .and_then(|m| m.into_iter().find(|m| m.path == "[vdso]"));
    out.push(feature(
        "syscall instruction in the vDSO",
        true,
        match vdso {
            Some(v) => {
                // SAFETY: our own vDSO is mapped readable.
                let b =
                    unsafe { std::slice::from_raw_parts(v.start as *const u8, v.len() as usize) };
                crate::syscall::find_syscall_insn(b, v.start)
                    .map(|a| format!("at {a:#x}"))
                    .ok_or_else(|| "not found".into())
            }
            None => Err("no [vdso]".into()),
        },
    ));
    let x = 0x5au8;
    let mut y = 0u8;
    let n = crate::syscall::vm_readv(
        me,
        &[(&x as *const u8 as u64, 1)],
        std::slice::from_mut(&mut y),
    );
    out.push(feature(
        "process_vm_readv",
        true,
        match n {
            Ok(1) if y == x => Ok("works".into()),
            Ok(_) => Err("short read".into()),
            Err(e) => Err(e.to_string()),
        },
    ));
    let pm = std::fs::File::open("/proc/self/pagemap");
    out.push(feature(
        "PAGEMAP_SCAN ioctl",
        false,
        match pm {
            Ok(f) => {
                #[repr(C)]
                struct Arg([u64; 12]);
                let mut regions = [0u64; 3 * 4];
                let base = &x as *const u8 as u64 & !4095;
                let mut a = Arg([
                    96,
                    0,
                    base,
                    base + 4096,
                    0,
                    regions.as_mut_ptr() as u64,
                    4,
                    0,
                    0,
                    0,
                    1 << 3,
                    1 << 3,
                ]);
                // SAFETY: valid pm_scan_arg and region buffer.
                let r = unsafe { libc::ioctl(f.as_raw_fd(), 0xC060_6610, &mut a as *mut Arg) };
                if r >= 0 {
                    Ok("available".into())
                } else {
                    Err(format!("{} (falls back to pagemap entries)", errno()))
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    // SAFETY: kcmp on our own fds 0 and 0.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, 0, 0) };
    out.push(feature(
        "kcmp",
        false,
        if r >= 0 {
            Ok("available (detects shared open files)".into())
        } else {
            Err(errno())
        },
    ));
    out.push(feature(
        "XSAVE",
        false,
        if std::arch::is_x86_feature_detected!("xsave") {
            Ok("available".into())
        } else {
            Err("FXSAVE only".into())
        },
    ));
    // SAFETY: userfaultfd returns an fd we close right away.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | 1, /* UFFD_USER_MODE_ONLY */
        )
    };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
    out.push(feature(
        "userfaultfd (lazy restore, later)",
        false,
        if fd >= 0 {
            Ok("available".into())
        } else {
            Err(errno())
        },
    ));
    // SAFETY: pidfd_open on ourselves; closed right away.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) };
    let got = if pfd >= 0 {
        // SAFETY: pidfd_getfd of our own fd 0 (or an error if fd 0 is closed).
        let g = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd, 0, 0) };
        let res = if g >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF) {
            Ok("available".into())
        } else {
            Err(errno())
        };
        if g >= 0 {
            unsafe { libc::close(g as i32) };
        }
        unsafe { libc::close(pfd as i32) };
        res
    } else {
        Err(errno())
    };
    out.push(feature("pidfd_getfd (lazy restore, later)", false, got));
    out.push(feature(
        "pid_max",
        false,
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .map(|s| s.trim().to_string())
            .map_err(|e| e.to_string()),
    ));
    out
}
