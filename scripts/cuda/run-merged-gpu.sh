#!/usr/bin/env bash
# ON THE DEVICE MACHINE, from the repo root: everything the speed/memory work needs checked on a GPU,
# from ONE release binary and its test binaries (built here by scripts/cuda/build-merged.sh into
# device/merged, git-ignored, carried with device/common/fixtures.tar.xz):
#   run(command="PHASES='kernels parity fixture bench' bash scripts/cuda/run-merged-gpu.sh",
#       carry=["device/merged", "device/common"])
# Phases (PHASES, space separated, in this order):
#   kernels  the CUDA kernel tests (implicit conv, DiT fused ops, block-sparse, frame ops, fused DiT)
#   parity   tests/device_parity.rs in f32, f16, bf16
#   fixture  the tiny and full fixtures through `flashvsr upscale`, new paths and the old ones
#   bench    `flashvsr bench` 768x1408 (tiny and full) and 1080p: new paths vs the old ones, same binary
#            (BENCH_OLD=0 skips the old paths, BENCH_FULL=0 the full mode)
#   memory   the memory plan and 4K runs under a VRAM budget
#   quant    the quantized DiT (q8_0, q4_k) beside bf16
#   joins    segments with warm-up (issue 16) at real dims: PSNR at the joins against one run
# The old paths stay selectable in the same binary: FLASHVSR_TC_CONV=tap (NCHW tap-GEMM decoder),
# FLASHVSR_LEGACY_FRAME_OPS=1 (Candle-op colour fix, host bicubic), FLASHVSR_DIT_FUSED=0 (op-by-op DiT),
# FLASHVSR_BSA_KERNEL=mma2 (the mma.sync attention kernel instead of the Hopper wgmma one).
set -uo pipefail
OUT=${OUT:-/tmp/flashvsr-gpu}; mkdir -p "$OUT"
PHASES=${PHASES:-kernels parity fixture bench}
D=${BIN_DIR:-device/merged}; B=/tmp/flashvsr-bin; mkdir -p $B
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$SP/cu13/lib:${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache
for f in $D/*.xz; do [ -x "$B/$(basename "$f" .xz)" ] || xz -dc "$f" > "$B/$(basename "$f" .xz)"; done
chmod +x $B/*
# The test binaries find the fixtures at the path compiled in (<checkout>/../shared/fixtures).
FX=/work/shared/fixtures; mkdir -p $FX /work/main/crates/flashvsr-model /work/main/crates/flashvsr-kernels
[ -d $FX/tiny-v1.1 ] || tar -xJf device/common/fixtures.tar.xz -C $FX
export FLASHVSR_FIXTURES=$FX
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee $OUT/gpu.txt
has() { case " $PHASES " in *" $1 "*) return 0;; esac; return 1; }
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
OLD="FLASHVSR_TC_CONV=tap FLASHVSR_LEGACY_FRAME_OPS=1 FLASHVSR_DIT_FUSED=0"

if has kernels; then
  for t in cuda_implicit_conv cuda_dit_fused cuda_block_sparse cuda_fp8; do
    [ -x $B/$t ] || { echo "$t: not built"; continue; }
    (cd /work/main/crates/flashvsr-kernels && timeout 120 $B/$t --test-threads=1 --nocapture) > $OUT/$t.log 2>&1
    stamp "$t rc=$?"; grep -E "rel|max|test result|FAILED|panicked" $OUT/$t.log | tail -25
  done
  for t in cuda_frame_ops cuda_dit; do
    [ -x $B/$t ] || { echo "$t: not built"; continue; }
    (cd /work/main/crates/flashvsr-model && FLASHVSR_TEST_DEVICE=cuda FLASHVSR_TEST_DTYPE=bf16 timeout 150 $B/$t --test-threads=1 --nocapture) > $OUT/$t.log 2>&1
    stamp "$t rc=$?"; grep -E "rel|max|diff|test result|FAILED|panicked" $OUT/$t.log | tail -25
  done
  if [ -x $B/cuda_dit ] && [ "${DIT_BENCH:-1}" = 1 ]; then
    (cd /work/main/crates/flashvsr-model && FLASHVSR_TEST_DTYPE=bf16 timeout 150 $B/cuda_dit --ignored --nocapture bench_dit_step) > $OUT/bench_dit_step.log 2>&1
    stamp "bench_dit_step rc=$?"; tail -40 $OUT/bench_dit_step.log
  fi
  [ -x $B/cuda_fp8 ] && { (cd /work/main/crates/flashvsr-kernels && timeout 120 $B/cuda_fp8 --ignored --nocapture bench_fp8_vs_bf16_gemm) > $OUT/bench_fp8.log 2>&1; stamp "bench_fp8 rc=$?"; grep '^{' $OUT/bench_fp8.log; }
  [ -x $B/bench_block_sparse ] && { timeout 200 $B/bench_block_sparse > $OUT/bench_block_sparse.log 2>&1; stamp "bench_block_sparse rc=$?"; grep -E "^\||accuracy|max abs" $OUT/bench_block_sparse.log; }
  [ -x $B/bench_implicit_conv ] && { timeout 120 $B/bench_implicit_conv > $OUT/bench_implicit_conv.log 2>&1; stamp "bench_implicit_conv rc=$?"; tail -40 $OUT/bench_implicit_conv.log; }
fi

if has parity && [ -x $B/device_parity ]; then
  for dt in f32 f16 bf16; do
    (cd /work/main/crates/flashvsr-model && FLASHVSR_TEST_DEVICE=cuda FLASHVSR_TEST_DTYPE=$dt timeout 150 $B/device_parity --nocapture --test-threads=1) > $OUT/parity_$dt.log 2>&1
    stamp "parity $dt rc=$?"; grep -E "rel|flips|test result|FAILED" $OUT/parity_$dt.log | tail -16
  done
fi

if has fixture; then
  for dt in f32 bf16; do
    for variant in new old; do
      [ $variant = old ] && [ $dt = f32 ] && continue
      envs=""; [ $variant = old ] && envs=$OLD
      rm -rf /tmp/o_tiny_${dt}_$variant /tmp/o_full_${dt}_$variant
      env $envs $B/flashvsr upscale $FX/tiny-v1.1/input.y4m /tmp/o_tiny_${dt}_$variant/ --weights $FX/tiny-v1.1 --head-dim 32 \
        --upstream-compat --noise $FX/tiny-v1.1/noise.npy --device cuda --dtype $dt -y --quiet > $OUT/fixture_tiny_${dt}_$variant.log 2>&1
      echo -n "tiny $dt $variant rc=$?: "; python3 scripts/cuda/compare_frames.py /tmp/o_tiny_${dt}_$variant $FX/tiny-v1.1/output 2>&1 | tail -1 | tee -a $OUT/fixture.txt
      env $envs $B/flashvsr upscale $FX/full-v1.1/input.y4m /tmp/o_full_${dt}_$variant/ --weights $FX/full-v1.1 --head-dim 32 --mode full \
        --upstream-compat --noise $FX/full-v1.1/noise.npy --device cuda --dtype $dt -y --quiet > $OUT/fixture_full_${dt}_$variant.log 2>&1
      echo -n "full $dt $variant rc=$?: "; python3 scripts/cuda/compare_frames.py /tmp/o_full_${dt}_$variant $FX/full-v1.1/output 2>&1 | tail -1 | tee -a $OUT/fixture.txt
    done
  done
  stamp "fixtures done"
fi

bench() { # label env-assignments... -- bench args
  local label=$1; shift; local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" $B/flashvsr bench --device cuda --json "$@" > $OUT/bench_$label.json 2> $OUT/bench_$label.err
  local rc=$?
  stamp "bench $label rc=$rc"
  python3 - "$OUT/bench_$label.json" <<'EOF' || tail -5 $OUT/bench_$label.err
import json, sys
r = json.load(open(sys.argv[1]))
keep = {k: r[k] for k in r if k not in ("settings", "plan")}
print(json.dumps(keep)[:1200])
EOF
}
if has bench; then
  bench warm X=1 -- --size 256x256 --frames 5 --dtype bf16 > /dev/null
  bench tiny_new X=1 -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16
  # The Hopper (wgmma) attention kernel against the mma.sync one, same binary.
  bench tiny_mma2 FLASHVSR_BSA_KERNEL=mma2 -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16
  # Decoder memory: one latent (4 frames) per decoder call instead of the plan's two.
  bench tiny_dec1 X=1 -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16 --decoder-latents 1
  [ "${BENCH_OLD:-1}" = 1 ] && bench tiny_old $OLD -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16
  [ "${BENCH_OLD:-1}" = 1 ] && bench tiny_old_dit FLASHVSR_DIT_FUSED=0 -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16
  [ "${BENCH_OLD:-1}" = 1 ] && bench tiny_old_conv FLASHVSR_TC_CONV=tap -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16
  bench tiny_1080_new X=1 -- --size 1920x1080 --frames ${FRAMES:-41} --dtype bf16
  [ "${BENCH_FULL:-1}" = 1 ] && bench full_new X=1 -- --size 1408x768 --frames 25 --mode full --dtype bf16
fi
if has memory; then
  bench plan_4k X=1 -- --size 3840x2160 --frames 25 --dtype bf16 --max-vram 24 --plan
  bench 4k_24g X=1 -- --size 3840x2160 --frames 25 --dtype bf16 --max-vram 24
  bench 1080_12g X=1 -- --size 1920x1080 --frames 41 --dtype bf16 --max-vram 12
fi
if has quant; then
  for q in ${QUANTS:-q8_0 q4_k fp8}; do
    bench tiny_$q X=1 -- --size 1408x768 --frames ${FRAMES:-41} --dtype bf16 --quantize-dit $q
  done
fi
if has joins; then
  W=/tmp/w-real; IN=/tmp/joins_in.y4m; JF=${JOIN_FRAMES:-97}
  [ -f $W/TCDecoder.ckpt ] || { $B/flashvsr -q synth-weights $W --dims real; stamp "synth-weights rc=$?"; }
  python3 scripts/cuda/y4m_tools.py make $IN 352 192 $JF
  UP=(--weights $W --device cuda --dtype bf16)
  $B/flashvsr -q upscale $IN /tmp/joins_single.y4m -y "${UP[@]}"; stamp "single run rc=$?"
  $B/flashvsr plan-segments $IN --segment-frames ${SEG:-40} --warmup 21 --json > $OUT/joins_plan.json
  parts=(); joins=$(python3 -c 'import json,sys; print(",".join(str(s["start"]) for s in json.load(open(sys.argv[1]))["segments"][1:]))' $OUT/joins_plan.json)
  for r in $(python3 -c 'import json,sys; print(" ".join(s["frames_arg"] for s in json.load(open(sys.argv[1]))["segments"]))' $OUT/joins_plan.json); do
    seg=/tmp/joins_seg_$(echo "$r" | tr ':' '_').y4m
    $B/flashvsr -q upscale $IN $seg --frames $r --warmup 21 -y "${UP[@]}"; stamp "segment $r rc=$?"
    parts+=($seg)
  done
  python3 scripts/cuda/y4m_tools.py concat /tmp/joins_joined.y4m "${parts[@]}"
  echo -n "joins ($joins): "; python3 scripts/cuda/y4m_tools.py compare /tmp/joins_joined.y4m /tmp/joins_single.y4m --joins "$joins" | tee $OUT/joins.json
fi
stamp "all done"
