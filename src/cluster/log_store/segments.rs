//! The raft log's segment files as the writer sees them: which exist, where each frame starts
//! in them, and the one open for appending (the last). Owned by the writer thread (and built
//! by recovery); every change to the files goes through here.
//!
//! The frame offsets are what make truncation cheap: `truncate_after` cuts a file at the
//! offset of the first frame to drop, instead of scanning the file again.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::wal::segment::SEGMENT_HEADER_BYTES;
use crate::wal::storage::{AppendFile, Storage};

use super::format::{segment_header, segment_name};
use super::shared::Shared;

/// One segment file.
pub(super) struct Segment {
    /// Raft index of its first frame (also in its name and header).
    pub first: u64,
    /// Byte offset of each frame: `offsets[i]` is where the frame of index `first + i` starts.
    pub offsets: Vec<u64>,
    /// The file's length in bytes.
    pub len: u64,
}

impl Segment {
    pub fn name(&self) -> String {
        segment_name(self.first)
    }

    /// The index after its last frame.
    pub fn next_index(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

/// The segment files, oldest first, consecutive: each starts where the one before ends.
pub(super) struct Segments {
    storage: Arc<dyn Storage>,
    /// For the statistics.
    shared: Arc<Shared>,
    list: VecDeque<Segment>,
    /// The last segment, open for appending; `None` exactly when there is no segment.
    file: Option<Box<dyn AppendFile>>,
    segment_bytes_max: u64,
    /// Bytes appended since the last `sync`.
    dirty: bool,
}

/// A frame count or offset as a position in a segment's offsets. Segments are bounded in
/// bytes, so their frame counts fit a `usize` with room to spare.
fn position(count: u64) -> usize {
    usize::try_from(count).unwrap_or_else(|_| panic!("{count} frames in one segment"))
}

impl Segments {
    /// Takes the segments recovery found; opens the last for appending.
    pub fn open(
        storage: Arc<dyn Storage>,
        shared: Arc<Shared>,
        list: VecDeque<Segment>,
        segment_bytes_max: u64,
    ) -> io::Result<Segments> {
        let file = match list.back() {
            Some(last) => Some(storage.open_append(&last.name())?),
            None => None,
        };
        Ok(Segments { storage, shared, list, file, segment_bytes_max, dirty: false })
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes one batch of frames (consecutive indexes from `first_index`; `starts` are their
    /// offsets in `frames`). Starts a new segment first if there is none, or if the batch would
    /// take the last one past its bound; the full one is sealed with an fsync first, because
    /// only the last segment may be left torn by a crash.
    ///
    /// Panics if `first_index` does not follow the last frame: the caller keeps the log
    /// without holes.
    pub fn append(&mut self, first_index: u64, frames: &[u8], starts: &[usize]) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let batch_bytes = frames.len() as u64;
        let start_new = match self.list.back() {
            None => true,
            Some(last) => {
                assert_eq!(
                    last.next_index(),
                    first_index,
                    "raft log append at {first_index} after a segment ending before {}",
                    last.next_index()
                );
                !last.offsets.is_empty() && last.len + batch_bytes > self.segment_bytes_max
            }
        };
        if start_new {
            if self.dirty {
                self.sync()?;
            }
            self.file = None;
            self.file = Some(self.create(first_index)?);
            self.list.push_back(Segment {
                first: first_index,
                offsets: Vec::new(),
                len: SEGMENT_HEADER_BYTES as u64,
            });
        }
        let (Some(file), Some(last)) = (self.file.as_mut(), self.list.back_mut()) else {
            unreachable!("a segment was just ensured");
        };
        // Marked before the write: a failed write may have reached the file in part.
        self.dirty = true;
        file.append(frames)?;
        last.offsets.extend(starts.iter().map(|start| last.len + *start as u64));
        last.len += batch_bytes;
        let stats = &self.shared.stats;
        stats.entries_appended.fetch_add(starts.len() as u64, Ordering::Relaxed);
        stats.bytes_written.fetch_add(batch_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// `fdatasync` of the last segment: everything appended is durable when it returns.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            let started = Instant::now();
            file.sync()?;
            let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let stats = &self.shared.stats;
            stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            stats.last_fsync_us.store(took_us, Ordering::Relaxed);
        }
        self.dirty = false;
        Ok(())
    }

    fn create(&self, first_index: u64) -> io::Result<Box<dyn AppendFile>> {
        let mut file = self.storage.create(&segment_name(first_index))?;
        file.append(&segment_header(first_index))?;
        file.sync()?;
        self.storage.sync_dir()?;
        Ok(file)
    }

    /// Removes every frame after index `after` (all of them for `None`), durably: whole
    /// segments from the newest back, then the cut of the segment holding `after + 1`.
    /// Everything appended must have been synced first: a cut never races a pending write.
    pub fn truncate_after(&mut self, after: Option<u64>) -> io::Result<()> {
        debug_assert!(!self.dirty, "truncate with unsynced appends");
        let drop_from = after.map_or(0, |index| index + 1);
        let mut removed = false;
        while let Some(last) = self.list.back() {
            if last.first < drop_from {
                break;
            }
            // Newest first, so a crash part way leaves a log that only lost a suffix.
            self.file = None;
            self.storage.remove(&last.name())?;
            self.list.pop_back();
            removed = true;
        }
        if removed {
            // Before the cut below, and before any new segment of the same name is created.
            self.storage.sync_dir()?;
        }
        let Some(last) = self.list.back_mut() else { return Ok(()) };
        if last.next_index() > drop_from {
            let keep = position(drop_from - last.first);
            let cut_at = last.offsets[keep];
            self.file = None;
            // `Storage::truncate` syncs the file.
            self.storage.truncate(&last.name(), cut_at)?;
            last.offsets.truncate(keep);
            last.len = cut_at;
        }
        if self.file.is_none() {
            self.file = Some(self.storage.open_append(&last.name())?);
        }
        Ok(())
    }

    /// Deletes the segments whose frames are all at or before index `upto`, oldest first. The
    /// caller has made the purge point durable first: a segment that outlives a crash here is
    /// recognised as purged at the next open.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        let mut removed = false;
        while let Some(first) = self.list.front() {
            if first.next_index() > upto.saturating_add(1) {
                break;
            }
            if self.list.len() == 1 {
                // The last segment goes too: the next append starts a new one.
                debug_assert!(!self.dirty, "purge of a segment with unsynced appends");
                self.file = None;
            }
            self.storage.remove(&first.name())?;
            self.list.pop_front();
            removed = true;
        }
        if removed {
            self.storage.sync_dir()?;
        }
        Ok(())
    }
}
