//! Workload: an io_setup context that always holds three completions not
//! yet reaped. Each round it submits ten 64-byte reads of its data file,
//! each tagged with its number, and after each submission reaps one
//! completion: the one three behind, which it first finds in the ring's
//! memory at the context's address (as libaio's user-space reaping does),
//! then gets from io_getevents, with the right bytes read. The ring wraps
//! every 13 rounds. Reports "pid counter STATUS".
//!
//! Usage: wl_aio REPORT

use std::os::fd::AsRawFd;
use std::time::Duration;

mod wl_common;
use wl_common::report;

const LAG: u64 = 3;
const CHUNK: usize = 64;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct Event {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

fn content(offset: usize) -> u8 {
    (offset * 7 % 251) as u8
}

fn main() {
    // SAFETY: no fd above 2 is in use yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let path = std::env::args().nth(1).expect("usage: wl_aio REPORT");
    let data: Vec<u8> = (0..4096).map(content).collect();
    let file_path = format!("{path}.data");
    std::fs::write(&file_path, &data).expect("data file");
    let file = std::fs::File::open(&file_path).expect("open data file");
    let mut ctx: u64 = 0;
    // SAFETY: io_setup writes the context id into ctx.
    let r = unsafe { libc::syscall(libc::SYS_io_setup, 16, &mut ctx) };
    assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
    // One buffer per request that can be in flight at once.
    let mut buffers = vec![[0u8; CHUNK]; LAG as usize + 1];
    let mut iocbs = vec![Iocb::default(); LAG as usize + 1];
    let slot = |k: u64| (k % (LAG + 1)) as usize;
    let offset = |k: u64| (k as usize % (4096 / CHUNK)) * CHUNK;
    let submit = |k: u64, iocbs: &mut [Iocb], buffers: &mut [[u8; CHUNK]]| -> Result<(), String> {
        let s = slot(k);
        buffers[s] = [0; CHUNK];
        iocbs[s] = Iocb {
            data: k,
            fildes: file.as_raw_fd() as u32,
            buf: buffers[s].as_mut_ptr() as u64,
            nbytes: CHUNK as u64,
            offset: offset(k) as i64,
            ..Default::default()
        };
        let mut list = [&mut iocbs[s] as *mut Iocb];
        // SAFETY: one valid iocb whose buffer lives as long as the request.
        let r = unsafe { libc::syscall(libc::SYS_io_submit, ctx, 1, list.as_mut_ptr()) };
        if r != 1 {
            return Err(format!("io_submit-{k}-{}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let reap = |want: u64, buffers: &[[u8; CHUNK]]| -> Result<(), String> {
        // The ring as user space sees it: header of eight u32, then events.
        let ring = ctx as *const u32;
        // SAFETY: the ring is mapped at the context's address.
        let (nr, head, tail) = unsafe {
            (
                ring.add(1).read_volatile(),
                ring.add(2).read_volatile(),
                ring.add(3).read_volatile(),
            )
        };
        if (tail + nr - head) % nr != LAG as u32 + 1 {
            return Err(format!("ring-holds-{}-events", (tail + nr - head) % nr));
        }
        // SAFETY: slot `head` of the ring.
        let first = unsafe { (ctx as *const Event).add(1 + head as usize).read_volatile() };
        if first.data != want {
            return Err(format!("ring-head-has-{}-not-{want}", first.data));
        }
        let mut ev = Event::default();
        // SAFETY: room for one event; no timeout (it is complete).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                ctx,
                1,
                1,
                &mut ev,
                std::ptr::null::<libc::timespec>(),
            )
        };
        if r != 1 {
            return Err(format!("io_getevents-{}", std::io::Error::last_os_error()));
        }
        if ev.data != want || ev.res != CHUNK as i64 {
            return Err(format!("event-{}-res-{}-not-{want}", ev.data, ev.res));
        }
        let o = offset(want);
        if buffers[slot(want)][..] != data[o..o + CHUNK] {
            return Err(format!("read-{want}-has-wrong-bytes"));
        }
        Ok(())
    };
    let pid = std::process::id();
    let mut status = String::from("OK");
    for k in 1..=LAG {
        submit(k, &mut iocbs, &mut buffers).expect("first requests");
    }
    let mut k = LAG;
    let mut counter = 0u64;
    loop {
        counter += 1;
        for _ in 0..10 {
            k += 1;
            if let Err(e) =
                submit(k, &mut iocbs, &mut buffers).and_then(|()| reap(k - LAG, &buffers))
            {
                if status == "OK" {
                    status = e;
                }
            }
        }
        report(&path, &format!("{pid} {counter} {status}\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}
