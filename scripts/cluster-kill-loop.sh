#!/usr/bin/env bash
# The cluster kill loop: three `livestock serve` processes on loopback, `livestock-load` driving
# all three, and in each cycle the leader (every fourth cycle a follower) killed with SIGKILL in
# the middle of the load and restarted. After each cycle it checks, from the load's own
# verification (its ledger against the cluster, every hold read back), that no acknowledged
# change is lost and nothing is oversold, and that all three nodes reach the same state digest
# at the same applied index. At the end it prints a tally with the failover times (kill -9 of
# the leader to the first write acknowledged after it, measured by the load: the script marks
# the kill with `kill -USR1`).
#
#   scripts/cluster-kill-loop.sh 200
#
# Builds the release binaries once (`cargo build --release --workspace`). Nodes listen on
# 127.0.0.1:18081-18083 (peers 19081-19083; PORT_BASE=18080 moves both), their data and logs
# and each cycle's report are under target/cluster-kill-loop/ (wiped at the start, kept after a
# failure). Settings: RATE (reserve arrivals per second, 400), STOCK (units per cycle's deal,
# 150: it sells out), RUN_MS (arrival phase per cycle, 3000). Every wait is bounded; the nodes
# are killed on exit. Exits 0 if every cycle passed, 1 at the first cycle that did not.
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=${1:-20}
rate=${RATE:-400}
stock=${STOCK:-150}
run_ms=${RUN_MS:-3000}
port_base=${PORT_BASE:-18080}
dir=target/cluster-kill-loop
bin=${CARGO_TARGET_DIR:-target}/release

for tool in curl jq; do
    command -v "$tool" > /dev/null || { echo "cluster-kill-loop: needs $tool" >&2; exit 2; }
done
[[ $cycles =~ ^[0-9]+$ ]] && (( cycles > 0 )) || { echo "usage: $0 CYCLES" >&2; exit 2; }

cargo build --release --workspace --quiet

http_port() { echo $((port_base + $1)); }
peer_port() { echo $((port_base + 1000 + $1)); }
peers="1=127.0.0.1:$(peer_port 1),2=127.0.0.1:$(peer_port 2),3=127.0.0.1:$(peer_port 3)"
targets="127.0.0.1:$(http_port 1),127.0.0.1:$(http_port 2),127.0.0.1:$(http_port 3)"

for n in 1 2 3; do
    if curl -s -m 1 -o /dev/null "http://127.0.0.1:$(http_port "$n")/healthz"; then
        echo "cluster-kill-loop: something already listens on port $(http_port "$n")" >&2
        exit 2
    fi
done
rm -rf "$dir"
mkdir -p "$dir"

declare -A node_pid=()
load_pid=

start_node() {
    local n=$1
    "$bin/livestock" serve --node-id "$n" --listen "127.0.0.1:$(http_port "$n")" \
        --peer-listen "127.0.0.1:$(peer_port "$n")" --peers "$peers" \
        --data-dir "$dir/n$n" >> "$dir/n$n.log" 2>&1 &
    node_pid[$n]=$!
}

kill_node() {
    local n=$1
    kill -9 "${node_pid[$n]}" 2> /dev/null || true
    wait "${node_pid[$n]}" 2> /dev/null || true
    unset "node_pid[$n]"
}

# Only the processes this script started, by pid.
cleanup() {
    [[ -n $load_pid ]] && kill -9 "$load_pid" 2> /dev/null || true
    for n in "${!node_pid[@]}"; do
        kill -9 "${node_pid[$n]}" 2> /dev/null || true
    done
    wait 2> /dev/null || true
}
trap cleanup EXIT

status() { curl -s -m 2 "http://127.0.0.1:$(http_port "$1")/v1/cluster" || true; }

# The leader all three nodes name, once it says it leads; waits up to 30 s.
leader() {
    local deadline=$((SECONDS + 30)) ids
    while (( SECONDS < deadline )); do
        ids=$(for n in 1 2 3; do jq -r '.leader_id // "none"' <<< "$(status "$n")" 2> /dev/null \
            || echo none; done)
        # Three answers naming one node, which says it leads.
        if [[ $(grep -c '^[123]$' <<< "$ids") == 3 && $(sort -u <<< "$ids" | wc -l) == 1 ]]; then
            ids=$(head -1 <<< "$ids")
            if [[ $(jq -r .role <<< "$(status "$ids")" 2> /dev/null) == leader ]]; then
                echo "$ids"
                return 0
            fi
        fi
        sleep 0.1
    done
    echo "cluster-kill-loop: no agreed leader within 30 s" >&2
    return 1
}

# Waits up to 30 s until the three nodes report the same applied index and state digest;
# prints "index digest".
converged() {
    local deadline=$((SECONDS + 30)) views
    while (( SECONDS < deadline )); do
        views=$(for n in 1 2 3; do jq -r '"\(.applied_index) \(.state_digest)"' \
            <<< "$(status "$n")" 2> /dev/null || echo "none"; done)
        # Three answers, all alike.
        if [[ $(grep -c '^[0-9]* [0-9a-f]*$' <<< "$views") == 3 \
            && $(sort -u <<< "$views" | wc -l) == 1 ]]; then
            head -1 <<< "$views"
            return 0
        fi
        sleep 0.2
    done
    echo "cluster-kill-loop: the nodes did not converge within 30 s:" >&2
    for n in 1 2 3; do echo "  node $n: $(status "$n")" >&2; done
    return 1
}

