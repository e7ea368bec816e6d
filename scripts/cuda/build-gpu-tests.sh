#!/usr/bin/env bash
# Builds the flashvsr-kernels CUDA test binary and bench on a machine without a GPU (CUDA 13.0
# toolchain from pip wheels, sm_90 = H100/H200) and puts them, xz-compressed, into device/ for
# scripts/cuda/run-gpu-tests.sh. Run from the repo root.
set -euo pipefail
source <(bash ../shared/tools/cuda-wheels.sh)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
mkdir -p device
nice -n 19 cargo test -p flashvsr-kernels --features cuda --release --no-run --test cuda_block_sparse
# Same command again (nothing to rebuild) just to learn the test binary's path.
test_bin=$(cargo test -p flashvsr-kernels --features cuda --release --no-run \
  --test cuda_block_sparse --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_block_sparse":
        print(m["executable"])')
nice -n 19 cargo build -p flashvsr-kernels --features cuda --release --example bench_block_sparse
strip -o device/cuda_block_sparse "$test_bin"
strip -o device/bench_block_sparse "$CARGO_TARGET_DIR/release/examples/bench_block_sparse"
xz -6 -f -T2 device/cuda_block_sparse device/bench_block_sparse
mkdir -p device/fixtures
cp -r ../shared/fixtures/draft-mask device/fixtures/
ls -la device/
