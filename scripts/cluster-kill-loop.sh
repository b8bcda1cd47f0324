#!/usr/bin/env bash
# The cluster kill loop: three `livestock serve` processes on loopback, clients driving every
# node, the leader (every fourth cycle a follower) killed with SIGKILL and restarted, N cycles.
# After each cycle it checks that every acknowledged change is on every node, that nothing is
# oversold, and that all state digests agree; at the end it prints the failover times.
#
#   scripts/cluster-kill-loop.sh 200
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-20}
CLUSTER_KILL_CYCLES=$cycles RUST_LOG=${RUST_LOG:-warn} \
    cargo test --release --test cluster kill_loop -- --nocapture --exact
