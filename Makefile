# make test: every check and test (installs missing prerequisites first).
.PHONY: all deps build test shell clean

all: build

deps:
	bash scripts/install-deps.sh

build: deps
	rebar3 compile

test: deps
	bash scripts/test.sh

# An Erlang shell with the application on the code path.
shell: build
	rebar3 shell

clean:
	rm -rf _build target priv/*.so
