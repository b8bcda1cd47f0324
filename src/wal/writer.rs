//! The log writer: the append queue, group commit, the strict and relaxed write loops, the
//! relaxed syncer, and poisoning. Also the [`Wal`] handle requests append to and wait on.
//!
//! Requests append records to one queue (the LSN is assigned there, in append order, which is
//! the order the allocator decided them in). One writer thread takes everything queued, issues
//! one write and one `fdatasync` for the whole batch, then publishes the new durable LSN; each
//! request waits for its own LSN. Under load the batch grows by itself: while one fsync runs,
//! the next batch gathers, so throughput rises with concurrency at a constant fsync rate.
//!
//! Durability modes:
//! - `strict` (default): a request is answered after its record's fsync.
//! - `relaxed`: a request is answered once its record is written (handed to the kernel by the
//!   batch's `write`, no fsync); a *syncer* thread fsyncs at least every `fsync_interval_ms`. A
//!   crash of the process loses no acknowledged record (the kernel has it); a crash of the
//!   machine loses at most the records of the last `fsync_interval_ms` plus one batch. The fsync
//!   runs on its own thread, through a second handle on the segment, so writes (and with them
//!   acknowledgements) never queue behind it: that is what makes relaxed cheaper than strict.
//!
//! If a write or fsync fails, the log is *poisoned*: after a failed fsync the state of the file
//! is unknown (the kernel may have dropped the dirty pages), so no further write is tried,
//! every waiting request is told `storage_unavailable`, and the process exits so a supervisor
//! restarts it into recovery, which reads what really reached the disk.
//!
//! Each durable batch goes on to the checkpointer (`checkpointer.rs`) through a channel. In
//! manual mode (`manual.rs`) no thread runs: the simulator steps the same [`SegmentWriter`]
//! and checkpointer itself.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Sender};
use livestock_core::limits::RELAXED_WRITE_GATHER_US;
use tokio::sync::watch;

use crate::sync::os::{Condvar, Mutex};
use crate::wal::checkpointer::{checkpoint_loop, Batch, Checkpointer};
use crate::wal::config::{Durability, WalConfig, WalStart};
use crate::wal::reader::{self, LogReader, ReadError};
use crate::wal::record::{encode_frame, encode_payload, Record};
use crate::wal::segment::{segment_header, segment_name, SEGMENT_HEADER_BYTES};
use crate::wal::stats::WalStats;
use crate::wal::storage::{AppendFile, FileSync, Storage};

/// What is known about the log: records up to an LSN are durable, or it is poisoned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogState {
    DurableUpTo(u64),
    Poisoned(String),
    /// Shut down cleanly with everything up to this LSN durable; no more appends are written.
    Closed(u64),
}

struct Queue {
    next_lsn: u64,
    frames: Vec<u8>,
    records: Vec<(u64, Record)>,
    closing: bool,
}

pub(super) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    state: watch::Sender<LogState>,
    /// Set once, when the log is poisoned. Apart from `state` so that whoever waits only for
    /// poisoning (the server's main task) is not woken by every durable LSN.
    poison: watch::Sender<Option<String>>,
    /// Relaxed durability: written, not yet fsynced; the writer fills it, the syncer drains it.
    unsynced: Mutex<Unsynced>,
    syncer_wake: Condvar,
    /// Records up to this LSN were handed to the kernel (`write` returned): they survive a crash
    /// of the process, not of the machine. Relaxed durability answers at this point.
    pub(super) written: watch::Sender<u64>,
}

/// The log, as requests see it: append a record, wait for it to be durable (or written).
pub struct Wal {
    pub(super) shared: Arc<Shared>,
    durability: Durability,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Manual mode's writer and checkpointer (no threads; see `manual.rs`).
    pub(super) manual: Mutex<Option<(SegmentWriter, Checkpointer)>>,
    stats: Arc<WalStats>,
    /// The data directory, for readers of the log (`reader.rs`).
    storage: Arc<dyn Storage>,
}

pub(super) fn poison(shared: &Shared, reason: String) {
    tracing::error!(%reason, "write-ahead log poisoned: no further writes; exiting for recovery");
    shared.state.send_replace(LogState::Poisoned(reason.clone()));
    shared.poison.send_if_modified(|poison| {
        let first = poison.is_none();
        if first {
            *poison = Some(reason);
        }
        first
    });
}

