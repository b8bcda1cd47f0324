//! The checkpointer: a *shadow* allocator fed every durable batch, and the checkpoints written
//! from it.
//!
//! Every durable record is applied to the shadow with the same `Allocator::apply` recovery
//! uses, so at any moment it holds the state as of an exact LSN. A checkpoint writes that
//! state; the reserve path never waits for it (the writer only hands it batches through a
//! channel). In debug builds the shadow's invariants are audited after every batch: a shadow
//! that diverged from the live allocator would write a wrong checkpoint, which is a bug.
//!
//! Cadence (the thread's loop): batches are taken every `SHADOW_APPLY_PERIOD_MS`, and a
//! checkpoint is written every `checkpoint_interval_ms` or after `checkpoint_log_bytes` of log,
//! and once more when the log closes.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use livestock_core::limits::{
    CHECKPOINT_IDLE_PER_BUSY, CHECKPOINT_SLICE_US, SHADOW_APPLY_PERIOD_MS,
};

use crate::alloc::Allocator;
use crate::wal::checkpoint;
use crate::wal::config::{WalConfig, WalStart};
use crate::wal::record::{KeptReply, Record};
use crate::wal::stats::WalStats;
use crate::wal::storage::Storage;

/// A durable batch on its way to the checkpointer, with its size in the log.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) records: Vec<(u64, Record)>,
    pub(super) log_bytes: u64,
}

/// The shadow state and the checkpoints written from it. Owned by the checkpointer thread, or
/// by the simulator in manual mode.
pub(super) struct Checkpointer {
    storage: Arc<dyn Storage>,
    shadow: Allocator,
    replies: HashMap<(String, String), KeptReply>,
    checkpoint_lsn: u64,
    applied_lsn: u64,
    log_bytes_since: u64,
    /// The newest record's clock: the shadow ages things by it, never by a clock of its own.
    now_ms: u64,
    idempotency_window_ms: u64,
    /// Covered log kept for the event stream, bytes (`WalConfig::retention_bytes`).
    retention_bytes: u64,
    /// Pace checkpoints (see `Pacer`); off in manual mode, where the simulator drives the
    /// checkpointer and a sleep would only slow it.
    paced: bool,
    stats: Arc<WalStats>,
}

impl Checkpointer {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        start: WalStart,
        config: WalConfig,
        stats: Arc<WalStats>,
    ) -> Self {
        Checkpointer {
            storage,
            shadow: start.shadow,
            replies: start
                .replies
                .into_iter()
                .map(|r| ((r.scope.clone(), r.key.clone()), r))
                .collect(),
            checkpoint_lsn: start.checkpoint_lsn,
            applied_lsn: start.next_lsn - 1,
            log_bytes_since: 0,
            now_ms: 0,
            idempotency_window_ms: config.idempotency_window_ms,
            retention_bytes: config.retention_bytes,
            paced: !config.manual,
            stats,
        }
    }

    /// Applies one durable batch to the shadow; in debug builds, then audits it.
    pub(super) fn apply(&mut self, batch: Batch) {
        for (lsn, record) in batch.records {
            if let Err(e) = self.shadow.apply(&record.event) {
                // The live allocator decided this event from the same state: a refusal here
                // means the two diverged, which is a bug, not bad input.
                panic!("shadow state refused record {lsn}: {e}");
            }
            if let Some(reply) = record.reply {
                self.replies.insert((reply.scope.clone(), reply.key.clone()), reply);
            }
            self.now_ms = self.now_ms.max(record.at_ms);
            self.applied_lsn = lsn;
        }
        self.log_bytes_since += batch.log_bytes;
        if cfg!(debug_assertions) {
            // O(state) per batch: affordable in tests, not on the hot path of a release build.
            if let Err(violation) = self.shadow.audit() {
                panic!("the shadow state diverged at record {}: {violation}", self.applied_lsn);
            }
            self.stats.shadow_audits.fetch_add(1, Relaxed);
        }
    }

    /// Writes a checkpoint of the shadow if it is ahead of the last one. A failure is counted
    /// and logged, and the next call tries again: the log still holds everything, so a failed
    /// checkpoint costs a longer recovery, not data.
    pub(super) fn checkpoint(&mut self) -> Result<(), (checkpoint::Step, std::io::Error)> {
        if self.applied_lsn <= self.checkpoint_lsn {
            return Ok(());
        }
        self.shadow.forget_due(self.now_ms);
        let (window_ms, now_ms) = (self.idempotency_window_ms, self.now_ms);
        self.replies.retain(|_, r| r.seen_ms.saturating_add(window_ms) > now_ms);
        let started = Instant::now();
        let mut pacer = Pacer::new(self.paced);
        // Nothing changes the shadow until this returns (batches wait in the channel), so the
        // pieces, paced apart, are still one state at one LSN.
        let payload = checkpoint::encode_payload(&self.shadow, self.replies.values(), &mut || {
            pacer.pause();
        });
        let written = checkpoint::write_payload(
            &*self.storage,
            self.applied_lsn,
            &payload,
            self.retention_bytes,
            &mut || pacer.pause(),
        );
        match written {
            Ok(()) => {
                self.checkpoint_lsn = self.applied_lsn;
                self.log_bytes_since = 0;
                self.stats.checkpoints_written.fetch_add(1, Relaxed);
                self.stats.last_checkpoint_lsn.store(self.checkpoint_lsn, Relaxed);
                self.stats.checkpoint_seconds.observe_duration(started.elapsed());
                self.stats.last_checkpoint_at_ms.store(self.now_ms, Relaxed);
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let paused_ms = u64::try_from(pacer.paused.as_millis()).unwrap_or(u64::MAX);
                let bytes = payload.len();
                tracing::info!(
                    lsn = self.checkpoint_lsn,
                    ms,
                    paused_ms,
                    bytes,
                    "checkpoint written"
                );
                Ok(())
            }
            Err((step, e)) => {
                self.stats.checkpoint_failures.fetch_add(1, Relaxed);
                tracing::warn!(?step, error = %e, "checkpoint failed; the log is intact");
                Err((step, e))
            }
        }
    }
}