fail() {
    echo "cycle $cycle: FAILED: $*" >&2
    echo "  data, logs and reports kept in $dir" >&2
    exit 1
}

# The p-th percentile of the numbers on stdin (nearest rank above).
percentile() {
    sort -n | awk -v p="$1" '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        i = int((NR - 1) * p / 100); if (i < (NR - 1) * p / 100) i++
        print v[i + 1] }'
}

for n in 1 2 3; do start_node "$n"; done
leader > /dev/null || fail "the cluster did not form"
echo "cluster up: nodes at $targets; $cycles cycles of $run_ms ms at $rate reserves/s on $stock units"

acked_total=0
lost_total=0
oversold_total=0
failovers=()
for ((cycle = 1; cycle <= cycles; cycle++)); do
    lead=$(leader) || fail "no leader before the kill"
    victim=$lead
    role=leader
    if (( cycle % 4 == 0 )); then
        for n in 1 2 3; do [[ $n != "$lead" ]] && { victim=$n; break; }; done
        role=follower
    fi
    report="$dir/cycle-$cycle.json"
    "$bin/livestock-load" --target "$targets" --profile steady --rate "$rate" \
        --duration-ms "$run_ms" --stock "$stock" --viewers 5000 --hold-ttl-ms 1500 \
        --payment-delay-ms 100..800 --connections 16 --seed "$cycle" --quiet \
        --json "$report" > "$dir/cycle-$cycle.txt" 2>&1 &
    load_pid=$!
    # Mid-run: between 30% and 60% of the arrival phase.
    kill_ms=$((run_ms * 3 / 10 + RANDOM % (run_ms * 3 / 10)))
    sleep "$(awk -v ms="$kill_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
    kill_node "$victim"
    # The load takes the instant: failover_ms is from here to its first write acknowledged
    # after it (a write answered by a new leader, not a straggler of the old one).
    kill -USR1 "$load_pid" 2> /dev/null || fail "the load ended before the kill (see $dir/cycle-$cycle.txt)"
    sleep 0.7
    start_node "$victim"
    # The load stops by itself; this bound only guards the script.
    deadline=$((SECONDS + 120))
    while kill -0 "$load_pid" 2> /dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    kill -0 "$load_pid" 2> /dev/null && fail "the load did not finish within 120 s"
    rc=0
    wait "$load_pid" || rc=$?
    load_pid=
    [[ -s $report ]] || fail "no report (load exit $rc): $(tail -5 "$dir/cycle-$cycle.txt")"
    passed=$(jq -r .verification.passed "$report")
    lost=$(jq -r '.verification.lost_changes // "unchecked"' "$report")
    oversold=$(jq -r '.verification.oversell_units + .verification.oversell_units_client' "$report")
    acked=$(jq -r '[.latency[] | select(.outcome == "ok") | .count] | add // 0' "$report")
    retries=$(jq -r .requests.retries "$report")
    failover=$(jq -r '.marks[0].failover_ms | if . == null then "none" else (. + 0.5 | floor) end' \
        "$report")
    [[ $lost =~ ^[0-9]+$ ]] && lost_total=$((lost_total + lost))
    [[ $oversold =~ ^[0-9]+$ ]] && oversold_total=$((oversold_total + oversold))
    acked_total=$((acked_total + acked))
    if [[ $rc != 0 || $passed != true || $lost != 0 || $oversold != 0 ]]; then
        jq -r '.verification.problems[]' "$report" | sed 's/^/  problem: /' >&2
        fail "load exit $rc, verification passed=$passed, lost $lost, oversold $oversold"
    fi
    if [[ $role == leader ]]; then
        [[ $failover != none ]] || fail "no write was acknowledged after the leader's kill"
        failovers+=("$failover")
    fi
    view=$(converged) || fail "the replicas did not converge"
    printf 'cycle %d: killed %s (node %s); %s acknowledged writes, %s retries, failover %s ms; ' \
        "$cycle" "$role" "$victim" "$acked" "$retries" "$failover"
    echo "PASS, lost 0, oversold 0; applied index ${view% *}, digest ${view#* } on all 3"
done

p50=$(printf '%s\n' "${failovers[@]}" | percentile 50)
p99=$(printf '%s\n' "${failovers[@]}" | percentile 99)
max=$(printf '%s\n' "${failovers[@]}" | percentile 100)
echo "kill loop: $cycles cycles, $acked_total acknowledged changes, $lost_total lost, \
$oversold_total oversold; failover (kill -9 of the leader to the first acknowledged write) over \
${#failovers[@]} kills: p50 $p50 ms, p99 $p99 ms, max $max ms"
