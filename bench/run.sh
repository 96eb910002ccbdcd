#!/usr/bin/env bash
# make bench: throughput and latency of the Erlang API against a private
# redis-server, next to what redis-benchmark gets from the same server
# (q SET and save_session also over its unix socket: q_set_unix,
# save_session_unix), and backup and restore of 100,000 sessions and
# 1,000,000 queued messages (`--only backup` runs that alone, about 30 s).
#
# Starts its own redis-server on a free loopback port in a temp dir (stopped
# by pid at the end, also on failure or Ctrl-C), runs bench/emqx_redis_bench.erl
# and draws the chart. Results: stdout (markdown) and $BENCH_OUT
# (latest.md, latest.csv, throughput.png).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: bench/run.sh [--duration S] [--warmup S] [--concurrency N,N,..] [--filters N,N,..]
                    [--pool-size N] [--only OP,..] [--out DIR] [--pin]

  --duration S        measured seconds per case (BENCH_DURATION, default 3)
  --warmup S          warm-up seconds before each case (BENCH_WARMUP, default 0.5)
  --concurrency LIST  processes per case (BENCH_CONCURRENCY, default 1,64,256)
  --filters LIST      wildcard filters loaded for match_routes (BENCH_FILTERS,
                      default 1000,10000,100000)
  --pool-size N       redis.pool_size of the clients (BENCH_POOL_SIZE, default 4)
  --only LIST         run only the ops whose names start with one of these
                      (BENCH_ONLY), e.g. save_session,match_local_100k
  --out DIR           where the results go (BENCH_OUT, default bench/results)
  --pin               redis-server on the last CPU, the Erlang VM (and
                      redis-benchmark) on the others (BENCH_PIN=1; needs 2
                      CPUs or more): Redis as on a host of its own, not
                      taking the VM's cores nor preempting its threads

