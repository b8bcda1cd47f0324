//! Checkpoints: the whole state as of one LSN, written atomically.
//!
//! # File layout (integers little-endian)
//! ```text
//! offset size  field
//!      0    8  magic        "LVSTKCKP"
//!      8    8  lsn          the state includes every record up to and including this LSN
//!     16    4  version      3 (1 and 2 are still read: see below)
//!     20    8  payload_len
//!     28    4  payload_crc  CRC32C of the payload
//!     32    4  header_crc   CRC32C of bytes 0..32
//!     36    n  payload      postcard encoding of `CheckpointBody`
//! ```
//! Versions: 3 adds the waitlists at the end of the snapshot (`Snapshot::waitlists`); 1 and 2
//! end the snapshot before them (`LegacySnapshot`) and are read as a state without waitlists,
//! so the version in the header picks the decoder. 2 stores each deal's counters as the 128-bit
//! word (40-bit counts), 1 as the 64-bit word of earlier builds (21-bit counts); the counters'
//! encoding says its own layout (`livestock_core::counters`, "Encoding"), so one decoder reads
//! both. The version is raised with every change so that an older build refuses a newer
//! checkpoint by its header, with a clear message, rather than by a payload that does not
//! decode (or, worse, decodes as something else).
//!
//! Name: `ckpt-{lsn:020}.ckpt`. Written as `ckpt-{lsn:020}.tmp`, fsynced, renamed, and the
//! directory fsynced; only then are the log segments it covers and older checkpoints deleted.
//! A crash at any step leaves either the old checkpoint with the full log after it, or the new
//! one: never a mix, because a `.tmp` is never read and a rename is atomic.

use serde::{Deserialize, Serialize};

use livestock_core::limits::{
    CHECKPOINT_BYTES_MAX, CHECKPOINT_PIECE_BYTES, CHECKPOINT_PIECE_ITEMS,
};

use crate::alloc::{encode_into, Allocator, LegacySnapshot, Snapshot};
use crate::wal::record::KeptReply;
use crate::wal::segment::parse_segment_name;
use crate::wal::storage::Storage;

const MAGIC: &[u8; 8] = b"LVSTKCKP";
const VERSION: u32 = 3;
/// Versions `decode` reads: this one, 2 (no waitlists) and 1 (no waitlists, 64-bit counters).
const VERSIONS_READ: [u32; 3] = [1, 2, VERSION];
const HEADER_BYTES: usize = 36;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub snapshot: Snapshot,
    /// Remembered answers of keyed requests still inside their window.
    pub replies: Vec<KeptReply>,
}

/// A checkpoint body of version 1 or 2: the snapshot ends before the waitlists.
#[derive(Deserialize)]
struct LegacyCheckpointBody {
    snapshot: LegacySnapshot,
    replies: Vec<KeptReply>,
}

pub fn checkpoint_name(lsn: u64) -> String {
    format!("ckpt-{lsn:020}.ckpt")
}

fn temp_name(lsn: u64) -> String {
    format!("ckpt-{lsn:020}.tmp")
}

pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with("ckpt-") && name.ends_with(".tmp")
}

pub fn encode(lsn: u64, body: &CheckpointBody) -> Vec<u8> {
    let payload = match postcard::to_stdvec(body) {
        Ok(payload) => payload,
        Err(e) => panic!("a checkpoint always encodes: {e}"),
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&header(lsn, &payload, &mut || {}));
    out.extend_from_slice(&payload);
    out
}

/// The payload of a checkpoint of `shadow` and `replies`, built without copying the state:
/// the encoding of a [`CheckpointBody`] (holds and user counts in shard order, see
/// [`Allocator::encode_snapshot`]). `between` is called between pieces of the work, each a
/// shard or `CHECKPOINT_PIECE_ITEMS` replies.
pub fn encode_payload<'a>(
    shadow: &Allocator,
    replies: impl ExactSizeIterator<Item = &'a KeptReply>,
    between: &mut dyn FnMut(),
) -> Vec<u8> {
    let mut payload = Vec::new();
    shadow.encode_snapshot(&mut payload, between);
    encode_into(&mut payload, &(replies.len() as u64));
    for (i, reply) in replies.enumerate() {
        encode_into(&mut payload, reply);
        if (i + 1) % CHECKPOINT_PIECE_ITEMS == 0 {
            between();
        }
    }
    payload
}

/// The header of a checkpoint of `payload` at `lsn` (its checksum computed a piece at a time,
/// `between` called after each).
fn header(lsn: u64, payload: &[u8], between: &mut dyn FnMut()) -> [u8; HEADER_BYTES] {
    assert!(payload.len() <= CHECKPOINT_BYTES_MAX, "checkpoint of {} bytes", payload.len());
    let mut payload_crc = 0;
    for piece in payload.chunks(CHECKPOINT_PIECE_BYTES) {
        payload_crc = crc32c::crc32c_append(payload_crc, piece);
        between();
    }
    let mut out = [0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    out[16..20].copy_from_slice(&VERSION.to_le_bytes());
    out[20..28].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    out[28..32].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[0..32]);
    out[32..36].copy_from_slice(&header_crc.to_le_bytes());
    out
}

