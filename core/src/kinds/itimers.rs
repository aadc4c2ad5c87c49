//! Interval timers (setitimer(2): real, virtual, prof), read and set with
//! injected getitimer/setitimer; the `Itimers` record.

use crate::error::{DumpError, RestoreError};
use crate::kind::{DumpProcess, Kind, Phase, RestoreProcess};
use crate::records::ProcessImage;
use crate::stub::SCRATCH_DATA;
use crstream_proto::{ItimerValue, Itimers as Record};

pub(crate) struct Itimers;

fn to_us(sec: u64, usec: u64) -> u64 {
    sec * 1_000_000 + usec
}

impl Kind for Itimers {
    fn name(&self) -> &'static str {
        "interval timers"
    }

    fn phase(&self) -> Phase {
        Phase::Process
    }

    fn dump(&mut self, p: &mut DumpProcess<'_>) -> Result<(), DumpError> {
        let mut out: [ItimerValue; 3] = Default::default();
        for (which, slot) in out.iter_mut().enumerate() {
            let b = p.injector().call_reading::<32>(
                "getitimer",
                libc::SYS_getitimer,
                &[which as u64, p.injector().scratch],
            )?;
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            *slot = ItimerValue {
                interval_us: to_us(w(0), w(1)),
                value_us: to_us(w(2), w(3)),
            };
        }
        let [real, virt, prof] = out;
        p.records.push(Record {
            real: Some(real),
            r#virtual: Some(virt),
            prof: Some(prof),
        });
        Ok(())
    }

    fn check(&self, p: &ProcessImage<'_>) -> Result<(), RestoreError> {
        p.need::<Record>().map(drop)
    }

    fn restore(&mut self, p: &mut RestoreProcess<'_>) -> Result<(), RestoreError> {
        let r: &Record = p.image.need()?;
        for (which, t) in [&r.real, &r.r#virtual, &r.prof].into_iter().enumerate() {
            let mut t = t.unwrap_or_default();
            // A periodic ITIMER_REAL is re-armed only when its SIGALRM is
            // dequeued; one that fired while the dump held every signal
            // blocked reads as "no time left". Setting that would disarm it
            // for good: let it fire at once instead (its SIGALRM was pending
            // anyway).
            if which == libc::ITIMER_REAL as usize && t.value_us == 0 && t.interval_us != 0 {
                t.value_us = 1;
            }
            let words = [
                t.interval_us / 1_000_000,
                t.interval_us % 1_000_000,
                t.value_us / 1_000_000,
                t.value_us % 1_000_000,
            ];
            let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let a = p.stub.put(SCRATCH_DATA, &b)?;
            p.stub
                .call("setitimer", libc::SYS_setitimer, &[which as u64, a, 0])?;
        }
        Ok(())
    }
}
