#!/usr/bin/env bash
# ON A MULTI-GPU DEVICE MACHINE (nvidia-h100-x2 or larger), from the repo root: the Ray scale-out
# driver (scripts/ray_upscale.py) on 1 GPU and on N GPUs in the same call, against one plain
# uninterrupted run, on synthetic real-dims weights and a synthetic y4m clip (that machine has
# no ffmpeg: y4m in, y4m segments, joined by appending frames). Issue 16's target: >= 1.9x on 2.
# Not run yet (no multi-GPU machine was lent when it was written).
#
# Needs: a CUDA flashvsr (BIN, default /tmp/flashvsr-bin/flashvsr, or device/segments/flashvsr.xz
# unpacked there) and ray, carried as wheels (ray 2.60.0 and what it needs that the image lacks;
# see the device README: `.whl` in carry, pip install --target /tmp/site, PYTHONPATH).
#   run(command="bash scripts/cuda/run-ray-multi-gpu.sh", kind="nvidia-h100-x2", carry=[".whl", "device/segments"])
# Knobs: FRAMES (385), SIZE (input WxH, 352x192 -> 1408x768 out), SEG (segment frames, default
# FRAMES / (2 x GPUs)), WARMUP (21), DTYPE (bf16), GPUS ("1 N": the GPU counts to run), WEIGHTS
# (a weights folder; default: synthetic real dims written to /tmp/w-real, ~7 GB).
# CPU=1: a dry run of the script's logic here (CPU tasks, small synthetic weights, tiny clip;
# CPU_SLOTS plays the GPU count; BIN defaults to target/debug/flashvsr).
set -uo pipefail
now() { date +%s%N; }
# secs T0 T1, ratio A B, rate N S: arithmetic without bc.
secs() { python3 -c "import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / 1e9, 3))" "$1" "$2"; }
ratio() { python3 -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 2))" "$1" "$2"; }
CPU=${CPU:-0}
OUT=${OUT:-/tmp/flashvsr-ray}; mkdir -p "$OUT"
# No NVLink multicast on these hosts (nothing here uses NCCL, but keep the rule).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${SP:+$SP/cu13/lib:}${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache PYTHONUNBUFFERED=1 RAY_DISABLE_USAGE_STATS=1
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
if [ "$CPU" = 1 ]; then BIN=${BIN:-target/debug/flashvsr}; else BIN=${BIN:-/tmp/flashvsr-bin/flashvsr}; fi
if [ ! -x "$BIN" ] && [ -f device/segments/flashvsr.xz ]; then
  mkdir -p "$(dirname "$BIN")"; xz -dc device/segments/flashvsr.xz > "$BIN"; chmod +x "$BIN"
fi
[ -x "$BIN" ] || { echo "no flashvsr binary at $BIN"; exit 1; }
python3 -c "import ray; print('ray', ray.__version__)" || { echo "ray is not importable (carry its wheels)"; exit 1; }
if [ "$CPU" = 1 ]; then
  NGPU=${CPU_SLOTS:-2}; FRAMES=${FRAMES:-90}; SIZE=${SIZE:-32x24}
  DEV=(--device cpu); TASK=(--gpus-per-task 0); WEIGHTS=${WEIGHTS:-/tmp/w-small}
  [ -f "$WEIGHTS/TCDecoder.ckpt" ] || "$BIN" -q synth-weights "$WEIGHTS"
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  NGPU=$(nvidia-smi -L | grep -c '^GPU ')
  DEV=(--device cuda --dtype "${DTYPE:-bf16}"); TASK=(--gpus-per-task 1)
fi
echo "GPUs: $NGPU"
FRAMES=${FRAMES:-385}; SIZE=${SIZE:-352x192}; WARMUP=${WARMUP:-21}
GPUS=${GPUS:-"1 $NGPU"}
: > "$OUT/walls.txt"
SEG=${SEG:-$(( (FRAMES + 2 * NGPU - 1) / (2 * NGPU) ))}
W=${WEIGHTS:-/tmp/w-real}
if [ -z "${WEIGHTS:-}" ] && [ ! -f "$W/diffusion_pytorch_model_streaming_dmd.safetensors" ]; then
  t0=$(now); "$BIN" -q synth-weights "$W" --dims real; echo "synth-weights rc=$? $(secs "$t0" "$(now)") s"
