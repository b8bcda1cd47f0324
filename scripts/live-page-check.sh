#!/usr/bin/env bash
# The live page (GET /live/{stream_id}) in a real browser: starts `livestock serve` on a free
# loopback port with a fresh data directory, creates a stream of two deals (d1: 300 units, the
# hot one; d2: 1,000, more than its share of the crowd), opens the page in headless Chromium,
# runs a drop against both with livestock-load (every hold confirmed), then holds 3 units of d2
# with curl, and checks what the page shows against GET /v1/deals/{id}: d1 sold out with its
# sell-out moment shown, and for both deals the exact state, available, held and sold the API
# reports (waiting 0), and no error (a Content-Security-Policy refusal included) in the
# browser's log. Prints PASS or FAIL; exits non-zero on FAIL.
#
# Usage: scripts/live-page-check.sh [--screenshot FILE]   (default target/live-page.png;
#        docs/live-page.png is made with --screenshot docs/live-page.png)
# Environment: LIVESTOCK_BIN, LIVESTOCK_LOAD_BIN (built binaries instead of a release build),
# CHROMIUM (the browser; installed with apt-get when missing and run as root).
# Bounded: every wait has a deadline, the whole run is under a minute once built; the server
# and the browser are stopped on every exit.
set -euo pipefail
cd "$(dirname "$0")/.."

screenshot=target/live-page.png
while [ $# -gt 0 ]; do
    case $1 in
    --screenshot) screenshot=$2; shift 2 ;;
    *) echo "usage: $0 [--screenshot FILE]" >&2; exit 2 ;;
    esac
done

chromium=${CHROMIUM:-chromium}
if ! command -v "$chromium" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "live-page-check.sh: installing chromium"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "live-page-check.sh: FAIL: no $chromium (apt-get install chromium)" >&2
        exit 1
    fi
fi

if [ -z "${LIVESTOCK_BIN:-}" ] || [ -z "${LIVESTOCK_LOAD_BIN:-}" ]; then
    cargo build --release --quiet -p livestock -p livestock-load
fi
server_bin=${LIVESTOCK_BIN:-target/release/livestock}
load_bin=${LIVESTOCK_LOAD_BIN:-target/release/livestock-load}

work=$(mktemp -d "${TMPDIR:-/tmp}/livestock-live-page.XXXXXX")
server=
browser=
cleanup() {
    for pid in $browser $server; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
started=$SECONDS

# Port 0: the kernel picks a free port, and the server prints the one it got.
: >"$work/server.out"
"$server_bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    >"$work/server.out" 2>"$work/server.err" &
server=$!
url=
for _ in $(seq 1 100); do
    url=$(sed -n 's|^livestock listening on \(http://127\.0\.0\.1:[0-9]*\)$|\1|p' "$work/server.out")
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "live-page-check.sh: FAIL: the server did not start" >&2
    cat "$work/server.out" "$work/server.err" >&2
    exit 1
fi
addr=${url#http://}

stream=evening-drop
post() { curl -sS --fail-with-body --max-time 5 "$url$1" -H 'Content-Type: application/json' -d "$2"; }
post /v1/deals "{\"id\":\"d1\",\"stock\":300,\"stream_id\":\"$stream\"}" >/dev/null
post /v1/deals "{\"id\":\"d2\",\"stock\":1000,\"stream_id\":\"$stream\"}" >/dev/null

# The browser, with the DevTools protocol on a port of its choosing (written to
# DevToolsActivePort in its profile) and nothing but loopback to reach.
"$chromium" --headless --no-sandbox --disable-gpu --no-first-run --no-default-browser-check \
    --disable-extensions --disable-background-networking --disable-component-update \
    --user-data-dir="$work/profile" --remote-debugging-port=0 --window-size=1200,800 \
    about:blank >"$work/browser.log" 2>&1 &
browser=$!
port=
for _ in $(seq 1 100); do
    port=$(head -n1 "$work/profile/DevToolsActivePort" 2>/dev/null || true)
    [ -n "$port" ] && break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "live-page-check.sh: FAIL: Chromium did not start" >&2
    tail -n 20 "$work/browser.log" >&2
    exit 1
fi

check() { timeout 60 python3 scripts/live-page-check.py "$@"; }
# The page opens before the drop, so it sees d1 sell out (the moment it shows).
check open "$port" "$url/live/$stream" "$url"
sleep 1

# The drop: ~1,500 taps in 3 s, two thirds on d1 (Zipf over the two deals); every hold is
# confirmed after its payment delay, so the counters are still once the tool has finished.
timeout 60 "$load_bin" --target "$addr" --deal d1 --deal d2 --profile drop --rate 600 \
    --ramp-ms 500 --hold-ms 2000 --decay-ms 500 --viewers 5000 --seed 13 \
    --confirm-ratio 1 --release-ratio 0 --payment-delay-ms 100..600 --quiet \
    >"$work/load.out" 2>&1 || {
    echo "live-page-check.sh: FAIL: livestock-load failed" >&2
    cat "$work/load.out" >&2
    exit 1
}
grep -E '^(verification|sell-out)' "$work/load.out" | sed 's/^/  load: /'

# Units held, not sold: the page must show them as held.
post /v1/deals/d2/reserve '{"user_id":"late-viewer","qty":3,"ttl_ms":600000}' >/dev/null

mkdir -p "$(dirname "$screenshot")"
if check check "$port" "$url/live/$stream" "$url" d1 d2 --expect-sold-out d1 \
    --screenshot "$screenshot" --timeout-s 20; then
    echo "live-page-check.sh: PASS in $((SECONDS - started)) s (screenshot: $screenshot)"
else
    echo "live-page-check.sh: FAIL: the page does not show what the API reports" >&2
    exit 1
fi
