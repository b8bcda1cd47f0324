//! The log record decoder: arbitrary bytes never panic the reader (tried as a bare payload, as
//! a frame and as a segment, with and without a valid segment header); whatever decodes
//! re-encodes to a frame that decodes to the same record (decode(encode(x)) == x); and
//! replaying a decoded event (what recovery does with it) is an answer, never a panic: a
//! record is outside input to recovery, whatever its checksums say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livestock::alloc::{Allocator, AllocatorConfig};
use livestock::wal::record::{decode_frame, decode_payload, encode_frame, encode_payload, Record};
use livestock::wal::segment::{scan_segment, segment_header};
use livestock_core::command::{Command, Line, Reserve};
use livestock_core::deal::NewDeal;
use livestock_core::event::EventLog;
use livestock_core::ids::{DealId, HoldIdKey, UserId};

const T0_MS: u64 = 1_800_000_000_000;

fn config() -> AllocatorConfig {
    AllocatorConfig { hold_id_key: HoldIdKey(3), resolved_hold_retention_ms: 60_000 }
}

/// An allocator with a limited deal `d` (stock 10) and one live hold (seq 1, u0, 2 units), so
/// that decoded events about `d` or hold 1 reach past "unknown deal".
fn primed() -> Allocator {
    let allocator = Allocator::new(config());
    let id = |s: &str| DealId::parse(s).expect("a valid deal id");
    let deal = NewDeal {
        id: id("d"),
        stream_id: None,
        stock: 10,
        starts_at_ms: None,
        ends_at_ms: None,
        per_user_limit: Some(5),
        hold_ttl_ms: None,
        hold_ttl_ms_max: None,
        // A waitlist, so that decoded waitlist events have a deal to apply to.
        waitlist_max: Some(5),
        offer_ttl_ms: None,
        draw_window_ms: None,
        draw_seed: None,
    };
    let reserve = Reserve {
        user_id: UserId::parse("u0").expect("a valid user id"),
        lines: vec![Line { deal_id: id("d"), qty: 2 }],
        ttl_ms: Some(60_000),
        waitlist: false,
    };
    let mut log = EventLog::default();
    for command in [Command::CreateDeal(deal), Command::Reserve(reserve)] {
        if let Err(e) = allocator.execute(&command, T0_MS, &mut log) {
            panic!("the primed state is valid: {e}");
        }
    }
    allocator
}

fn round_trip(record: &Record, lsn: u64) {
    let mut frame = Vec::new();
    encode_frame(lsn, &encode_payload(record), &mut frame);
    match decode_frame(&frame, lsn) {
        Ok((again, len)) => {
            assert_eq!(&again, record);
            assert_eq!(len, frame.len());
        }
        Err(e) => panic!("a re-encoded record does not decode: {e}"),
    }
    // Replay refuses what does not fit the state; it must not panic on it.
    let _ = Allocator::new(config()).apply(&record.event);
    let _ = primed().apply(&record.event);
}

/// The LSN at offset 8, where both a frame header and a segment header keep theirs, so that a
/// valid frame or segment decodes. Kept where recovery's LSNs live: at least 1 (the log starts
/// there, and a scan computes `first_lsn - 1`) and far from `u64::MAX`.
fn lsn_of(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    if let Some(raw) = bytes.get(8..16) {
        word.copy_from_slice(raw);
    }
    u64::from_le_bytes(word).clamp(1, 1 << 62)
}

fuzz_target!(|data: &[u8]| {
    // As a bare payload, past the checksums.
    if let Ok(record) = decode_payload(data) {
        round_trip(&record, 9);
    }
    // As a frame, expecting the LSN its header names.
    let lsn = lsn_of(data);
    if let Ok((record, _)) = decode_frame(data, lsn) {
        round_trip(&record, lsn);
    }
    // As frames behind a valid segment header starting at the first frame's LSN, and as a
    // whole segment file (first LSN from its header): a result, never a panic; every record
    // it hands over round-trips too.
    let mut segment = segment_header(lsn).to_vec();
    segment.extend_from_slice(data);
    for is_last in [true, false] {
        for bytes in [&segment[..], data] {
            let _ = scan_segment("fuzz", bytes, lsn, is_last, |lsn, record| {
                round_trip(&record, lsn);
                Ok(())
            });
        }
    }
});
