#!/usr/bin/env bash
# Installs what building and testing need, on Debian or Ubuntu, if it is missing.
# Elsewhere it prints what to install. Rust (cargo, clippy, rustfmt) must
# already be there: https://rustup.rs
set -euo pipefail

packages=(make git openssl erlang-nox erlang-dev erlang-common-test erlang-eunit
          erlang-dialyzer erlang-proper erlang-proper-dev erlang-tools rebar3 redis-server redis-tools
          redis-sentinel gnuplot-nox prometheus)

for tool in cargo cargo-clippy rustfmt; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-deps: '$tool' is missing: install Rust with rustup (components clippy, rustfmt)" >&2
        exit 1
    fi
done

if ! command -v dpkg >/dev/null 2>&1; then
    for tool in erl rebar3 redis-server redis-cli redis-sentinel openssl git promtool; do
        command -v "$tool" >/dev/null 2>&1 || { echo "install-deps: please install $tool (Erlang/OTP 25+, rebar3, Redis 7; promtool comes with Prometheus)" >&2; exit 1; }
    done
    exit 0
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "install-deps: run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package may start a system Redis on 6379; the tests never use it.
