#!/usr/bin/env bash
# The peer benchmark's HTTP rows again with wrk, an external client, so that the figures do
# not depend on our own load tool. Closed loop: $CONNECTIONS connections on one wrk thread
# pinned to $LOAD_CPU, each server pinned to $SERVER_CPU, on 127.0.0.1, for $WRK_S seconds per
# row (after a ${WRK_WARMUP_S} s warm-up), $REPS repetitions alternated row by row; the table
# gives the median (and min-max) of each row and the ratios of the medians.
#
# Rows (requests from benches/peers/wrk.lua):
#   ceiling            livestock-ceiling: bare hyper, a fixed 201 answer     (fixed request)
#   sold-out           livestock (strict): reserves of a deal with no stock   (fixed request)
#   ceiling-dynamic    the ceiling again with wrk building every request in Lua, the client
#                      of the rows below (wrk's Lua costs it a third of its rate: compare
#                      those rows with this one)
#   sold-out-keyed     sold out, a new Idempotency-Key each (remembered)     (built in Lua)
#   reserve-strict     livestock --durability strict, a new user each          (built in Lua)
#   reserve-relaxed    livestock --durability relaxed, a new user each         (built in Lua)
#   redis-always       Redis + the peer run's Lua reserve (crates/load/src/peers/), AOF with
#   redis-everysec     appendfsync always / everysec / no AOF, driven by redis-benchmark
#   redis-off          (the same closed loop: $CONNECTIONS connections, one client thread on
#                      the load core; a random user each, EVALSHA): $REDIS_REQUESTS requests
#                      per run ($REDIS_WARMUP before), since redis-benchmark counts requests,
#                      not seconds. Its p90 is n/a (it reports p95).
#
#   benches/peers/wrk.sh                    # REPS=3, 8 s rows: about 4 minutes
#   REPS=1 WRK_S=3 benches/peers/wrk.sh     # quick
#   BIN_DIR=/other/target/release benches/peers/wrk.sh   # another build (before/after)
# Writes $WRK_OUT/*.txt (wrk's output) and the table to $WRK_DOC (stdout if empty).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/benches/peers

REPS=${REPS:-3}
WRK_S=${WRK_S:-8}
WRK_WARMUP_S=${WRK_WARMUP_S:-2}
CONNECTIONS=${CONNECTIONS:-64}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ROWS=${ROWS:-"ceiling sold-out ceiling-dynamic sold-out-keyed reserve-strict reserve-relaxed redis-always redis-everysec redis-off"}
REDIS_REQUESTS=${REDIS_REQUESTS:-$((WRK_S * 30000))}
REDIS_WARMUP=${REDIS_WARMUP:-$((WRK_WARMUP_S * 30000))}
WRK_OUT=${WRK_OUT:-$ROOT/target/peers-wrk}
WRK_DOC=${WRK_DOC:-}
BUILD=${BUILD:-1}

log() { printf '%s wrk: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# shellcheck source=../../scripts/lib/need.sh
. "$ROOT/scripts/lib/need.sh"
need wrk wrk
if [[ " $ROWS " == *" redis-"* ]]; then
    need redis-benchmark redis-server redis-tools
fi
for tool in wrk taskset python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

if [ -z "${BIN_DIR:-}" ]; then
    if [ "$BUILD" = 1 ]; then
        log "building the release binaries"
        timeout 1800 cargo build --release --quiet -p livestock -p livestock-load
    fi
    BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
BIN=$BIN_DIR/livestock
CEILING=$BIN_DIR/livestock-ceiling
for bin in "$BIN" "$CEILING"; do
    [ -x "$bin" ] || die "$bin was not built"
done

WORK=$(mktemp -d /tmp/livestock-wrk.XXXXXX)
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts the server of row $1 on a fresh data directory and makes its deal; sets PORT, DEAL.
start_server() {
    local row=$1 data=$WORK/data stock durability=strict
    PORT=$(python3 "$HERE/peers.py" free-port)
    rm -rf "$data"
    mkdir -p "$data"
    case $row in
        ceiling | ceiling-dynamic)
            taskset -c "$SERVER_CPU" "$CEILING" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
            SERVER_PID=$!
            python3 "$HERE/peers.py" wait-port "$PORT" 30 || die "the ceiling did not start"
            DEAL=d1
            return
            ;;
        redis-always | redis-everysec | redis-off)
            local aof=(--appendonly yes --appendfsync "${row#redis-}")
            [ "$row" = redis-off ] && aof=(--appendonly no)
            taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$PORT" \
                --protected-mode yes --dir "$data" --save '' "${aof[@]}" --daemonize no \
                --logfile "" --loglevel warning >"$WORK/server.log" 2>&1 &
            SERVER_PID=$!
            python3 "$HERE/peers.py" wait-port "$PORT" 30 || die "redis did not start"
            DEAL=d1
            # The peer run's reserve script, as crates/load/src/redis.rs loads it (the common
            # part prepended); the deal as the load tool creates it, with no per-user limit
            # and a hold time no run reaches, as livestock's deal here.
            REDIS_SHA=$(redis-cli -p "$PORT" SCRIPT LOAD \
                "$(cat "$ROOT/crates/load/src/peers/redis-common.lua" "$ROOT/crates/load/src/peers/redis-reserve.lua")")
            redis-cli -p "$PORT" HSET "ls:deal:$DEAL" stock 2000000 available 2000000 held 0 \
                sold 0 limit 0 ttl_ms 600000 >/dev/null || die "creating the Redis deal failed"
            return
            ;;
        sold-out | sold-out-keyed) stock=0 ;;
        reserve-strict) stock=2000000 ;;
        reserve-relaxed) stock=2000000 durability=relaxed ;;
        *) die "unknown row $row" ;;
    esac
    taskset -c "$SERVER_CPU" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
        --durability "$durability" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    python3 "$HERE/peers.py" wait-port "$PORT" 30 || { tail -20 "$WORK/server.log" >&2; die "livestock did not start"; }
    DEAL=d1
    curl -sf -X POST "http://127.0.0.1:$PORT/v1/deals" -H 'content-type: application/json' \
        -d "{\"id\":\"$DEAL\",\"stock\":$stock,\"hold_ttl_ms\":600000,\"hold_ttl_ms_max\":600000}" \
        >/dev/null || die "creating the deal failed"
}