fi
IN=/tmp/ray_in.y4m
python3 scripts/cuda/y4m_tools.py make "$IN" "${SIZE%x*}" "${SIZE#*x}" "$FRAMES"; echo "clip rc=$? ($FRAMES frames $SIZE)"
UP=(--weights "$W" "${DEV[@]}")
# JIT warm-up (first run of a binary compiles Candle's PTX), not timed.
"$BIN" -q upscale "$IN" /tmp/warm.y4m --frames 0:25 -y "${UP[@]}" > /dev/null; echo "warm-up rc=$?"

# One plain run on one GPU: the baseline.
t0=$(now)
CUDA_VISIBLE_DEVICES=0 "$BIN" -q upscale "$IN" /tmp/single.y4m -y --json "${UP[@]}" > "$OUT/single.json"
rc=$?; single_s=$(secs "$t0" "$(now)")
echo "single run rc=$rc wall ${single_s} s, $(ratio "$FRAMES" "$single_s") frames/s (process); $(tail -1 "$OUT/single.json" | python3 -c 'import json,sys; print("model fps", round(json.loads(sys.stdin.read())["fps"], 3))')"
"$BIN" plan-segments "$IN" --segment-frames "$SEG" --warmup "$WARMUP" | tee "$OUT/plan.txt"
JOINS=$("$BIN" plan-segments "$IN" --segment-frames "$SEG" --warmup "$WARMUP" --json | python3 -c 'import json,sys; print(",".join(str(s["start"]) for s in json.load(sys.stdin)["segments"][1:]))')

for n in $GPUS; do
  [ "$n" -le "$NGPU" ] || { echo "skip $n GPUs (only $NGPU)"; continue; }
  rm -rf /tmp/ray_out_$n.y4m /tmp/ray_out_$n.y4m.segments
  # A local cluster of n GPUs (on the CPU dry run: n task slots).
  if [ "$CPU" = 1 ]; then SLOTS=(--num-cpus "$n"); else SLOTS=(--num-gpus "$n" --num-cpus $(( 2 * n + 2 ))); fi
  t0=$(now)
  python3 scripts/ray_upscale.py "$IN" /tmp/ray_out_$n.y4m --flashvsr "$BIN" --segment-frames "$SEG" --warmup "$WARMUP" \
    "${SLOTS[@]}" "${TASK[@]}" -y --json -- "${UP[@]}" \
    > "$OUT/ray_$n.json" 2> "$OUT/ray_$n.log"
  rc=$?; wall=$(secs "$t0" "$(now)")
  echo "ray $n GPU(s) rc=$rc wall ${wall} s (with Ray's start), $(ratio "$FRAMES" "$wall") frames/s; vs the single run x$(ratio "$single_s" "$wall")"
  tail -1 "$OUT/ray_$n.json"; grep -E "segments, |error" "$OUT/ray_$n.log" | tail -3
  echo "$n $wall" >> "$OUT/walls.txt"
  echo -n "joined vs single: "; python3 scripts/cuda/y4m_tools.py compare /tmp/ray_out_$n.y4m /tmp/single.y4m --joins "$JOINS" | tee "$OUT/compare_$n.json"
done
# Scaling: N GPUs against 1 GPU on the same Ray job (same segments, same warm-ups).
python3 - "$OUT/walls.txt" <<'PY'
import sys
w = dict(line.split() for line in open(sys.argv[1]))
if "1" in w:
    for n, s in sorted(w.items(), key=lambda kv: int(kv[0])):
        print(f"{n} GPU(s): x{float(w['1']) / float(s):.2f} against 1 GPU on the same job")
PY
