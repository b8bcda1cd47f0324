//! Durability: the write-ahead log, checkpoints, and recovery.
//!
//! | file | concept |
//! |---|---|
//! | `storage.rs` | the file system behind a trait (real, faulty, simulated) |
//! | `record.rs` | a record (event + kept reply) and its frame: length, CRC32C, LSN |
//! | `segment.rs` | segment files; telling a torn tail from corruption |
//! | `writer.rs` | group commit, durability modes, poisoning, the checkpointer |
//! | `checkpoint.rs` | the whole state at one LSN, written atomically |
//! | `recovery.rs` | newest checkpoint + the log after it |
//!
//! Byte layouts and crash cases: `docs/durability.md`.

pub mod checkpoint;
pub mod faulty;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod storage;
pub mod writer;

pub use record::{KeptReply, Record};
pub use recovery::{recover, RecoveryError, RecoveryReport};
pub use storage::{DirStorage, Storage};
pub use writer::{Durability, LogState, Wal, WalConfig, WalStart, WalStats};
