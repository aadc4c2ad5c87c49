//! io_setup contexts (the `AioContexts` record): each ring, mapped as
//! "/[aio] (deleted)" at the address that is also the context's id, with
//! the completions the process has not reaped yet.
//!
//! Dump reads the ring header and those events from the process's memory,
//! once the ring has stopped moving (a request still running when the tree
//! froze, such as an O_DIRECT read, completes into it within moments).
//!
//! Restore makes a context of the same size in the process (io_setup), has
//! the kernel's own tail reach the saved one by completing zero-byte reads
//! of /dev/null (reaping the first `head` of them), writes the saved events
//! into the slots between head and tail, and moves the ring to its saved
//! address (mremap: the kernel follows it, and the id is the address).
//!
//! Not seen: a request that stays in flight (IOCB_CMD_POLL on a file that
//! never gets ready); its completion does not come after restore.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::{SCRATCH_DATA, Stub};
use crstream_proto::{AioContexts, AioRing, AreaKind, MemoryMap};
use std::time::{Duration, Instant};

/// struct aio_ring's header: id, nr, head, tail, magic, compat and
/// incompat features, header length (u32 each); then the io_events.
const HEADER: usize = 32;
const EVENT: usize = 32;
const MAGIC: u32 = 0xa10a_10a1;
/// How long a ring must stay still before dump trusts it, and how long
/// dump waits for that.
const STILL: Duration = Duration::from_millis(5);
const SETTLE: Duration = Duration::from_secs(1);

pub(crate) struct Aio;

