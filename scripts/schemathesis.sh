#!/usr/bin/env bash
# Holds the running server to docs/openapi.yaml: schemathesis generates requests from the spec
# (examples, coverage, fuzzing, and stateful sequences that follow the spec's OpenAPI links:
# create a deal -> reserve -> confirm/release/extend ...) against a fresh `livestock serve` on
# loopback, and checks every answer: no 5xx, every status, content type, header and body as the
# spec documents it, invalid requests refused, auth enforced, 405 with a correct Allow.
#
#   scripts/schemathesis.sh [SCHEMATHESIS-RUN-OPTION...]    # ~1-3 minutes on 2 cores
#
# Extra options go to `schemathesis run` (e.g. `--report har --report-dir /abs/dir` to keep every
# request and answer).
#
# Environment: SCHEMATHESIS_MAX_TIME (seconds of generation, default 90), SCHEMATHESIS_SEED
# (default 1: CI runs are reproducible; set another to explore), SCHEMATHESIS_MAX_EXAMPLES
# (per operation in a fuzzing pass, default 50), SCHEMATHESIS_MAX_SCENARIOS (per stateful pass,
# default 300), SCHEMATHESIS_VENV (where schemathesis is installed),
# LIVESTOCK_BIN (a built binary to test instead of building target/debug/livestock).
# Exits non-zero on any failure; the report names each one with a curl line to reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the CLI changed between 3.x and 4.x (and keeps growing checks), so a new version is a
# deliberate upgrade, not a surprise in CI.
version=4.32.5
venv=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/livestock/schemathesis-$version}
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$version"; then
    echo "schemathesis.sh: installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi

if [ -n "${LIVESTOCK_BIN:-}" ]; then
    binary=$LIVESTOCK_BIN
else
    cargo build --quiet --bin livestock
    binary=target/debug/livestock
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/livestock-schemathesis.XXXXXX")
server=
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Tokens on, so that the spec's security (401 without a token, admin/client roles) is checked
# too; made fresh for each run.
token() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
admin_token="st-admin-$(token)"
client_token="st-client-$(token)"

# Port 0: the kernel picks a free port, and the server prints the one it got.
: >"$work/server.out"
LIVESTOCK_ADMIN_TOKENS=$admin_token LIVESTOCK_CLIENT_TOKENS=$client_token \
    "$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data" --log-format json \
    >"$work/server.out" 2>"$work/server.err" &
server=$!
url=
for _ in $(seq 1 300); do
    url=$(sed -n 's|^livestock listening on \(http://127\.0\.0\.1:[0-9]*\)$|\1|p' "$work/server.out")
    [ -n "$url" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "schemathesis.sh: the server did not start" >&2
    cat "$work/server.out" "$work/server.err" >&2
    exit 1
fi
echo "schemathesis.sh: livestock serving on $url"

# Budget: examples per operation in each fuzzing pass, scenarios (chains of linked calls) in each
# stateful pass; with --max-time the two phases take turns until the time is spent.
cat >"$work/schemathesis.toml" <<EOF
# Every request carries the admin token (admin may call every operation); the checks strip or
# forge it to see that auth is enforced.
[auth.openapi.bearer]
bearer = "\${LIVESTOCK_SCHEMATHESIS_TOKEN}"

[phases.fuzzing.generation]
max-examples = ${SCHEMATHESIS_MAX_EXAMPLES:-50}

[phases.stateful.generation]
max-examples = ${SCHEMATHESIS_MAX_SCENARIOS:-300}
EOF

# Steering, for positive (schema-valid) requests only: left alone, generated deals are mostly
# useless for what comes after them (ids shrink to "0" and collide: `deal_exists`; `ends_at`
# shrinks to 2000-01-01: ended at once; `stock` shrinks to 0: sold out; generated
# Idempotency-Keys repeat: 422), so the stateful phase would never hold, confirm, release or
# extend anything, and the Hold schema would never meet a real hold. Three positive requests
# in four are made usable (a unique deal id, stock to spare, an open sale window, no per-user
# limit or short TTL cap, a unique Idempotency-Key); the fourth goes out as generated, so
# scheduled, ended, sold-out and limited deals and key reuse are still exercised. Negative
# requests are never touched (a change could make them valid).
cat >"$work/hooks.py" <<'PY'
import itertools
from datetime import datetime, timezone

import schemathesis

counter = itertools.count()
steered = set()


def _past(text):
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) <= datetime.now(timezone.utc)
    except (AttributeError, ValueError):
        return False


