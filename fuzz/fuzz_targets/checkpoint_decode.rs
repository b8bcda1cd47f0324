//! The checkpoint decoder: arbitrary bytes never panic it, a decoded checkpoint re-encodes to
//! bytes that decode to the same thing (decode(encode(x)) == x), and restoring any decoded
//! state is an answer (Ok or a refusal), never a panic: a checkpoint is outside input to
//! recovery. A state that restores passes the allocator's invariants, and its own snapshot
//! (the canonical form a checkpoint is written in) restores to itself, and the payload the
//! checkpointer builds from the live maps (`encode_payload`) decodes to that same state. The
//! input is tried both
//! as a whole file and as a bare payload, so the fuzzer reaches the decoder past the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livestock::alloc::{Allocator, AllocatorConfig};
use livestock::wal::checkpoint::{decode, decode_body, encode, encode_payload, CheckpointBody};
use livestock_core::ids::HoldIdKey;

fn round_trip(lsn: u64, body: &CheckpointBody) {
    let bytes = encode(lsn, body);
    match decode(&bytes) {
        Ok((again_lsn, again)) => {
            assert_eq!(again_lsn, lsn);
            assert_eq!(&again, body);
        }
        Err((offset, reason)) => {
            panic!("a re-encoded checkpoint does not decode at {offset}: {reason}")
        }
    }
    let config = AllocatorConfig { hold_id_key: HoldIdKey(0), resolved_hold_retention_ms: 60_000 };
    if let Ok(allocator) = Allocator::restore(config, &body.snapshot) {
        allocator.check_invariants();
        let canonical = allocator.snapshot();
        match Allocator::restore(config, &canonical) {
            Ok(again) => assert_eq!(again.snapshot(), canonical),
            Err(e) => panic!("the snapshot of a restored state does not restore: {e}"),
        }
        let payload = encode_payload(&allocator, body.replies.iter(), &mut || {});
        let built = match decode_body(&payload) {
            Ok(built) => built,
            Err(e) => panic!("the checkpointer's payload does not decode: {e}"),
        };
        let mut snapshot = built.snapshot;
        snapshot.holds.sort_by_key(|h| h.seq);
        snapshot.user_counts.sort();
        assert_eq!(snapshot, canonical);
        assert_eq!(built.replies, body.replies);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((lsn, body)) = decode(data) {
        round_trip(lsn, &body);
    }
    if let Ok(body) = decode_body(data) {
        round_trip(7, &body);
    }
});
