//! `crstream check`: does this kernel and this process have what dump and
//! restore need?

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

pub fn check() -> Vec<FeatureCheck> {
    let mut out = required_and_cheap();
    // Loads and attaches an eBPF program: not for every dump.
    out.push(feature(
        "accept queues (tcx, bpf_sk_assign_tcp_reqsk)",
        false,
        crate::fd::accept_queue::AcceptQueues::default()
            .prepare(true)
            .map(|()| "connections waiting in a listener's accept queue can be put back".into())
            .map_err(|e| format!("{e} (they are refused)")),
    ));
    out
}

/// The checks every dump makes first (`dump::refuse_unrestorable_here`).
pub(crate) fn required_and_cheap() -> Vec<FeatureCheck> {
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
    out.push(feature(
        "CONFIG_CHECKPOINT_RESTORE (PR_GET_TID_ADDRESS)",
        true,
        crate::sys::process::own_tid_address()
            .map(|_| "available".into())
            .map_err(|e| e.to_string()),
    ));
    let vdso = crate::proc::maps(me)
        .ok()
        .and_then(|m| m.into_iter().find(|m| m.path == b"[vdso]"));
    out.push(feature(
        "syscall instruction in the vDSO",
        true,
        match vdso {
            Some(v) => {
                let mut b = vec![0u8; v.len() as usize];
                match crate::sys::mem::vm_readv(me, &[(v.start, b.len())], &mut b) {
                    Ok(n) if n == b.len() => crate::inject::find_syscall_insn(&b, v.start)
                        .map(|a| format!("at {a:#x}"))
                        .ok_or_else(|| "not found".into()),
                    Ok(_) => Err("short read of [vdso]".into()),
                    Err(e) => Err(format!("reading [vdso]: {e}")),
                }
            }
            None => Err("no [vdso]".into()),
        },
    ));
    let x = 0x5au8;
    let mut y = 0u8;
    let n = crate::sys::mem::vm_readv(
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
                let base = &x as *const u8 as u64 & !4095;
                match crate::sys::mem::pagemap_scan(&f, base, base + 4096, 0) {
                    Ok(_) => Ok("available".into()),
                    Err(e) => Err(format!("{e} (falls back to pagemap entries)")),
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    out.push(feature(
        "kcmp",
        false,
        crate::sys::kcmp::shares(me, me, crate::sys::kcmp::Shared::Vm)
            .map(|_| "available (detects shared open files)".into())
            .map_err(|e| e.to_string()),
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
    out.push(feature(
        "userfaultfd (lazy restore, later)",
        false,
        crate::sys::uffd::own(libc::O_CLOEXEC | crate::sys::uffd::USER_MODE_ONLY)
            .map(|_| "available".into())
            .map_err(|e| e.to_string()),
    ));
    let got = match crate::sys::pidfd::take_fd(me, 0) {
        // EBADF: fd 0 is closed, the call itself works.
        Ok(_) => Ok("available".into()),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok("available".into()),
        Err(e) => Err(e.to_string()),
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
