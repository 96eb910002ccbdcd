#!/bin/sh
# Builds the NIF in release mode and installs it as priv/emqx_redis_storage_nif.so.
# Runs from the application's directory, also when it is a dependency.
set -eu
cargo build --release --quiet --manifest-path Cargo.toml
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p priv
# A VM may have the old library loaded: remove it and copy a new file (a new
# inode) rather than writing into the mapped one.
rm -f priv/emqx_redis_storage_nif.so
cp "$target_dir/release/libemqx_redis_storage_nif.so" priv/emqx_redis_storage_nif.so