/// Publishes a new durable LSN unless the log is poisoned or closed (the relaxed syncer and
/// writer run apart: one may have poisoned the log while the other finished an fsync).
pub(super) fn publish_durable(shared: &Shared, lsn: u64) {
    shared.state.send_if_modified(|state| match state {
        LogState::DurableUpTo(durable) if *durable < lsn => {
            *durable = lsn;
            true
        }
        _ => false,
    });
}

fn is_poisoned(shared: &Shared) -> bool {
    matches!(*shared.state.borrow(), LogState::Poisoned(_))
}

impl Shared {
    /// Blocks until something is queued or the log is closing.
    fn wait_for_work(&self) {
        let mut queue = self.queue.lock();
        while queue.frames.is_empty() && !queue.closing {
            self.wake.wait(&mut queue);
        }
    }

    /// Takes everything queued: the frames to write, their records, and whether the log is
    /// closing.
    pub(super) fn take_queued(&self) -> (Vec<u8>, Vec<(u64, Record)>, bool) {
        let mut queue = self.queue.lock();
        (std::mem::take(&mut queue.frames), std::mem::take(&mut queue.records), queue.closing)
    }
}

/// Relaxed durability's hand-off from the writer to the syncer.
struct Unsynced {
    /// Fsyncs the segment the writer appends to now. Older segments were fsynced when sealed.
    file: Option<Arc<dyn FileSync>>,
    /// The newest LSN written; durable once `file` is fsynced.
    written_lsn: u64,
    batch: Batch,
    /// The writer thread has stopped: sync what is left, then stop.
    writer_done: bool,
}

