#!/usr/bin/env bash
# Sold-out answers from a 3-node cluster, with wrk (an external client): the leader alone, then
# all three nodes at once (followers answer sold-out from their own state while fresh). All
# three nodes on core $SERVER_CPU, wrk on core $LOAD_CPU, loopback only, $WRK_S s per run,
# $REPS fresh clusters. Prints one line per repetition and the medians. Stops what it starts.
#
#   scripts/cluster-soldout-wrk.sh                               # REPS=3: about 2 minutes
#   BIN_DIR=/other/target/release scripts/cluster-soldout-wrk.sh # another build (before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
WRK_S=${WRK_S:-8}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -q -p livestock
    BIN_DIR=target/release
fi
BIN=$BIN_DIR/livestock
command -v wrk >/dev/null || { echo "wrk is missing (benches/peers/wrk.sh installs it)" >&2; exit 2; }
work=$(mktemp -d /tmp/livestock-cluster-wrk.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]:-}"; do
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pids=()
    sleep 0.5
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rps() { awk '/^Requests\/sec:/ {print int($2)}' "$1"; }
# wrk's requests: one fixed reserve (benches/peers/wrk.lua without WRK_DYNAMIC).
bench() { # bench CONNECTIONS URL OUT
    WRK_PREFIX=c taskset -c "$LOAD_CPU" timeout $((WRK_S + 30)) \
        wrk -t1 -c"$1" -d"${WRK_S}s" -s benches/peers/wrk.lua "$2" >"$3" 2>&1
}

leader_runs=()
all_runs=()
for rep in $(seq 1 "$REPS"); do
    http=() peer=()
    for n in 1 2 3; do http+=("$(free_port)"); peer+=("$(free_port)"); done
    peers="1=127.0.0.1:${peer[0]},2=127.0.0.1:${peer[1]},3=127.0.0.1:${peer[2]}"
    for n in 1 2 3; do
        taskset -c "$SERVER_CPU" "$BIN" serve --node-id "$n" --listen "127.0.0.1:${http[$((n-1))]}" \
            --peer-listen "127.0.0.1:${peer[$((n-1))]}" --peers "$peers" \
            --data-dir "$work/r$rep-n$n" >"$work/r$rep-n$n.log" 2>&1 &
        pids+=($!)
    done
    leader=""
    for _ in $(seq 1 200); do
        for port in "${http[@]}"; do
            if curl -s "http://127.0.0.1:$port/v1/cluster" | grep -q '"role":"leader"'; then
                leader=127.0.0.1:$port
            fi
        done
        [ -n "$leader" ] && break
        sleep 0.1
    done
    [ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
    curl -sf -X POST "http://$leader/v1/deals" -H 'content-type: application/json' \
        -d '{"id":"d1","stock":0}' >/dev/null
    sleep 1 # the deal reaches the followers
    # Every node must answer sold_out (409), not no_leader or anything else.
    for port in "${http[@]}"; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
            "http://127.0.0.1:$port/v1/deals/d1/reserve" -d '{"user_id":"c","qty":1}')
        [ "$code" = 409 ] || { echo "node on $port answered $code, not 409" >&2; exit 1; }
    done
    bench 64 "http://$leader/v1/deals/d1/reserve" /dev/null # warm-up
    bench 64 "http://$leader/v1/deals/d1/reserve" "$work/leader-$rep.txt"
    wrks=()
    for port in "${http[@]}"; do
        bench 22 "http://127.0.0.1:$port/v1/deals/d1/reserve" "$work/all-$rep-$port.txt" &
        wrks+=($!)
    done
    wait "${wrks[@]}"
    sum=0
    for port in "${http[@]}"; do sum=$((sum + $(rps "$work/all-$rep-$port.txt"))); done
    leader_runs+=("$(rps "$work/leader-$rep.txt")")
    all_runs+=("$sum")
    echo "rep $rep: leader alone ${leader_runs[-1]} req/s; all three nodes $sum req/s"
    stop_all
done
python3 - "${leader_runs[*]}" "${all_runs[*]}" <<'PY'
import statistics, sys
leader, both = ([int(x) for x in a.split()] for a in sys.argv[1:])
print(f"medians: leader alone {statistics.median(leader):,.0f} req/s, "
      f"all three nodes {statistics.median(both):,.0f} req/s "
      f"({statistics.median(both) / statistics.median(leader):.2f}x)")
PY
