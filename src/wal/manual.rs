//! Manual mode: the log with no threads, driven step by step by its owner (the deterministic
//! fault simulator, `tests/simulation.rs`). Set by `WalConfig::manual`.
//!
//! [`Wal::step`] runs one iteration of the strict writer loop (write everything queued, fsync
//! it, publish it durable, hand it to the shadow) and [`Wal::checkpoint_now`] one checkpoint,
//! on the same `SegmentWriter` and `Checkpointer` the threads use, so what the simulator
//! exercises is the production code minus the scheduling.

use crate::wal::checkpoint;
use crate::wal::writer::{poison, publish_durable, LogState, Wal};

impl Wal {
    /// Manual mode: one writer iteration, as the writer thread would run it: write everything
    /// queued as one batch, fsync it, publish it as durable, hand it to the shadow. Returns the
    /// durable LSN. Single-threaded and deterministic: the fault simulator drives the log with
    /// it. Panics outside manual mode.
    pub fn step(&self) -> Result<u64, String> {
        let mut manual = self.manual.lock();
        let Some((writer, checkpointer)) = manual.as_mut() else {
            panic!("Wal::step outside manual mode");
        };
        if let LogState::Poisoned(reason) = self.state() {
            return Err(reason);
        }
        let (frames, records, _) = self.shared.take_queued();
        let synced = writer
            .write(&frames, records)
            .inspect(|()| {
                self.shared.written.send_replace(writer.written_lsn);
            })
            .and_then(|()| writer.sync());
        match synced {
            Err(reason) => {
                poison(&self.shared, reason.clone());
                Err(reason)
            }
            Ok(batch) => {
                if let Some(batch) = batch {
                    publish_durable(&self.shared, writer.synced_lsn);
                    checkpointer.apply(batch);
                }
                Ok(writer.synced_lsn)
            }
        }
    }

    /// Manual mode: write a checkpoint of everything stepped so far. Panics outside manual
    /// mode.
    pub fn checkpoint_now(&self) -> Result<(), (checkpoint::Step, std::io::Error)> {
        let mut manual = self.manual.lock();
        let Some((_, checkpointer)) = manual.as_mut() else {
            panic!("Wal::checkpoint_now outside manual mode");
        };
        checkpointer.checkpoint()
    }

    /// The manual half of [`Wal::close`]: the last step and the final checkpoint, as the
    /// threads would run them on close. Does nothing outside manual mode.
    pub(super) fn close_manual(&self) -> Result<(), String> {
        if self.manual.lock().is_none() {
            return Ok(());
        }
        self.step()?;
        // As the checkpointer thread: a failed final checkpoint leaves the log intact.
        let _ = self.checkpoint_now();
        Ok(())
    }
}
