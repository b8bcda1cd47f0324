//! Log records and their framing.
//!
//! A record is one decided [`Event`] plus, for a request that carried an `Idempotency-Key`, the
//! answer that request got, so a retry after a crash gets the identical answer.
//!
//! # Frame layout (all integers little-endian)
//! ```text
//! offset size  field
//!      0    4  header_crc   CRC32C of bytes 4..20 (length, lsn, payload_crc)
//!      4    4  payload_len  bytes of payload, at most WAL_RECORD_BYTES_MAX
//!      8    8  lsn          log sequence number: consecutive, starting at 1
//!     16    4  payload_crc  CRC32C of the payload
//!     20    n  payload      postcard encoding of `Record`
//! ```
//! Why two checksums: the header's own checksum lets recovery trust a length before using it,
//! so a flipped bit in a length field is reported as corruption instead of being mistaken for
//! a record that runs past the end of the file (a torn tail). See `segment.rs` for how torn
//! tails and corruption are told apart.

use serde::{Deserialize, Serialize};

use livestock_core::event::Event;
use livestock_core::limits::WAL_RECORD_BYTES_MAX;

pub const FRAME_HEADER_BYTES: usize = 20;

/// An idempotent request's answer, kept with the event it caused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptReply {
    pub scope: String,
    pub key: String,
    pub fingerprint: u64,
    pub status: u16,
    pub body: Vec<u8>,
    /// When the key was first seen: its window runs from here.
    pub seen_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The node's clock when the event was decided: the log writer's shadow copy uses it to
    /// age out remembered answers and resolved holds without reading a clock of its own.
    pub at_ms: u64,
    pub event: Event,
    pub reply: Option<KeptReply>,
}

/// One line for logs (openraft prints the entries it handles).
impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {} ms: {:?}{}",
            self.at_ms,
            self.event,
            if self.reply.is_some() { " (keyed)" } else { "" }
        )
    }
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the payload needs.
    Short,
    HeaderChecksum,
    TooLong(u32),
    /// A valid frame, but not the one expected next.
    Sequence {
        expected: u64,
        found: u64,
    },
    PayloadChecksum,
    /// Checksums match but the payload does not decode: written by another version, or a bug.
    Decode(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Short => write!(f, "record cut short"),
            FrameError::HeaderChecksum => write!(f, "header checksum mismatch"),
            FrameError::TooLong(n) => write!(f, "record length {n} over the limit"),
            FrameError::Sequence { expected, found } => {
                write!(f, "expected lsn {expected}, found {found}")
            }
            FrameError::PayloadChecksum => write!(f, "payload checksum mismatch"),
            FrameError::Decode(e) => write!(f, "payload does not decode: {e}"),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

pub fn encode_payload(record: &Record) -> Vec<u8> {
    match postcard::to_stdvec(record) {
        Ok(payload) => payload,
        Err(e) => panic!("a record always encodes: {e}"),
    }
}

pub fn decode_payload(payload: &[u8]) -> Result<Record, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Appends one frame to `out`. Panics on a payload over the limit: records are bounded by
/// construction (see `limits`), so a larger one is a bug.
pub fn encode_frame(lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_within(lsn, payload, WAL_RECORD_BYTES_MAX, out);
}

/// [`encode_frame`] for a log whose payloads have another bound (the raft log's entries carry
/// an envelope around the record; see `cluster/log_store`). Panics on a payload over
/// `payload_bytes_max`, which must fit the `u32` length field.
pub fn encode_frame_within(lsn: u64, payload: &[u8], payload_bytes_max: usize, out: &mut Vec<u8>) {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if payload.len() <= payload_bytes_max => len,
        _ => panic!("frame payload of {} bytes", payload.len()),
    };
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start + 4..start + FRAME_HEADER_BYTES]);
    out[start..start + 4].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Checks only the header at `bytes[0..]`: its checksum and length. `Ok((lsn, len))`.
pub fn check_header(bytes: &[u8]) -> Result<(u64, usize), FrameError> {
    check_header_within(bytes, WAL_RECORD_BYTES_MAX)
}

/// [`check_header`] against another payload bound.
pub fn check_header_within(
    bytes: &[u8],
    payload_bytes_max: usize,
) -> Result<(u64, usize), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Short);
    }
    if crc32c::crc32c(&bytes[4..FRAME_HEADER_BYTES]) != u32_at(bytes, 0) {
        return Err(FrameError::HeaderChecksum);
    }
    let len = u32_at(bytes, 4);
    if len as usize > payload_bytes_max {
        return Err(FrameError::TooLong(len));
    }
    Ok((u64_at(bytes, 8), len as usize))
}

/// Decodes the frame at the start of `bytes`, which must carry `expected_lsn`. Returns the
/// record and the frame's length.
pub fn decode_frame(bytes: &[u8], expected_lsn: u64) -> Result<(Record, usize), FrameError> {
    let (payload, len) = frame_payload(bytes, expected_lsn, WAL_RECORD_BYTES_MAX)?;
    Ok((decode_payload(payload)?, len))
}

/// Checks the frame at the start of `bytes` (both checksums, the bound, `expected_lsn`) and
/// returns its payload, undecoded, and the frame's length. For logs of other payloads than
/// [`Record`] in the same frames (the raft log).
pub fn frame_payload(
    bytes: &[u8],
    expected_lsn: u64,
    payload_bytes_max: usize,
) -> Result<(&[u8], usize), FrameError> {
    let (lsn, len) = check_header_within(bytes, payload_bytes_max)?;
    if lsn != expected_lsn {
        return Err(FrameError::Sequence { expected: expected_lsn, found: lsn });
    }
    let end = FRAME_HEADER_BYTES + len;
    if bytes.len() < end {
        return Err(FrameError::Short);
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    if crc32c::crc32c(payload) != u32_at(bytes, 16) {
        return Err(FrameError::PayloadChecksum);
    }
    Ok((payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use livestock_core::ids::{DealId, HoldSeq};

    fn record(n: u64) -> Record {
        Record {
            at_ms: n,
            event: Event::Released { seq: HoldSeq(n), at_ms: 1_800_000_000_000 + n },
            reply: n.is_multiple_of(2).then(|| KeptReply {
                scope: "user:u".into(),
                key: format!("k{n}"),
                fingerprint: n,
                status: 200,
                body: b"{}".to_vec(),
                seen_ms: n,
            }),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        for lsn in 1..=3 {
            encode_frame(lsn, &encode_payload(&record(lsn)), &mut out);
        }
        let mut at = 0;
        for lsn in 1..=3 {
            let (decoded, len) = decode_frame(&out[at..], lsn).unwrap();
            assert_eq!(decoded, record(lsn));
            at += len;
        }
        assert_eq!(at, out.len());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut frame = Vec::new();
        let event = Event::DealPaused { deal_id: DealId::parse("d").unwrap(), at_ms: 5 };
        encode_frame(7, &encode_payload(&Record { at_ms: 5, event, reply: None }), &mut frame);
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode_frame(&bad, 7).is_err(), "flip at {byte}.{bit} went unseen");
            }
        }
    }
}