/// Decodes a checkpoint file; `Err` says what is wrong (with the offset where it applies).
pub fn decode(bytes: &[u8]) -> Result<(u64, CheckpointBody), (u64, String)> {
    if bytes.len() < HEADER_BYTES {
        return Err((0, "checkpoint shorter than its header".into()));
    }
    let word = |at: usize, n: usize| {
        let mut raw = [0u8; 8];
        raw[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(raw)
    };
    if &bytes[0..8] != MAGIC {
        return Err((0, "not a checkpoint".into()));
    }
    if !VERSIONS_READ.iter().any(|v| u64::from(*v) == word(16, 4)) {
        return Err((0, format!("checkpoint version {} is not one this build reads", word(16, 4))));
    }
    if u64::from(crc32c::crc32c(&bytes[0..32])) != word(32, 4) {
        return Err((0, "checkpoint header checksum mismatch".into()));
    }
    let lsn = word(8, 8);
    let len = word(20, 8);
    if len != (bytes.len() - HEADER_BYTES) as u64 {
        return Err((20, format!("checkpoint length {len} does not match the file")));
    }
    let payload = &bytes[HEADER_BYTES..];
    if u64::from(crc32c::crc32c(payload)) != word(28, 4) {
        return Err((HEADER_BYTES as u64, "checkpoint payload checksum mismatch".into()));
    }
    let body = if word(16, 4) < u64::from(VERSION) {
        decode_legacy_body(payload)
    } else {
        decode_body(payload)
    };
    Ok((lsn, body.map_err(|e| (HEADER_BYTES as u64, e))?))
}

/// Decodes a checkpoint's payload (past its checksums: the fuzzers reach it directly).
pub fn decode_body(payload: &[u8]) -> Result<CheckpointBody, String> {
    postcard::from_bytes(payload).map_err(|e| format!("checkpoint does not decode: {e}"))
}

/// Decodes the payload of a version 1 or 2 checkpoint.
pub fn decode_legacy_body(payload: &[u8]) -> Result<CheckpointBody, String> {
    let old: LegacyCheckpointBody =
        postcard::from_bytes(payload).map_err(|e| format!("checkpoint does not decode: {e}"))?;
    Ok(CheckpointBody { snapshot: old.snapshot.into(), replies: old.replies })
}

/// The steps of writing a checkpoint, in order; tests fail each one in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    WriteTemp,
    SyncTemp,
    Rename,
    SyncDir,
    DeleteCovered,
}

/// Writes a checkpoint at `lsn` atomically, then deletes what it makes redundant: older
/// checkpoints and log segments whose records are all at or below `lsn` (a segment is covered
/// when the next segment starts at or below `lsn + 1`). The segment being written is never
/// deleted: it has no next segment. Keeps no covered segment (see [`write_payload`] for the
/// retention the checkpointer keeps for the event stream).
pub fn write(
    storage: &dyn Storage,
    lsn: u64,
    body: &CheckpointBody,
) -> Result<(), (Step, std::io::Error)> {
    let payload = match postcard::to_stdvec(body) {
        Ok(payload) => payload,
        Err(e) => panic!("a checkpoint always encodes: {e}"),
    };
    write_payload(storage, lsn, &payload, 0, &mut || {})
}

/// [`write`] of a payload already encoded ([`encode_payload`]), a piece at a time: the
/// checksum and the file are done in `CHECKPOINT_PIECE_BYTES` pieces with `between` called
/// after each, so that the checkpointer can pace the work.
///
/// `retain_bytes`: the newest covered segments are kept while their sizes add up to at most
/// this (whole segments: 0 keeps none), so that the event stream (`GET /v1/events`) can
/// still serve the records in them; recovery skips them. The oldest go first, so the segments
/// left always join up.
pub fn write_payload(
    storage: &dyn Storage,
    lsn: u64,
    payload: &[u8],
    retain_bytes: u64,
    between: &mut dyn FnMut(),
) -> Result<(), (Step, std::io::Error)> {
    let temp = temp_name(lsn);
    let header = header(lsn, payload, between);
    // A stale temp from a crash at this very LSN: start over.
    let _ = storage.remove(&temp);
    let mut file = storage.create(&temp).map_err(|e| (Step::WriteTemp, e))?;
    file.append(&header).map_err(|e| (Step::WriteTemp, e))?;
    for piece in payload.chunks(CHECKPOINT_PIECE_BYTES) {
        file.append(piece).map_err(|e| (Step::WriteTemp, e))?;
        between();
    }
    file.sync().map_err(|e| (Step::SyncTemp, e))?;
    drop(file);
    storage.rename(&temp, &checkpoint_name(lsn)).map_err(|e| (Step::Rename, e))?;
    storage.sync_dir().map_err(|e| (Step::SyncDir, e))?;
    delete_covered(storage, lsn, retain_bytes).map_err(|e| (Step::DeleteCovered, e))
}

