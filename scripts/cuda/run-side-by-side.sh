#!/usr/bin/env bash
# ON THE DEVICE MACHINE, from the repo root: upstream's PyTorch pipeline and our binary on the same
# random real-shape weights, noise and input (../shared/reference/run_upstream.py, copied into
# device/reference), one case per call: FPS, peak memory, PSNR side by side.
# Expects /tmp/flashvsr-bin/flashvsr (unpacked by run-merged-gpu.sh, or by hand from device/*/flashvsr.xz).
#   CASE=tiny:101:768x1408 DTYPE=bf16 bash scripts/cuda/run-side-by-side.sh
set -uo pipefail
OUT=${OUT:-/tmp/flashvsr-gpu}; mkdir -p "$OUT"
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$SP/cu13/lib:${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache PYTHONUNBUFFERED=1
CASE=${CASE:-tiny:101:768x1408}; DTYPE=${DTYPE:-bf16}; OURS_DTYPE=${OURS_DTYPE:-bf16}
PY=$(command -v python3); [ -x /opt/torch/.venv/bin/python ] && PY=/opt/torch/.venv/bin/python
tag=$(echo "$CASE" | tr ':x' '__')_$DTYPE
# The driver JIT-compiles the PTX at first use (~40 s on a fresh machine): do it outside the timing.
/tmp/flashvsr-bin/flashvsr bench --device cuda --size 256x256 --frames 5 --dtype "$OURS_DTYPE" > /dev/null 2>&1 \
  || echo "warm-up bench failed (rc $?)"
$PY device/reference/run_upstream.py --case "$CASE" --dtype "$DTYPE" --warmup 1 --runs 2 --no-stage-run \
  --save-bundle /tmp/bundle_$tag --json "$OUT/side_by_side_$tag.json" --deadline-s ${DEADLINE_S:-400} \
  --ours "/tmp/flashvsr-bin/flashvsr upscale {input} {out}/ --weights {bundle} --noise {noise} --upstream-compat --device cuda --dtype $OURS_DTYPE --json -q -y" \
  --ours-timeout-s ${OURS_TIMEOUT_S:-240} 2>&1 | tee "$OUT/side_by_side_$tag.log" | tail -40
# More of ours on the same bundle, each compared with upstream's frames (judge precision against
# an fp32 bundle): EXTRA="f32 bf16:q8_0 bf16:q4_k" = dtype[:--quantize-dit type] per run.
BUNDLE=/tmp/bundle_$tag
for extra in ${EXTRA:-}; do
  dt=${extra%%:*}; q=; [ "$extra" != "$dt" ] && q=${extra#*:}
  o=/tmp/extra_${tag}_$(echo "$extra" | tr ':' '_'); rm -rf "$o"
  /tmp/flashvsr-bin/flashvsr upscale $BUNDLE/input $o/ --weights $BUNDLE --noise $BUNDLE/noise.npy --upstream-compat \
    --device cuda --dtype $dt ${q:+--quantize-dit $q} --json -q -y > "$OUT/extra_${tag}_$extra.json" 2> "$OUT/extra_${tag}_$extra.err"
  echo -n "ours $extra rc=$? $(tail -1 "$OUT/extra_${tag}_$extra.json" | head -c 300) vs upstream $DTYPE: "
  $PY scripts/cuda/compare_frames.py $o $BUNDLE/upstream_out 2>&1 | tail -1
done
