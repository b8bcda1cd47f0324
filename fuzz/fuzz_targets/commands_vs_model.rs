//! Command sequences against the reference model: the fuzzer's bytes decode into a sequence of
//! ops (create / reserve / cart / confirm / release / extend / advance the clock and reap /
//! adjust stock / pause / resume / end a deal or a stream), which run on the real allocator and
//! on the naive model of `tests/reference/mod.rs`: the same model and comparison as the
//! property test `tests/model.rs`. A disagreement in any answer or any part of the state, a
//! broken invariant, or a log that does not replay (or a snapshot that does not restore) to
//! the same state is a crash. The byte format is in `commands/ops.rs`;
//! `cargo fuzz fmt commands_vs_model <file>` prints the ops a file decodes to.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/reference/mod.rs"]
mod reference;

// The encoder half is for the seed writer (`fuzz/examples/seeds.rs`).
#[allow(dead_code)]
#[path = "commands/ops.rs"]
mod ops;

fuzz_target!(|sequence: ops::Sequence| {
    if let Err(mismatch) = reference::run(&sequence.0) {
        panic!("the allocator and the model disagree: {mismatch}\nops: {:#?}", sequence.0);
    }
});
