//! Reading the log from a position: every record after an LSN, in log order, up to a bound the
//! caller gives (the durable LSN), a piece at a time, while the writer appends to the newest
//! segment and checkpoints delete the oldest. The event stream (`GET /v1/events`) is its user.
//!
//! A [`LogReader`] is a cursor: the segment it is in, the byte offset of the next frame there,
//! and that frame's LSN. Each [`LogReader::read`] goes on from it with reads of at most
//! `EVENTS_READ_PIECE_BYTES` (more only for a record larger than that), so a reader that keeps
//! up reads only what is new, and one that is far behind costs a piece per call, never the
//! whole log in memory.
//!
//! Why reading the segment being written is safe: the writer publishes a record as durable
//! only after the `write` that carried it returned (and its fsync), so every frame up to the
//! durable LSN is whole in the file. Bytes after it may be a write in progress; the reader
//! never looks at them, because it stops at the bound. Every frame it returns is checked as
//! recovery checks it (both checksums, the LSN in sequence) and decoded: a bad frame below the
//! bound is corruption, never skipped.
//!
//! What the log still holds: the segments on disk. A checkpoint deletes the segments it covers
//! beyond the configured retention (`checkpoint.rs`), oldest first, so the segments left always
//! join up. A reader whose next record was in a deleted segment gets
//! [`ReadError::Expired`]; so does one whose segment is deleted under it.

use std::io;
use std::sync::Arc;

use livestock_core::limits::{EVENTS_READ_PIECE_BYTES, WAL_RECORD_BYTES_MAX};

use crate::wal::record::{
    check_header, decode_payload, frame_payload, FrameError, Record, FRAME_HEADER_BYTES,
};
use crate::wal::segment::{
    parse_segment_name, segment_header, segment_name, Corruption, SEGMENT_HEADER_BYTES,
};
use crate::wal::storage::Storage;

/// Why a read gave no records.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The record wanted is no longer on disk: the oldest one left is `oldest` (`None`: no
    /// segment at all).
    #[error("the log no longer holds record {wanted} (the oldest it holds: {oldest:?})")]
    Expired { wanted: u64, oldest: Option<u64> },
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("storage error on {file}: {error}")]
    Io { file: String, error: io::Error },
}

/// The first LSN of every segment on disk, in order.
fn segments(storage: &dyn Storage) -> Result<Vec<u64>, ReadError> {
    let names =
        storage.list().map_err(|error| ReadError::Io { file: storage.describe(""), error })?;
    let mut firsts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    firsts.sort_unstable();
    Ok(firsts)
}

/// The oldest record the log holds on disk (`None`: no segment). Records from it to the
/// newest can be read; older ones are gone.
pub fn oldest_lsn(storage: &dyn Storage) -> Result<Option<u64>, ReadError> {
    Ok(segments(storage)?.first().copied())
}

/// Where a reader is: the frame at `offset` of segment `first_lsn` carries `lsn`.
#[derive(Clone, Copy, Debug)]
struct At {
    first_lsn: u64,
    offset: u64,
    lsn: u64,
}

/// A cursor over the log (see the module documentation).
pub struct LogReader {
    storage: Arc<dyn Storage>,
    /// The next record to return.
    next_lsn: u64,
    /// `None` until the first read, and after the segment read was deleted.
    at: Option<At>,
}

impl LogReader {
    /// A reader of the records after `after` (0: from the first record ever written).
    pub fn new(storage: Arc<dyn Storage>, after: u64) -> LogReader {
        LogReader { storage, next_lsn: after + 1, at: None }
    }

    /// The LSN of the next record [`LogReader::read`] returns.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The next records, in order, none past `up_to`, and about `bytes_max` of frames at most
    /// (at least one record when there is one: a record larger than `bytes_max` comes alone).
    /// Empty when the reader is at `up_to`. Blocking file I/O: call it off the async runtime.
    ///
    /// An error after some records returns those records; the error comes again on the next
    /// call (the cursor stays before the record it failed on).
    pub fn read(&mut self, up_to: u64, bytes_max: usize) -> Result<Vec<(u64, Record)>, ReadError> {
        let mut records = Vec::new();
        match self.read_into(up_to, bytes_max, &mut records) {
            Err(e) if records.is_empty() => Err(e),
            _ => Ok(records),
        }
    }

