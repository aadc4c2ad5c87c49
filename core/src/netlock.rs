//! The network lock. From the moment dump reads a TCP connection in repair
//! mode until restore has built it again, no socket may answer for it: a
//! packet from the peer would get a reset from a kernel that knows no such
//! connection, and a frozen socket's queues must not change while they are
//! read. An nftables table of its own (family inet, one set of 4-tuples,
//! dropped on input and output) keeps every packet of those connections
//! away; the peer's TCP sends them again once the table is gone.
//!
//! The table is made with the `nft` program (Debian: nftables). Dump keeps
//! it when the tree is killed and names it in the image; restore deletes
//! it once the tree runs (a failed restore keeps it, for another try). A
//! dump that fails or leaves the tree running deletes it at once. Restore
//! takes a lock of its own while it builds the connections, since their
//! ends come back one at a time.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

/// What crstream itself sends a restored connection (`fd/packets.rs`)
/// carries, and the lock lets through: an IPv4 ID (or IPv6 flow label)
/// and a TTL (hop limit) no kernel-made packet of a connection has
/// together (a packet mark would not survive loopback).
pub(crate) const INJECT_ID: u16 = 0x4352;
pub(crate) const INJECT_TTL: u8 = 13;

/// The nftables table that holds connections away.
#[derive(Debug)]
pub(crate) struct NetLock {
    name: String,
    held: bool,
}

/// A socket address from a raw sockaddr (AF_INET or AF_INET6); an IPv6
/// address that maps an IPv4 one is that IPv4 address, as on the wire.
pub(crate) fn socket_addr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]) as i32;
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    let ip = match family {
        libc::AF_INET => IpAddr::from(<[u8; 4]>::try_from(raw.get(4..8)?).ok()?),
        libc::AF_INET6 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(8..24)?).ok()?);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn nft() -> Command {
    // Root's PATH has /usr/sbin; a service manager's may not.
    let path = ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft");
    let mut c = Command::new(path);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn run(mut c: Command, script: Option<&str>) -> io::Result<()> {
    c.stdin(if script.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running nft (Debian package nftables): {e}"),
        )
    })?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "nft: {}",
            err.lines().next().unwrap_or("failed")
        )));
    }
    Ok(())
}

/// Whether `name` is a table name this module makes (an image is input).
fn valid(name: &str) -> bool {
    name.starts_with("crstream_") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What a lock is for, in its name: a dump's (kept for the restore of its
/// image) or a restore's own (for the while it builds the connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    Dump,
    Restore,
}

impl Holder {
    fn prefix(self) -> &'static str {
        match self {
            Holder::Dump => "crstream_lock_",
            Holder::Restore => "crstream_rlock_",
        }
    }
}

/// The tables named `crstream_...`: (name).
fn tables() -> io::Result<Vec<String>> {
    let mut c = nft();
    c.args(["list", "tables"]).stdout(Stdio::piped());
    let out = c.output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("crstream_"))
        .collect())
}

/// Deletes the restore locks of crstream processes that are gone (killed
/// in the middle of a restore), which would keep those connections from
/// ever talking again. A dump's lock waits for its image's restore.
pub(crate) fn sweep_stale_restore_locks() {
    let Ok(names) = tables() else { return };
    for name in names {
        let pid = name
            .strip_prefix(Holder::Restore.prefix())
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && let Err(e) = unlock(&name)
        {
            tracing::warn!(table = name, "a stale restore lock stays: {e}");
        }
    }
}

