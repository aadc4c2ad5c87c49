//! Acting under other effective ids for what the kernel records of a
//! caller: the ids a unix socket holds for its peer (SO_PEERCRED,
//! SO_PEERGROUPS) are those of the thread that called socketpair(),
//! listen() or connect().

use std::io;

use super::cvt_long;

/// Effective uid, gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Ids {
    /// The calling thread's.
    pub(crate) fn current() -> io::Result<Ids> {
        Ok(Ids {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            groups: rustix::process::getgroups()?
                .into_iter()
                .map(|g| g.as_raw())
                .collect(),
        })
    }
}

/// Runs `f` on a thread of its own acting as `ids`. Its real and saved
/// uids stay crstream's and its capabilities stay effective, so that it
/// reaches every path crstream can; the ids end with the thread.
pub(crate) fn run_as<T: Send>(
    ids: &Ids,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                assume(ids)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread acting as the peer panicked")))
    })
}

/// Linux capability ABI version 3: two 32-bit words per set.
pub(crate) const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn assume(ids: &Ids) -> io::Result<()> {
    const KEEP: libc::c_long = -1;
    // Raw calls: the C library's change the ids of every thread.
    // SAFETY: plain syscalls on this thread's credentials; the group list
    // is valid for its length.
    unsafe {
        cvt_long(libc::syscall(
            libc::SYS_setgroups,
            ids.groups.len(),
            ids.groups.as_ptr(),
        ))?;
        cvt_long(libc::syscall(
            libc::SYS_setresgid,
            KEEP,
            ids.gid as libc::c_long,
            KEEP,
        ))?;
        cvt_long(libc::syscall(
            libc::SYS_setresuid,
            KEEP,
            ids.uid as libc::c_long,
            KEEP,
        ))?;
    }
    // An effective uid other than 0 cleared the effective capabilities;
    // the permitted ones stay (the real and saved uids did not change).
    let mut header = [LINUX_CAPABILITY_VERSION_3, 0];
    // effective, permitted, inheritable; low words, then high words.
    let mut sets = [0u32; 6];
    // SAFETY: header and sets are the sizes version 3 reads and writes.
    unsafe {
        cvt_long(libc::syscall(
            libc::SYS_capget,
            header.as_mut_ptr(),
            sets.as_mut_ptr(),
        ))?;
    }
    (sets[0], sets[3]) = (sets[1], sets[4]);
    // SAFETY: as above.
    unsafe {
        cvt_long(libc::syscall(
            libc::SYS_capset,
            header.as_mut_ptr(),
            sets.as_ptr(),
        ))?;
    }
    Ok(())
}

/// setfsuid for the calling thread only (the raw call: glibc's wrapper
/// would be the same, but says nothing either): returns the fsuid the
/// thread had. A new socket's owner is its maker's fsuid.
pub(crate) fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes an integer and changes only this thread.
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_made_as_other_ids_holds_them_and_the_caller_keeps_its_own() {
        let mine = Ids::current().unwrap();
        if mine.uid != 0 {
            return; // needs root
        }
        let other = Ids {
            uid: 4321,
            gid: 8765,
            groups: vec![11, 22],
        };
        let (a, _b) = run_as(&other, || {
            super::super::socket::socketpair(libc::SOCK_STREAM)
        })
        .unwrap();
        let (pid, ids) = super::super::socket::peer_ids(&a).unwrap().unwrap();
        assert_eq!((pid as u32, ids), (std::process::id(), other));
        assert_eq!(Ids::current().unwrap(), mine);
    }
}
