//! What the log is started with: its durability mode and cadences ([`WalConfig`]), and where
//! it starts from ([`WalStart`], the result of recovery). Below the writer and the
//! checkpointer, which both read it.

use crate::alloc::Allocator;
use crate::wal::record::KeptReply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Strict,
    Relaxed { fsync_interval_ms: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct WalConfig {
    pub durability: Durability,
    pub segment_bytes_max: u64,
    pub checkpoint_interval_ms: u64,
    pub checkpoint_log_bytes: u64,
    pub idempotency_window_ms: u64,
    /// Log a checkpoint made redundant that is kept anyway, for the event stream
    /// (`GET /v1/events` serves what is on disk): the newest covered segments whose sizes add
    /// up to at most this many bytes. 0: delete every covered segment (the log is then only
    /// what recovery needs).
    pub retention_bytes: u64,
    /// No threads: the owner drives the log with [`Wal::step`] and [`Wal::checkpoint_now`]
    /// (the deterministic fault simulator; see `manual.rs`). Servers run with `false`.
    ///
    /// [`Wal::step`]: crate::wal::Wal::step
    /// [`Wal::checkpoint_now`]: crate::wal::Wal::checkpoint_now
    pub manual: bool,
}

/// Where the log starts and what the checkpointer starts from (the result of recovery).
pub struct WalStart {
    pub next_lsn: u64,
    pub checkpoint_lsn: u64,
    pub shadow: Allocator,
    pub replies: Vec<KeptReply>,
}
