#!/usr/bin/env bash
# The peer benchmark: the same open-loop workload, from the same client (`livestock-load`) with
# the same schedule, against
#   livestock-strict    livestock serve --durability strict   (fsync before every ack)
#   livestock-relaxed   livestock serve --durability relaxed  (fsync every 10 ms)
#   ceiling             livestock-ceiling: bare hyper, fixed answers, same runtime settings
#   redis-always        redis-server + Lua scripts, appendfsync always
#   redis-everysec      redis-server + Lua scripts, appendfsync everysec
#   redis-off           redis-server + Lua scripts, no AOF, no snapshots
#   postgres            PostgreSQL + PL/pgSQL functions, synchronous_commit = on
# The load speaks each server's own protocol (`--backend http|redis|postgres`; the scripts and
# the schema are in crates/load/src/peers/). Each server runs pinned to one core (taskset -c
# $SERVER_CPU), the load to the other ($LOAD_CPU), on 127.0.0.1 only, on a free port.
#
# Per repetition and configuration, each phase on a freshly started server (fresh data),
# warmed by $WARMUP_MS ms of the same load at the phase's rate (not measured):
#   capacity  --find-capacity: steady steps growing x2 until the reserve p99 breaks $SLO_MS
#             (or errors exceed 0.1%), then bisection: the system's own peak (a step that
#             breaks is tried once more, so one stall does not end the search)
#   saturation  the same search from the peak with a loose SLO ($SAT_SLO_MS ms, 1% errors):
#             its steps overload the server, and the most any step served is the throughput
#             at saturation (SATURATION=0 skips it)
#   p50       steady at 50% of that peak for $RUN_MS
#   p90       steady at 90% of that peak for $RUN_MS
#   soldout   steady at 90% of the peak on a deal with stock for $SOLD_OUT_PERCENT% of the
#             run's arrivals: it sells out early, and the rest of the run measures the sold-out
#             answer (releases and expiries put a few units back on sale)
# Server CPU per request comes from /proc/<pid>/stat (utime+stime, with the children's, over
# the server's process tree) read before and after each run.
#
# Writes a JSON per run to $OUT, then the summary (medians, min-max, ratios) to $DOC and the
# plot to $PLOT. Installs what is missing (redis-server; PostgreSQL if its server binaries are
# absent). Every step is bounded in time; every server it started is stopped on exit.
#
#   benches/peers/run.sh                       # the full run: REPS=3 (about 50 minutes)
#   REPS=1 STEP_MS=1000 RUN_MS=2000 WARMUP_MS=500 benches/peers/run.sh  # quick: ~7 minutes
#   CONFIGS="livestock-strict redis-always" benches/peers/run.sh
#   WRK=0 benches/peers/run.sh                 # without the wrk rows (benches/peers/wrk.sh),
#                                              # which are otherwise appended to $DOC
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/benches/peers

REPS=${REPS:-3}
STEP_MS=${STEP_MS:-3000}
RUN_MS=${RUN_MS:-10000}
SLO_MS=${SLO_MS:-10}
SAT_SLO_MS=${SAT_SLO_MS:-100}
SATURATION=${SATURATION:-1}
WARMUP_MS=${WARMUP_MS:-2000}
START_RATE=${START_RATE:-250}
MAX_RATE=${MAX_RATE:-100000}
CONFIGS=${CONFIGS:-"livestock-strict livestock-relaxed ceiling redis-always redis-everysec redis-off postgres"}
CONNECTIONS=${CONNECTIONS:-64}
DEALS=${DEALS:-1}
VIEWERS=${VIEWERS:-1000000}
PER_USER_LIMIT=${PER_USER_LIMIT:-2}
HOLD_TTL_MS=${HOLD_TTL_MS:-2000}
PAYMENT_DELAY_MS=${PAYMENT_DELAY_MS:-100..500}
SOLD_OUT_PERCENT=${SOLD_OUT_PERCENT:-10}
REQUEST_TIMEOUT_MS=${REQUEST_TIMEOUT_MS:-2000}
SEED=${SEED:-20260501}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$ROOT/target/peers}
DOC=${DOC:-$ROOT/docs/benchmarks-peers.md}
PLOT=${PLOT:-$ROOT/docs/peers.svg}

