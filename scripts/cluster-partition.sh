#!/usr/bin/env bash
# A network partition of the leader, on loopback, with nftables: three `livestock serve`
# processes; node 1 (made the leader: it campaigns first) runs as user `nobody`, so nftables
# can tell its packets from the others' by socket owner. The rules drop every peer packet
# between node 1 and the other two; clients still reach every node's HTTP port.
#
# Checks, and exits non-zero if one fails:
#   1. while partitioned, the isolated leader acknowledges nothing (its writes get 503
#      `no_leader` within the commit timeout), and the majority elects a leader and goes on
#      acknowledging writes;
#   2. after healing, the old leader rejoins as a follower, every node has the same applied
#      index and state digest, and the deal's counters are exactly the acknowledged writes
#      (the isolated side's unacknowledged decisions left no trace).
# Needs root (nftables); installs nftables if it is missing. Bounded: about 30 s.
#
#   sudo scripts/cluster-partition.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nft >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nftables >/dev/null
fi
cargo build --release -q -p livestock
BIN=$PWD/target/release/livestock
work=$(mktemp -d /tmp/livestock-partition.XXXXXX)
chmod 755 "$work"
pids=()
TABLE=livestock_partition
cleanup() {
    nft delete table inet "$TABLE" 2>/dev/null || true
    for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for n in 1 2 3; do echo "--- n$n"; tail -5 "$work/n$n.log"; done; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -a http peer
for n in 1 2 3; do http[$n]=$(free_port); peer[$n]=$(free_port); done
peers="1=127.0.0.1:${peer[1]},2=127.0.0.1:${peer[2]},3=127.0.0.1:${peer[3]}"
for n in 1 2 3; do
    mkdir -p "$work/n$n"
    # Node 1 campaigns first (shorter election timeout) so it leads when the partition starts.
    election=$([ "$n" = 1 ] && echo 100 || echo 1000)
    as=()
    if [ "$n" = 1 ]; then chown nobody "$work/n1"; as=(setpriv --reuid=nobody --regid=nogroup --clear-groups); fi
    "${as[@]}" "$BIN" serve --node-id "$n" --listen "127.0.0.1:${http[$n]}" \
        --peer-listen "127.0.0.1:${peer[$n]}" --peers "$peers" --data-dir "$work/n$n" \
        --heartbeat-interval-ms 50 --election-timeout-min-ms "$election" \
        > "$work/n$n.log" 2>&1 &
    pids+=($!)
done

status() { curl -s --max-time 2 "http://127.0.0.1:${http[$1]}/v1/cluster" || true; }
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read() or '{}'); print(d.get('$1'))"; }
# post NODE PATH KEY BODY: prints the HTTP status.
post() {
    curl -s -o "$work/last.json" -w '%{http_code}' --max-time 10 -X POST \
        -H 'Content-Type: application/json' -H "Idempotency-Key: $3" \
        "http://127.0.0.1:${http[$1]}$2" -d "$4"
}
wait_for() { # wait_for SECONDS COMMAND...
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.1; done
}
leads() { [ "$(status "$1" | field role)" = leader ]; }

wait_for 15 leads 1 || fail "node 1 did not become leader"
[ "$(post 2 /v1/deals create '{"id":"d1","stock":1000}')" = 201 ] || fail "create: $(cat "$work/last.json")"
acked=0
for i in $(seq 1 10); do
    [ "$(post 2 /v1/deals/d1/reserve "before-$i" "{\"user_id\":\"u$i\",\"qty\":1}")" = 201 ] || fail "reserve before"
    acked=$((acked + 1))
done
echo "before the partition: node 1 leads, $acked reserves acknowledged"

nobody_uid=$(id -u nobody)
nft add table inet "$TABLE"
nft add chain inet "$TABLE" out '{ type filter hook output priority 0; }'
nft add rule inet "$TABLE" out meta skuid "$nobody_uid" tcp dport "{ ${peer[2]}, ${peer[3]} }" drop
nft add rule inet "$TABLE" out meta skuid != "$nobody_uid" tcp dport "${peer[1]}" drop
echo "partitioned: node 1 cut off from nodes 2 and 3"

# The isolated leader acknowledges nothing.
isolated_ok=0
for i in $(seq 1 3); do
    started=$(date +%s%N)
    code=$(post 1 /v1/deals/d1/reserve "isolated-$i" "{\"user_id\":\"i$i\",\"qty\":1}")
    took=$(( ($(date +%s%N) - started) / 1000000 ))
    echo "  write to the isolated node 1: $code in $took ms ($(python3 -c "import json; print(json.load(open('$work/last.json'))['error']['code'])" 2>/dev/null || echo '?'))"
    [ "$code" = 201 ] && isolated_ok=$((isolated_ok + 1))
done
[ "$isolated_ok" = 0 ] || fail "the isolated leader acknowledged $isolated_ok writes"

# The majority goes on.
majority_leader() { leads 2 || leads 3; }
wait_for 15 majority_leader || fail "the majority elected no leader"
for i in $(seq 1 10); do
    code=$(post 2 /v1/deals/d1/reserve "majority-$i" "{\"user_id\":\"m$i\",\"qty\":1}")
    [ "$code" = 201 ] || fail "majority write $i: $code $(cat "$work/last.json")"
    acked=$((acked + 1))
done
echo "the majority elected node $(status 2 | field leader_id) and acknowledged 10 more writes"

nft delete table inet "$TABLE"
echo "healed"
converged() {
    local a b c
    a=$(status 1 | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['applied_index'], d['state_digest'], d['role'])")
    b=$(status 2 | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['applied_index'], d['state_digest'])")
    c=$(status 3 | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['applied_index'], d['state_digest'])")
    [ "${a% *}" = "$b" ] && [ "$b" = "$c" ] && [ "${a##* }" = follower ]
}
wait_for 20 converged || fail "no convergence after healing: $(status 1) $(status 2) $(status 3)"
held=$(curl -s "http://127.0.0.1:${http[1]}/v1/deals/d1" | field held)
[ "$held" = "$acked" ] || fail "held $held, acknowledged $acked: the isolated side left a trace"
echo "converged: node 1 is a follower, every digest equal, held = $held = acknowledged writes"
echo "PASS"
