//! Recovery: the newest checkpoint, then the log after it, applied (not re-decided).
//!
//! Steps: (1) load the newest checkpoint (a fresh directory gets an empty one at LSN 0);
//! (2) read the segments in LSN order, checking that they join up with each other and with
//! the checkpoint; (3) apply every record after the checkpoint's LSN to the allocator and
//! collect remembered answers; (4) if the last segment ends torn, cut it (unless this is a
//! dry run, `livestock verify`). Holds whose expiry passed while the server was down are
//! expired by the caller right after, through the log, like any other expiry.

use std::collections::HashMap;

use livestock_core::ids::HoldIdKey;

use crate::alloc::{Allocator, AllocatorConfig, Snapshot};
use crate::wal::checkpoint::{self, CheckpointBody};
use crate::wal::record::KeptReply;
use crate::wal::segment::{parse_segment_name, scan_segment, Corruption, SegmentEnd, SegmentScan};
use crate::wal::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("storage error on {file}: {error}")]
    Io { file: String, error: std::io::Error },
}

/// What recovery found and did: `livestock verify` prints it, `serve` logs it.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// `None`: the directory was new.
    pub checkpoint_lsn: Option<u64>,
    pub segments: Vec<(String, SegmentScan)>,
    /// Records applied after the checkpoint.
    pub replayed: u64,
    /// (file, offset, bytes) of a torn tail, cut (or to be cut, in a dry run).
    pub torn_tail: Option<(String, u64, u64)>,
    /// Segment files with no whole record at the end of the log, removed (or to be removed).
    pub empty_tail_segments: Vec<String>,
    pub last_lsn: u64,
    /// Whether the cuts and removals above were made (`serve`) or only found (`verify`).
    pub repaired: bool,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.checkpoint_lsn {
            Some(lsn) => writeln!(f, "checkpoint: at lsn {lsn}")?,
            None => writeln!(f, "checkpoint: none (new data directory)")?,
        }
        for (name, scan) in &self.segments {
            let end = match scan.end {
                SegmentEnd::Clean => "clean".to_owned(),
                SegmentEnd::Torn { offset, len } => format!("torn tail: {len} bytes at {offset}"),
            };
            writeln!(
                f,
                "segment {name}: {} records up to lsn {}, {end}",
                scan.records, scan.last_lsn
            )?;
        }
        writeln!(f, "records to replay after the checkpoint: {}", self.replayed)?;
        let (cut, removed) =
            if self.repaired { ("cut", "removed") } else { ("would cut", "would remove") };
        if let Some((file, offset, len)) = &self.torn_tail {
            writeln!(f, "torn tail: {cut} {len} bytes at {file} offset {offset}")?;
        }
        for name in &self.empty_tail_segments {
            writeln!(f, "empty segment at the end of the log: {removed} {name}")?;
        }
        write!(f, "last lsn: {}", self.last_lsn)
    }
}

pub struct Recovered {
    pub allocator: Allocator,
    /// Remembered answers, newest per key.
    pub replies: Vec<KeptReply>,
    pub report: RecoveryReport,
}

impl Recovered {
    pub fn next_lsn(&self) -> u64 {
        self.report.last_lsn + 1
    }
}

fn io(storage: &dyn Storage, name: &str) -> impl Fn(std::io::Error) -> RecoveryError + use<> {
    let file = storage.describe(name);
    move |error| RecoveryError::Io { file: file.clone(), error }
}

/// The newest checkpoint, if any. A newest checkpoint that does not check is corruption: the
/// log segments it covered may be gone, so falling back to an older one could lose records.
fn load_newest_checkpoint(
    storage: &dyn Storage,
) -> Result<Option<(u64, CheckpointBody)>, RecoveryError> {
    // A failure to list or read is the disk's, not the data's: an I/O error, not corruption.
    let names = storage.list().map_err(io(storage, ""))?;
    let Some(lsn) = names.iter().filter_map(|n| checkpoint::parse_checkpoint_name(n)).max() else {
        return Ok(None);
    };
    let name = checkpoint::checkpoint_name(lsn);
    let bytes = storage.read(&name).map_err(io(storage, &name))?;
    let file = storage.describe(&name);
    let (found, body) = checkpoint::decode(&bytes).map_err(|(offset, reason)| Corruption {
        file: file.clone(),
        offset,
        reason,
    })?;
    if found != lsn {
        let reason = format!("names lsn {lsn}, holds {found}");
        return Err(Corruption { file, offset: 8, reason }.into());
    }
    Ok(Some((lsn, body)))
}

