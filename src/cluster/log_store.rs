//! openraft's log storage ([`RaftLogStorage`]) over our write-ahead-log format: segment files
//! of CRC-checked frames, a writer thread with group commit, the vote and the purge point in
//! small files replaced atomically, and the unpurged entries kept in memory for readers.
//!
//! | file | concept |
//! |---|---|
//! | `log_store.rs` | the raft core's side: [`RaftLog`], its reader and handle, the calls |
//! | `log_store/format.rs` | names and bytes: segment headers, entry frames, state files |
//! | `log_store/shared.rs` | what both sides share: the log in memory, health, stats, config |
//! | `log_store/segments.rs` | the segment files: append, roll, cut, delete; frame offsets |
//! | `log_store/recovery.rs` | opening: scan, cut a torn tail, report corruption |
//! | `log_store/writer.rs` | the writer thread: the job queue, group commit, poisoning |
//!
//! All files go through [`Storage`], in a directory of their own (`<data-dir>/raft/`).
//!
//! # Files (integers little-endian)
//! ```text
//! raft-{first_index:020}.log   a segment: entries first_index, first_index + 1, ...
//!     offset size  field
//!          0    8  magic        "LVSTRAFT"
//!          8    8  first_index  raft index of the first frame (u64; 0 is an index)
//!         16    4  version      1
//!         20    4  header_crc   CRC32C of bytes 0..20
//!         24    .  frames       the write-ahead log's frame (`wal/record.rs`): header CRC,
//!                               length, lsn = the entry's raft index, payload CRC, payload =
//!                               postcard of { committed: Option<LogId>, entry: Entry }
//! raft-vote                    one frame (lsn = 1, the format version): postcard of the Vote
//! raft-meta                    one frame (lsn = 1): postcard of { last_purged, committed }
//! raft-vote.tmp, raft-meta.tmp a state file being replaced; a leftover one is removed at open
//! ```
//!
//! # Ordering and durability
//! Calls come from the raft core one at a time and go to the writer thread in that order
//! (`writer.rs`; in inline mode, `RaftLogConfig::inline`, each call runs its job itself, in
//! the same order). `append` puts the entries in memory (readable at once, as openraft requires),
//! queues their frames and returns; its callback is told once one `fdatasync` covers them, and
//! one fsync covers every append queued while the previous one ran (group commit). `save_vote`,
//! `truncate_after` and `purge` queue behind the appends before them and return once durable
//! themselves, so no I/O is ever reordered (openraft's `docs/protocol/io_ordering.md`).
//!
//! # Committed
//! `save_committed` does not wait for a disk. The id rides on the next append: the last frame
//! of each append carries the newest committed id known then, and is fsynced with its batch,
//! so a busy log persists it for free. When no append comes within `committed_idle_persist_ms`,
//! the writer writes it to `raft-meta` instead (as it does at every truncation, purge and
//! close, since deleted frames may have carried it). Recovery takes the newest of all.
//! Why this is safe: a committed id is written (in a frame or the meta file) only after every
//! entry up to it is durable, since those entries were queued before it (openraft calls
//! `save_committed` only for submitted entries); so a recovered id never points past the
//! durable log, and the recovered value is one the node really had. What can be lost is the
//! newest id of the last moments before a machine crash (a process crash loses nothing: the
//! page cache survives it): a restarted node then applies a little less at start-up and catches
//! up when the leader's commit reaches it. The window is one fsync cycle under load, and
//! `committed_idle_persist_ms` when idle.
//!
//! # Crash cases
//! - In an append: the last segment ends with a torn frame, never acknowledged. Recovery cuts
//!   it. A bad frame with a valid one after it, or anywhere but the last segment, is
//!   corruption: `open` fails naming the file and offset (see `wal/segment.rs`).
//! - Rolling to a new segment: the full one was fsynced first; a new file with a torn header
//!   or no frame is removed at open.
//! - Replacing the vote or the meta file: the old file or the new one, whole.
//! - In a truncation: later segments go newest first, then the cut; the log only ever loses a
//!   suffix, never the middle.
//! - In a purge: the meta file names the purge point before any segment is deleted; segments
//!   wholly before it are deleted at open.
//!
//! # Poisoning
//! After a failed write or fsync nothing more is written (a failed fsync may have dropped dirty
//! pages; it is never retried): the failed call and every append waiting on an fsync are told
//! the error, and every later call returns one. openraft then stops the raft core (storage
//! errors are fatal); a restart recovers from what reached the disk.

