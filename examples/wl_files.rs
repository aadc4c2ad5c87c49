//! Workload: a data file read sequentially (offset tracked and checked), an
//! O_APPEND log, a deleted temporary file whose contents it verifies, a
//! directory and /dev/null, a dup'ed fd sharing an offset. Reports, every
//! 100 ms: "pid counter STATUS".
//!
//! Usage: wl_files REPORT DIR   (DIR/data must exist; DIR/log is appended)

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

mod wl_common;
use wl_common::report;

fn pattern(off: u64) -> u8 {
    (off % 251) as u8
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let args: Vec<String> = std::env::args().collect();
    let (path, dir) = (args[1].clone(), args[2].clone());
    let mut data = File::open(format!("{dir}/data")).expect("data");
    let data_len = data.metadata().unwrap().len();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/log"))
        .expect("log");
    let tmp_path = format!("{dir}/scratch");
    let mut tmp = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&tmp_path)
        .unwrap();
    let contents: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(7) % 256) as u8)
        .collect();
    tmp.write_all(&contents).unwrap();
    std::fs::remove_file(&tmp_path).unwrap();
    let _dir = File::open(&dir).unwrap();
    let _null = File::open("/dev/null").unwrap();
    // SAFETY: dup of an fd we own; the new fd shares the offset.
    let dup = unsafe { File::from_raw_fd(libc::dup(data.as_raw_fd())) };
    let mut expected_off = 0u64;
    let pid = std::process::id();
    let mut counter = 0u64;
    let mut status = String::from("OK");
    loop {
        counter += 1;
        if expected_off + 16 > data_len {
            data.seek(SeekFrom::Start(0)).unwrap();
            expected_off = 0;
        }
        let mut b = [0u8; 16];
        data.read_exact(&mut b).unwrap();
        if b.iter()
            .enumerate()
            .any(|(i, &x)| x != pattern(expected_off + i as u64))
        {
            status = format!("CORRUPT data at {expected_off}");
        }
        expected_off += 16;
        let pos = (&dup).stream_position().unwrap();
        if pos != expected_off {
            status = format!("CORRUPT offset {pos} != {expected_off}");
        }
        writeln!(log, "{counter}").unwrap();
        let at = (counter * 997) % (contents.len() as u64 - 64);
        let mut c = [0u8; 64];
        tmp.read_exact_at(&mut c, at).unwrap();
        if c[..] != contents[at as usize..at as usize + 64] {
            status = format!("CORRUPT deleted file at {at}");
        }
        report(&path, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