impl Wal {
    /// Starts a new segment at `start.next_lsn` and the writer and checkpointer threads.
    pub fn start(
        storage: Arc<dyn Storage>,
        start: WalStart,
        config: WalConfig,
    ) -> std::io::Result<Wal> {
        let first_lsn = start.next_lsn;
        let file = create_segment(&*storage, first_lsn)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_lsn: first_lsn,
                frames: Vec::new(),
                records: Vec::new(),
                closing: false,
            }),
            wake: Condvar::new(),
            state: watch::Sender::new(LogState::DurableUpTo(first_lsn - 1)),
            poison: watch::Sender::new(None),
            unsynced: Mutex::new(Unsynced {
                file: None,
                written_lsn: first_lsn - 1,
                batch: Batch::default(),
                writer_done: false,
            }),
            syncer_wake: Condvar::new(),
            written: watch::Sender::new(first_lsn - 1),
        });
        let stats = Arc::new(WalStats::default());
        stats.last_checkpoint_lsn.store(start.checkpoint_lsn, std::sync::atomic::Ordering::Relaxed);
        let writer = SegmentWriter {
            storage: storage.clone(),
            stats: stats.clone(),
            file,
            segment_bytes: SEGMENT_HEADER_BYTES as u64,
            segment_bytes_max: config.segment_bytes_max,
            segments_started: 0,
            written_lsn: first_lsn - 1,
            synced_lsn: first_lsn - 1,
            unsynced: Batch::default(),
        };
        let checkpointer = Checkpointer::new(storage.clone(), start, config, stats.clone());
        let mut wal = Wal {
            shared,
            durability: config.durability,
            threads: Mutex::new(Vec::new()),
            manual: Mutex::new(None),
            stats,
            storage,
        };
        if config.manual {
            *wal.manual.get_mut() = Some((writer, checkpointer));
            return Ok(wal);
        }
        let (to_checkpointer, batches) = channel::unbounded();
        let shared = wal.shared.clone();
        let mut threads = Vec::new();
        match config.durability {
            Durability::Strict => {
                threads.push(
                    std::thread::Builder::new()
                        .name("wal-writer".into())
                        .spawn(move || write_loop_strict(&shared, writer, to_checkpointer))?,
                );
            }
            Durability::Relaxed { fsync_interval_ms } => {
                shared.unsynced.lock().file = Some(writer.file.sync_handle()?);
                let syncer_shared = shared.clone();
                threads.push(std::thread::Builder::new().name("wal-writer".into()).spawn(
                    move || {
                        write_loop_relaxed(&shared, writer);
                        shared.unsynced.lock().writer_done = true;
                        shared.syncer_wake.notify_one();
                    },
                )?);
                let interval = Duration::from_millis(fsync_interval_ms);
                let stats = wal.stats.clone();
                threads.push(
                    std::thread::Builder::new().name("wal-syncer".into()).spawn(move || {
                        sync_loop(&syncer_shared, interval, &stats, to_checkpointer)
                    })?,
                );
            }
        }
        threads.push(
            std::thread::Builder::new()
                .name("wal-checkpointer".into())
                .spawn(move || checkpoint_loop(checkpointer, batches, config))?,
        );
        *wal.threads.get_mut() = threads;
        Ok(wal)
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn stats(&self) -> &Arc<WalStats> {
        &self.stats
    }

    /// Queues a record and returns its LSN. Cheap: encoding happens before the queue lock, and
    /// under it only the frame header is written and the bytes copied.
    pub fn append(&self, record: Record) -> u64 {
        let payload = encode_payload(&record);
        let mut queue = self.shared.queue.lock();
        let lsn = queue.next_lsn;
        queue.next_lsn += 1;
        encode_frame(lsn, &payload, &mut queue.frames);
        queue.records.push((lsn, record));
        drop(queue);
        self.shared.wake.notify_one();
        lsn
    }

    /// The LSN of the newest record appended (durable or not).
    pub fn last_appended_lsn(&self) -> u64 {
        self.shared.queue.lock().next_lsn - 1
    }

    pub fn state(&self) -> LogState {
        self.shared.state.borrow().clone()
    }

    /// The log's state as it changes: every newly durable LSN, poisoning, the close. The event
    /// stream waits on it for records to become durable.
    pub fn watch_state(&self) -> watch::Receiver<LogState> {
        self.shared.state.subscribe()
    }

    /// A reader of the durable records after `after` (see `reader.rs`): it reads what is on
    /// disk, so records the checkpoints deleted are gone from it.
    pub fn reader(&self, after: u64) -> LogReader {
        LogReader::new(self.storage.clone(), after)
    }

    /// The oldest record still on disk (`None`: none yet).
    pub fn oldest_lsn(&self) -> Result<Option<u64>, ReadError> {
        reader::oldest_lsn(&*self.storage)
    }

    /// Whether appends can still become durable (not poisoned, not closed).
    pub fn is_writable(&self) -> bool {
        matches!(*self.shared.state.borrow(), LogState::DurableUpTo(_))
    }

    /// Waits until the record at `lsn` is durable (`Err` with the reason if the log is
    /// poisoned first).
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), String> {
        let mut state = self.shared.state.subscribe();
        let reached = state
            .wait_for(|s| match s {
                LogState::DurableUpTo(durable) => *durable >= lsn,
                LogState::Poisoned(_) | LogState::Closed(_) => true,
            })
            .await;
        match reached.as_deref() {
            Ok(LogState::DurableUpTo(_)) => Ok(()),
            Ok(LogState::Closed(durable)) if *durable >= lsn => Ok(()),
            Ok(LogState::Closed(_)) => Err("the log was shut down".into()),
            Ok(LogState::Poisoned(reason)) => Err(reason.clone()),
            Err(_) => Err("the log writer stopped".into()),
        }
    }

    /// Waits until the record at `lsn` is written to the kernel (relaxed durability's point of
    /// acknowledgement): it then survives a crash of the process. `Err` if the log is poisoned
    /// first.
    pub async fn wait_written(&self, lsn: u64) -> Result<(), String> {
        let mut written = self.shared.written.subscribe();
        let mut state = self.shared.state.subscribe();
        loop {
            if *written.borrow_and_update() >= lsn {
                return Ok(());
            }
            match &*state.borrow_and_update() {
                LogState::Poisoned(reason) => return Err(reason.clone()),
                LogState::Closed(durable) if *durable >= lsn => return Ok(()),
                LogState::Closed(_) => return Err("the log was shut down".into()),
                LogState::DurableUpTo(_) => {}
            }
            tokio::select! {
                changed = written.changed() => {
                    if changed.is_err() {
                        return Err("the log writer stopped".into());
                    }
                }
                changed = state.changed() => {
                    if changed.is_err() {
                        return Err("the log writer stopped".into());
                    }
                }
            }
        }
    }

    /// Resolves once the log is poisoned.
    pub async fn poisoned(&self) -> String {
        let mut poison = self.shared.poison.subscribe();
        let reached = poison.wait_for(Option::is_some).await;
        match reached.as_deref() {
            Ok(Some(reason)) => reason.clone(),
            _ => "the log writer stopped".into(),
        }
    }

    /// Flushes and fsyncs everything queued, writes a final checkpoint, and stops the threads.
    /// `Err` if the log was poisoned (some records may not be durable). Idempotent.
    pub fn close(&self) -> Result<(), String> {
        self.close_manual()?;
        self.shared.queue.lock().closing = true;
        self.shared.wake.notify_one();
        for thread in self.threads.lock().drain(..) {
            if thread.join().is_err() {
                return Err("a log thread panicked".into());
            }
        }
        match self.state() {
            LogState::DurableUpTo(lsn) => {
                self.shared.state.send_replace(LogState::Closed(lsn));
                Ok(())
            }
            LogState::Closed(_) => Ok(()),
            LogState::Poisoned(reason) => Err(reason),
        }
    }
}

