//! What the log measures, for `/metrics`: written by the writer, the syncer and the
//! checkpointer, read by `metrics.rs`.

use std::sync::atomic::AtomicU64;

use crate::metrics::AtomicHistogram;

/// What the log measures, for `/metrics`.
pub struct WalStats {
    pub checkpoints_written: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    pub last_checkpoint_lsn: AtomicU64,
    /// The node clock of the newest record the last checkpoint covers (Unix ms; 0: none since
    /// start). `now - this` is how stale the checkpoint is.
    pub last_checkpoint_at_ms: AtomicU64,
    /// Batches after which the checkpointer audited its shadow's invariants. Debug builds
    /// audit after every batch; release builds never do, so this stays 0 there.
    pub shadow_audits: AtomicU64,
    /// Records per group commit (per `write`).
    pub batch_records: AtomicHistogram,
    /// Seconds per log `fdatasync`.
    pub fsync_seconds: AtomicHistogram,
    /// Seconds per checkpoint written.
    pub checkpoint_seconds: AtomicHistogram,
}

impl Default for WalStats {
    fn default() -> Self {
        WalStats {
            checkpoints_written: AtomicU64::default(),
            checkpoint_failures: AtomicU64::default(),
            last_checkpoint_lsn: AtomicU64::default(),
            last_checkpoint_at_ms: AtomicU64::default(),
            shadow_audits: AtomicU64::default(),
            batch_records: AtomicHistogram::new((0..14).map(|i| f64::from(1u32 << i)).collect()),
            fsync_seconds: AtomicHistogram::latency(),
            checkpoint_seconds: AtomicHistogram::latency(),
        }
    }
}
