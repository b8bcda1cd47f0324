#!/usr/bin/env bash
# Live feed during a drop (issue 13): a release server on core $SERVER_CPU, livestock-load on
# core $LOAD_CPU opening $SUBSCRIBERS live-feed subscribers (SSE, GET /v1/deals/{id}/live)
# before a drop of $STOCK units ($RATE taps/s at the peak, $VIEWERS viewers), $REPS times on a
# fresh server each. Prints each run's figures and the medians: the sold_out lag (from the
# tool's first sold_out answer to each subscriber's sold_out event), subscribers that missed
# it, connection errors, events per subscriber, and the server's RSS per subscriber.
#
#   scripts/feed-drop.sh                       # REPS=3, 10,000 subscribers: about a minute
#   SUBSCRIBERS=2000 REPS=1 scripts/feed-drop.sh
#   FEED_INTERVAL_MS=1000 scripts/feed-drop.sh          # counter events 10x rarer
#
# Each subscriber is a socket in both processes: the script raises `ulimit -n` to what it
# needs (the hard limit must allow it).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${REPS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
STOCK=${STOCK:-5000}
RATE=${RATE:-20000}
VIEWERS=${VIEWERS:-200000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# The server's --feed-interval-ms (its default: 100): counter changes at most this often.
FEED_INTERVAL_MS=${FEED_INTERVAL_MS:-100}
PORT=${PORT:-18093}
OUT=${OUT:-$ROOT/target/feed-drop}

log() { printf '%s feed-drop: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

for tool in taskset python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
if [ -z "${BIN_DIR:-}" ]; then
    log "building the release binaries"
    timeout 1800 cargo build --release --quiet -p livestock -p livestock-load
    BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
for bin in livestock livestock-load; do
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin was not built"
done
# Subscribers, the load's connections, the log and a margin.
ulimit -n $((SUBSCRIBERS + 2048)) || die "ulimit -n $((SUBSCRIBERS + 2048)) is above the hard limit"

# The server's bounds with room to spare, never below their defaults (5,000 and 10,000).
FEED_MAX=$((2 * SUBSCRIBERS > 5000 ? 2 * SUBSCRIBERS : 5000))
CONNECTIONS_MAX=$((3 * SUBSCRIBERS > 10000 ? 3 * SUBSCRIBERS : 10000))

rm -rf "$OUT"
mkdir -p "$OUT"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    true
}
trap cleanup EXIT

for rep in $(seq "$REPS"); do
    log "run $rep: load average $(cut -d' ' -f1-3 /proc/loadavg) before it"
    data=$OUT/data-$rep
    taskset -c "$SERVER_CPU" "$BIN_DIR/livestock" serve --listen "127.0.0.1:$PORT" \
        --data-dir "$data" --feed-subscribers-max "$FEED_MAX" --connections-max "$CONNECTIONS_MAX" \
        --feed-interval-ms "$FEED_INTERVAL_MS" \
        >"$OUT/server-$rep.log" 2>&1 &
    SERVER_PID=$!
    status=0
    taskset -c "$LOAD_CPU" "$BIN_DIR/livestock-load" --target "127.0.0.1:$PORT" --profile drop \
        --rate "$RATE" --stock "$STOCK" --viewers "$VIEWERS" --feed-subscribers "$SUBSCRIBERS" \
        --server-pid "$SERVER_PID" --quiet --json "$OUT/run-$rep.json" >"$OUT/run-$rep.txt" \
        2>&1 || status=$?
    kill "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
    rm -rf "$data"
    [ -f "$OUT/run-$rep.json" ] || die "run $rep failed: $(tail -3 "$OUT/run-$rep.txt")"
    log "run $rep: exit $status; $(grep -E '^(requests|rate over|sell-out)' "$OUT/run-$rep.txt" | tr '\n' ' ')"
    log "run $rep: $(grep -A3 '^live feed' "$OUT/run-$rep.txt" | tr -s ' ' | tr '\n' ' ')"
done

python3 - "$OUT" "$REPS" <<'EOF'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{out}/run-{i}.json")) for i in range(1, reps + 1)]
rows = [
    ("sold_out lag p50, ms", lambda r: r["feed"]["sold_out_lag"]["p50_us"] / 1e3),
    ("sold_out lag p99, ms", lambda r: r["feed"]["sold_out_lag"]["p99_us"] / 1e3),
    ("sold_out lag max, ms", lambda r: r["feed"]["sold_out_lag"]["max_us"] / 1e3),
    ("subscribers that missed sold_out", lambda r: r["feed"]["sold_out_missed"]),
    ("subscribers ahead of the client", lambda r: r["feed"]["ahead_of_client"]),
    ("connection errors", lambda r: r["feed"]["connection_errors"]),
    ("stock events per subscriber, mean", lambda r: r["feed"]["events_mean"]),
    ("server RSS per subscriber at rest, KiB",
     lambda r: r["feed"]["server_rss_kib"]["per_subscriber_kib"]),
    ("server RSS per subscriber at the end, KiB",
     lambda r: r["feed"]["server_rss_kib"]["per_subscriber_end_kib"]),
    ("hot deal sold out at, ms", lambda r: r["sell_out"]["hot_deal_ms"]),
    ("reserve ok p99, ms", lambda r: next(
        l["p99_us"] for l in r["latency"] if l["op"] == "reserve" and l["outcome"] == "ok") / 1e3),
    ("served per s over the arrival phase", lambda r: round(r["rates"]["served_per_s"])),
    ("verification passed", lambda r: r["verification"]["passed"]),
]
print(f"| figure | median | runs |")
print("|---|---|---|")
def figure(get, run):
    try:
        return get(run)
    except (TypeError, KeyError):
        return None  # no sell-out, or no RSS read

for name, get in rows:
    values = [figure(get, r) for r in runs]
    # A figure of a run that never sold out (its lag, count 0) says nothing: left out.
    sold = [v for v, r in zip(values, runs) if r["sell_out"]["hot_deal_ms"] is not None]
    if "lag" in name:
        values = sold
    if not values or any(v is None for v in values):
        print(f"| {name} | n/a | {', '.join(str(v) for v in values)} |")
    elif isinstance(values[0], bool):
        print(f"| {name} | {all(values)} | {', '.join(str(v) for v in values)} |")
    else:
        med = statistics.median(values)
        print(f"| {name} | {med:g} | {', '.join(f'{v:g}' for v in values)} |")
EOF
