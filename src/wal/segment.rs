//! Log segments: files of consecutive records, named by their first LSN.
//!
//! # Segment layout
//! ```text
//! offset size  field
//!      0    8  magic        "LVSTKWAL"
//!      8    8  first_lsn    LSN of the first record in this file (u64 LE)
//!     16    4  version      format version, 1 (u32 LE)
//!     20    4  header_crc   CRC32C of bytes 0..20
//!     24    .  frames       see `record.rs`, back to back
//! ```
//! File name: `wal-{first_lsn:020}.log`, so names sort in log order.
//!
//! # Torn tails and corruption
//! A crash can leave the last write half done: the file ends inside a frame, or with bytes
//! that never became a frame (zeros, stale data). That is a *torn tail*: none of it was
//! acknowledged, because acknowledgement waits for the fsync that would have completed it, and
//! recovery cuts it off. Anything else that fails to check is *corruption*, and recovery refuses
//! to start rather than silently drop acknowledged records. The test that tells them apart: a
//! bad frame is a torn tail only if it is in the last segment and no valid frame header follows
//! it anywhere in the file (a torn write has nothing valid after it; a flipped byte in the
//! middle of the log has the rest of the log after it).

use livestock_core::limits::WAL_RECORD_BYTES_MAX;

use crate::wal::record::{
    check_header_within, decode_payload, frame_payload, FrameError, Record, FRAME_HEADER_BYTES,
};

pub const SEGMENT_HEADER_BYTES: usize = 24;
const MAGIC: &[u8; 8] = b"LVSTKWAL";
const VERSION: u32 = 1;

pub fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // LSNs start at 1: a segment "starting" at 0 is not one of ours.
    digits.parse().ok().filter(|first: &u64| *first > 0)
}

pub fn segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    segment_header_with(MAGIC, first_lsn)
}

/// A segment header with another magic, for another log in the same layout (the raft log's
/// segments say `LVSTRAFT`, so neither log ever reads the other's files as its own).
pub fn segment_header_with(magic: &[u8; 8], first_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(magic);
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    header[16..20].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A checksum or sequence failure before the tail: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt log: {file} at offset {offset}: {reason}")]
pub struct Corruption {
    pub file: String,
    pub offset: u64,
    pub reason: String,
}

/// How a segment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Every byte belongs to a whole record.
    Clean,
    /// A torn tail from `offset` on (`offset` 0: not even the segment header is whole).
    Torn { offset: u64, len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// LSN of the last whole record, or `first_lsn - 1` if none.
    pub last_lsn: u64,
    pub records: u64,
    pub end: SegmentEnd,
}

/// How the frames of a segment ended, for a log of any payload (see [`scan_frames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameScan {
    /// Whole frames read, from `first_lsn` on.
    pub frames: u64,
    pub end: SegmentEnd,
}

/// Whether any valid frame header with an LSN at or after `lsn` starts after `from`.
fn valid_frame_after(bytes: &[u8], from: usize, lsn: u64, payload_bytes_max: usize) -> bool {
    (from..bytes.len().saturating_sub(FRAME_HEADER_BYTES - 1)).any(|at| {
        matches!(check_header_within(&bytes[at..], payload_bytes_max), Ok((found, _)) if found >= lsn)
    })
}

/// Reads a segment's records in order, handing each to `on_record`. `describe` names the file
/// in errors. `is_last`: only the last segment may end torn.
pub fn scan_segment(
    describe: &str,
    bytes: &[u8],
    first_lsn: u64,
    is_last: bool,
    mut on_record: impl FnMut(u64, Record) -> Result<(), String>,
) -> Result<SegmentScan, Corruption> {
    let scan = scan_frames(
        describe,
        bytes,
        &segment_header(first_lsn),
        first_lsn,
        is_last,
        WAL_RECORD_BYTES_MAX,
        decode_payload,
        |lsn, _offset, record| on_record(lsn, record),
    )?;
    Ok(SegmentScan { last_lsn: first_lsn - 1 + scan.frames, records: scan.frames, end: scan.end })
}

