//! The raft log's writer thread: one queue of jobs, run in order; appends grouped into one
//! `fdatasync`; the vote, truncations and purges made durable in their place in the queue;
//! poisoning.
//!
//! A cycle takes what is queued when it starts and runs it in order. An append is written
//! (one `write` of its frames) and its callback parked; before any other job runs, the parked
//! appends are fsynced and their callbacks told, so every job sees the ones queued before it
//! durable (openraft's I/O ordering: a vote is never durable before the appends queued ahead of
//! it, nor an append before a vote queued ahead of it). The cycle ends with one fsync for the
//! appends left parked. While it runs, the next calls queue up: under load one fsync covers
//! many appends.
//!
//! After any failed write or fsync the log is poisoned: the failed job and every parked append
//! are told the error (a failed fsync may have dropped dirty pages: nothing written since the
//! last good fsync is known durable, and fsync is never retried), and so is every job after.
//!
//! Inline mode (`RaftLogConfig::inline`, for the deterministic cluster simulation): no thread;
//! each call runs its job as a cycle of its own, in the caller's task, through the same
//! [`Writer::cycle`]. It gives up group commit (one fsync per append) and the idle persisting of
//! the committed id (it rides on appends, truncations, purges and close only), and gains a log
//! that does its I/O at a point of the raft core's program order rather than on another thread's
//! schedule, which a runtime with paused time cannot wait for.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError};
use openraft::storage::IOFlushed;
use tokio::sync::oneshot;

use crate::cluster::types::{LogId, TypeConfig, Vote};
use crate::wal::storage::Storage;

use super::format::{write_state_file, Meta, META_FILE, VOTE_FILE};
use super::segments::Segments;
use super::shared::{closed_error, poisoned_error, Health, Shared};

/// Tells a caller waiting on a job how it went.
pub(super) type Done = oneshot::Sender<io::Result<()>>;

/// One request to the writer, in the order the raft core made them.
pub(super) enum Job {
    Append {
        first_index: u64,
        /// The frames of consecutive entries from `first_index`, back to back.
        frames: Vec<u8>,
        /// Where each frame starts in `frames`.
        starts: Vec<usize>,
        /// The committed id the last frame carries.
        carries: Option<LogId>,
        callback: IOFlushed<TypeConfig>,
    },
    Vote {
        vote: Vote,
        done: Done,
    },
    /// A new committed id: persisted by the frames of the next append that carries it, or by
    /// the meta file when none comes soon.
    Committed(LogId),
    TruncateAfter {
        after: Option<u64>,
        done: Done,
    },
    Purge {
        upto: LogId,
        done: Done,
    },
    Close,
}

impl Job {
    /// Answers the job with `error` without running it.
    fn refuse(self, error: impl Fn() -> io::Error) {
        match self {
            Job::Append { callback, .. } => callback.io_completed(Err(error())),
            Job::Vote { done, .. } | Job::TruncateAfter { done, .. } | Job::Purge { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Job::Committed(_) | Job::Close => {}
        }
    }
}

/// The writer's state; lives on its thread.
pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub storage: Arc<dyn Storage>,
    pub segments: Segments,
    /// The meta file as on disk.
    pub meta: Meta,
    /// The newest committed id the writer was told of.
    pub committed_latest: Option<LogId>,
    /// The newest committed id on disk: in the meta file, or carried by a synced frame.
    pub committed_durable: Option<LogId>,
    pub committed_idle_persist: Duration,
    /// Appends written but not yet fsynced: their callbacks, in order.
    parked: Vec<IOFlushed<TypeConfig>>,
    /// The newest committed id the parked appends' frames carry.
    parked_carries: Option<LogId>,
    /// Set once poisoned.
    poisoned: bool,
}

