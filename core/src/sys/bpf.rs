//! eBPF, as much as crstream needs: a few instructions assembled by hand
//! (no compiler at run time), a program loaded with BPF_PROG_LOAD,
//! attached to a device's ingress with a tcx link (kernel 6.6: it goes when
//! its fd is closed, so a crstream that dies leaves nothing attached), and
//! the BTF id of a kernel function the program calls (a kfunc).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One instruction (struct bpf_insn).
#[derive(Clone, Copy)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

pub(crate) const R0: u8 = 0;
pub(crate) const R1: u8 = 1;
pub(crate) const R2: u8 = 2;
pub(crate) const R3: u8 = 3;
pub(crate) const R4: u8 = 4;
pub(crate) const R5: u8 = 5;
pub(crate) const R6: u8 = 6;
pub(crate) const R7: u8 = 7;
pub(crate) const R8: u8 = 8;
/// The frame pointer: the stack is below it.
pub(crate) const R10: u8 = 10;

/// Helper function ids (enum bpf_func_id).
pub(crate) const SKB_LOAD_BYTES: i32 = 26;
pub(crate) const SK_LOOKUP_TCP: i32 = 84;
pub(crate) const SK_RELEASE: i32 = 86;

/// Memory access sizes.
#[derive(Clone, Copy)]
pub(crate) enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
}

const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// A program under construction, with forward jumps to named labels.
#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: Vec<(&'static str, usize)>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    fn push(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        });
        self
    }

    /// dst = src (64-bit).
    pub(crate) fn mov(&mut self, dst: u8, src: u8) -> &mut Self {
        self.push(0xbf, dst, src, 0, 0)
    }

    /// dst = imm (sign-extended to 64 bits).
    pub(crate) fn mov_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(0xb7, dst, 0, 0, imm)
    }

    /// dst += imm (64-bit).
    pub(crate) fn add_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(0x07, dst, 0, 0, imm)
    }

    /// dst = *(size *)(src + off), zero-extended.
    pub(crate) fn load(&mut self, size: Size, dst: u8, src: u8, off: i16) -> &mut Self {
        self.push(0x61 | size as u8, dst, src, off, 0)
    }

    /// *(size *)(dst + off) = src.
    pub(crate) fn store(&mut self, size: Size, dst: u8, off: i16, src: u8) -> &mut Self {
        self.push(0x63 | size as u8, dst, src, off, 0)
    }

    /// Jumps to `label` if dst != imm.
    pub(crate) fn jne(&mut self, dst: u8, imm: i32, label: &'static str) -> &mut Self {
        self.jumps.push((self.insns.len(), label));
        self.push(0x55, dst, 0, 0, imm)
    }

    /// Jumps to `label` if dst == imm.
    pub(crate) fn jeq(&mut self, dst: u8, imm: i32, label: &'static str) -> &mut Self {
        self.jumps.push((self.insns.len(), label));
        self.push(0x15, dst, 0, 0, imm)
    }

    /// Calls helper `id`.
    pub(crate) fn call(&mut self, id: i32) -> &mut Self {
        self.push(0x85, 0, 0, 0, id)
    }

    /// Calls the kernel function of vmlinux BTF id `btf_id`.
    pub(crate) fn call_kfunc(&mut self, btf_id: u32) -> &mut Self {
        self.push(0x85, 0, BPF_PSEUDO_KFUNC_CALL, 0, btf_id as i32)
    }

    pub(crate) fn exit(&mut self) -> &mut Self {
        self.push(0x95, 0, 0, 0, 0)
    }

    /// The next instruction is `label`.
    pub(crate) fn label(&mut self, label: &'static str) -> &mut Self {
        self.labels.push((label, self.insns.len()));
        self
    }

    /// The instructions, jumps resolved.
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for &(at, label) in &self.jumps {
            let to = self
                .labels
                .iter()
                .find(|l| l.0 == label)
                .unwrap_or_else(|| panic!("BPF label {label} is not defined"))
                .1;
            self.insns[at].off = (to as isize - at as isize - 1) as i16;
        }
        self.insns
    }
}

