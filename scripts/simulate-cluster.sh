#!/usr/bin/env bash
# Runs the deterministic cluster simulation (tests/sim_cluster.rs: three replicas over a
# simulated network and simulated disks) over many seeds, in release mode, and prints the
# tally: requests and acknowledgements, kills and restarts, disk faults, partitions, messages
# lost, checks passed, virtual time simulated, and every failing seed.
#
#   scripts/simulate-cluster.sh N [FIRST_SEED]     N seeds from FIRST_SEED (default 0)
#
# Environment: SIM_STEPS (steps per history, default the test's), SIM_THREADS (default: all
# cores). A failure prints `seed=S step=K` and its replay command,
# `SIM_SEED=S cargo test --release --test sim_cluster -- --nocapture` (add SIM_LOG=info for the
# nodes' own logs); see docs/testing.md, "Cluster simulation", for what replays exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 N [FIRST_SEED]" >&2
    exit 2
fi
count=$1
first=${2:-0}
threads=${SIM_THREADS:-$(nproc 2>/dev/null || echo 2)}
started=$SECONDS
status=0
SIM_SEEDS=$count SIM_FIRST_SEED=$first SIM_THREADS=$threads \
    cargo test --release --test sim_cluster -- --exact simulate_cluster_seeds --nocapture \
    --test-threads=1 \
    2>&1 | grep -E '(cluster simulation: |^  [a-z]|^FAILED|^error|^test result)' \
    || status=$?
# grep's status is 1 when nothing matched; cargo's failure shows in the lines above.
echo "simulate-cluster.sh: $count seeds from $first in $((SECONDS - started)) s"
exit "$status"
