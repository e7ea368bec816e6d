#!/usr/bin/env bash
# PSNR of our frames against upstream's, one row per precision variant, on a bundle written by
# ../shared/reference/run_upstream.py --save-bundle (weights, noise, input/, upstream_out/).
# Judge precision against an f32 bundle (runner --dtype fp32): upstream's bf16 is itself ~22 dB
# from its f32 on random weights.
#
#   BUNDLE=/tmp/bundle384 BIN=target/release/flashvsr DEVICE=cpu DTYPE=f32 \
#     bash scripts/quality_table.sh dense q8_0 q6_k q5_k q4_k q4_0 fp8 kv-fp8
#
# Variants: dense (no option), a --quantize-dit type (q8_0, q6_k, q5_k, q4_k, q4_0, fp8), or
# kv-fp8 (--kv-cache fp8). One line per variant goes to $OUT/quality.jsonl.
set -euo pipefail
: "${BUNDLE:?set BUNDLE to a run_upstream.py --save-bundle folder}"
BIN=${BIN:-target/release/flashvsr}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
OUT=${OUT:-/tmp/quality}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
for v in "$@"; do
  case $v in
    dense) extra=() ;;
    kv-fp8) extra=(--kv-cache fp8) ;;
    *) extra=(--quantize-dit "$v") ;;
  esac
  rm -rf "${OUT:?}/$v"
  start=$(date +%s)
  summary=$("$BIN" upscale "$BUNDLE/input" "$OUT/$v/" --weights "$BUNDLE" --noise "$BUNDLE/noise.npy" \
    --upstream-compat --device "$DEVICE" --dtype "$DTYPE" --json -q "${extra[@]}" | tail -1)
  wall=$(( $(date +%s) - start ))
  cmp=$(python3 "$HERE/cuda/compare_frames.py" "$OUT/$v" "$BUNDLE/upstream_out")
  psnr=$(sed -n 's/.*PSNR \([0-9.inf]*\) dB.*/\1/p' <<<"$cmp")
  fps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("fps"))' "$summary")
  echo "$v: $cmp (wall ${wall} s, fps $fps)"
  printf '{"variant":"%s","device":"%s","dtype":"%s","psnr_vs_upstream_db":%s,"fps":%s,"wall_s":%s}\n' \
    "$v" "$DEVICE" "$DTYPE" "$psnr" "$fps" "$wall" >>"$OUT/quality.jsonl"
done
