//! Workload: runs from a memfd, as fileless loaders and some runtimes do:
//! copies its own executable into a memfd (kept open, not close-on-exec)
//! and execveat()s it. Then, every 100 ms, it checks: /proc/self/exe is
//! the memfd; the kernel refuses to open its executable for writing
//! (ETXTBSY), as for any running program; writes through the fd it kept
//! still work; and the file still starts with the ELF magic. Reports "pid
//! counter STATUS".
//!
//! Usage: wl_memfd_exec REPORT

use std::ffi::CString;
use std::time::Duration;

mod wl_common;
use wl_common::report;

const NAME: &str = "wl-memfd-exec";

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.into()) }
}

fn verify(fd: i32) -> Result<(), String> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("exe-{e}"))?;
    check(
        exe.to_str() == Some(&format!("/memfd:{NAME} (deleted)")),
        &format!("exe-is-{}", exe.display()),
    )?;
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/exe");
    check(
        w.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ETXTBSY)),
        "executable-open-for-writing",
    )?;
    // The last byte of the file, rewritten through the kept fd.
    // SAFETY: fstat, pread and pwrite on our own fd with local buffers.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(fd, &mut st) == 0, "fstat")?;
        let mut b = [0u8; 1];
        check(
            libc::pread(fd, b.as_mut_ptr().cast(), 1, st.st_size - 1) == 1,
            "pread",
        )?;
        check(
            libc::pwrite(fd, b.as_ptr().cast(), 1, st.st_size - 1) == 1,
            "write-through-the-kept-fd",
        )?;
        let mut magic = [0u8; 4];
        check(
            libc::pread(fd, magic.as_mut_ptr().cast(), 4, 0) == 4 && &magic == b"\x7fELF",
            "elf-magic",
        )?;
        check(
            libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE == libc::O_RDWR,
            "kept-fd-mode",
        )?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: wl_memfd_exec REPORT").clone();
    let Some(fd) = args.get(2).and_then(|s| s.parse::<i32>().ok()) else {
        // SAFETY: no fd above 2 is in use yet.
        unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
        let bytes = std::fs::read("/proc/self/exe").expect("read own executable");
        let name = CString::new(NAME).unwrap();
        // SAFETY: memfd_create, write and execveat with valid buffers; the
        // argv/envp arrays are NULL-terminated and outlive the call.
        unsafe {
            let fd = libc::memfd_create(name.as_ptr(), 0);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(
                libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
                bytes.len() as isize
            );
            let argv: Vec<CString> = [args[0].clone(), path, fd.to_string()]
                .into_iter()
                .map(|a| CString::new(a).unwrap())
                .collect();
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                ptrs.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            panic!("execveat: {}", std::io::Error::last_os_error());
        }
    };
    let pid = std::process::id();
    let mut counter = 0u64;
    loop {
        counter += 1;
        let status = verify(fd).err().unwrap_or_else(|| "OK".into());
        report(&path, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
