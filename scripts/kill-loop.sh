#!/usr/bin/env bash
# The kill -9 loop, long: SIGKILL the real server N times under load (default 1000) and check
# after every restart that no acknowledged change was lost (see tests/crash.rs).
#
#   scripts/kill-loop.sh [CYCLES]                      e.g. scripts/kill-loop.sh 200
#   LIVESTOCK_KILL_SEED=123 scripts/kill-loop.sh 50    repeats the test's own random choices
#
# Release mode: the same test as `cargo test --test crash`, more cycles per minute.
set -euo pipefail

cycles="${1:-1000}"
cd "$(dirname "$0")/.."
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

echo "kill loop: ${cycles} cycles (release build)"
start=$(date +%s)
if LIVESTOCK_KILL_CYCLES="${cycles}" cargo test --release --test crash -- --nocapture 2>&1 \
    | tee "$out"; then
    echo
    grep -E '^kill loop tally:' "$out"
    echo "kill loop passed in $(( $(date +%s) - start )) s"
else
    echo "kill loop FAILED after $(( $(date +%s) - start )) s (output above)" >&2
    exit 1
fi