log() { printf '%s peers: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# ------------------------------------------------------------------ dependencies

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "need $* and there is no apt-get"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        timeout 600 $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive timeout 900 $sudo apt-get install -y -qq "$@" >/dev/null
}

pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then
            echo "$dir"
            return
        fi
    done
}

needs() { case " $CONFIGS " in *" $1"*) return 0 ;; *) return 1 ;; esac; }

for tool in taskset python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
if needs redis && ! command -v redis-server >/dev/null; then
    apt_install redis-server
fi
if needs postgres; then
    [ -n "$(pg_bindir)" ] || apt_install postgresql
    PG_BIN=$(pg_bindir)
    [ -n "$PG_BIN" ] || die "no PostgreSQL server binaries after installing postgresql"
    if [ "$(id -u)" -eq 0 ]; then
        # initdb and postgres refuse to run as root: run them as the package's user.
        id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user"
        AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    else
        AS_PG=()
    fi
fi

log "building the release binaries"
timeout 1800 cargo build --release --quiet -p livestock -p livestock-load
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/livestock
LOAD=$TARGET_DIR/release/livestock-load
CEILING=$TARGET_DIR/release/livestock-ceiling
for bin in "$BIN" "$LOAD" "$CEILING"; do
    [ -x "$bin" ] || die "$bin was not built"
done

# ------------------------------------------------------------------ servers

WORK=$(mktemp -d /tmp/livestock-peers.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
PG_DATA=""

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        # postgres: SIGINT is its fast shutdown; the others stop on SIGTERM.
        kill -INT "$SERVER_PID" 2>/dev/null || true
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

free_port() { python3 "$HERE/peers.py" free-port; }

wait_for_port() { # port seconds
    python3 "$HERE/peers.py" wait-port "$1" "$2" || {
        log "the server did not open port $1; its log:"
        tail -20 "$WORK/server.log" >&2 || true
        return 1
    }
}

# Starts configuration $1 on a fresh data directory; sets SERVER_PID, PORT, BACKEND.
start_server() {
    local config=$1 data
    PORT=$(free_port)
    data=$WORK/data-$config
    rm -rf "$data"
    mkdir -p "$data"
    case $config in
        livestock-strict | livestock-relaxed)
            BACKEND=http
            taskset -c "$SERVER_CPU" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
                --durability "${config#livestock-}" >"$WORK/server.log" 2>&1 &
            ;;
        ceiling)
            BACKEND=http
            taskset -c "$SERVER_CPU" "$CEILING" --listen "127.0.0.1:$PORT" \
                >"$WORK/server.log" 2>&1 &
            ;;
        redis-always | redis-everysec | redis-off)
            BACKEND=redis
            local aof=(--appendonly yes --appendfsync "${config#redis-}")
            [ "$config" = redis-off ] && aof=(--appendonly no)
            taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$PORT" \
                --protected-mode yes --dir "$data" --save '' "${aof[@]}" --daemonize no \
                --logfile "" --loglevel warning >"$WORK/server.log" 2>&1 &
            ;;
        postgres)
            BACKEND=postgres
            # initdb once per repetition, copied for each phase: a fresh database, quickly.
            if [ -z "$PG_DATA" ]; then
                PG_DATA=$WORK/pg-template
                rm -rf "$PG_DATA"
                mkdir -p "$PG_DATA"
                [ "$(id -u)" -ne 0 ] || chown postgres: "$PG_DATA"
                timeout 120 "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
                    --auth=trust --no-sync >"$WORK/initdb.log" 2>&1 ||
                    { cat "$WORK/initdb.log" >&2; return 1; }
            fi
            rm -rf "$data"
            cp -a "$PG_DATA" "$data"
            taskset -c "$SERVER_CPU" "${AS_PG[@]}" "$PG_BIN/postgres" -D "$data" -p "$PORT" \
                -c listen_addresses=127.0.0.1 -c unix_socket_directories="$data" \
                -c synchronous_commit=on -c fsync=on -c max_connections=200 \
                -c shared_buffers=256MB -c log_min_messages=warning \
                >"$WORK/server.log" 2>&1 &
            ;;
        *) die "unknown configuration $config" ;;
    esac
    SERVER_PID=$!
    wait_for_port "$PORT" 30
}

