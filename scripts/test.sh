#!/usr/bin/env bash
# Runs every check and test; ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export EMQX_REDIS_STORAGE_ROOT="$PWD"
export EMQX_REDIS_TEST_TMP="${EMQX_REDIS_TEST_TMP:-$(mktemp -d /tmp/emqx_redis_storage_test.XXXXXX)}"
log=$(mktemp)
failed_steps=()

step() {
    echo "==> $*"
    if ! "$@" 2>&1 | tee -a "$log"; then
        failed_steps+=("$*")
    fi
}

cleanup() {
    # Redis servers left behind by a crashed test.
    for f in "$EMQX_REDIS_TEST_TMP"/*/redis.pid "$EMQX_REDIS_TEST_TMP"/*/*/redis.pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
    done
    rm -rf "$EMQX_REDIS_TEST_TMP" "$log"
}
trap cleanup EXIT

step cargo fmt --all --check
step cargo clippy --workspace --all-targets --quiet -- -D warnings
step cargo test --workspace --quiet
step rebar3 compile
step rebar3 xref
step rebar3 dialyzer
step rebar3 ct

rust_passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
rust_failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
ct_passed=$(grep -Eo 'All [0-9]+ tests passed|Passed [0-9]+ tests' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
ct_failed=$(grep -Eo 'Failed [0-9]+ tests' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')

echo
# The failed Common Test cases by name, with the first lines of why: the
# end of the output is what a CI log shows.
if [ -d _build/test/logs ]; then
    run=$(ls -td _build/test/logs/ct_run.* 2>/dev/null | head -1)
    for suite_log in "$run"/*/run.*/suite.log; do
        [ -f "$suite_log" ] || continue
        awk '/^=case/ { c = $2 } /^=/ { n = 0 }
             /^=result +failed/ { print "failed case: " c; print "    " $0; n = 8; next }
             n > 0 { print "    " $0; n-- }' "$suite_log" | cut -c1-300
    done
fi
if [ ${#failed_steps[@]} -gt 0 ]; then
    printf 'failed step: %s\n' "${failed_steps[@]}"
fi
failed=$((rust_failed + ct_failed))
[ ${#failed_steps[@]} -gt 0 ] && [ "$failed" -eq 0 ] && failed=${#failed_steps[@]}
echo "$((rust_passed + ct_passed)) passed, $failed failed"
[ ${#failed_steps[@]} -eq 0 ]
