#!/bin/sh
# Loader benchmark driver: warms the page cache, then alternates baseline reads and loads.
# usage: run_load_bench.sh DIR   (DIR made by `load_bench gen DIR`)
set -e
DIR=${1:?usage: run_load_bench.sh DIR}
BIN=${BIN:-target/debug/examples/load_bench}
for f in "$DIR/dit-bf16.safetensors" "$DIR/dit-q8_0.gguf"; do
  cat "$f" > /dev/null
  for i in 1 2 3; do
    "$BIN" read "$f"
    "$BIN" load "$f"
  done
done