mod format;
mod recovery;
mod segments;
mod shared;
mod writer;

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{self, Sender};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use tokio::sync::oneshot;

use crate::cluster::types::{Entry, LogId, TypeConfig, Vote};
use crate::sync::os::Mutex;
use crate::wal::storage::Storage;

use format::encode_entry;
use segments::Segments;
use shared::{Health, Mem, Shared};
use writer::{Job, Writer};

pub use shared::{RaftLogConfig, RaftLogStats};

/// The raft log: handed to `openraft::Raft::new`, which then owns it. Take a [`RaftLogHandle`]
/// first to read its statistics and to close it.
pub struct RaftLog {
    shared: Arc<Shared>,
    backend: Backend,
    /// The committed id the next append carries (see "Committed" in the module docs).
    committed: Option<LogId>,
}

/// Who runs the jobs: the writer thread (production), or each caller in turn (inline mode).
#[derive(Clone)]
enum Backend {
    Thread {
        jobs: Sender<Job>,
        thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    },
    /// Locked only for one job's synchronous I/O, never across an `.await`.
    Inline(Arc<Mutex<Writer>>),
}

impl Backend {
    /// Hands `job` to the writer: queued for the thread, or run now.
    fn send(&self, job: Job) -> io::Result<()> {
        match self {
            Backend::Thread { jobs, .. } => jobs.send(job).map_err(|_| writer_gone()),
            Backend::Inline(writer) => {
                writer.lock().run_inline(job);
                Ok(())
            }
        }
    }
}

/// Reads the log (entries, vote) for openraft's replication tasks; cheap to clone, sees what
/// the [`RaftLog`] sees.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// The owner's view of a running [`RaftLog`]: statistics, health, close.
#[derive(Clone)]
pub struct RaftLogHandle {
    shared: Arc<Shared>,
    backend: Backend,
}

impl RaftLog {
    /// Opens the log in `storage` (creating nothing until the first append), recovering what
    /// is on disk, and starts its writer thread (none in inline mode). `InvalidData` if the
    /// files are corrupt.
    pub fn open(storage: Arc<dyn Storage>, config: RaftLogConfig) -> io::Result<RaftLog> {
        let recovered = recovery::recover(&*storage)?;
        let shared = Arc::new(Shared {
            mem: Mutex::new(Mem {
                entries: recovered.entries,
                last_purged: recovered.meta.last_purged,
                vote: recovered.vote,
                committed: recovered.committed,
                health: Health::Open,
            }),
            stats: RaftLogStats::default(),
        });
        let segments = Segments::open(
            storage.clone(),
            shared.clone(),
            recovered.segments,
            config.segment_bytes_max,
        )?;
        let writer = Writer::new(
            shared.clone(),
            storage,
            segments,
            recovered.meta,
            recovered.committed,
            Duration::from_millis(config.committed_idle_persist_ms),
        );
        let backend = if config.inline {
            Backend::Inline(Arc::new(Mutex::new(writer)))
        } else {
            let (jobs, queue) = channel::unbounded();
            let thread = std::thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || writer.run(queue))?;
            Backend::Thread { jobs, thread: Arc::new(Mutex::new(Some(thread))) }
        };
        Ok(RaftLog { shared, backend, committed: recovered.committed })
    }

    pub fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    pub fn handle(&self) -> RaftLogHandle {
        RaftLogHandle { shared: self.shared.clone(), backend: self.backend.clone() }
    }

    fn check(&self) -> io::Result<()> {
        self.shared.mem.lock().check()
    }

    fn send(&self, job: Job) -> io::Result<()> {
        self.backend.send(job)
    }

    /// Queues a job that reports back, and waits for its report.
    async fn run(&self, job: impl FnOnce(writer::Done) -> Job) -> io::Result<()> {
        let (done, report) = oneshot::channel();
        self.send(job(done))?;
        report.await.map_err(|_| writer_gone())?
    }
}

