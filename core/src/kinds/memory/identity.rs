//! Whether a file mapped privately (an executable, a library, read-only
//! data) is still the one the process mapped: by its ELF build-id where it
//! has one, else by its size and modification time. Restore refuses one
//! that changed before creating anything (a process running code from a
//! different library than the one its memory was laid out for crashes, or
//! worse); `--skip-validation` lets an expert restore anyway.

use crate::error::RestoreError;
use crstream_proto::VmArea;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Largest program header table and note segment read.
const MAX_READ: u64 = 64 << 10;
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The GNU build-id of an ELF file (64-bit, little-endian); None for a file
/// that is no such ELF file or has none.
pub(crate) fn build_id(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = File::open(path)?;
    let mut h = [0u8; 64];
    if f.read_exact_at(&mut h, 0).is_err() || &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Ok(None);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(&h, 0x36), u16_at(&h, 0x38));
    if phentsize < 0x38 || phentsize * phnum > MAX_READ {
        return Ok(None);
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.read_exact_at(&mut ph, phoff)?;
    for p in ph.chunks_exact(phentsize as usize) {
        if u32_at(p, 0) != PT_NOTE {
            continue;
        }
        let (off, size) = (u64_at(p, 0x08), u64_at(p, 0x20).min(MAX_READ));
        let mut notes = vec![0u8; size as usize];
        f.read_exact_at(&mut notes, off)?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let (namesz, descsz, ty) = (
                u32_at(&notes, at) as usize,
                u32_at(&notes, at + 4) as usize,
                u32_at(&notes, at + 8),
            );
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let next = desc_at + descsz.div_ceil(4) * 4;
            if next > notes.len() {
                break;
            }
            if ty == NT_GNU_BUILD_ID && &notes[name_at..name_at + namesz] == b"GNU\0" {
                return Ok(Some(notes[desc_at..desc_at + descsz].to_vec()));
            }
            at = next;
        }
    }
    Ok(None)
}

/// Dump: notes what identifies the file of a private file mapping
/// (`cache`: build-ids by device and inode, read once per dump).
pub(super) fn note(
    a: &mut VmArea,
    md: &std::fs::Metadata,
    cache: &mut HashMap<(u64, u64), Vec<u8>>,
) {
    a.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    let key = (md.dev(), md.ino());
    if let Some(id) = cache.get(&key) {
        a.build_id = id.clone();
        return;
    }
    let id = build_id(crate::paths::path(&a.path))
        .ok()
        .flatten()
        .unwrap_or_default();
    cache.insert(key, id.clone());
    a.build_id = id;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Restore: refuses a privately mapped file that is not the one the
/// process mapped.
pub(super) fn check(pid: i32, a: &VmArea, md: &std::fs::Metadata) -> Result<(), RestoreError> {
    let differs = |reason: String| RestoreError::Mapping {
        pid,
        start: a.start,
        end: a.end,
        path: crate::paths::show(&a.path).into_owned(),
        reason: format!("{reason}; --skip-validation restores anyway"),
    };
    if !a.build_id.is_empty() {
        let now = build_id(crate::paths::path(&a.path))
            .map_err(|e| differs(format!("reading its build-id: {e}")))?
            .unwrap_or_default();
        if now != a.build_id {
            return Err(differs(format!(
                "the file differs: build-id {} in the image, {} here",
                hex(&a.build_id),
                if now.is_empty() {
                    "none".into()
                } else {
                    hex(&now)
                }
            )));
        }
        return Ok(());
    }
    let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    if a.mtime_ns != 0 && (md.size() != a.file_size || mtime != a.mtime_ns) {
        return Err(differs(format!(
            "the file changed since the dump (size {} -> {}, modified since)",
            a.file_size,
            md.size()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_of_real_binaries() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        // Rust test binaries carry a build-id unless the linker was told not to.
        let id = build_id(&exe).unwrap();
        if let Some(id) = id {
            assert!(id.len() >= 8, "{id:?}");
        }
        assert_eq!(build_id(Path::new("/proc/self/status")).unwrap(), None);
        if Path::new("/bin/sh").exists() {
            assert!(
                build_id(Path::new("/bin/sh"))
                    .unwrap()
                    .is_some_and(|i| i.len() == 20)
            );
        }
    }
}
