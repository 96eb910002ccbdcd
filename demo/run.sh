#!/usr/bin/env bash
# Runs the demo (demo/emqx_redis_demo.erl): compiles its modules and starts
# the controller node, which starts nodes A and B. `make demo' builds the
# library first and then runs this.
#
# Environment: CLIENTS (default 10000), REDIS_URL (use that Redis instead of
# a private redis-server), LEASE_MS, DROP_SESSIONS, DROP_DURABLE;
# EMQX_REDIS_STORAGE_EBIN (the library's ebin directory, default the rebar3
# default profile's).
set -uo pipefail
cd "$(dirname "$0")/.."

lib_ebin="${EMQX_REDIS_STORAGE_EBIN:-_build/default/lib/emqx_redis_storage/ebin}"
if [ ! -f "$lib_ebin/emqx_redis_storage.beam" ]; then
    echo "demo: no emqx_redis_storage in $lib_ebin: run make demo" >&2
    exit 2
fi
demo_ebin=_build/demo/ebin
mkdir -p "$demo_ebin"
# test/loopback_port.erl: the free-port rule the tests' servers follow.
erlc -Werror -o "$demo_ebin" demo/*.erl test/loopback_port.erl || exit 2

# The private redis-server's directory. The controller stops that server
# itself; the trap is for a controller that was killed before it could.
DEMO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/emqx_redis_demo.XXXXXX")
export DEMO_DIR
cleanup() {
    local pid
    pid=$(cat "$DEMO_DIR/redis.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ]; then
        kill -9 "$pid"
    fi
    rm -rf "$DEMO_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Distribution on loopback only (also for an epmd that this starts).
export ERL_EPMD_ADDRESS=127.0.0.1
status=0
erl +Bd -noshell -name "emqx_demo_$$@127.0.0.1" -connect_all false -kernel inet_dist_use_interface '{127,0,0,1}' \
    -pa "$lib_ebin" "$demo_ebin" -eval 'emqx_redis_demo:main()' || status=$?
exit "$status"