fn delete_covered(storage: &dyn Storage, lsn: u64, retain_bytes: u64) -> std::io::Result<()> {
    let names = storage.list()?;
    let mut segments: Vec<(u64, &String)> =
        names.iter().filter_map(|n| parse_segment_name(n).map(|first| (first, n))).collect();
    segments.sort();
    // Covered segments are a prefix of the log (oldest first).
    let covered: Vec<&String> =
        segments.windows(2).take_while(|pair| pair[1].0 <= lsn + 1).map(|pair| pair[0].1).collect();
    // The newest of them within the retention are kept (none when it is 0: no size is read).
    let mut keep_from = covered.len();
    let mut kept_bytes = 0u64;
    if retain_bytes > 0 {
        for (i, name) in covered.iter().enumerate().rev() {
            kept_bytes = kept_bytes.saturating_add(storage.file_len(name)?);
            if kept_bytes > retain_bytes {
                break;
            }
            keep_from = i;
        }
    }
    for name in &covered[..keep_from] {
        storage.remove(name)?;
    }
    for name in &names {
        let older = parse_checkpoint_name(name).is_some_and(|other| other < lsn);
        if older || (is_temp_name(name) && *name != temp_name(lsn)) {
            storage.remove(name)?;
        }
    }
    storage.sync_dir()
}

#[cfg(test)]
mod tests {
    use livestock_core::limits::{CHECKPOINT_PIECE_ITEMS, SHARDS};

    use super::*;
    use crate::alloc::test_support::{allocator_with_holds, Events};

    fn replies(n: u64) -> Vec<KeptReply> {
        (0..n)
            .map(|i| KeptReply {
                scope: format!("scope-{i}"),
                key: format!("key-{i}"),
                fingerprint: i,
                status: 201,
                body: b"{\"ok\":true}".to_vec(),
                seen_ms: i,
            })
            .collect()
    }

    /// The checkpointer's payload, built piece by piece from the live structures, is the
    /// encoding of the same state as `snapshot()` (holds and user counts in another order),
    /// and a checkpoint of it reads back as that state.
    #[test]
    fn a_payload_built_in_pieces_is_the_checkpoint_of_the_same_state() {
        let users = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let (allocator, _) = allocator_with_holds(Some(2), &users, &mut Events(Vec::new()));
        let kept = replies(CHECKPOINT_PIECE_ITEMS as u64 + 5);
        let mut pauses = 0;
        let payload = encode_payload(&allocator, kept.iter(), &mut || pauses += 1);
        // One pause after each shard of holds and of user counts, one per piece of replies.
        assert_eq!(pauses, 2 * SHARDS + 1);

        let expected = CheckpointBody { snapshot: allocator.snapshot(), replies: kept };
        assert_eq!(expected.snapshot.holds.len(), users.len());
        assert_eq!(expected.snapshot.user_counts.len(), users.len());
        let mut body = decode_body(&payload).expect("the payload decodes");
        body.snapshot.holds.sort_by_key(|h| h.seq);
        body.snapshot.user_counts.sort();
        assert_eq!(body, expected);

        let mut bytes = header(42, &payload, &mut || {}).to_vec();
        bytes.extend_from_slice(&payload);
        let (lsn, mut read) = decode(&bytes).expect("a valid checkpoint");
        assert_eq!(lsn, 42);
        read.snapshot.holds.sort_by_key(|h| h.seq);
        read.snapshot.user_counts.sort();
        assert_eq!(read, expected);
        // The file is the one `write` makes of the body, byte for byte but the order.
        assert_eq!(bytes.len(), encode(42, &expected).len());
    }

    /// Covered segments are deleted oldest first; the newest within the retention stay, so
    /// what is left joins up; the segment being written is never covered.
    #[test]
    fn retention_keeps_the_newest_covered_segments_that_fit() {
        use crate::wal::segment::segment_name;
        use crate::wal::storage::DirStorage;
        let path = std::env::temp_dir().join(format!("livestock-retain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let storage = DirStorage::open(&path).unwrap();
        let firsts = [1u64, 11, 21, 31, 41];
        let on_disk = |storage: &DirStorage| -> Vec<u64> {
            let mut left: Vec<u64> =
                storage.list().unwrap().iter().filter_map(|n| parse_segment_name(n)).collect();
            left.sort_unstable();
            left
        };
        for (retain_bytes, expected) in
            [(250, vec![21, 31, 41]), (199, vec![31, 41]), (0, vec![41]), (10_000, firsts.to_vec())]
        {
            for first in firsts {
                std::fs::write(path.join(segment_name(first)), [0u8; 100]).unwrap();
            }
            // A checkpoint at 45 covers every segment but the one it is in.
            delete_covered(&storage, 45, retain_bytes).unwrap();
            assert_eq!(on_disk(&storage), expected, "retain {retain_bytes}");
        }
        std::fs::remove_dir_all(&path).unwrap();
    }
}