/// The writer thread stopped without answering: closed, or poisoned and closed.
fn writer_gone() -> io::Error {
    io::Error::other("the raft log writer has stopped")
}

impl RaftLogHandle {
    pub fn stats(&self) -> &RaftLogStats {
        &self.shared.stats
    }

    /// Why the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        match &self.shared.mem.lock().health {
            Health::Poisoned(reason) => Some(reason.clone()),
            Health::Open | Health::Closed => None,
        }
    }

    /// Fsyncs everything queued, persists the committed id, and stops the writer thread;
    /// every later call on the log fails. Blocks for that fsync: call it off the async
    /// runtime's workers (at shutdown, after the raft is stopped, or in `spawn_blocking`).
    /// `Err` if the log is poisoned (some acknowledged-looking writes may not be durable).
    /// Idempotent.
    pub fn close(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Thread { jobs, thread } => {
                // Fails only if the writer already stopped; the join below tells how.
                let _ = jobs.send(Job::Close);
                let thread = thread.lock().take();
                if let Some(thread) = thread {
                    if thread.join().is_err() {
                        return Err(io::Error::other("the raft log writer panicked"));
                    }
                }
            }
            Backend::Inline(writer) => writer.lock().run_inline(Job::Close),
        }
        let mem = self.shared.mem.lock();
        match &mem.health {
            Health::Poisoned(_) => mem.check(),
            Health::Open | Health::Closed => Ok(()),
        }
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.shared.mem.lock();
        mem.check()?;
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: mem.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.check()?;
        self.run(|done| Job::Vote { vote: *vote, done }).await?;
        self.shared.mem.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut mem = self.shared.mem.lock();
        mem.check()?;
        // Only ever forward: openraft may repeat an id, never take one back.
        let Some(committed) = committed.filter(|c| Some(c) > self.committed.as_ref()) else {
            return Ok(());
        };
        mem.committed = Some(committed);
        drop(mem);
        self.committed = Some(committed);
        self.send(Job::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let mem = self.shared.mem.lock();
        mem.check()?;
        Ok(mem.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut frames = Vec::new();
        let mut starts = Vec::with_capacity(entries.len());
        let carries = entries.last().and(self.committed);
        for (n, entry) in entries.iter().enumerate() {
            starts.push(frames.len());
            let last = n + 1 == entries.len();
            encode_entry(entry, if last { carries.as_ref() } else { None }, &mut frames);
        }
        let first_index = entries.first().map_or(0, |e| e.log_id.index);
        {
            let mut mem = self.shared.mem.lock();
            mem.check()?;
            let mut expected = mem.next_index();
            for entry in &entries {
                // openraft appends without holes or overlaps (it truncates first); anything
                // else is a bug that would corrupt the log.
                assert!(
                    expected.is_none_or(|expected| entry.log_id.index == expected),
                    "raft log append of {} where index {expected:?} is next",
                    entry.log_id
                );
                expected = Some(entry.log_id.index + 1);
            }
            mem.entries.extend(entries);
        }
        self.send(Job::Append { first_index, frames, starts, carries, callback })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.map(|id| id.index);
        {
            let mut mem = self.shared.mem.lock();
            mem.check()?;
            while mem
                .entries
                .back()
                .is_some_and(|e| after.is_none_or(|after| e.log_id.index > after))
            {
                mem.entries.pop_back();
            }
        }
        self.run(|done| Job::TruncateAfter { after, done }).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut mem = self.shared.mem.lock();
            mem.check()?;
            if mem.last_purged.as_ref() >= Some(&log_id) {
                return Ok(());
            }
            while mem.entries.front().is_some_and(|e| e.log_id.index <= log_id.index) {
                mem.entries.pop_front();
            }
            mem.last_purged = Some(log_id);
        }
        self.run(|done| Job::Purge { upto: log_id, done }).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mem = self.shared.mem.lock();
        mem.check()?;
        Ok(mem.entries_in(&range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let mem = self.shared.mem.lock();
        mem.check()?;
        Ok(mem.vote)
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader().try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.reader().read_vote().await
    }
}
