//! The page data that follows the metadata, written into each process as
//! soon as it exists: a process's children are forked from it once all its
//! pages are in, so that they inherit the ones they share with it.

use super::tree::Plan;
use crate::error::RestoreError;
use crate::kinds::memory::{Copier, PageWriter};
use crate::stub::Stub;
use crstream_proto::{ProcessState, VmArea};
use crstream_streamer::{ImageSource, Item, PageBatch};

pub(super) struct PageFiller<'a> {
    source: &'a mut dyn ImageSource,
    /// Pages each process's memory map announces.
    announced: Vec<u64>,
    /// Pages written into each process so far.
    pub filled: Vec<u64>,
    /// Batches of processes not created yet (an image not in tree order).
    early: Vec<(usize, PageBatch)>,
    /// The writer of each process whose pages are coming in (dropped, so
    /// its areas are unregistered, once they are all in).
    writers: Vec<Option<PageWriter>>,
    /// A second thread installing pages, if there is a second CPU.
    copier: Option<Copier>,
    ended: bool,
}

impl<'a> PageFiller<'a> {
    pub(super) fn new(
        source: &'a mut dyn ImageSource,
        announced: Vec<u64>,
        copier: Option<Copier>,
    ) -> Self {
        let n = announced.len();
        Self {
            source,
            announced,
            filled: vec![0; n],
            early: Vec::new(),
            writers: (0..n).map(|_| None).collect(),
            copier,
            ended: false,
        }
    }

    /// Every page handed to the copier is in.
    fn wait_copies(&mut self) -> Result<(), RestoreError> {
        self.copier.as_mut().map_or(Ok(()), Copier::wait)
    }

    /// Writes every page of process `i`, the last one created: `stubs[..=i]`
    /// exist.
    pub(super) fn fill_process(
        &mut self,
        plan: &Plan<'_>,
        areas: &[&[VmArea]],
        stubs: &[Stub],
        i: usize,
    ) -> Result<(), RestoreError> {
        for (k, batch) in std::mem::take(&mut self.early) {
            if k == i {
                self.write(areas, stubs, k, batch)?;
            } else {
                self.early.push((k, batch));
            }
        }
        while self.filled[i] < self.announced[i] {
            let Some((k, batch)) = self.next(plan)? else {
                return Err(RestoreError::Image(format!(
                    "the image ends before the pages of pid {}",
                    plan.entries[i].pid
                )));
            };
            if k < stubs.len() {
                self.write(areas, stubs, k, batch)?;
            } else {
                self.early.push((k, batch));
            }
        }
        // Its children are forked from it next.
        self.wait_copies()
    }

    /// Reads to the end of the page data, once every process exists.
    pub(super) fn finish(
        &mut self,
        plan: &Plan<'_>,
        areas: &[&[VmArea]],
        stubs: &[Stub],
    ) -> Result<(), RestoreError> {
        for (k, batch) in std::mem::take(&mut self.early) {
            self.write(areas, stubs, k, batch)?;
        }
        while let Some((k, batch)) = self.next(plan)? {
            self.write(areas, stubs, k, batch)?;
        }
        self.wait_copies()?;
        self.writers.iter_mut().for_each(|w| *w = None);
        Ok(())
    }

    fn write(
        &mut self,
        areas: &[&[VmArea]],
        stubs: &[Stub],
        k: usize,
        batch: PageBatch,
    ) -> Result<(), RestoreError> {
        let writer = self.writers[k].get_or_insert_with(|| PageWriter::new(&stubs[k], areas[k]));
        let pid = batch.pid;
        let n = writer.fill_with(
            self.copier.as_mut(),
            pid as i32,
            &stubs[k].mem,
            areas[k],
            batch,
        )?;
        self.filled[k] += n;
        if self.filled[k] >= self.announced[k] {
            // Its areas are unregistered once the copier is done with them.
            self.writers[k] = None;
        }
        // Children forked since have this process's memory as it was then.
        if self.filled[k] > self.announced[k] {
            return Err(RestoreError::Image(format!(
                "the image holds more pages of pid {pid} than its memory map announces ({})",
                self.announced[k]
            )));
        }
        Ok(())
    }

    /// The next page batch and the index of its process; None at the end.
    fn next(&mut self, plan: &Plan<'_>) -> Result<Option<(usize, PageBatch)>, RestoreError> {
        if self.ended {
            return Ok(None);
        }
        match self.source.next_item()? {
            Some(Item::Pages { batch, .. }) => match plan.index_of(batch.pid) {
                Some(i) if plan.entries[i].state() == ProcessState::Alive => Ok(Some((i, batch))),
                _ => Err(RestoreError::Image(format!(
                    "pages of pid {}, which is not a live process of the image",
                    batch.pid
                ))),
            },
            Some(Item::End { .. }) => {
                self.ended = true;
                Ok(None)
            }
            None => Err(RestoreError::Image(
                "the image ends without its index".into(),
            )),
            Some(_) => Err(RestoreError::Image(
                "unexpected item among page data".into(),
            )),
        }
    }
}