fn header_u32(h: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(h[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

impl Kind for Aio {
    fn name(&self) -> &'static str {
        "aio"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let pid = p.pid;
        let areas: Vec<(u64, u64)> = crate::proc::maps(pid)
            .map_err(|err| DumpError::Proc { pid, err })?
            .into_iter()
            .filter(|m| m.path == b"/[aio] (deleted)")
            .map(|m| (m.start, m.end))
            .collect();
        if areas.is_empty() {
            return Ok(());
        }
        let mem = &p.injector().mem;
        let refuse = |addr: u64, reason: String| DumpError::Unsupported {
            pid,
            what: "AIO context",
            reason: format!("the ring at {addr:#x}: {reason}"),
        };
        let mut rings = Vec::new();
        for (start, end) in areas {
            let mut header = [0u8; HEADER];
            let started = Instant::now();
            // Until the kernel stops completing requests into it.
            loop {
                mem.read(start, &mut header)?;
                std::thread::sleep(STILL);
                let mut again = [0u8; HEADER];
                mem.read(start, &mut again)?;
                if again == header {
                    break;
                }
                if started.elapsed() > SETTLE {
                    return Err(refuse(
                        start,
                        "requests keep completing into it after the tree froze".into(),
                    ));
                }
            }
            let (nr, head, tail) = (
                header_u32(&header, 1),
                header_u32(&header, 2),
                header_u32(&header, 3),
            );
            let room = (end - start) as usize;
            if header_u32(&header, 4) != MAGIC
                || header_u32(&header, 6) != 0
                || header_u32(&header, 7) as usize != HEADER
                || HEADER + nr as usize * EVENT > room
                || head >= nr
                || tail >= nr
            {
                return Err(refuse(
                    start,
                    format!(
                        "not a ring this kernel's layout describes (nr {nr}, head {head}, tail {tail})"
                    ),
                ));
            }
            let mut events = Vec::new();
            let mut slot = head;
            while slot != tail {
                let mut e = [0u8; EVENT];
                mem.read(start + (HEADER + slot as usize * EVENT) as u64, &mut e)?;
                events.extend_from_slice(&e);
                slot = (slot + 1) % nr;
            }
            rings.push(AioRing {
                addr: start,
                len: end - start,
                nr,
                head,
                tail,
                events,
            });
        }
        p.records.push(AioContexts { rings });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        let areas = p
            .need::<MemoryMap>()?
            .areas
            .iter()
            .filter(|a| a.kind() == AreaKind::Aio)
            .count();
        let rings = p.get::<AioContexts>().map_or(0, |c| c.rings.len());
        if areas != rings {
            return Err(RestoreError::Image(format!(
                "pid {}: {areas} AIO rings mapped, {rings} saved",
                p.pid
            )));
        }
        Ok(())
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let Some(c) = p.image.get::<AioContexts>() else {
            return Ok(());
        };
        for ring in &c.rings {
            rebuild(p.stub, ring).map_err(|reason| RestoreError::Unsupported {
                pid: p.stub.pid,
                what: "AIO context",
                reason: format!("the ring at {:#x} ({} slots): {reason}", ring.addr, ring.nr),
            })?;
        }
        Ok(())
    }
}

/// Where in scratch the context id, the iocbs, their pointers and the
/// reaped events go.
const CTX: usize = SCRATCH_DATA;
const BATCH: usize = 32;
const IOCBS: usize = CTX + 64;
const IOCB: usize = 64;
const POINTERS: usize = IOCBS + BATCH * IOCB;
const EVENTS: usize = POINTERS + BATCH * 8;

fn rebuild(stub: &Stub, ring: &AioRing) -> Result<(), String> {
    let (nr, head, tail) = (ring.nr, ring.head, ring.tail);
    if nr == 0 || head >= nr || tail >= nr {
        return Err("the saved ring is inconsistent".into());
    }
    let pending = ((tail as u64 + nr as u64 - head as u64) % nr as u64) as usize;
    if ring.events.len() != pending * EVENT {
        return Err("the saved ring is inconsistent".into());
    }
    let ctx_at = stub
        .put(CTX, &0u64.to_le_bytes())
        .map_err(|e| e.to_string())?;
    // The kernel makes room for twice the requests asked for, plus two,
    // rounded up to whole pages: the most that fits the saved ring's pages
    // gives it again (the count first asked for is not kept anywhere).
    let asked = (nr.saturating_sub(2) / 2).max(1);
    stub.call("io_setup", libc::SYS_io_setup, &[asked as u64, ctx_at])
        .map_err(|e| format!("io_setup: {e}"))?;
    let ctx = stub.mem.read_u64(ctx_at).map_err(|e| e.to_string())?;
    let read_header = |at: u64| -> Result<[u8; HEADER], String> {
        let mut h = [0u8; HEADER];
        stub.mem.read(at, &mut h).map_err(|e| e.to_string())?;
        Ok(h)
    };
    let fresh = read_header(ctx)?;
    let destroy = || {
        let _ = stub.call("io_destroy", libc::SYS_io_destroy, &[ctx]);
    };
    if header_u32(&fresh, 1) != nr {
        destroy();
        return Err(format!(
            "this machine makes a ring of {} slots for it (more CPUs?)",
            header_u32(&fresh, 1)
        ));
    }
    let result = fill(stub, ctx, ring, pending).and_then(|()| move_ring(stub, ctx, ring));
    if result.is_err() {
        destroy();
    }
    result
}

/// Moves the ring from `ctx` to its saved address, the id the process
/// knows it by (the kernel follows a moved ring). A ring that landed over
/// its saved place moves through a free place first: mremap cannot move
/// an area onto itself.
fn move_ring(stub: &Stub, ctx: u64, ring: &AioRing) -> Result<(), String> {
    if ctx == ring.addr {
        return Ok(());
    }
    let remap = |from: u64, to: u64| {
        stub.call(
            "mremap(aio ring)",
            libc::SYS_mremap,
            &[
                from,
                ring.len,
                ring.len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                to,
            ],
        )
        .map(drop)
        .map_err(|e| format!("moving the ring to its address: {e}"))
    };
    let overlaps =
        ctx < ring.addr.saturating_add(ring.len) && ring.addr < ctx.saturating_add(ring.len);
    if !overlaps {
        return remap(ctx, ring.addr);
    }
    // A free place the size of the ring: a mapping the kernel chooses,
    // which the ring replaces.
    let spare = stub
        .call(
            "mmap(spare)",
            libc::SYS_mmap,
            &[
                0,
                ring.len,
                libc::PROT_NONE as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(|e| format!("a place to move the ring through: {e}"))? as u64;
    remap(ctx, spare)?;
    remap(spare, ring.addr)
}

/// Brings the kernel's tail to the saved one with completed zero-byte
/// reads (the first `head` reaped), then writes the saved events.
fn fill(stub: &Stub, ctx: u64, ring: &AioRing, pending: usize) -> Result<(), String> {
    let err = |e: crate::error::TaskError| e.to_string();
    let null = stub
        .open(b"/dev/null", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let base = stub.scratch();
    let mut iocbs = vec![0u8; BATCH * IOCB];
    let mut pointers = Vec::with_capacity(BATCH * 8);
    for i in 0..BATCH {
        let iocb = &mut iocbs[i * IOCB..(i + 1) * IOCB];
        // aio_lio_opcode 0 (IOCB_CMD_PREAD), aio_fildes, aio_buf, 0 bytes.
        iocb[20..24].copy_from_slice(&(null as u32).to_le_bytes());
        iocb[24..32].copy_from_slice(&(base + EVENTS as u64).to_le_bytes());
        pointers.extend_from_slice(&(base + (IOCBS + i * IOCB) as u64).to_le_bytes());
    }
    stub.put(IOCBS, &iocbs).map_err(err)?;
    let pointers_at = stub.put(POINTERS, &pointers).map_err(err)?;
    let events_at = base + EVENTS as u64;
    let submit = |n: usize| -> Result<usize, String> {
        let done = stub
            .call(
                "io_submit",
                libc::SYS_io_submit,
                &[ctx, n as u64, pointers_at],
            )
            .map_err(|e| format!("io_submit: {e}"))? as usize;
        if done == 0 {
            return Err("io_submit took no request".into());
        }
        Ok(done)
    };
    let result = (|| {
        let mut reap = ring.head as usize;
        while reap > 0 {
            let n = submit(reap.min(BATCH))?;
            stub.call(
                "io_getevents",
                libc::SYS_io_getevents,
                &[ctx, n as u64, n as u64, events_at, 0],
            )
            .map_err(|e| format!("io_getevents: {e}"))?;
            reap -= n;
        }
        let mut left = pending;
        while left > 0 {
            left -= submit(left.min(BATCH))?;
        }
        let h = {
            let mut h = [0u8; HEADER];
            stub.mem.read(ctx, &mut h).map_err(err)?;
            h
        };
        if (header_u32(&h, 2), header_u32(&h, 3)) != (ring.head, ring.tail) {
            return Err(format!(
                "the kernel's ring reached head {} tail {}, not {} {}",
                header_u32(&h, 2),
                header_u32(&h, 3),
                ring.head,
                ring.tail
            ));
        }
        for (k, e) in ring.events.chunks_exact(EVENT).enumerate() {
            let slot = (ring.head as usize + k) % ring.nr as usize;
            stub.mem
                .write(ctx + (HEADER + slot * EVENT) as u64, e)
                .map_err(err)?;
        }
        Ok(())
    })();
    let _ = stub.call("close", libc::SYS_close, &[null as u64]);
    result
}