fn create_segment(storage: &dyn Storage, first_lsn: u64) -> std::io::Result<Box<dyn AppendFile>> {
    let name = segment_name(first_lsn);
    let mut file = storage.create(&name)?;
    file.append(&segment_header(first_lsn))?;
    file.sync()?;
    storage.sync_dir()?;
    Ok(file)
}

/// The open segment and what was written to it but not yet fsynced. Owned by the writer
/// thread, or by the simulator in manual mode.
pub(super) struct SegmentWriter {
    storage: Arc<dyn Storage>,
    stats: Arc<WalStats>,
    file: Box<dyn AppendFile>,
    segment_bytes: u64,
    segment_bytes_max: u64,
    /// Segments started since the log opened: tells the relaxed writer to hand the syncer a
    /// handle on the new one.
    segments_started: u64,
    pub(super) written_lsn: u64,
    pub(super) synced_lsn: u64,
    unsynced: Batch,
}

impl SegmentWriter {
    /// Writes one batch (one `write`), starting a new segment first if this one is full.
    pub(super) fn write(
        &mut self,
        frames: &[u8],
        records: Vec<(u64, Record)>,
    ) -> Result<(), String> {
        let Some((first, _)) = records.first() else { return Ok(()) };
        let batch_bytes = frames.len() as u64;
        if self.segment_bytes + batch_bytes > self.segment_bytes_max
            && self.segment_bytes > SEGMENT_HEADER_BYTES as u64
        {
            // Seal the full segment (fsync: a non-last segment must be whole), then start the
            // next one at this batch's first LSN.
            self.file.sync().map_err(|e| format!("fsync of a full log segment failed: {e}"))?;
            self.file = create_segment(&*self.storage, *first)
                .map_err(|e| format!("cannot start a log segment: {e}"))?;
            self.segment_bytes = SEGMENT_HEADER_BYTES as u64;
            self.segments_started += 1;
        }
        self.file.append(frames).map_err(|e| format!("log write failed: {e}"))?;
        // Past u32::MAX records the histogram's top bucket counts it all the same.
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        self.stats.batch_records.observe(f64::from(count));
        self.segment_bytes += batch_bytes;
        self.written_lsn = records.last().map_or(self.written_lsn, |(lsn, _)| *lsn);
        self.unsynced.records.extend(records);
        self.unsynced.log_bytes += batch_bytes;
        Ok(())
    }

    /// One `fdatasync` for everything written; returns the newly durable batch, if any.
    pub(super) fn sync(&mut self) -> Result<Option<Batch>, String> {
        if self.written_lsn == self.synced_lsn {
            return Ok(None);
        }
        let started = Instant::now();
        self.file.sync().map_err(|e| format!("log fsync failed: {e}"))?;
        self.stats.fsync_seconds.observe_duration(started.elapsed());
        self.synced_lsn = self.written_lsn;
        Ok(Some(std::mem::take(&mut self.unsynced)))
    }
}