def _integers(value):
    """`1.0` -> `1`: JSON Schema calls it an integer, the server wants it written as one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or case.id in steered:
        return
    steered.add(case.id)
    n = next(counter)
    if n % 4 == 0:
        return
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and key:
        headers["Idempotency-Key"] = f"{key[:100]}-{n}"
    if isinstance(case.body, (dict, list)):
        case.body = _integers(case.body)
    body = case.body
    if case.method.upper() == "POST" and case.operation.path == "/v1/deals" and isinstance(body, dict):
        if isinstance(body.get("id"), str):
            body["id"] = f"{body['id'][:50]}-{n}"
        if isinstance(body.get("stream_id"), str):
            # A few deals per stream, so that ending one ends several.
            body["stream_id"] = f"{body['stream_id'][:50]}-{n // 8}"
        if isinstance(body.get("stock"), int):
            body["stock"] = max(body["stock"], 10_000)
        if isinstance(body.get("starts_at"), str) and not _past(body["starts_at"]):
            body["starts_at"] = None
        if isinstance(body.get("ends_at"), str) and _past(body["ends_at"]):
            body["ends_at"] = None
        for field in ("per_user_limit", "hold_ttl_ms", "hold_ttl_ms_max"):
            body.pop(field, None)
PY

# Checks: all of them but `positive_data_acceptance`, which demands a 2xx/404/409 for every
# request the schema admits. Here a schema-valid request can rightly get 400 or 422 for rules
# JSON Schema cannot state: `ends_at` after `starts_at`, `hold_ttl_ms` <= `hold_ttl_ms_max`, a
# reserve's `ttl_ms` within its deal's `hold_ttl_ms_max`, a confirm's `qty` within its hold's,
# stock + delta <= 1099511627775, integers written as `1.0` (JSON Schema calls them integers, the
# server wants `1`), and an `Idempotency-Key` reused with another request (422: generated keys
# repeat). Its converse, `negative_data_rejection`, stays on.
# `ensure_resource_availability` is left out too: it takes every GET under a created deal's
# path for the deal itself, and `GET /v1/deals/{id}/draw` of a deal created without a draw
# answers 404 `no_draw` by design (its per-operation switch in the config file did not reach
# the stateful phase); that a created deal, hold or entry is found is tested in tests/http.rs.
# The live feeds (`/live`) and the event stream (`/v1/events`) are left out: an answer that
# streams until its deal ends (or the server stops) cannot be read whole within a request
# timeout, and schemathesis checks each SSE event against the answer's schema (a string);
# tests/feed.rs and tests/events.rs cover them.
# One worker: the run is stateful against one server, and CPython 3.11's parser is not safe to
# share between the workers' threads (hypothesis hits "AST constructor recursion depth
# mismatch").
status=0
# Run from the scratch directory: schemathesis and hypothesis keep caches in the working one.
spec=$PWD/docs/openapi.yaml
(cd "$work" && SCHEMATHESIS_HOOKS=$work/hooks.py LIVESTOCK_SCHEMATHESIS_TOKEN=$admin_token \
    "$venv/bin/schemathesis" \
    --config-file "$work/schemathesis.toml" --no-color \
    run "$spec" \
    --url "$url" \
    --phases examples,coverage,fuzzing,stateful \
    --checks all \
    --exclude-checks positive_data_acceptance,ensure_resource_availability \
    --exclude-path-regex '/live$|^/v1/events$' \
    --max-time "${SCHEMATHESIS_MAX_TIME:-90}" \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --workers 1 \
    --request-timeout 10 \
    --generation-database none \
    "$@") \
    || status=$?

# The server must have survived the run, logged no panic, and must stop cleanly (SIGTERM:
# finish what is in flight, write the final checkpoint, exit 0).
if ! kill -0 "$server" 2>/dev/null; then
    echo "schemathesis.sh: the server died during the run" >&2
    cat "$work/server.err" >&2
    status=1
else
    kill -TERM "$server"
    stopped=0
    wait "$server" || stopped=$?
    server=
    if [ "$stopped" -ne 0 ]; then
        echo "schemathesis.sh: the server exited with $stopped on SIGTERM" >&2
        tail -20 "$work/server.err" >&2
        status=1
    fi
fi
if grep -q 'panicked' "$work/server.err"; then
    echo "schemathesis.sh: the server panicked during the run" >&2
    grep 'panicked' "$work/server.err" >&2
    status=1
fi
exit "$status"