impl NetLock {
    /// Drops every packet of the connections (local, peer), both ways.
    pub(crate) fn lock(conns: &[(SocketAddr, SocketAddr)], holder: Holder) -> io::Result<NetLock> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{}{}_{nanos}", holder.prefix(), std::process::id());
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for &(local, peer) in conns {
            // Out: local to peer; in: peer to local.
            for (from, to) in [(local, peer), (peer, local)] {
                let e = format!(
                    "{} . {} . {} . {}",
                    from.ip(),
                    from.port(),
                    to.ip(),
                    to.port()
                );
                match (from.ip(), to.ip()) {
                    (IpAddr::V4(_), IpAddr::V4(_)) => v4.push(e),
                    _ => v6.push(e),
                }
            }
        }
        v4.sort();
        v4.dedup();
        v6.sort();
        v6.dedup();
        let set = |name: &str, ty: &str, elems: &[String]| {
            let elements = if elems.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", elems.join(", "))
            };
            format!(
                "  set {name} {{ type {ty} . inet_service . {ty} . inet_service;{elements} }}\n"
            )
        };
        let rules = format!(
            "ip id {INJECT_ID:#x} ip ttl {INJECT_TTL} accept; \
             ip6 flowlabel {INJECT_ID:#x} ip6 hoplimit {INJECT_TTL} accept; \
             ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop; \
             ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop;"
        );
        let script = format!(
            "table inet {name} {{\n{}{}  chain in {{ type filter hook input priority -300; policy accept; {rules} }}\n  chain out {{ type filter hook output priority -300; policy accept; {rules} }}\n}}\n",
            set("conns4", "ipv4_addr", &v4),
            set("conns6", "ipv6_addr", &v6),
        );
        let mut c = nft();
        c.args(["-f", "-"]);
        run(c, Some(&script))?;
        tracing::debug!(table = name, connections = conns.len(), "network locked");
        Ok(NetLock { name, held: true })
    }

    /// Leaves the table in place (for restore to delete); its name.
    pub(crate) fn keep(mut self) -> String {
        self.held = false;
        std::mem::take(&mut self.name)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if self.held
            && let Err(e) = unlock(&self.name)
        {
            tracing::error!(table = self.name, "releasing the network lock: {e}");
        }
    }
}

/// Deletes the table `name`; one that is gone already is no error.
pub(crate) fn unlock(name: &str) -> io::Result<()> {
    if !valid(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a network lock crstream made"),
        ));
    }
    let mut c = nft();
    c.args(["delete", "table", "inet", name]);
    match run(c, None) {
        Err(e) if e.to_string().contains("No such file") => Ok(()),
        r => {
            if r.is_ok() {
                tracing::debug!(table = name, "network unlocked");
            }
            r
        }
    }
}

/// Deletes every lock process `maker` made (a dump worker that died
/// before it could).
pub(crate) fn unlock_all_of(maker: i32) -> io::Result<()> {
    let prefix = format!("{}{maker}_", Holder::Dump.prefix());
    for name in tables()?.into_iter().filter(|n| n.starts_with(&prefix)) {
        unlock(&name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_raw_sockaddrs() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(socket_addr(&v4), Some("127.0.0.1:8080".parse().unwrap()));
        let mut mapped = vec![0u8; 28];
        mapped[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        mapped[2..4].copy_from_slice(&80u16.to_be_bytes());
        mapped[18..20].copy_from_slice(&[0xff, 0xff]);
        mapped[20..24].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(socket_addr(&mapped), Some("127.0.0.2:80".parse().unwrap()));
        assert_eq!(socket_addr(&[]), None);
    }

    /// A restore lock whose crstream is gone is swept away; a dump's lock
    /// (its maker is gone too, by design) stays for its restore.
    #[test]
    fn stale_restore_locks_are_swept() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let (rlock, dlock) = (
            format!("crstream_rlock_{dead}_1"),
            format!("crstream_lock_{dead}_1"),
        );
        let mut c = nft();
        c.args(["-f", "-"]);
        let script = format!("table inet {rlock} {{ }}\ntable inet {dlock} {{ }}\n");
        if run(c, Some(&script)).is_err() {
            eprintln!("nft is not usable here: skipped");
            return;
        }
        sweep_stale_restore_locks();
        let names = tables().unwrap();
        let _ = unlock(&dlock);
        let _ = unlock(&rlock);
        assert!(!names.contains(&rlock), "{names:?}");
        assert!(names.contains(&dlock), "{names:?}");
    }

    #[test]
    fn only_our_tables_are_deleted() {
        assert!(valid("crstream_lock_1_2"));
        assert!(!valid("filter"));
        assert!(!valid("crstream_x; flush ruleset"));
    }
}
