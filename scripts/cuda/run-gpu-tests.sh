#!/usr/bin/env bash
# Runs the flashvsr-kernels CUDA tests and the block-sparse bench ON THE DEVICE MACHINE, from the
# repo root. The binaries are built on the (GPU-less) dev machine by scripts/cuda/build-gpu-tests.sh
# into device/ (git-ignored), which the device tool carries along:
#   run(command="bash scripts/cuda/run-gpu-tests.sh", carry=["device"])
# Logs go to $OUT (the device tool brings them back) or /tmp/flashvsr-gpu.
set -uo pipefail
OUT=${OUT:-/tmp/flashvsr-gpu}
mkdir -p "$OUT"
TORCH_CU13=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda-13.0/lib64:${TORCH_CU13}:${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache
# build-gpu-tests.sh copies the draft-mask fixture next to the binaries.
export FLASHVSR_FIXTURES=$PWD/device/fixtures
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
mkdir -p /tmp/flashvsr-bin
for f in device/*.xz; do xz -dc "$f" > "/tmp/flashvsr-bin/$(basename "$f" .xz)"; done
chmod +x /tmp/flashvsr-bin/*
rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== cuda tests"
  /tmp/flashvsr-bin/cuda_block_sparse --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log" || rc=1
fi
echo "== bench"
/tmp/flashvsr-bin/bench_block_sparse 2>&1 | tee "$OUT/bench.log" || rc=1
if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (kernels_match_dense_reference)"
  timeout 240 compute-sanitizer --tool memcheck /tmp/flashvsr-bin/cuda_block_sparse \
    --test-threads=1 kernels_match_dense_reference > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit $?"; grep -E 'ERROR SUMMARY|test result' "$OUT/memcheck.log"
fi
exit $rc
