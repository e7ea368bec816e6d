#!/usr/bin/env bash
# Assembles device/quick (git-ignored) for scripts/cuda/run-quick-gpu.sh from device/merged (see that
# script's header for the build command), the fixtures it needs and the upstream reference runner.
set -euo pipefail
Q=device/quick; rm -rf $Q; mkdir -p $Q
for b in flashvsr cuda_block_sparse cuda_implicit_conv device_parity bench_block_sparse bench_lq_proj; do
  cp device/merged/$b.xz $Q/
done
tar -cJf $Q/fixtures.tar.xz -C ../shared/fixtures tiny-v1.1 full-v1.1 draft-mask
cp -r ../shared/reference $Q/reference && chmod -R u+w $Q/reference
du -sb $Q | awk '{printf "device/quick: %.1f MB (carry limit 67.1 MB)\n", $1/1e6}'
