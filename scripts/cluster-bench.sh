#!/usr/bin/env bash
# The cost of replication, measured side by side in one run on this machine: a single node
# (strict durability) against a three-node cluster on the same machine, from the same client
# (`livestock-load`, closed loop, $CONCURRENCY requests in flight, $RUN_MS ms per run):
#   reserve      reserves on a deal with plenty of stock (60% confirmed, 20% released later)
#   soldout      reserves on a sold-out deal: the answer most of a burst gets
#   soldout-all  the cluster only: the same, one client per node at once (followers answer
#                sold-out themselves), summed
# Servers are pinned to core $SERVER_CPU (all three cluster nodes share it: the cluster is
# CPU-starved here, so its figure is the cost of replication on one core, not a cluster's
# capacity), the load to core $LOAD_CPU. Median of $REPS repetitions; per-run figures go to
# stdout. Everything it starts is stopped on exit.
#
#   scripts/cluster-bench.sh            # REPS=3, about 6 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
RUN_MS=${RUN_MS:-5000}
CONCURRENCY=${CONCURRENCY:-32}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
cargo build --release -q -p livestock -p livestock-load
BIN=target/release/livestock
LOAD=target/release/livestock-load
work=$(mktemp -d /tmp/livestock-cluster-bench.XXXXXX)
# The servers' process ids, in a file: they are started inside command substitutions
# (subshells), where appending to a shell array would be lost and the servers left running.
pids=$work/pids
touch "$pids"
stop_all() {
    while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$pids"
    : >"$pids"
    sleep 0.5
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# load TARGET STOCK OUT: one closed-loop run; writes its JSON report to OUT.
load() {
    taskset -c "$LOAD_CPU" "$LOAD" --target "$1" --profile steady --closed-loop \
        --concurrency "$CONCURRENCY" --duration-ms "$RUN_MS" --stock "$2" --viewers 100000 \
        --hold-ttl-ms 60000 --wait-ms 10000 --json "$3" > "$3.txt" 2>&1 || true
}

# served/s and reserve p99 (ms) of a report.
figures() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r
p99 = next((row["p99_us"] for row in m["latency"]
            if row["op"] == "reserve" and row["outcome"] == "all"), 0)
print(f'{m["rates"]["served_per_s"]:.0f} {p99 / 1000:.2f}')
PY
}

start_single() {
    local port; port=$(free_port)
    taskset -c "$SERVER_CPU" "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$work/single-$1" \
        > "$work/single-$1.log" 2>&1 &
    echo $! >>"$pids"
    echo "127.0.0.1:$port"
}

# start_cluster REP: three nodes; prints their HTTP addresses.
start_cluster() {
    local ports=() peer_ports=() peers=""
    for n in 1 2 3; do ports+=("$(free_port)"); peer_ports+=("$(free_port)"); done
    for n in 1 2 3; do peers+="${peers:+,}$n=127.0.0.1:${peer_ports[$((n-1))]}"; done
    for n in 1 2 3; do
        taskset -c "$SERVER_CPU" "$BIN" serve --node-id "$n" --listen "127.0.0.1:${ports[$((n-1))]}" \
            --peer-listen "127.0.0.1:${peer_ports[$((n-1))]}" --peers "$peers" \
            --data-dir "$work/cluster-$1-n$n" > "$work/cluster-$1-n$n.log" 2>&1 &
        echo $! >>"$pids"
    done
    echo "127.0.0.1:${ports[0]} 127.0.0.1:${ports[1]} 127.0.0.1:${ports[2]}"
}

# leader_of ADDRS...: the HTTP address of the node that leads (waits for one).
leader_of() {
    for _ in $(seq 1 200); do
        for a in "$@"; do
            if curl -s "http://$a/v1/cluster" | grep -q '"role":"leader"'; then echo "$a"; return; fi
        done
        sleep 0.1
    done
    echo "no leader" >&2; exit 1
}


declare -A results
for rep in $(seq 1 "$REPS"); do
    addr=$(start_single "$rep")
    load "$addr" 2000000 "$work/single-reserve-$rep.json"
    results[single-reserve]+="$(figures "$work/single-reserve-$rep.json");"
    load "$addr" 1 "$work/single-soldout-$rep.json"
    results[single-soldout]+="$(figures "$work/single-soldout-$rep.json");"
    stop_all
    read -r a1 a2 a3 < <(start_cluster "$rep")
    leader=$(leader_of "$a1" "$a2" "$a3")
    load "$leader" 2000000 "$work/cluster-reserve-$rep.json"
    results[cluster-reserve]+="$(figures "$work/cluster-reserve-$rep.json");"
    load "$leader" 1 "$work/cluster-soldout-$rep.json"
    results[cluster-soldout]+="$(figures "$work/cluster-soldout-$rep.json");"
    # One client per node at once, each on its own sold-out deal (created through that node).
    for a in "$a1" "$a2" "$a3"; do load "$a" 1 "$work/cluster-all-$rep-${a##*:}.json" & done
    wait
    sum=0
    for a in "$a1" "$a2" "$a3"; do
        read -r served _ < <(figures "$work/cluster-all-$rep-${a##*:}.json")
        sum=$((sum + served))
    done
    results[cluster-soldout-all]+="$sum 0;"
    stop_all
    echo "rep $rep: ${results[*]}"
done

python3 - "${results[single-reserve]}" "${results[cluster-reserve]}" "${results[single-soldout]}" \
    "${results[cluster-soldout]}" "${results[cluster-soldout-all]}" <<'PY'
import statistics, sys
names = ["single node, reserve", "3-node cluster, reserve (leader)", "single node, sold-out",
         "3-node cluster, sold-out (leader alone)", "3-node cluster, sold-out (all three nodes)"]
rows = []
for name, raw in zip(names, sys.argv[1:]):
    runs = [tuple(float(x) for x in r.split()) for r in raw.strip(";").split(";") if r]
    served = statistics.median(r[0] for r in runs)
    p99 = statistics.median(r[1] for r in runs)
    rows.append((name, served, p99, [r[0] for r in runs]))
print("| run | served/s (median) | reserve p99 ms (median) | runs |")
print("|---|---|---|---|")
for name, served, p99, runs in rows:
    print(f"| {name} | {served:,.0f} | {p99:.2f} | {', '.join(f'{x:,.0f}' for x in runs)} |")
print()
print(f"replication cost, reserve: cluster/single = {rows[1][1] / rows[0][1]:.2f}")
print(f"sold-out from all three nodes / leader alone = {rows[4][1] / rows[3][1]:.2f}")
PY