# ------------------------------------------------------------------ runs

COMMON=(--quiet --threads 1 --connections "$CONNECTIONS" --deals "$DEALS" --viewers "$VIEWERS"
    --per-user-limit "$PER_USER_LIMIT" --hold-ttl-ms "$HOLD_TTL_MS"
    --payment-delay-ms "$PAYMENT_DELAY_MS" --request-timeout-ms "$REQUEST_TIMEOUT_MS")
# A capacity step ends at most a payment delay, two timeouts and a second after its arrival
# phase; a run adds the drain (a hold TTL and a second).
STEP_BOUND_S=$(((STEP_MS + 500 + 2 * REQUEST_TIMEOUT_MS + 1500) / 1000 + 2))
CAPACITY_BOUND_S=$((2 * 30 * STEP_BOUND_S + 60))
RUN_BOUND_S=$(((RUN_MS + 500 + 2 * REQUEST_TIMEOUT_MS + HOLD_TTL_MS + 3000) / 1000 + 60))

# One phase: start the server, warm it up, run the load pinned to the other core, record
# the server's CPU over the measured run, stop. Args: config rep phase rate warmup_rate bound_s
# load-args...
phase() {
    local config=$1 rep=$2 phase=$3 rate=$4 warmup_rate=$5 bound=$6
    shift 6
    local name="$config-r$rep-$phase" rc=0 cpu0 cpu1 t0 t1
    start_server "$config" || die "$config did not start"
    if [ "$WARMUP_MS" -gt 0 ]; then
        # Every hold confirmed or released: the warm-up ends without waiting for expiries.
        taskset -c "$LOAD_CPU" timeout --signal=INT --kill-after=10 "$RUN_BOUND_S" \
            "$LOAD" --backend "$BACKEND" --target "127.0.0.1:$PORT" "${COMMON[@]}" \
            --seed "$((SEED + 1000 + rep))" --profile steady --rate "$warmup_rate" \
            --duration-ms "$WARMUP_MS" --confirm-ratio 0.8 --release-ratio 0.2 \
            --stock "$(python3 -c "print(int($warmup_rate * $WARMUP_MS / 1000 * 1.2) + 100)")" \
            >"$WORK/$name.warmup.txt" 2>&1 || true
    fi
    cpu0=$(python3 "$HERE/peers.py" cpu "$SERVER_PID")
    t0=$(date +%s.%N)
    taskset -c "$LOAD_CPU" timeout --signal=INT --kill-after=10 "$bound" \
        "$LOAD" --backend "$BACKEND" --target "127.0.0.1:$PORT" "${COMMON[@]}" \
        --seed "$((SEED + rep))" --json "$WORK/$name.load.json" "$@" \
        >"$OUT/$name.txt" 2>"$WORK/$name.err" || rc=$?
    t1=$(date +%s.%N)
    cpu1=$(python3 "$HERE/peers.py" cpu "$SERVER_PID")
    stop_server
    if [ ! -s "$WORK/$name.load.json" ]; then
        log "$name: no report (exit $rc):"
        tail -5 "$WORK/$name.err" >&2 || true
        tail -20 "$WORK/server.log" >&2 || true
        echo '{}' >"$WORK/$name.load.json"
    fi
    python3 "$HERE/peers.py" record "$OUT/$name.json" "$WORK/$name.load.json" \
        "$config" "$rep" "$phase" "$rate" "$cpu0" "$cpu1" "$t0" "$t1" "$rc"
}

