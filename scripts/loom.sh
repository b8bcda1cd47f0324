#!/usr/bin/env bash
# Runs the loom models (tests/loom.rs): every interleaving of the concurrent core, up to a
# bound on preemptions.
#
#   scripts/loom.sh          the CI set: 2 threads, at most 2 preemptions
#   scripts/loom.sh full     3 threads racing for the last unit, at most 3 preemptions
#
# Why the bound: the number of schedules grows exponentially with preemptions. Bugs found in
# practice need very few (the loom paper: most need 2); 2 keeps the CI run to tens of seconds,
# 3 with three threads takes minutes and belongs in this script, not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-ci}
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/loom}
if [ "$mode" = full ]; then
    export LOOM_MAX_PREEMPTIONS=3 LOOM_LAST_UNIT_THREADS=3
else
    export LOOM_MAX_PREEMPTIONS=2
fi
started=$SECONDS
cargo test --release --no-default-features --test loom -- --test-threads=1 --nocapture
echo "loom ($mode, LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS): $((SECONDS - started)) s"