Extra flags for the Erlang VM: BENCH_ERL_FLAGS (e.g. "+sbwt none").
BENCH_SIDE_BY_SIDE: a file of `op,ops_per_s' lines, the earlier design's
rates at 64 processes (measured outside this repository), for the ratios
of issue 22's table.
Sessions in the backup case: BENCH_BACKUP_SESSIONS (default 100000).
Results are reported, never asserted: the exit status says only whether the
run itself worked.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) BENCH_DURATION=$2; shift 2 ;;
        --warmup) BENCH_WARMUP=$2; shift 2 ;;
        --concurrency) BENCH_CONCURRENCY=$2; shift 2 ;;
        --filters) BENCH_FILTERS=$2; shift 2 ;;
        --pool-size) BENCH_POOL_SIZE=$2; shift 2 ;;
        --only) BENCH_ONLY=$2; shift 2 ;;
        --out) BENCH_OUT=$2; shift 2 ;;
        --pin) BENCH_PIN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
export BENCH_DURATION=${BENCH_DURATION:-3} BENCH_WARMUP=${BENCH_WARMUP:-0.5}
export BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-1,64,256} BENCH_FILTERS=${BENCH_FILTERS:-1000,10000,100000}
export BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-4} BENCH_ONLY=${BENCH_ONLY:-} BENCH_OUT=${BENCH_OUT:-bench/results}

redis_pin=()
vm_pin=()
if [ "${BENCH_PIN:-0}" = 1 ]; then
    last=$(($(nproc) - 1))
    [ "$last" -ge 1 ] || { echo "bench: --pin needs 2 CPUs or more" >&2; exit 2; }
    command -v taskset >/dev/null || { echo "bench: --pin needs taskset (util-linux)" >&2; exit 1; }
    vm_cpus=0
    [ "$last" -eq 1 ] || vm_cpus=0-$((last - 1))
    redis_pin=(taskset -c "$last")
    vm_pin=(taskset -c "$vm_cpus")
    export BENCH_PINNED="Redis on CPU $last, the VM and redis-benchmark on CPU $vm_cpus (--pin)"
fi

for tool in erl erlc redis-server redis-cli redis-benchmark timeout; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (make deps installs it)" >&2; exit 1; }
done
app_ebin=_build/default/lib/emqx_redis_storage/ebin
[ -f "$app_ebin/emqx_redis_storage.app" ] || { echo "bench: run rebar3 compile first (make bench does)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/emqx_redis_bench.XXXXXX)
redis_pid=""
erl_pid=""
cleanup() {
    if [ -n "$erl_pid" ]; then
        kill "$erl_pid" 2>/dev/null || true
        wait "$erl_pid" 2>/dev/null || true
    fi
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_ebin=_build/bench/ebin
mkdir -p "$bench_ebin" "$BENCH_OUT"
# test/loopback_port.erl: the free-port rule the tests' servers follow;
# test/limiter_test_peer.erl (with test_util): the VMs of the limiter accuracy runs.
erlc -o "$bench_ebin" bench/emqx_redis_bench.erl test/loopback_port.erl test/limiter_test_peer.erl test/test_util.erl

# A free port below the ephemeral range (never 6379): a port in that range
# may be taken by an outgoing connection. Another one if it is taken anyway.
for attempt in $(seq 1 20); do
    port=$(erl -noshell -pa "$bench_ebin" -eval 'io:format("~b", [loopback_port:free()]), halt().')
    "${redis_pin[@]}" redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no \
        --unixsocket "$tmp/redis.sock" --unixsocketperm 700 \
        --dir "$tmp" --logfile "$tmp/redis.log" --daemonize no &
    redis_pid=$!
    for _ in $(seq 1 50); do
        kill -0 "$redis_pid" 2>/dev/null || break
        # Ours, not some other server that answers on this port.
        if redis-cli -p "$port" info server 2>/dev/null | grep -q "^process_id:$redis_pid"; then
            break 2
        fi
        sleep 0.1
    done
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
done
if [ -z "$redis_pid" ]; then
    echo "bench: could not start redis-server; its log:" >&2
    cat "$tmp/redis.log" >&2 || true
    exit 1
fi
echo "bench: redis-server pid $redis_pid on 127.0.0.1:$port ($tmp)" >&2

# In the background: bash runs a trap (Ctrl-C, SIGTERM) during `wait`, but
# only after a foreground command has finished.
BENCH_REDIS_PORT=$port BENCH_REDIS_SOCKET=$tmp/redis.sock BENCH_REDIS_PID=$redis_pid \
    "${vm_pin[@]}" erl -noshell ${BENCH_ERL_FLAGS:-} -pa "$app_ebin" -pa "$bench_ebin" -eval 'emqx_redis_bench:main()' &
erl_pid=$!
status=0
wait "$erl_pid" || status=$?
erl_pid=""
if ! kill -0 "$redis_pid" 2>/dev/null; then
    wait "$redis_pid" && redis_status=0 || redis_status=$?
    echo "bench: redis-server (pid $redis_pid) died during the run (exit status $redis_status;" \
        "137 = SIGKILL from outside the benchmark); the end of its log:" >&2
    tail -5 "$tmp/redis.log" >&2 || true
    redis_pid=""
fi
[ "$status" -eq 0 ] || exit "$status"

if [ ! -s "$BENCH_OUT/throughput.dat" ]; then
    echo "bench: no charted op ran, no chart (results in $BENCH_OUT/latest.md and latest.csv)" >&2
elif command -v gnuplot >/dev/null; then
    gnuplot -e "dir='$BENCH_OUT'" bench/throughput.gp
    echo "bench: results in $BENCH_OUT/latest.md, $BENCH_OUT/latest.csv, chart $BENCH_OUT/throughput.png" >&2
else
    echo "bench: gnuplot is missing, no chart (results in $BENCH_OUT/latest.md and latest.csv)" >&2
fi
