//! Durability: the write-ahead log, checkpoints, and recovery.
//!
//! | file | concept |
//! |---|---|
//! | `storage.rs` | the file system behind a trait (real here; faulty and simulated in tests) |
//! | `record.rs` | a record (event + kept reply) and its frame: length, CRC32C, LSN |
//! | `segment.rs` | segment files; telling a torn tail from corruption |
//! | `checkpoint.rs` | a checkpoint file: the whole state at one LSN, written atomically |
//! | `recovery.rs` | newest checkpoint + the log after it |
//! | `reader.rs` | the log read from a position, a piece at a time (the event stream) |
//! | `config.rs` | what the log starts with: durability mode, cadences, recovered state |
//! | `stats.rs` | what the log measures, for `/metrics` |
//! | `checkpointer.rs` | the shadow allocator fed durable batches, and when it checkpoints |
//! | `writer.rs` | the append queue, group commit, strict and relaxed loops, poisoning |
//! | `manual.rs` | the log without threads, stepped by the fault simulator |
//!
//! Dependencies point one way, down this table's layers: `storage`, `record` and `segment`
//! at the bottom; `checkpoint` and `reader` above them; `recovery` above `checkpoint`; `config` and
//! `stats` beside them; `checkpointer` above those; `writer` above `checkpointer`; `manual`
//! on top.
//!
//! Byte layouts and crash cases: `docs/durability.md`.

pub mod checkpoint;
pub mod checkpointer;
pub mod config;
pub mod manual;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod stats;
pub mod storage;
pub mod writer;

pub use config::{Durability, WalConfig, WalStart};
pub use reader::{LogReader, ReadError};
pub use record::{KeptReply, Record};
pub use recovery::{recover, RecoveryError, RecoveryReport};
pub use stats::WalStats;
pub use storage::{DirStorage, Storage};
pub use writer::{LogState, Wal};