    fn read_into(
        &mut self,
        up_to: u64,
        bytes_max: usize,
        records: &mut Vec<(u64, Record)>,
    ) -> Result<(), ReadError> {
        let mut bytes = 0;
        let mut want = EVENTS_READ_PIECE_BYTES;
        while self.next_lsn <= up_to && bytes < bytes_max {
            let at = match self.at.take() {
                Some(at) => at,
                None => self.locate()?,
            };
            let name = segment_name(at.first_lsn);
            let piece = match self.storage.read_at(&name, at.offset, want) {
                Ok(piece) => piece,
                // Deleted by a checkpoint since: find the record again (or learn it is gone).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(ReadError::Io { file: self.storage.describe(&name), error })
                }
            };
            let corrupt = |offset: usize, reason: String| Corruption {
                file: self.storage.describe(&name),
                offset: at.offset + offset as u64,
                reason,
            };
            let (mut offset, mut lsn) = (0, at.lsn);
            let mut larger = None;
            while lsn <= up_to && bytes < bytes_max {
                match frame_payload(&piece[offset..], lsn, WAL_RECORD_BYTES_MAX) {
                    Ok((payload, len)) => {
                        // Frames before the one wanted (the first read hops to it) are checked
                        // but not decoded.
                        if lsn >= self.next_lsn {
                            let record = decode_payload(payload)
                                .map_err(|e| corrupt(offset, e.to_string()))?;
                            records.push((lsn, record));
                            bytes += len;
                            self.next_lsn = lsn + 1;
                        }
                        offset += len;
                        lsn += 1;
                    }
                    Err(FrameError::Short) => {
                        if offset == 0 {
                            larger = check_header(&piece).ok().map(|(_, n)| FRAME_HEADER_BYTES + n);
                        }
                        break;
                    }
                    Err(e) => return Err(corrupt(offset, e.to_string()).into()),
                }
            }
            self.at = Some(At { offset: at.offset + offset as u64, lsn, ..at });
            if offset > 0 {
                want = EVENTS_READ_PIECE_BYTES;
                continue;
            }
            let end_of_file = piece.len() < want;
            match larger {
                // A record larger than the piece: read it whole.
                Some(len) if !end_of_file && len > want => want = len,
                // Nothing whole at the cursor and the file ends: the record wanted (at or
                // below the bound, so written) starts the next segment.
                _ if end_of_file => self.at = Some(self.open(lsn)?),
                _ => return Err(corrupt(0, "a frame that fits no read".into()).into()),
            }
        }
        Ok(())
    }

    /// The frame of `self.next_lsn`: in the newest segment starting at or before it.
    fn locate(&self) -> Result<At, ReadError> {
        let firsts = segments(&*self.storage)?;
        match firsts.iter().rev().find(|first| **first <= self.next_lsn) {
            Some(first) => self.open(*first),
            None => {
                Err(ReadError::Expired { wanted: self.next_lsn, oldest: firsts.first().copied() })
            }
        }
    }

    /// The start of the segment whose first record is `first_lsn`, its header checked.
    fn open(&self, first_lsn: u64) -> Result<At, ReadError> {
        let name = segment_name(first_lsn);
        let header = match self.storage.read_at(&name, 0, SEGMENT_HEADER_BYTES) {
            Ok(header) => header,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let firsts = segments(&*self.storage)?;
                // Deleted by a checkpoint (the reader fell behind), or never there: a gap.
                if firsts.first().is_none_or(|oldest| *oldest > first_lsn) {
                    let oldest = firsts.first().copied();
                    return Err(ReadError::Expired { wanted: self.next_lsn, oldest });
                }
                return Err(Corruption {
                    file: self.storage.describe(&name),
                    offset: 0,
                    reason: format!("log gap: no segment holds record {first_lsn}"),
                }
                .into());
            }
            Err(error) => return Err(ReadError::Io { file: self.storage.describe(&name), error }),
        };
        if header[..] != segment_header(first_lsn)[..] {
            let file = self.storage.describe(&name);
            return Err(Corruption { file, offset: 0, reason: "bad segment header".into() }.into());
        }
        Ok(At { first_lsn, offset: SEGMENT_HEADER_BYTES as u64, lsn: first_lsn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{encode_frame, encode_payload};
    use crate::wal::storage::DirStorage;
    use livestock_core::event::Event;
    use livestock_core::ids::HoldSeq;

    /// A scratch data directory, removed on drop.
    struct Dir(std::path::PathBuf, Arc<DirStorage>);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "livestock-reader-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            let storage = Arc::new(DirStorage::open(&path).unwrap());
            Dir(path, storage)
        }

        fn reader(&self, after: u64) -> LogReader {
            LogReader::new(self.1.clone(), after)
        }

        /// A segment of records `first..=last`, each with a payload of about `pad` bytes.
        fn segment(&self, first: u64, last: u64, pad: usize) -> Vec<u8> {
            let mut bytes = segment_header(first).to_vec();
            for lsn in first..=last {
                encode_frame(lsn, &encode_payload(&record(lsn, pad)), &mut bytes);
            }
            std::fs::write(self.0.join(segment_name(first)), &bytes).unwrap();
            bytes
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(lsn: u64, pad: usize) -> Record {
        let event = if pad == 0 {
            Event::Released { seq: HoldSeq(lsn), at_ms: lsn }
        } else {
            Event::DealsEnded {
                at_ms: lsn,
                deals: vec![(
                    livestock_core::ids::DealId::parse("d").unwrap(),
                    (0..pad as u64 / 2).map(HoldSeq).collect(),
                )],
            }
        };
        Record { at_ms: lsn, event, reply: None }
    }

    fn lsns(records: &[(u64, Record)]) -> Vec<u64> {
        records.iter().map(|(lsn, _)| *lsn).collect()
    }

    /// Everything a reader returns from `after` up to `up_to`, in reads of `bytes_max`.
    fn drain(reader: &mut LogReader, up_to: u64, bytes_max: usize) -> Vec<u64> {
        let mut all = Vec::new();
        loop {
            let read = reader.read(up_to, bytes_max).unwrap();
            if read.is_empty() {
                return all;
            }
            for (lsn, record) in &read {
                assert_eq!(*record, super::tests::record(*lsn, 0), "record {lsn} as written");
            }
            all.extend(lsns(&read));
        }
    }

    #[test]
    fn reads_every_record_after_a_position_across_segments_in_bounded_reads() {
        let dir = Dir::new("across");
        dir.segment(1, 40, 0);
        dir.segment(41, 70, 0);
        for after in [0, 1, 39, 40, 41, 69, 70] {
            for bytes_max in [1, 100, 1 << 20] {
                let mut reader = dir.reader(after);
                let got = drain(&mut reader, 70, bytes_max);
                assert_eq!(got, (after + 1..=70).collect::<Vec<_>>(), "after {after}");
                assert_eq!(reader.next_lsn(), 71);
            }
        }
    }

    #[test]
    fn stops_at_the_bound_and_goes_on_from_there() {
        let dir = Dir::new("bound");
        let mut bytes = dir.segment(1, 10, 0);
        // A write in progress after the bound: half a frame. Never looked at.
        let mut next = Vec::new();
        encode_frame(11, &encode_payload(&record(11, 0)), &mut next);
        bytes.extend_from_slice(&next[..next.len() / 2]);
        std::fs::write(dir.0.join(segment_name(1)), &bytes).unwrap();
        let mut reader = dir.reader(0);
        assert_eq!(drain(&mut reader, 7, 1 << 20), (1..=7).collect::<Vec<_>>());
        assert_eq!(drain(&mut reader, 10, 1 << 20), (8..=10).collect::<Vec<_>>());
        // The write completes; the bound moves.
        bytes.extend_from_slice(&next[next.len() / 2..]);
        std::fs::write(dir.0.join(segment_name(1)), &bytes).unwrap();
        assert_eq!(drain(&mut reader, 11, 1 << 20), vec![11]);
    }

    #[test]
    fn a_record_larger_than_a_piece_is_read_whole() {
        let dir = Dir::new("large");
        dir.segment(1, 3, EVENTS_READ_PIECE_BYTES);
        let mut reader = dir.reader(0);
        let read = reader.read(3, 1).unwrap();
        assert_eq!(lsns(&read), vec![1], "one record when it is over bytes_max");
        assert_eq!(read[0].1, record(1, EVENTS_READ_PIECE_BYTES));
        assert_eq!(lsns(&reader.read(3, usize::MAX).unwrap()), vec![2, 3]);
    }

    #[test]
    fn a_deleted_segment_is_expired_and_the_oldest_is_named() {
        let dir = Dir::new("expired");
        dir.segment(1, 10, 0);
        dir.segment(11, 20, 0);
        assert_eq!(oldest_lsn(&*dir.1).unwrap(), Some(1));
        let mut behind = dir.reader(3);
        assert_eq!(lsns(&behind.read(20, 1).unwrap()), vec![4]);
        std::fs::remove_file(dir.0.join(segment_name(1))).unwrap();
        assert_eq!(oldest_lsn(&*dir.1).unwrap(), Some(11));
        // Deleted under a reader in it, and before a new one starts.
        for reader in [&mut behind, &mut dir.reader(5)] {
            match reader.read(20, 1 << 20) {
                Err(ReadError::Expired { oldest: Some(11), .. }) => {}
                other => panic!("expected expired, got {other:?}"),
            }
        }
        // From the oldest retained on: everything.
        assert_eq!(drain(&mut dir.reader(10), 20, 1 << 20), (11..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_bad_frame_below_the_bound_is_corruption_and_a_gap_too() {
        let dir = Dir::new("corrupt");
        let mut bytes = dir.segment(1, 5, 0);
        let len = bytes.len();
        bytes[len - 3] ^= 0x10;
        std::fs::write(dir.0.join(segment_name(1)), &bytes).unwrap();
        assert_eq!(drain(&mut dir.reader(0), 4, 1 << 20), (1..=4).collect::<Vec<_>>());
        let mut reader = dir.reader(0);
        assert_eq!(lsns(&reader.read(5, 1 << 20).unwrap()), (1..=4).collect::<Vec<_>>());
        assert!(matches!(reader.read(5, 1 << 20), Err(ReadError::Corrupt(_))));
        assert!(matches!(dir.reader(4).read(5, 1 << 20), Err(ReadError::Corrupt(_))));

        let gap = Dir::new("gap");
        gap.segment(1, 5, 0);
        gap.segment(8, 9, 0);
        let mut reader = gap.reader(0);
        match reader.read(9, 1 << 20) {
            Ok(read) => assert_eq!(lsns(&read), (1..=5).collect::<Vec<_>>()),
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(reader.read(9, 1 << 20), Err(ReadError::Corrupt(_))));
    }
}