/// Keeps a checkpoint to a quarter of a core: after each piece of its work, once
/// `CHECKPOINT_SLICE_US` of work has gathered, sleeps `CHECKPOINT_IDLE_PER_BUSY` times as long.
/// A checkpoint of a large state is CPU work the requests' core shares; unpaced, the scheduler
/// gave it half of that core for as long as it ran, and requests queued behind it.
struct Pacer {
    paced: bool,
    slice_started: Instant,
    paused: Duration,
}

impl Pacer {
    fn new(paced: bool) -> Self {
        Pacer { paced, slice_started: Instant::now(), paused: Duration::ZERO }
    }

    fn pause(&mut self) {
        let worked = self.slice_started.elapsed();
        if !self.paced || worked < Duration::from_micros(CHECKPOINT_SLICE_US) {
            return;
        }
        let pause = worked * CHECKPOINT_IDLE_PER_BUSY;
        std::thread::sleep(pause);
        self.paused += pause;
        self.slice_started = Instant::now();
    }
}

/// The checkpointer thread: applies batches as they come (gathered per period), checkpoints
/// on the interval or the log-bytes threshold, and once more when the writer hangs up.
pub(super) fn checkpoint_loop(
    mut checkpointer: Checkpointer,
    batches: Receiver<Batch>,
    config: WalConfig,
) {
    let mut last_attempt = Instant::now();
    let interval = Duration::from_millis(config.checkpoint_interval_ms);
    loop {
        let closing = match batches.recv_timeout(interval) {
            Ok(batch) => {
                checkpointer.apply(batch);
                // Let batches gather before taking them: one wake-up per period instead of one
                // per group commit keeps this thread off a core the requests need (on a
                // one-core server it took 6% of the core, most of it in switching).
                std::thread::sleep(Duration::from_millis(SHADOW_APPLY_PERIOD_MS));
                // Paced like a checkpoint: after one, a second or more of batches waits here,
                // and applying it at once took the core from the requests for tens of ms.
                // At a quarter of a core the shadow still applies ~100,000 records a second,
                // more than the log takes in.
                let mut pacer = Pacer::new(true);
                for batch in batches.try_iter() {
                    checkpointer.apply(batch);
                    pacer.pause();
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let due = last_attempt.elapsed() >= interval
            || checkpointer.log_bytes_since >= config.checkpoint_log_bytes;
        if due || closing {
            // A failure was counted and logged; the next attempt retries.
            let _ = checkpointer.checkpoint();
            last_attempt = Instant::now();
        }
        if closing {
            return;
        }
    }
}
