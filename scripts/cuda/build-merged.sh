#!/usr/bin/env bash
# Builds, on the GPU-less dev machine, the release CLI with --features cuda and the CUDA test
# binaries that scripts/cuda/run-merged-gpu.sh runs on the device; strips and xz-compresses them
# into device/merged (git-ignored). Run from the repo root after `cargo fetch`.
# BINS=cli builds only the CLI. Own target dir: never share it between checkouts.
set -euo pipefail
source <(bash ../shared/tools/cuda-wheels.sh)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
mkdir -p device/merged
pack() { strip -o "device/merged/$2" "$1"; xz -6 -f -T2 "device/merged/$2"; }
nice -n 19 cargo build --locked --release -p flashvsr-cli --features cuda
pack "$CARGO_TARGET_DIR/release/flashvsr" flashvsr
[ "${BINS:-all}" = cli ] && { ls -la device/merged; exit 0; }
# Test binaries: (package, test target) pairs; cargo prints each executable's path as JSON.
tests=(flashvsr-model:device_parity flashvsr-model:cuda_dit flashvsr-model:cuda_frame_ops
       flashvsr-kernels:cuda_implicit_conv flashvsr-kernels:cuda_dit_fused flashvsr-kernels:cuda_block_sparse
       flashvsr-kernels:cuda_fp8)
# TESTS="pkg:test ..." builds only those.
[ -n "${TESTS:-}" ] && read -r -a tests <<< "$TESTS"
for pt in "${tests[@]}"; do
  pkg=${pt%%:*}; t=${pt##*:}
  exe=$(nice -n 19 cargo test --locked --release -p "$pkg" --features cuda --no-run --test "$t" \
          --message-format=json 2>>/tmp/build-merged.log | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$t")
  [ -n "$exe" ] || { echo "no executable for $pt" >&2; exit 1; }
  pack "$exe" "$t"
done
# EXAMPLES="pkg:example ..." builds only those.
read -r -a examples <<< "${EXAMPLES:-flashvsr-kernels:bench_implicit_conv flashvsr-kernels:bench_block_sparse flashvsr-model:bench_lq_proj}"
for pe in "${examples[@]}"; do
  pkg=${pe%%:*}; ex=${pe##*:}
  nice -n 19 cargo build --locked --release -p "$pkg" --features cuda --example "$ex"
  pack "$CARGO_TARGET_DIR/release/examples/$ex" "$ex"
done
ls -la device/merged
