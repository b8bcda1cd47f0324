//! Opening the raft log: what is on disk, read back into memory.
//!
//! In order: leftover temporaries of an interrupted state-file write are removed; the vote
//! and the meta file are read; segments wholly before the purge point are deleted (a purge
//! interrupted after its meta write); the rest are scanned, a torn tail on the last one cut
//! (never acknowledged: acknowledgement waits for the fsync that would have completed it) and
//! any other bad frame reported as corruption (`InvalidData`, naming file and offset); a last
//! segment left with no entry of the log is deleted; the committed id is the newest of the
//! meta file's and those the frames carry.

use std::collections::VecDeque;
use std::io;

use livestock_core::limits::RAFT_ENTRY_BYTES_MAX;

use crate::cluster::types::{Entry, LogId, Vote};
use crate::wal::segment::{scan_frames, Corruption, SegmentEnd};
use crate::wal::storage::Storage;

use super::format::{
    decode_entry, is_temp_file, parse_segment_name, read_state_file, segment_header, segment_name,
    Meta, META_FILE, VOTE_FILE,
};
use super::segments::Segment;

/// The log as found on disk.
pub(super) struct Recovered {
    pub entries: VecDeque<Entry>,
    pub vote: Option<Vote>,
    pub meta: Meta,
    /// The newest committed id on disk: the meta file's or one a frame carries.
    pub committed: Option<LogId>,
    pub segments: VecDeque<Segment>,
}

fn corrupt(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt raft log: {reason}"))
}

fn from_corruption(c: Corruption) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, c)
}

pub(super) fn recover(storage: &dyn Storage) -> io::Result<Recovered> {
    let names = storage.list()?;
    let mut changed = false;
    for name in names.iter().filter(|name| is_temp_file(name)) {
        storage.remove(name)?;
        changed = true;
    }
    let vote: Option<Vote> = read_state_file(storage, VOTE_FILE)?;
    let meta: Meta = read_state_file(storage, META_FILE)?.unwrap_or_default();
    // Entries before this index are purged (`None`: nothing was).
    let kept_from = meta.last_purged.as_ref().map(|id| id.index + 1);

    let mut firsts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    firsts.sort_unstable();
    let mut scanned = Vec::new();
    for (at, first) in firsts.iter().enumerate() {
        // Every index in a segment is below the next segment's first.
        let wholly_purged = match (firsts.get(at + 1), kept_from) {
            (Some(next_first), Some(kept_from)) => *next_first <= kept_from,
            _ => false,
        };
        if wholly_purged {
            storage.remove(&segment_name(*first))?;
            changed = true;
        } else {
            scanned.push(*first);
        }
    }

    let mut entries = VecDeque::new();
    let mut segments = VecDeque::new();
    let mut committed = meta.committed;
    for (at, &first) in scanned.iter().enumerate() {
        let is_last = at + 1 == scanned.len();
        if let Some(previous) = segments.back().map(Segment::next_index) {
            if first != previous {
                return Err(corrupt(format!(
                    "segment {} starts at index {first}, the one before ends before {previous}",
                    storage.describe(&segment_name(first)),
                )));
            }
        }
        let name = segment_name(first);
        let bytes = storage.read(&name)?;
        let mut offsets = Vec::new();
        let scan = scan_frames(
            &storage.describe(&name),
            &bytes,
            &segment_header(first),
            first,
            is_last,
            RAFT_ENTRY_BYTES_MAX,
            decode_entry,
            |index, offset, stored| {
                // Pair assertion across the disk boundary: the frame's LSN is the entry's index.
                if stored.entry.log_id.index != index {
                    return Err(format!(
                        "frame {index} holds the entry of index {}",
                        stored.entry.log_id.index
                    ));
                }
                offsets.push(offset);
                committed = committed.max(stored.committed);
                if kept_from.is_none_or(|kept_from| index >= kept_from) {
                    entries.push_back(stored.entry);
                }
                Ok(())
            },
        )
        .map_err(from_corruption)?;
        let mut len = bytes.len() as u64;
        if let SegmentEnd::Torn { offset, len: torn } = scan.end {
            tracing::warn!(
                file = %storage.describe(&name),
                offset,
                bytes = torn,
                "cutting a torn tail off the raft log (never acknowledged)"
            );
            storage.truncate(&name, offset)?;
            len = offset;
        } else {
            // What was just read may be only in the page cache (a process crash keeps it, a
            // power loss does not), yet the log from here on is built on it: appends follow
            // it, votes and acknowledgements count it. Make it durable before anything else
            // (the cut above syncs already). Found by tests/sim_cluster, seed 1830: a segment
            // rolled from after a restart, then torn by a power loss, was no longer the last.
            storage.open_append(&name)?.sync()?;
        }
        segments.push_back(Segment { first, offsets, len });
    }

    // A last segment holding only purged entries goes, with every one before it (they end
    // even earlier); one holding none at all (its header was torn, or a crash came before its
    // first batch) goes alone. Either way the next append starts a segment at its own index.
    if let Some(last) = segments.back() {
        let only_purged = kept_from.is_some_and(|kept_from| last.next_index() <= kept_from);
        let remove =
            if only_purged { segments.len() } else { usize::from(last.offsets.is_empty()) };
        for gone in segments.drain(segments.len() - remove..) {
            storage.remove(&gone.name())?;
            changed = true;
        }
    }
    if changed {
        storage.sync_dir()?;
    }

    check_sequence(&entries, meta.last_purged.as_ref())?;
    let last = entries.back().map(|e| &e.log_id).or(meta.last_purged.as_ref());
    if let Some(committed) = &committed {
        if last.is_none_or(|last| last.index < committed.index) {
            return Err(corrupt(format!(
                "the committed id {committed} is past the log's last entry ({})",
                last.map_or("none".to_owned(), ToString::to_string)
            )));
        }
    }
    Ok(Recovered { entries, vote, meta, committed, segments })
}

/// The entries follow the purge point without a hole, and their log ids increase (indexes by
/// one, leaders never going back).
fn check_sequence(entries: &VecDeque<Entry>, last_purged: Option<&LogId>) -> io::Result<()> {
    let mut previous = last_purged;
    for entry in entries {
        if let Some(previous) = previous {
            if entry.log_id.index != previous.index + 1 || entry.log_id <= *previous {
                return Err(corrupt(format!("entry {} follows {previous}", entry.log_id)));
            }
        }
        previous = Some(&entry.log_id);
    }
    Ok(())
}