/// Recovers the state in `storage`. `repair`: cut a torn tail and write the first checkpoint of
/// a new directory (`serve`); without it nothing is written (`verify`). `new_key` is the hold
/// id secret a new directory gets.
pub fn recover(
    storage: &dyn Storage,
    config: AllocatorConfig,
    new_key: HoldIdKey,
    repair: bool,
) -> Result<Recovered, RecoveryError> {
    let mut report = RecoveryReport { repaired: repair, ..RecoveryReport::default() };
    let names = storage.list().map_err(io(storage, ""))?;
    let mut segments: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|first| (first, n.clone())))
        .collect();
    segments.sort();

    let (checkpoint_lsn, body) = match load_newest_checkpoint(storage)? {
        Some((lsn, body)) => {
            report.checkpoint_lsn = Some(lsn);
            (lsn, body)
        }
        None if segments.is_empty() => {
            let config = AllocatorConfig { hold_id_key: new_key, ..config };
            let body =
                CheckpointBody { snapshot: Allocator::new(config).snapshot(), replies: vec![] };
            if repair {
                checkpoint::write(storage, 0, &body).map_err(|(step, error)| {
                    RecoveryError::Io {
                        file: format!("{} (first checkpoint, {step:?})", storage.describe("")),
                        error,
                    }
                })?;
            }
            (0, body)
        }
        None => {
            return Err(Corruption {
                file: storage.describe(&segments[0].1),
                offset: 0,
                reason: "log segments but no checkpoint".into(),
            }
            .into());
        }
    };
    let allocator = Allocator::restore(config, &body.snapshot).map_err(|e| Corruption {
        file: storage.describe(&checkpoint::checkpoint_name(checkpoint_lsn)),
        offset: 0,
        reason: e.to_string(),
    })?;
    let mut replies: HashMap<(String, String), KeptReply> = HashMap::new();
    for reply in body.replies {
        replies.insert((reply.scope.clone(), reply.key.clone()), reply);
    }

    // Segments entirely at or below the checkpoint are redundant (a deletion that did not
    // happen before a crash); the first one that matters must start at or before the next LSN.
    let mut last_lsn = checkpoint_lsn;
    let relevant: Vec<&(u64, String)> = segments
        .iter()
        .enumerate()
        .filter(|(i, _)| segments.get(i + 1).is_none_or(|(next, _)| *next > checkpoint_lsn + 1))
        .map(|(_, s)| s)
        .collect();
    for (index, (first_lsn, name)) in relevant.iter().enumerate() {
        let is_last = index + 1 == relevant.len();
        let file = storage.describe(name);
        if *first_lsn > last_lsn + 1 {
            return Err(Corruption {
                file,
                offset: 0,
                reason: format!(
                    "log gap: records {} to {} are missing",
                    last_lsn + 1,
                    first_lsn - 1
                ),
            }
            .into());
        }
        let bytes = storage.read(name).map_err(io(storage, name))?;
        let scan = scan_segment(&file, &bytes, *first_lsn, is_last, |lsn, record| {
            if lsn <= checkpoint_lsn {
                return Ok(());
            }
            allocator.apply(&record.event).map_err(|e| format!("record {lsn}: {e}"))?;
            if let Some(reply) = record.reply {
                replies.insert((reply.scope.clone(), reply.key.clone()), reply);
            }
            report.replayed += 1;
            Ok(())
        })?;
        if scan.records > 0 {
            last_lsn = last_lsn.max(scan.last_lsn);
        }
        if is_last && scan.records == 0 {
            // Created but never written (or not even its header whole): nothing to keep, and
            // the writer will create a segment of this name again.
            report.empty_tail_segments.push(file.clone());
            if repair {
                storage.remove(name).map_err(io(storage, name))?;
                storage.sync_dir().map_err(io(storage, ""))?;
            }
        } else if let SegmentEnd::Torn { offset, len } = scan.end {
            report.torn_tail = Some((file.clone(), offset, len));
            if repair {
                storage.truncate(name, offset).map_err(io(storage, name))?;
            }
        }
        report.segments.push((name.clone(), scan));
    }
    if repair {
        // What recovery read may have come from the page cache of a process that died before
        // its fsync (or whose fsync failed). Everything from here on treats it as durable (a
        // retry may be answered from it), so make it so before anything else happens.
        let names = storage.list().map_err(io(storage, ""))?;
        for (_, name) in relevant.iter().filter(|(_, name)| names.contains(name)) {
            storage.open_append(name).and_then(|mut f| f.sync()).map_err(io(storage, name))?;
        }
        storage.sync_dir().map_err(io(storage, ""))?;
    }
    report.last_lsn = last_lsn;
    let mut replies: Vec<KeptReply> = replies.into_values().collect();
    replies.sort_by(|a, b| (a.seen_ms, &a.scope, &a.key).cmp(&(b.seen_ms, &b.scope, &b.key)));
    Ok(Recovered { allocator, replies, report })
}

/// A copy of the recovered state for the checkpointer's shadow (see `checkpointer.rs`).
pub fn shadow_of(recovered: &Recovered) -> Result<Allocator, crate::alloc::ReplayError> {
    let snapshot: Snapshot = recovered.allocator.snapshot();
    Allocator::restore(recovered.allocator.config(), &snapshot)
}
