#!/usr/bin/env bash
# `make emqx-demo EMQX_ROOT=...': the adapter on two real EMQX nodes, node A
# killed with SIGKILL mid-stream (demo/emqx_redis_emqx_demo.erl). Compiles
# the demo and the test helpers it uses, starts the controller node, which
# starts a private redis-server and the EMQX nodes and stops them all.
#
# Environment: EMQX_ROOT (required: an EMQX 5.x build, lib/<app>/ebin),
# SUBSCRIBERS (100), PUBLISHERS (10), RATE (msg/s per publisher, 10),
# DURATION (s, 12), KILL_AT (s, 5), NODE_TTL_MS (2000);
# EMQX_REDIS_STORAGE_EBIN (default the rebar3 default profile's).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${EMQX_ROOT:-}" ] || [ ! -f "$EMQX_ROOT/lib/emqx/ebin/emqx.app" ]; then
    echo "emqx-demo: name an EMQX 5.x build: make emqx-demo EMQX_ROOT=/path/to/root" >&2
    echo "           (a directory with lib/<app>/ebin: emqx, emqtt and their dependencies)" >&2
    [ -n "${EMQX_ROOT:-}" ] && echo "           EMQX_ROOT=$EMQX_ROOT has no lib/emqx/ebin/emqx.app" >&2
    exit 2
fi
export EMQX_ROOT
lib_ebin="${EMQX_REDIS_STORAGE_EBIN:-_build/default/lib/emqx_redis_storage/ebin}"
if [ ! -f "$lib_ebin/emqx_redis_storage_emqx.beam" ]; then
    echo "emqx-demo: no emqx_redis_storage (with its EMQX adapter) in $lib_ebin: run make emqx-demo" >&2
    exit 2
fi
demo_ebin=_build/emqx_demo/ebin
mkdir -p "$demo_ebin"
erlc -Werror -o "$demo_ebin" demo/emqx_redis_emqx_demo.erl test/emqx_cluster_node.erl test/emqx_test_mqtt.erl \
    test/loopback_port.erl test/test_util.erl test/redis_test_server.erl || exit 2

# The private redis-server and the EMQX nodes' directories. The controller
# stops them itself; the trap is for a controller that was killed first.
EMQX_REDIS_TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/emqx_redis_emqx_demo.XXXXXX")
export EMQX_REDIS_TEST_TMP
cleanup() {
    local f pid
    for f in "$EMQX_REDIS_TEST_TMP"/redis-*/redis.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] && kill -9 "$pid"
    done
    rm -rf "$EMQX_REDIS_TEST_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status=0
erl +Bd -noshell -pa "$lib_ebin" "$demo_ebin" -eval 'emqx_redis_emqx_demo:main()' || status=$?
exit "$status"