rm -rf "$OUT"
mkdir -p "$OUT"
log "configurations: $CONFIGS; $REPS repetition(s); steps of $STEP_MS ms, runs of $RUN_MS ms"
started=$(date +%s)
for rep in $(seq "$REPS"); do
    PG_DATA=""
    for config in $CONFIGS; do
        log "rep $rep: $config: capacity search (p99 <= $SLO_MS ms)"
        phase "$config" "$rep" capacity 0 "$START_RATE" "$CAPACITY_BOUND_S" --find-capacity \
            --p99-slo-ms "$SLO_MS" --step-duration-ms "$STEP_MS" --start-rate "$START_RATE" \
            --rate-factor 2 --max-rate "$MAX_RATE" --bisect-steps 3 --step-retries 1
        peak=$(python3 "$HERE/peers.py" peak "$OUT/$config-r$rep-capacity.json")
        if [ "$peak" = 0 ]; then
            log "rep $rep: $config: no rate held the SLO; skipping its other runs"
            continue
        fi
        if [ "$SATURATION" = 1 ]; then
            log "rep $rep: $config: saturation search from $peak (p99 <= $SAT_SLO_MS ms)"
            phase "$config" "$rep" saturation 0 "$peak" "$CAPACITY_BOUND_S" --find-capacity \
                --p99-slo-ms "$SAT_SLO_MS" --max-error-rate 0.01 --step-duration-ms "$STEP_MS" \
                --start-rate "$peak" --rate-factor 2 --max-rate "$MAX_RATE" --bisect-steps 2
        fi
        for share in 50 90; do
            rate=$(python3 -c "print(max(1, round($peak * $share / 100)))")
            stock=$(python3 -c "print(int($rate * $RUN_MS / 1000 * 1.2) + 100)")
            log "rep $rep: $config: $share% of $peak = $rate reserves/s for $RUN_MS ms"
            phase "$config" "$rep" "p$share" "$rate" "$rate" "$RUN_BOUND_S" --profile steady \
                --rate "$rate" --duration-ms "$RUN_MS" --stock "$stock"
        done
        rate=$(python3 -c "print(max(1, round($peak * 0.9)))")
        stock=$(python3 -c "print(max(1, int($rate * $RUN_MS / 1000 * $SOLD_OUT_PERCENT / 100)))")
        log "rep $rep: $config: sold out: $rate reserves/s on $stock units"
        phase "$config" "$rep" soldout "$rate" "$rate" "$RUN_BOUND_S" --profile steady --rate "$rate" \
            --duration-ms "$RUN_MS" --stock "$stock"
    done
done
log "runs took $(($(date +%s) - started)) s"

python3 "$HERE/peers.py" summarize "$OUT" "$DOC" "$PLOT" \
    --slo-ms "$SLO_MS" --sat-slo-ms "$SAT_SLO_MS" --reps "$REPS" --step-ms "$STEP_MS" --run-ms "$RUN_MS" \
    --workload "deals=$DEALS viewers=$VIEWERS per_user_limit=$PER_USER_LIMIT hold_ttl_ms=$HOLD_TTL_MS payment_delay_ms=$PAYMENT_DELAY_MS connections=$CONNECTIONS sold_out_stock=${SOLD_OUT_PERCENT}%_of_arrivals seed=$SEED"
log "wrote $DOC and $PLOT (runs in $OUT)"

# The HTTP rows again with wrk, an external client (benches/peers/wrk.sh), appended to $DOC.
if [ "${WRK:-1}" = 1 ]; then
    log "the HTTP rows with wrk"
    wrk_table=$(REPS=$REPS CONNECTIONS=$CONNECTIONS SERVER_CPU=$SERVER_CPU LOAD_CPU=$LOAD_CPU \
        BIN_DIR=$TARGET_DIR/release WRK_OUT=$OUT/wrk "$HERE/wrk.sh")
    printf '\n## The HTTP rows with wrk (`benches/peers/wrk.sh`)\n\n%s\n' "$wrk_table" >>"$DOC"
    log "appended the wrk rows to $DOC"
fi
