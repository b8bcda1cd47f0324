//! What the raft core's side and the writer thread share: the log in memory (the unpurged
//! entries, the vote, the purge point, the committed id), whether the log is still usable,
//! and the statistics; plus the configuration both are started with.

use std::collections::VecDeque;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::AtomicU64;

use livestock_core::limits::{RAFT_COMMITTED_IDLE_PERSIST_MS, RAFT_LOG_SEGMENT_BYTES_MAX_DEFAULT};

use crate::cluster::types::{Entry, LogId, Vote};
use crate::sync::os::Mutex;

/// How the raft log is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftLogConfig {
    /// A segment is closed and a new one started once a batch would take it past this size.
    pub segment_bytes_max: u64,
    /// How long a new committed log id may wait for a batch to carry it before the writer
    /// writes it to the meta file on its own (see "Committed" in `log_store.rs`).
    pub committed_idle_persist_ms: u64,
    /// Run each call's I/O in the calling task instead of on the writer thread (no group
    /// commit, no idle persisting of the committed id; see `writer.rs`). Off in production;
    /// the deterministic cluster simulation turns it on, because its runtime's paused clock
    /// moves on whenever the runtime waits for another thread.
    pub inline: bool,
}

impl Default for RaftLogConfig {
    fn default() -> Self {
        RaftLogConfig {
            segment_bytes_max: RAFT_LOG_SEGMENT_BYTES_MAX_DEFAULT,
            committed_idle_persist_ms: RAFT_COMMITTED_IDLE_PERSIST_MS,
            inline: false,
        }
    }
}

/// What the raft log measures, for `/metrics`. Written by the writer thread only; relaxed
/// loads are enough, each counter stands alone.
#[derive(Debug, Default)]
pub struct RaftLogStats {
    /// Entries written to segment files.
    pub entries_appended: AtomicU64,
    /// `append` calls acknowledged durable; over `fsyncs` it is the group-commit factor.
    pub appends_acknowledged: AtomicU64,
    /// Frame bytes written to segment files.
    pub bytes_written: AtomicU64,
    /// `fdatasync`s of segment files: one per group commit, plus one per sealed segment.
    pub fsyncs: AtomicU64,
    /// How long the latest segment `fdatasync` took, in microseconds.
    pub last_fsync_us: AtomicU64,
}

/// Whether the log still takes calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Health {
    Open,
    /// A write or fsync failed: what reached the disk is unknown, so nothing more is done.
    Poisoned(String),
    /// Closed by its handle after a last flush.
    Closed,
}

/// The log as the raft core and the readers see it. Entries are here from the moment
/// `append` returns (openraft requires them readable before they are durable) until they are
/// purged or truncated.
pub(super) struct Mem {
    /// Consecutive entries, the first one right after `last_purged` (if any was purged).
    pub entries: VecDeque<Entry>,
    pub last_purged: Option<LogId>,
    /// The last vote `save_vote` made durable.
    pub vote: Option<Vote>,
    /// The newest committed id given to `save_committed` (or recovered).
    pub committed: Option<LogId>,
    pub health: Health,
}

impl Mem {
    /// `Err` unless the log is open.
    pub fn check(&self) -> io::Result<()> {
        match &self.health {
            Health::Open => Ok(()),
            Health::Poisoned(reason) => Err(poisoned_error(reason)),
            Health::Closed => Err(closed_error()),
        }
    }

    /// The id of the last entry, or of the last purged one when no entry is left.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|e| e.log_id).or(self.last_purged)
    }

    /// The index the next appended entry must have; `None` when any index may come (nothing
    /// was ever appended or purged: openraft may start a log at any index).
    pub fn next_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index + 1)
    }

    /// The present entries whose index is in `range`, copied.
    pub fn entries_in(&self, range: &impl RangeBounds<u64>) -> Vec<Entry> {
        let Some(first) = self.entries.front().map(|e| e.log_id.index) else {
            return Vec::new();
        };
        let start = match range.start_bound() {
            Bound::Included(&at) => at,
            Bound::Excluded(&at) => at.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&at) => at.saturating_add(1),
            Bound::Excluded(&at) => at,
            Bound::Unbounded => u64::MAX,
        };
        let from = position(start.max(first) - first);
        let to = position(end.max(first) - first).min(self.entries.len());
        if from >= to {
            return Vec::new();
        }
        self.entries.range(from..to).cloned().collect()
    }
}

/// An offset into the in-memory log as a position. Saturates: a position past the end is
/// clamped by the caller, and no log holds `usize::MAX` entries.
fn position(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

pub(super) fn poisoned_error(reason: &str) -> io::Error {
    io::Error::other(format!(
        "the raft log is poisoned after an I/O error ({reason}); it takes no more calls: \
         restart the node to recover from what reached the disk"
    ))
}

pub(super) fn closed_error() -> io::Error {
    io::Error::other("the raft log is closed")
}

/// What both sides hold.
pub(super) struct Shared {
    /// A `parking_lot` mutex, held only to copy or splice entries and never across an
    /// `.await` or any I/O: the writer thread takes it only to poison or close the log.
    pub mem: Mutex<Mem>,
    pub stats: RaftLogStats,
}

impl Shared {
    pub fn set_health(&self, health: Health) {
        let mut mem = self.mem.lock();
        // Poisoned stays poisoned: a close after a failure must not hide it.
        if !matches!(mem.health, Health::Poisoned(_)) {
            mem.health = health;
        }
    }
}