/// The scan behind [`scan_segment`], for any log in this layout: the segment must start with
/// `header`, its frames carry consecutive LSNs from `first_lsn` (which may be 0) with payloads
/// of at most `payload_bytes_max`; `decode` turns a checked payload into a `T` (a payload that
/// does not decode counts as a bad frame, torn or corrupt by the rule in the module docs), and
/// `on_frame` gets each one with the frame's byte offset in the file.
#[expect(clippy::too_many_arguments, reason = "one scan, its inputs named where it is called")]
pub fn scan_frames<T>(
    describe: &str,
    bytes: &[u8],
    header: &[u8; SEGMENT_HEADER_BYTES],
    first_lsn: u64,
    is_last: bool,
    payload_bytes_max: usize,
    mut decode: impl FnMut(&[u8]) -> Result<T, FrameError>,
    mut on_frame: impl FnMut(u64, u64, T) -> Result<(), String>,
) -> Result<FrameScan, Corruption> {
    let corrupt = |offset: usize, reason: String| Corruption {
        file: describe.to_owned(),
        offset: offset as u64,
        reason,
    };
    let torn = |offset: usize| SegmentEnd::Torn {
        offset: offset as u64,
        len: (bytes.len() - offset) as u64,
    };
    if bytes.len() < SEGMENT_HEADER_BYTES || bytes[..SEGMENT_HEADER_BYTES] != header[..] {
        if is_last && !valid_frame_after(bytes, 0, first_lsn, payload_bytes_max) {
            return Ok(FrameScan { frames: 0, end: torn(0) });
        }
        return Err(corrupt(0, "bad segment header".into()));
    }
    let mut at = SEGMENT_HEADER_BYTES;
    let mut lsn = first_lsn;
    while at < bytes.len() {
        let frame = frame_payload(&bytes[at..], lsn, payload_bytes_max)
            .and_then(|(payload, len)| Ok((decode(payload)?, len)));
        match frame {
            Ok((value, len)) => {
                on_frame(lsn, at as u64, value).map_err(|e| corrupt(at, e))?;
                at += len;
                lsn += 1;
            }
            Err(e) => {
                if is_last && !valid_frame_after(bytes, at + 1, lsn, payload_bytes_max) {
                    return Ok(FrameScan { frames: lsn - first_lsn, end: torn(at) });
                }
                return Err(corrupt(at, e.to_string()));
            }
        }
    }
    Ok(FrameScan { frames: lsn - first_lsn, end: SegmentEnd::Clean })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{encode_frame, encode_payload};
    use livestock_core::event::Event;
    use livestock_core::ids::HoldSeq;

    fn segment(first: u64, n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = segment_header(first).to_vec();
        let mut ends = vec![bytes.len()];
        for lsn in first..first + n {
            let event = Event::Expired { seq: HoldSeq(lsn), at_ms: lsn };
            let record = Record { at_ms: lsn, event, reply: None };
            encode_frame(lsn, &encode_payload(&record), &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    fn count(bytes: &[u8], first: u64, is_last: bool) -> Result<SegmentScan, Corruption> {
        scan_segment("seg", bytes, first, is_last, |_, _| Ok(()))
    }

    #[test]
    fn names_sort_in_log_order() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("wal-1.log"), None);
        assert_eq!(parse_segment_name(&segment_name(0)), None);
    }

    #[test]
    fn a_cut_anywhere_keeps_the_whole_records_before_it() {
        let (bytes, ends) = segment(5, 4);
        for cut in 0..=bytes.len() {
            let scan = count(&bytes[..cut], 5, true).unwrap();
            let whole = ends.iter().filter(|end| **end <= cut).count().saturating_sub(1);
            assert_eq!(scan.records, whole as u64, "cut at {cut}");
            assert_eq!(scan.last_lsn, 4 + whole as u64);
        }
    }

    #[test]
    fn a_flip_before_the_tail_is_corruption_with_its_offset() {
        let (bytes, ends) = segment(1, 3);
        let last_start = ends[2];
        for at in 0..last_start {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let err = count(&bad, 1, true).unwrap_err();
            let frame_start = ends.iter().rev().find(|e| **e <= at).copied().unwrap_or(0);
            let expected = if at < SEGMENT_HEADER_BYTES { 0 } else { frame_start };
            assert_eq!(err.offset, expected as u64, "flip at {at}");
        }
    }

    #[test]
    fn only_the_last_segment_may_be_torn() {
        let (bytes, _) = segment(1, 2);
        assert!(count(&bytes[..bytes.len() - 1], 1, false).is_err());
    }
}