fn bpf(cmd: u32, attr: &mut [u64]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a zero-padded union bpf_attr, valid for its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;
const BPF_PROG_TYPE_SCHED_CLS: u64 = 3;
const BPF_TCX_INGRESS: u64 = 46;

/// Loads a tc classifier; Err with the verifier's log if it refuses it.
/// `license`: kernel functions may only be called from programs under a
/// GPL-compatible license.
pub(crate) fn load_classifier(insns: &[Insn], license: &std::ffi::CStr) -> io::Result<OwnedFd> {
    let raw: Vec<u64> = insns
        .iter()
        .map(|i| {
            u64::from(i.code)
                | u64::from(i.regs) << 8
                | u64::from(i.off as u16) << 16
                | u64::from(i.imm as u32) << 32
        })
        .collect();
    let mut log = vec![0u8; 64 << 10];
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_SCHED_CLS | (raw.len() as u64) << 32;
    attr[1] = raw.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | (log.len() as u64) << 32; // log level 1, log size
    attr[4] = log.as_mut_ptr() as u64;
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last: Vec<&str> = text.lines().rev().take(6).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            Err(io::Error::new(
                e.kind(),
                format!("loading an eBPF program: {e}: {}", last.join(" / ")),
            ))
        }
    }
}

/// Attaches `prog` to the ingress of device `ifindex` (tcx, before any
/// program already there). The link detaches when dropped.
pub(crate) fn attach_ingress(prog: &OwnedFd, ifindex: u32) -> io::Result<OwnedFd> {
    const BPF_F_BEFORE: u64 = 1 << 3;
    let mut attr = [0u64; 8];
    attr[0] = prog.as_raw_fd() as u64 | u64::from(ifindex) << 32;
    attr[1] = BPF_TCX_INGRESS | BPF_F_BEFORE << 32;
    bpf(BPF_LINK_CREATE, &mut attr)
        .map_err(|e| io::Error::new(e.kind(), format!("attaching an eBPF program (tcx): {e}")))
}

/// The BTF id of kernel function `name` in /sys/kernel/btf/vmlinux.
pub(crate) fn kernel_function_id(name: &str) -> io::Result<u32> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux")?;
    btf_function_id(&btf, name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("the kernel has no function {name} (BTF)"),
        )
    })
}

/// Finds FUNC `name` in raw BTF (header, types, strings).
fn btf_function_id(btf: &[u8], name: &str) -> Option<u32> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(btf.get(at..at + 4)?.try_into().ok()?))
    };
    if btf.get(..2)? != [0x9f, 0xeb] {
        return None; // little-endian magic 0xeB9F
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let strings = btf.get(hdr_len + str_off..)?;
    let name_at = |off: usize| -> Option<&[u8]> {
        let s = strings.get(off..)?;
        Some(&s[..s.iter().position(|&b| b == 0)?])
    };
    let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    let mut id = 1u32;
    while at + 12 <= end {
        let (name_off, info) = (u32_at(at)? as usize, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        const FUNC: u32 = 12;
        if kind == FUNC && name_at(name_off)? == name.as_bytes() {
            return Some(id);
        }
        // What follows each kind of type (struct btf_type's tail).
        at += 12
            + match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
                _ => return None,
            };
        id += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_kernel_function_in_btf() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return; // a kernel without BTF
        };
        let id = btf_function_id(&btf, "bpf_sk_release").or(btf_function_id(&btf, "tcp_close"));
        assert!(id.is_some_and(|id| id > 0));
        assert_eq!(btf_function_id(&btf, "no_such_function_anywhere"), None);
    }

    #[test]
    fn jumps_are_relative_to_the_next_instruction() {
        let mut a = Asm::default();
        a.jne(R1, 0, "out").mov_imm(R0, 1).label("out").exit();
        let insns = a.finish();
        assert_eq!(insns[0].off, 1);
    }
}
