#!/usr/bin/env bash
# What a checkpoint of a large state does to the reserve latency (issue 12): a server on one
# core ($SERVER_CPU) with $HOLDS open holds, strict durability, a steady open-loop run of
# livestock-load ($RATE reserves/s for $RUN_MS ms, on $LOAD_CPU; 60% of the holds confirmed,
# 20% released) while a checkpoint is written every 3 s, against the same run with no
# checkpoint in it. Rows alternate, $REPS repetitions; the table gives each row's reserve p99
# (median, min-max) and the ratio to the row without checkpoints.
#
#   scripts/checkpoint-stall.sh                               # REPS=3: about 12 minutes
#   BEFORE_BIN_DIR=/other/target/release scripts/checkpoint-stall.sh   # adds a "before" row
#
# The holds are made first with wrk (a deal of 3,000,000 units whose holds last an hour, a new
# user per request), then the measured run drives a deal of its own.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${REPS:-3}
HOLDS=${HOLDS:-1000000}
RATE=${RATE:-5000}
RUN_MS=${RUN_MS:-20000}
INTERVAL_MS=${INTERVAL_MS:-3000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT:-18090}
OUT=${OUT:-$ROOT/target/checkpoint-stall}

log() { printf '%s checkpoint-stall: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# shellcheck source=lib/need.sh
. "$ROOT/scripts/lib/need.sh"
need wrk wrk
for tool in wrk taskset python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

if [ -z "${BIN_DIR:-}" ]; then
    log "building the release binaries"
    timeout 1800 cargo build --release --quiet -p livestock -p livestock-load
    BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
LOAD=$BIN_DIR/livestock-load
[ -x "$LOAD" ] || die "$LOAD was not built"

rm -rf "$OUT"
mkdir -p "$OUT"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    true
}
trap cleanup EXIT

# One run: args row binary-dir checkpoint-interval-ms rep. Prints the reserve p99 in µs.
run() {
    local row=$1 bin=$2/livestock interval_ms=$3 rep=$4 data=$OUT/data held
    [ -x "$bin" ] || die "$bin was not built"
    rm -rf "$data"
    taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
        --durability strict --checkpoint-interval-ms "$interval_ms" \
        --checkpoint-log-bytes 1000000000000 >"$OUT/server-$row-$rep.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf -X POST "http://127.0.0.1:$PORT/v1/deals" -H 'content-type: application/json' \
        -d '{"id":"fill","stock":3000000,"hold_ttl_ms":3600000,"hold_ttl_ms_max":3600000}' \
        >/dev/null || die "creating the deal failed"
    while :; do
        held=$(curl -sf "http://127.0.0.1:$PORT/v1/deals/fill" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["held"])')
        [ "$held" -ge "$HOLDS" ] && break
        local seconds=$(((HOLDS - held) / 20000 + 1))
        [ "$seconds" -gt 20 ] && seconds=20
        WRK_DYNAMIC=1 WRK_PREFIX="f$held" taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${seconds}s" \
            -s "$ROOT/benches/peers/wrk.lua" "http://127.0.0.1:$PORT/v1/deals/fill/reserve" \
            >/dev/null
    done
    sleep 2
    taskset -c "$LOAD_CPU" "$LOAD" --target "127.0.0.1:$PORT" --profile steady --rate "$RATE" \
        --duration-ms "$RUN_MS" --stock 3000000 --hold-ttl-ms 1000 --payment-delay-ms 100..500 \
        --viewers 1000000 --quiet --json "$OUT/$row-$rep.json" >"$OUT/$row-$rep.txt" 2>&1 ||
        die "the load run failed: $(tail -3 "$OUT/$row-$rep.txt")"
    kill "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
    python3 -c '
import json, sys
report = json.load(open(sys.argv[1]))
print(next(l["p99_us"] for l in report["latency"] if l["op"] == "reserve" and l["outcome"] == "ok"))
' "$OUT/$row-$rep.json"
}

ROWS="checkpoints none"
[ -n "${BEFORE_BIN_DIR:-}" ] && ROWS="before $ROWS"
for rep in $(seq "$REPS"); do
    for row in $ROWS; do
        case $row in
            before) p99=$(run before "$BEFORE_BIN_DIR" "$INTERVAL_MS" "$rep") ;;
            checkpoints) p99=$(run checkpoints "$BIN_DIR" "$INTERVAL_MS" "$rep") ;;
            none) p99=$(run none "$BIN_DIR" 3600000 "$rep") ;;
        esac
        written=$(grep -c "checkpoint written lsn" "$OUT/server-$row-$rep.log" || true)
        log "$row rep $rep: reserve p99 $p99 µs ($written checkpoints in the whole run)"
        echo "$row $p99" >>"$OUT/p99.txt"
    done
done

python3 - "$OUT/p99.txt" "$HOLDS" "$RATE" "$INTERVAL_MS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, p99 = line.split()
    rows.setdefault(row, []).append(int(p99) / 1000)
holds, rate, interval = sys.argv[2:5]
print(f"{holds} open holds, {rate} reserves/s strict, checkpoints every {interval} ms "
      f"(none: no checkpoint in the run)")
print("| row | reserve p99 ms, median (min-max) | / none |")
print("|---|---|---|")
base = statistics.median(rows["none"])
for row, values in rows.items():
    med = statistics.median(values)
    print(f"| {row} | {med:.1f} ({min(values):.1f}-{max(values):.1f}) | {med / base:.2f}x |")
EOF
