//! timerfd: its clock, setting and the expirations not yet read.

use super::{DumpFd, FdKind, Reopen, fdinfo_field};
use crate::error::{DumpError, RestoreError};
use crate::kind::RestoreObjects;
use crstream_proto::{FileKind, OpenFile, TimerFdFile};
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use std::io;
use std::os::fd::OwnedFd;

pub(super) struct TimerFd;

impl FdKind for TimerFd {
    fn dump(&mut self, d: &mut DumpFd<'_>, f: &mut OpenFile) -> Result<bool, DumpError> {
        if d.link != b"anon_inode:[timerfd]" {
            return Ok(false);
        }
        let info = d.fdinfo()?;
        let field = |key: &str| {
            fdinfo_field(&info, key).ok_or_else(|| d.bad_fdinfo(format!("no {key} field")))
        };
        let num = |key: &str| -> Result<u64, DumpError> {
            field(key)?
                .parse()
                .map_err(|_| d.bad_fdinfo(format!("{key}: not a number")))
        };
        let time = |key: &str| -> Result<u64, DumpError> {
            let v = field(key)?;
            parse_timespec(v).ok_or_else(|| d.bad_fdinfo(format!("{key}: {v:?}")))
        };
        let clockid = num("clockid")? as i32;
        let ticks = num("ticks")?;
        let value_ns = time("it_value")?;
        let interval_ns = time("it_interval")?;
        // Octal, as the kernel prints it ("03": absolute, cancelled when
        // the clock is set).
        let settime_flags = match fdinfo_field(&info, "settime flags") {
            Some(v) => u32::from_str_radix(v, 8)
                .map_err(|_| d.bad_fdinfo(format!("settime flags: {v:?}")))?,
            None => 0,
        };
        // A wall clock's absolute deadline holds anywhere, later too: kept.
        let wall = matches!(clockid, libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM);
        let deadline_ns =
            if wall && settime_flags & libc::TFD_TIMER_ABSTIME as u32 != 0 && value_ns != 0 {
                crate::sys::clock_now_ns(libc::CLOCK_REALTIME)
                    .map_err(|e| d.error("clock_gettime", e))?
                    .saturating_add(value_ns)
            } else {
                0
            };
        f.kind = FileKind::Timerfd as i32;
        f.path = d.link.to_vec();
        f.timerfd = Some(TimerFdFile {
            clockid,
            interval_ns,
            value_ns,
            ticks,
            settime_flags,
            deadline_ns,
        });
        Ok(true)
    }

    fn restores(&self, f: &OpenFile) -> bool {
        matches!(f.kind(), FileKind::Timerfd)
    }

    fn open(
        &mut self,
        pid: i32,
        f: &OpenFile,
        _objects: &RestoreObjects<'_>,
    ) -> Result<Reopen, RestoreError> {
        let ferr = |reason: String| super::file_error(pid, f, reason);
        let t = super::part(pid, f, f.timerfd.as_ref(), "timerfd")?;
        let fd = create(t).map_err(|e| ferr(format!("recreating the timerfd: {e}")))?;
        super::set_status_flags(&fd, f.open_flags).map_err(|e| ferr(format!("F_SETFL: {e}")))?;
        Ok(Reopen::Created(fd))
    }
}

/// "(SEC, NSEC)" -> nanoseconds.
fn parse_timespec(v: &str) -> Option<u64> {
    let (s, ns) = v
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split_once(',')?;
    let s: u64 = s.trim().parse().ok()?;
    let ns: u64 = ns.trim().parse().ok()?;
    Some(s.saturating_mul(1_000_000_000).saturating_add(ns))
}

fn timespec(ns: u64) -> Timespec {
    Timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    }
}

fn clock(id: i32) -> io::Result<TimerfdClockId> {
    Ok(match id {
        libc::CLOCK_REALTIME => TimerfdClockId::Realtime,
        libc::CLOCK_MONOTONIC => TimerfdClockId::Monotonic,
        libc::CLOCK_BOOTTIME => TimerfdClockId::Boottime,
        libc::CLOCK_REALTIME_ALARM => TimerfdClockId::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => TimerfdClockId::BoottimeAlarm,
        other => return Err(io::Error::other(format!("clock {other} has no timerfd"))),
    })
}

