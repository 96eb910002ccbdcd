# make test: every check and test (installs missing prerequisites first).
.PHONY: all deps build demo emqx-demo test fuzz bench shell clean

all: build

deps:
	bash scripts/install-deps.sh

build: deps
	rebar3 compile

# The main job: node A is killed, node B takes its clients over from Redis.
# CLIENTS=N (default 10000), REDIS_URL=redis://[[user]:password@]host[:port][/db].
demo: build
	bash demo/run.sh

# The adapter on two real EMQX nodes, node A killed mid-stream (needs an
# EMQX 5.x build: EMQX_ROOT=/path with lib/<app>/ebin). SUBSCRIBERS=N
# (default 100), PUBLISHERS, RATE, DURATION, KILL_AT, NODE_TTL_MS.
emqx-demo:
	@if [ -z "$(EMQX_ROOT)" ]; then \
		echo "make emqx-demo: name an EMQX 5.x build: make emqx-demo EMQX_ROOT=/path/to/root (lib/<app>/ebin)" >&2; \
		exit 2; \
	fi
	$(MAKE) build
	EMQX_ROOT=$(EMQX_ROOT) bash demo/emqx_run.sh

test: deps
	bash scripts/test.sh

# Only the fuzz suite: N calls of the public API with random arguments
# (default 20000), SEED=S repeats a run (the suite prints the seed it used).
fuzz: deps
	FUZZ_N=$(N) FUZZ_SEED=$(SEED) EMQX_REDIS_STORAGE_ROOT=$(CURDIR) rebar3 ct --suite test/emqx_redis_fuzz_SUITE

# Throughput and latency against a private redis-server (see bench/run.sh
# --help; e.g. make bench BENCH_DURATION=10 BENCH_CONCURRENCY=1,16,64).
bench: deps
	rebar3 compile
	bash bench/run.sh

# An Erlang shell with the application on the code path.
shell: build
	rebar3 shell

clean:
	rm -rf _build target priv/*.so
