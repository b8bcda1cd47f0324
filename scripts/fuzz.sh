#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs, see docs/testing.md) for SECONDS each, one
# after the other, on the committed seeds (fuzz/corpus/<target>/seed-*) plus a scratch corpus
# (fuzz/scratch/<target>, kept between runs, not committed). Prints each target's executions
# and any crash; exits non-zero if any target crashed.
#
#   scripts/fuzz.sh 20                        the CI smoke: 20 s per target
#   scripts/fuzz.sh 3600 http_surface         one target, an hour
#   nice -n 19 scripts/fuzz.sh 1800           long runs on a shared machine
#   FUZZ_ARGS="-jobs=2 -workers=2" scripts/fuzz.sh 600    extra libFuzzer flags
#   FUZZ_SANITIZER=address scripts/fuzz.sh 600            with AddressSanitizer
#
# A crash leaves its input in fuzz/artifacts/<target>/; the line printed for it says how to
# replay it (`cargo fuzz run <target> <file>`) and how to read it (`cargo fuzz fmt`).
#
# Why no sanitizer by default: livestock has no `unsafe`, so AddressSanitizer could only find
# bugs in dependencies, at a quarter of the throughput. Debug assertions and overflow checks
# stay on (cargo-fuzz's default): an overflow is a bug the fuzzers should report.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
seconds=$1
shift
# cargo-fuzz passes nightly-only flags (-Zsanitizer, ...); this lets a stable toolchain take them.
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

for target in "${targets[@]}"; do
    echo "building $target (sanitizer: $sanitizer)"
    cargo fuzz build --sanitizer "$sanitizer" "$target"
done

summary=()
crashed=0
for target in "${targets[@]}"; do
    seeds=fuzz/corpus/$target
    scratch=fuzz/scratch/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$seeds" "$scratch" "$artifacts"
    flags=(-max_total_time="$seconds" -print_final_stats=1 -timeout=30)
    if [ -f "fuzz/dict/$target.dict" ]; then
        flags+=(-dict="fuzz/dict/$target.dict")
    fi
    # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags, split on purpose
    flags+=(${FUZZ_ARGS:-})
    before=$(find "$artifacts" -type f | sort)
    log=fuzz/scratch/$target.log
    echo
    echo "==> $target: $seconds s (log: $log)"
    started=$SECONDS
    status=0
    # New inputs go to the scratch corpus (the first directory); the seeds are read only.
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch" "$seeds" -- "${flags[@]}" \
        >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - started))
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)
    if [ -z "$execs" ]; then
        # No final stats (a crash): the last progress line's count.
        execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -n 1 || true)
    fi
    execs=${execs:-0}
    units=$(find "$scratch" -type f | wc -l)
    new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')
    if [ "$status" -ne 0 ] || [ -n "$new" ]; then
        crashed=1
        line="$target: CRASH after $execs executions in $elapsed s"
        echo "$line"
        grep -E "panicked at|^(thread .*panicked|ERROR: libFuzzer|SUMMARY)" -A 2 "$log" | head -n 12 || true
        for file in $new; do
            echo "    input: $file"
            echo "    replay: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $target $file"
            if [ "$target" = commands_vs_model ]; then
                echo "    as ops: RUSTC_BOOTSTRAP=1 cargo fuzz fmt -s $sanitizer $target $file"
            fi
        done
        [ -n "$new" ] || tail -n 20 "$log"
    else
        line="$target: $execs executions in $elapsed s ($((execs / (elapsed > 0 ? elapsed : 1)))/s), scratch corpus $units inputs, no crash"
        echo "$line"
    fi
    summary+=("$line")
done

echo
echo "==> summary (sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$crashed"
