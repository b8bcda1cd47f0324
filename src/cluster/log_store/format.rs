//! The raft log's bytes: segment names and headers, an entry's frame, and the two small state
//! files (the vote; the purge point and committed id). Layouts are drawn in `log_store.rs`.
//!
//! Everything here is a pure function of bytes, but for [`write_state_file`] and
//! [`read_state_file`], which go through the [`Storage`] trait like every other file access.

use std::io;

use livestock_core::limits::{RAFT_ENTRY_BYTES_MAX, RAFT_ENTRY_ENVELOPE_BYTES_MAX};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::types::{Entry, LogId};
use crate::wal::record::{encode_frame_within, frame_payload, FrameError};
use crate::wal::segment::{segment_header_with, SEGMENT_HEADER_BYTES};
use crate::wal::storage::Storage;

/// The raft log's segment magic: not the single-node log's, so neither reads the other's files.
pub(super) const MAGIC: &[u8; 8] = b"LVSTRAFT";
/// The vote, rewritten whole (write a temporary file, fsync, rename, fsync the directory).
pub(super) const VOTE_FILE: &str = "raft-vote";
/// The purge point and the committed log id ([`Meta`]), rewritten like the vote.
pub(super) const META_FILE: &str = "raft-meta";
/// A state file is written under its name plus this first; a leftover one is a crash's.
const TEMP_SUFFIX: &str = ".tmp";
/// The LSN field of a state file's one frame: the format's version.
const STATE_FORMAT_VERSION: u64 = 1;

pub(super) fn segment_name(first_index: u64) -> String {
    format!("raft-{first_index:020}.log")
}

/// The first index a segment file name carries. Raft indexes start at 0, so 0 is one.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("raft-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    segment_header_with(MAGIC, first_index)
}

/// Whether a file is a state file's leftover temporary (a crash between create and rename).
pub(super) fn is_temp_file(name: &str) -> bool {
    name.starts_with("raft-") && name.ends_with(TEMP_SUFFIX)
}

/// What an entry's frame carries: the entry, and on the last entry of each append the newest
/// committed log id known when it was appended. The committed id rides on the batch's fsync
/// this way instead of costing one of its own (see "Committed" in `log_store.rs`).
#[derive(Debug, Deserialize)]
pub(super) struct StoredEntry {
    pub committed: Option<LogId>,
    pub entry: Entry,
}

/// [`StoredEntry`] by reference, for encoding without a copy (postcard encodes a reference as
/// the value it points to, so the two are the same bytes).
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    committed: Option<&'a LogId>,
    entry: &'a Entry,
}

/// Appends the frame of `entry` (LSN = its raft index) to `out`. Panics past
/// [`RAFT_ENTRY_BYTES_MAX`]: records are bounded by construction, so a larger entry is a bug.
pub(super) fn encode_entry(entry: &Entry, committed: Option<&LogId>, out: &mut Vec<u8>) {
    let payload = match postcard::to_stdvec(&StoredEntryRef { committed, entry }) {
        Ok(payload) => payload,
        Err(e) => panic!("a raft entry always encodes: {e}"),
    };
    encode_frame_within(entry.log_id.index, &payload, RAFT_ENTRY_BYTES_MAX, out);
}

pub(super) fn decode_entry(payload: &[u8]) -> Result<StoredEntry, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Decode(e.to_string()))
}

/// The meta file: where the log was purged to (a segment may still hold entries up to here;
/// they are not part of the log) and the newest committed id written here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    pub last_purged: Option<LogId>,
    pub committed: Option<LogId>,
}

fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(payload) => payload,
        Err(e) => panic!("a raft state value always encodes: {e}"),
    }
}

/// Replaces state file `name` atomically: the new bytes are written and fsynced under a
/// temporary name, renamed over the old file, and the rename made durable. A crash leaves
/// either the old file whole or the new one whole (and maybe a temporary, removed at open).
pub(super) fn write_state_file<T: Serialize>(
    storage: &dyn Storage,
    name: &str,
    value: &T,
) -> io::Result<()> {
    let mut frame = Vec::new();
    encode_frame_within(
        STATE_FORMAT_VERSION,
        &encode_value(value),
        RAFT_ENTRY_ENVELOPE_BYTES_MAX,
        &mut frame,
    );
    let temp = format!("{name}{TEMP_SUFFIX}");
    let mut file = storage.create(&temp)?;
    file.append(&frame)?;
    file.sync()?;
    drop(file);
    storage.rename(&temp, name)?;
    storage.sync_dir()
}

/// Reads state file `name`; `None` if it does not exist. A file that does not check is
/// corruption (`InvalidData`): state files are replaced by rename after an fsync, so no crash
/// leaves one half written.
pub(super) fn read_state_file<T: DeserializeOwned>(
    storage: &dyn Storage,
    name: &str,
) -> io::Result<Option<T>> {
    let bytes = match storage.read(name) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let corrupt = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt raft state file {}: {reason}", storage.describe(name)),
        )
    };
    let (payload, len) = frame_payload(&bytes, STATE_FORMAT_VERSION, RAFT_ENTRY_ENVELOPE_BYTES_MAX)
        .map_err(|e| corrupt(e.to_string()))?;
    if len != bytes.len() {
        return Err(corrupt(format!("{} bytes after the frame", bytes.len() - len)));
    }
    postcard::from_bytes(payload).map(Some).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::{PeerNode, TypeConfig};
    use crate::wal::record::Record;
    use livestock_core::event::Event;
    use livestock_core::ids::HoldSeq;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(term, 2), index)
    }

    #[test]
    fn every_entry_kind_round_trips_with_its_committed_id() {
        let event = Event::Expired { seq: HoldSeq(3), at_ms: 7 };
        let record = Record { at_ms: 7, event, reply: None };
        let nodes = [
            (1, PeerNode { peer_addr: "10.0.0.1:7000".into() }),
            (2, PeerNode { peer_addr: "10.0.0.2:7000".into() }),
        ];
        let membership =
            openraft::Membership::new(vec![[1u64].into()], std::collections::BTreeMap::from(nodes))
                .unwrap();
        let entries = [
            Entry::new_blank(log_id(1, 0)),
            Entry::new_normal(
                log_id(1, 1),
                crate::cluster::types::Decision {
                    record,
                    chain: crate::cluster::types::Chain { start: 1, seq: 1 },
                },
            ),
            Entry::new_membership(log_id(2, 2), membership),
        ];
        for (n, entry) in (0u64..).zip(&entries) {
            let committed = n.checked_sub(1).map(|index| log_id(1, index));
            let mut frame = Vec::new();
            encode_entry(entry, committed.as_ref(), &mut frame);
            let (payload, len) =
                frame_payload(&frame, entry.log_id.index, RAFT_ENTRY_BYTES_MAX).unwrap();
            assert_eq!(len, frame.len());
            let stored = decode_entry(payload).unwrap();
            assert_eq!(stored.entry, *entry);
            assert_eq!(stored.committed, committed);
        }
    }

    #[test]
    fn segment_names_sort_in_log_order_from_zero() {
        assert_eq!(parse_segment_name(&segment_name(0)), Some(0));
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("wal-00000000000000000001.log"), None);
        assert_eq!(parse_segment_name("raft-1.log"), None);
        assert!(is_temp_file("raft-vote.tmp"));
        assert!(!is_temp_file(VOTE_FILE));
    }
}