/// Strict durability: write a batch, fsync it, publish it durable, repeat. While one fsync
/// runs, the next batch gathers in the queue (group commit).
fn write_loop_strict(shared: &Shared, mut writer: SegmentWriter, to_checkpointer: Sender<Batch>) {
    loop {
        shared.wait_for_work();
        let (frames, records, closing) = shared.take_queued();
        if let Err(reason) = writer.write(&frames, records) {
            return poison(shared, reason);
        }
        shared.written.send_replace(writer.written_lsn);
        match writer.sync() {
            Err(reason) => return poison(shared, reason),
            Ok(None) => {}
            Ok(Some(batch)) => {
                publish_durable(shared, writer.synced_lsn);
                // The checkpointer stops only after we drop the sender: this cannot fail.
                let _ = to_checkpointer.send(batch);
            }
        }
        if closing && shared.queue.lock().frames.is_empty() {
            return;
        }
    }
}

/// Relaxed durability, the writer: write each batch as it comes and publish it written; hand
/// it to the syncer, which fsyncs on its own schedule. Never waits for an fsync (but the rare
/// one sealing a full segment).
fn write_loop_relaxed(shared: &Shared, mut writer: SegmentWriter) {
    let mut segments_handed = writer.segments_started;
    let gather = Duration::from_micros(RELAXED_WRITE_GATHER_US);
    let mut last_write = Instant::now() - gather;
    loop {
        shared.wait_for_work();
        // Busy: let the next records gather instead of writing (and waking) per request.
        let next_write = last_write + gather;
        let now = Instant::now();
        if now < next_write {
            std::thread::sleep(next_write - now);
        }
        last_write = Instant::now();
        let (frames, records, closing) = shared.take_queued();
        // A failed fsync on the syncer leaves the file in an unknown state: write no more.
        if is_poisoned(shared) {
            return;
        }
        if let Err(reason) = writer.write(&frames, records) {
            return poison(shared, reason);
        }
        let new_file = if writer.segments_started == segments_handed {
            None
        } else {
            match writer.file.sync_handle() {
                Ok(file) => Some(file),
                Err(e) => return poison(shared, format!("cannot open a log segment to sync: {e}")),
            }
        };
        segments_handed = writer.segments_started;
        let batch = std::mem::take(&mut writer.unsynced);
        {
            // One critical section: the syncer sees the new segment and the records in it
            // together, so the handle it fsyncs always covers the records it publishes.
            let mut unsynced = shared.unsynced.lock();
            if new_file.is_some() {
                unsynced.file = new_file;
            }
            unsynced.written_lsn = writer.written_lsn;
            unsynced.batch.records.extend(batch.records);
            unsynced.batch.log_bytes += batch.log_bytes;
        }
        shared.written.send_replace(writer.written_lsn);
        if closing && shared.queue.lock().frames.is_empty() {
            return;
        }
    }
}

/// Relaxed durability, the syncer: every `interval`, fsync what was written, publish it
/// durable and hand it to the checkpointer. Once the writer stops, one last fsync, then stop.
fn sync_loop(
    shared: &Shared,
    interval: Duration,
    stats: &WalStats,
    to_checkpointer: Sender<Batch>,
) {
    let mut last_sync = Instant::now();
    loop {
        let (file, lsn, batch, writer_done) = {
            let mut unsynced = shared.unsynced.lock();
            let deadline = last_sync + interval;
            while !unsynced.writer_done && Instant::now() < deadline {
                if shared.syncer_wake.wait_until(&mut unsynced, deadline).timed_out() {
                    break;
                }
            }
            let batch = std::mem::take(&mut unsynced.batch);
            (unsynced.file.clone(), unsynced.written_lsn, batch, unsynced.writer_done)
        };
        if is_poisoned(shared) {
            return;
        }
        if let (Some(file), false) = (file, batch.records.is_empty()) {
            let started = Instant::now();
            if let Err(e) = file.sync() {
                return poison(shared, format!("log fsync failed: {e}"));
            }
            stats.fsync_seconds.observe_duration(started.elapsed());
            publish_durable(shared, lsn);
            // The checkpointer stops only after we drop the sender: this cannot fail.
            let _ = to_checkpointer.send(batch);
        }
        last_sync = Instant::now();
        if writer_done && shared.unsynced.lock().batch.records.is_empty() {
            return;
        }
    }
}