/// Whether the loop goes on after a job.
enum Flow {
    Continue,
    Close,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        storage: Arc<dyn Storage>,
        segments: Segments,
        meta: Meta,
        committed: Option<LogId>,
        committed_idle_persist: Duration,
    ) -> Writer {
        Writer {
            shared,
            storage,
            segments,
            meta,
            committed_latest: committed,
            committed_durable: committed,
            committed_idle_persist,
            parked: Vec::new(),
            parked_carries: None,
            poisoned: false,
        }
    }

    /// The thread's body: cycles until closed, or until every sender is gone.
    pub fn run(mut self, jobs: Receiver<Job>) {
        loop {
            let first = if self.committed_latest > self.committed_durable {
                match jobs.recv_timeout(self.committed_idle_persist) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        // No batch came to carry the committed id: write it down alone.
                        if let Err(e) = self.persist_meta() {
                            return self.poisoned(&jobs, &format!("raft meta write failed: {e}"));
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            // What is queued now, not what keeps arriving: the cycle must end in an fsync.
            let queued = jobs.len();
            let mut cycle = std::iter::once(first).chain(jobs.try_iter().take(queued));
            match self.cycle(&mut cycle) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => return self.close(cycle.chain(jobs.try_iter())),
                Err(reason) => return self.poisoned(&jobs, &reason),
            }
        }
        // Every sender is gone (the log and its handles were dropped): flush what was written.
        if let Err(reason) = self.flush_for_close() {
            self.poison(&reason);
        }
    }

    /// Inline mode: runs `job` as a cycle of its own, now, in the caller's task. A job after a
    /// poisoning or a close is refused as the thread refuses it.
    pub fn run_inline(&mut self, job: Job) {
        let health = self.shared.mem.lock().health.clone();
        match health {
            Health::Open => {}
            Health::Poisoned(reason) => return job.refuse(|| poisoned_error(&reason)),
            Health::Closed => return job.refuse(closed_error),
        }
        match self.cycle(&mut std::iter::once(job)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => self.finish_close(),
            Err(reason) => self.poison(&reason),
        }
    }

    /// One cycle: `jobs` in order until a close, then one fsync for the appends left parked.
    /// `Err` carries the reason to poison the log for (the failed job was answered already).
    fn cycle(&mut self, jobs: &mut impl Iterator<Item = Job>) -> Result<Flow, String> {
        let mut flow = Flow::Continue;
        for job in jobs.by_ref() {
            if let Flow::Close = self.run_job(job)? {
                flow = Flow::Close;
                break;
            }
        }
        self.sync_parked().map_err(|e| format!("raft log fsync failed: {e}"))?;
        Ok(flow)
    }

    /// Runs one job. `Err` carries the reason to poison the log for, after the job itself was
    /// answered with the error.
    fn run_job(&mut self, job: Job) -> Result<Flow, String> {
        match job {
            Job::Append { first_index, frames, starts, carries, callback } => {
                // Parked before the write: if it fails, poisoning tells this callback too.
                self.parked.push(callback);
                self.segments
                    .append(first_index, &frames, &starts)
                    .map_err(|e| format!("raft log write failed: {e}"))?;
                self.parked_carries = self.parked_carries.take().max(carries);
            }
            Job::Committed(committed) => {
                self.committed_latest = self.committed_latest.take().max(Some(committed));
            }
            Job::Vote { vote, done } => {
                let result = self
                    .sync_parked()
                    .and_then(|()| write_state_file(&*self.storage, VOTE_FILE, &vote));
                self.answer(done, result, "raft vote write failed")?;
            }
            Job::TruncateAfter { after, done } => {
                let result = self.sync_parked().and_then(|()| {
                    self.segments.truncate_after(after)?;
                    // The cut may have taken frames carrying the newest durable committed id.
                    if self.committed_latest > self.meta.committed {
                        self.persist_meta()?;
                    }
                    Ok(())
                });
                self.answer(done, result, "raft log truncation failed")?;
            }
            Job::Purge { upto, done } => {
                let result = self.sync_parked().and_then(|()| {
                    // The purge point first: segments deleted after it are known purged even
                    // if a crash interrupts the deletions.
                    self.meta.last_purged = Some(upto);
                    self.persist_meta()?;
                    self.segments.purge(upto.index)
                });
                self.answer(done, result, "raft log purge failed")?;
            }
            Job::Close => return Ok(Flow::Close),
        }
        Ok(Flow::Continue)
    }

    /// One fsync for every parked append, then their callbacks, in order.
    fn sync_parked(&mut self) -> io::Result<()> {
        if self.segments.is_dirty() {
            self.segments.sync()?;
            self.committed_durable = self.committed_durable.take().max(self.parked_carries.take());
        }
        // Counted before the callbacks run, so whoever hears of an acknowledgement sees it
        // counted.
        let acknowledged = self.parked.len() as u64;
        self.shared
            .stats
            .appends_acknowledged
            .fetch_add(acknowledged, std::sync::atomic::Ordering::Relaxed);
        for callback in self.parked.drain(..) {
            callback.io_completed(Ok(()));
        }
        Ok(())
    }

    /// Rewrites the meta file with the newest committed id. Only with nothing parked: the
    /// entries up to that id were queued before it, so they are durable by now.
    fn persist_meta(&mut self) -> io::Result<()> {
        debug_assert!(self.parked.is_empty(), "meta written with unsynced appends");
        let mut meta = self.meta.clone();
        meta.committed = meta.committed.take().max(self.committed_latest);
        write_state_file(&*self.storage, META_FILE, &meta)?;
        self.committed_durable = self.committed_durable.take().max(meta.committed);
        self.meta = meta;
        Ok(())
    }

    /// What a close does to the files: everything fsynced, the committed id written down.
    fn flush_for_close(&mut self) -> Result<(), String> {
        self.sync_parked().map_err(|e| format!("raft log fsync failed: {e}"))?;
        if self.committed_latest > self.committed_durable {
            self.persist_meta().map_err(|e| format!("raft meta write failed: {e}"))?;
        }
        Ok(())
    }

    fn close(mut self, rest: impl Iterator<Item = Job>) {
        self.finish_close();
        for job in rest {
            job.refuse(closed_error);
        }
    }

    /// The last flush, then the log is closed (or poisoned, if the flush failed).
    fn finish_close(&mut self) {
        match self.flush_for_close() {
            Ok(()) => self.shared.set_health(Health::Closed),
            Err(reason) => self.poison(&reason),
        }
    }

    /// Sends a waiting job's result; `Err(reason)` if it failed, after poisoning the log: the
    /// log is poisoned before the caller hears of the failure, so its next call fails too.
    fn answer(&mut self, done: Done, result: io::Result<()>, what: &str) -> Result<(), String> {
        match result {
            Ok(()) => {
                let _ = done.send(Ok(()));
                Ok(())
            }
            Err(e) => {
                let reason = format!("{what}: {e}");
                self.poison(&reason);
                let _ = done.send(Err(e));
                Err(reason)
            }
        }
    }

    /// Marks the log poisoned (before anyone is told of the failure) and fails every parked
    /// append. Once.
    fn poison(&mut self, reason: &str) {
        if self.poisoned {
            return;
        }
        self.poisoned = true;
        tracing::error!(%reason, "raft log poisoned: no further writes; restart to recover");
        self.shared.set_health(Health::Poisoned(reason.to_owned()));
        for callback in self.parked.drain(..) {
            callback.io_completed(Err(poisoned_error(reason)));
        }
    }

    /// After a failure: poison, then refuse every job until closed or abandoned.
    fn poisoned(mut self, jobs: &Receiver<Job>, reason: &str) {
        self.poison(reason);
        for job in jobs.iter() {
            let close = matches!(job, Job::Close);
            job.refuse(|| poisoned_error(reason));
            if close {
                return;
            }
        }
    }
}