# One row once: warm-up, then the measured run. Args: row rep.
run_row() {
    local row=$1 rep=$2 keyed=0 dynamic=1
    [ "$row" = sold-out-keyed ] && keyed=1
    case $row in ceiling | sold-out) dynamic=0 ;; esac
    start_server "$row"
    if [[ $row == redis-* ]]; then
        local bench=(redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$CONNECTIONS" -r 1000000 --csv
            EVALSHA "$REDIS_SHA" 4 "ls:deal:$DEAL" "ls:users:$DEAL" ls:expiries ls:hold_seq
            "$DEAL" "u:__rand_int__" 1 600000)
        taskset -c "$LOAD_CPU" timeout $((WRK_WARMUP_S + 60)) "${bench[@]:0:9}" -n "$REDIS_WARMUP" \
            "${bench[@]:9}" >/dev/null 2>&1 || true
        local held_before
        held_before=$(redis-cli -p "$PORT" HGET "ls:deal:$DEAL" held)
        taskset -c "$LOAD_CPU" timeout $((WRK_S * 10 + 60)) "${bench[@]:0:9}" -n "$REDIS_REQUESTS" \
            "${bench[@]:9}" >"$WRK_OUT/$row-r$rep.txt" 2>&1 || log "$row r$rep: redis-benchmark exited $?"
        # Every request must have made a hold: the count goes in the table.
        echo "holds: $(($(redis-cli -p "$PORT" HGET "ls:deal:$DEAL" held) - held_before)) $REDIS_REQUESTS" \
            >>"$WRK_OUT/$row-r$rep.txt"
        stop_server
        return
    fi
    local url="http://127.0.0.1:$PORT/v1/deals/$DEAL/reserve"
    # Each run's users and keys are its own (a prefix per run): a warm-up's holds do not
    # count against the measured run's users.
    WRK_PREFIX="w$rep" WRK_KEYED=$keyed WRK_DYNAMIC=$dynamic taskset -c "$LOAD_CPU" timeout $((WRK_WARMUP_S + 30)) \
        wrk -t1 -c"$CONNECTIONS" -d"${WRK_WARMUP_S}s" -s "$HERE/wrk.lua" "$url" >/dev/null 2>&1 || true
    WRK_PREFIX="m$rep" WRK_KEYED=$keyed WRK_DYNAMIC=$dynamic taskset -c "$LOAD_CPU" timeout $((WRK_S + 30)) \
        wrk -t1 -c"$CONNECTIONS" -d"${WRK_S}s" --latency -s "$HERE/wrk.lua" "$url" \
        >"$WRK_OUT/$row-r$rep.txt" 2>&1 || log "$row r$rep: wrk exited $?"
    stop_server
}

rm -rf "$WRK_OUT"
mkdir -p "$WRK_OUT"
log "rows: $ROWS; $REPS repetition(s) of ${WRK_S} s; $CONNECTIONS connections"
for rep in $(seq "$REPS"); do
    for row in $ROWS; do
        log "rep $rep: $row"
        run_row "$row" "$rep"
    done
done

table=$(python3 "$HERE/peers.py" wrk-summary "$WRK_OUT" "$REPS" "$WRK_S" "$CONNECTIONS" $ROWS)
if [ -n "$WRK_DOC" ]; then
    printf '%s\n' "$table" >"$WRK_DOC"
    log "wrote $WRK_DOC"
else
    printf '%s\n' "$table"
fi