fn create(t: &TimerFdFile) -> io::Result<OwnedFd> {
    let fd = timerfd_create(clock(t.clockid)?, TimerfdFlags::CLOEXEC)?;
    let mut value = t.value_ns;
    // A periodic timer that expired and was not read yet shows no time
    // left: the kernel re-arms it only when it is read. Arming it with a
    // zero value would disarm it for good, so arm it one period ahead (the
    // pending expirations are put back below).
    if value == 0 && t.interval_ns != 0 {
        value = t.interval_ns;
    }
    let mut ticks_left = t.ticks;
    // The record holds the time left: an absolute timer is set for its
    // deadline on a wall clock (due at once if it passed, with the periods
    // missed since), else for now plus that, absolute again (it follows
    // changes of its clock, and one cancelled when the clock is set is so
    // again).
    let flags = TimerfdTimerFlags::from_bits_truncate(t.settime_flags);
    let set = |value: u64| -> io::Result<()> {
        let value = if value == 0 || !flags.contains(TimerfdTimerFlags::ABSTIME) {
            value
        } else if value == t.value_ns && t.deadline_ns != 0 {
            t.deadline_ns
        } else {
            // The alarm clocks read as their base clocks do (and fail to
            // read where no RTC can wake the machine).
            let base = match t.clockid {
                libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
                libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
                other => other,
            };
            crate::sys::clock_now_ns(base)?.saturating_add(value)
        };
        let its = Itimerspec {
            it_interval: timespec(t.interval_ns),
            it_value: timespec(value),
        };
        timerfd_settime(&fd, flags, &its)?;
        Ok(())
    };
    set(value)?;
    if ticks_left != 0 {
        // settime reset the count: put the pending expirations back.
        match crate::sys::fds::set_timerfd_ticks(&fd, ticks_left) {
            Ok(()) => ticks_left = 0,
            Err(e) => tracing::debug!(
                "TFD_IOC_SET_TICKS failed ({e}): pending timerfd ticks approximated"
            ),
        }
    }
    if ticks_left != 0 && value == 0 {
        // A disarmed timer with unread expirations (one-shot that fired):
        // without TFD_IOC_SET_TICKS, arm it to fire at once (1 ns) so a
        // reader still sees an expiration (one, not the saved count).
        set(1)?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{created, dump_own};
    use super::*;
    use std::os::fd::AsRawFd;

    fn timerfd(value: u64, interval: u64) -> OwnedFd {
        let t = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC).unwrap();
        let its = Itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(value),
        };
        timerfd_settime(&t, TimerfdTimerFlags::empty(), &its).unwrap();
        t
    }

    #[test]
    fn timerfd_round_trip() {
        let t = timerfd(10_000_000_000, 2_000_000_000);
        let f = dump_own(t.as_raw_fd()).unwrap();
        let tf = f.timerfd.unwrap();
        assert_eq!(tf.clockid, libc::CLOCK_MONOTONIC);
        assert_eq!(tf.interval_ns, 2_000_000_000);
        assert!(
            tf.value_ns > 9_500_000_000 && tf.value_ns <= 10_000_000_000,
            "{tf:?}"
        );
        let n = created(&mut TimerFd, &f);
        let cur = rustix::time::timerfd_gettime(&n).unwrap();
        let left = cur.it_value.tv_sec as u64 * 1_000_000_000 + cur.it_value.tv_nsec as u64;
        assert!(
            left <= tf.value_ns && tf.value_ns - left < 500_000_000,
            "{left}"
        );
        assert_eq!(cur.it_interval.tv_sec, 2);
    }

    /// An absolute timer, cancelled when its clock is set, comes back so
    /// (not as a relative one), due at the same time.
    #[test]
    fn an_absolute_timer_stays_absolute() {
        let t = timerfd_create(TimerfdClockId::Realtime, TimerfdFlags::CLOEXEC).unwrap();
        let flags = TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET;
        let due = crate::sys::clock_now_ns(libc::CLOCK_REALTIME).unwrap() + 60_000_000_000;
        let its = Itimerspec {
            it_interval: timespec(0),
            it_value: timespec(due),
        };
        timerfd_settime(&t, flags, &its).unwrap();
        let f = dump_own(t.as_raw_fd()).unwrap();
        let tf = f.timerfd.unwrap();
        assert_eq!(tf.settime_flags, flags.bits(), "{tf:?}");
        let n = created(&mut TimerFd, &f);
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", n.as_raw_fd())).unwrap();
        assert!(info.contains("settime flags: 03"), "{info}");
        // timerfd_gettime tells the time left, absolute or not.
        let cur = rustix::time::timerfd_gettime(&n).unwrap();
        let left = cur.it_value.tv_sec as u64 * 1_000_000_000 + cur.it_value.tv_nsec as u64;
        let want = due - crate::sys::clock_now_ns(libc::CLOCK_REALTIME).unwrap();
        assert!(left.abs_diff(want) < 500_000_000, "{left} {want}");
        // Restored later, it is due at the same wall-clock time.
        assert!(tf.deadline_ns.abs_diff(due) < 500_000_000, "{tf:?}");
        let mut later = tf;
        later.value_ns += 5_000_000_000; // as if read 5 s before
        let mut f2 = f.clone();
        f2.timerfd = Some(later);
        let n = created(&mut TimerFd, &f2);
        let cur = rustix::time::timerfd_gettime(&n).unwrap();
        let left = cur.it_value.tv_sec as u64 * 1_000_000_000 + cur.it_value.tv_nsec as u64;
        assert!(left.abs_diff(want) < 500_000_000, "{left} {want}");
    }

    #[test]
    fn timerfd_pending_ticks_are_kept() {
        let t = timerfd(1000, 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = dump_own(t.as_raw_fd()).unwrap();
        let tf = f.timerfd.unwrap();
        assert_eq!((tf.ticks, tf.value_ns), (1, 0));
        let n = created(&mut TimerFd, &f);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut v = [0u8; 8];
        assert_eq!(rustix::io::read(&n, &mut v).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(v), 1);
    }
}
