#!/usr/bin/env bash
# ON THE DEVICE MACHINE, from the repo root: stage parity (f32/f16/bf16), the fixture through the
# CLI, and the 768x1408 benchmarks with Candle's im2col convs vs cuDNN convs, in one call.
# Expects in device/lead (git-ignored, carried): flashvsr.xz (--features cuda), optionally
# flashvsr-im2col.xz / flashvsr-cudnn.xz (other conv paths to compare, same run),
# device_parity.xz, cuda_tap_conv.xz, bench_conv.xz, fixtures.tar.xz (frames compared by scripts/cuda/compare_frames.py).
#   run(command="bash scripts/cuda/run-pipeline-gpu.sh", carry=["device/lead"])
set -uo pipefail
OUT=${OUT:-/tmp/flashvsr-gpu}; mkdir -p "$OUT"
D=device/lead; B=/tmp/flashvsr-bin; mkdir -p $B
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)
CUDNN=$(dirname "$(ls $SP/cudnn/lib/libcudnn.so.9 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$SP/cu13/lib:${CUDNN}:${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache
for f in $D/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done; chmod +x $B/*
mkdir -p /work/shared/fixtures /work/main/crates/flashvsr-model
FXA=$D/fixtures.tar.xz; [ -f $FXA ] || FXA=device/common/fixtures.tar.xz
tar -xJf $FXA -C /work/shared/fixtures
FX=/work/shared/fixtures
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee $OUT/gpu.txt
echo "cudnn: $CUDNN ($(ls $CUDNN 2>/dev/null | grep -c so))"
$B/flashvsr devices 2>&1 | tee $OUT/devices.txt
if [ "${SKIP_PARITY:-0}" != 1 ]; then
  for dt in f32 f16 bf16; do
    (cd /work/main/crates/flashvsr-model && FLASHVSR_TEST_DEVICE=cuda FLASHVSR_TEST_DTYPE=$dt $B/device_parity --nocapture --test-threads=1) > $OUT/parity_$dt.log 2>&1
    echo "parity $dt rc=$?"; grep -E "rel|flips|test result" $OUT/parity_$dt.log | tail -14
  done
fi
if [ -x $B/cuda_tap_conv ]; then
  $B/cuda_tap_conv --nocapture > $OUT/tap_conv_test.log 2>&1; echo "tap conv test rc=$?"; grep -E "rel err|test result" $OUT/tap_conv_test.log
fi
[ -x $B/bench_conv ] && { $B/bench_conv > $OUT/bench_conv.jsonl 2>&1; echo "bench_conv rc=$?"; cat $OUT/bench_conv.jsonl; }
# The fixture through the whole CLI pipeline, compared with upstream's output frames.
for bin in ${FIXTURE_BINS:-flashvsr flashvsr-im2col flashvsr-cudnn}; do
  [ -x $B/$bin ] || continue
  for dt in f32 bf16; do
    rm -rf /tmp/o_${bin}_$dt
    $B/$bin upscale $FX/tiny-v1.1/input.y4m /tmp/o_${bin}_$dt/ --weights $FX/tiny-v1.1 --head-dim 32 --upstream-compat \
      --noise $FX/tiny-v1.1/noise.npy --device cuda --dtype $dt -y --quiet
    echo -n "$bin $dt: "; python3 scripts/cuda/compare_frames.py /tmp/o_${bin}_$dt $FX/tiny-v1.1/output 2>&1 | tee -a $OUT/fixture.txt
  done
done
bench() { # label binary args...
  local label=$1 bin=$2; shift 2
  [ -x "$bin" ] || { echo "bench $label: no $bin, skipped"; return; }
  $bin bench --device cuda --json "$@" > $OUT/bench_$label.json 2> $OUT/bench_$label.err
  echo "bench $label rc=$?"; python3 -c "import json,sys;r=json.load(open(sys.argv[1]));print(json.dumps({k:r[k] for k in r if k not in ('settings',)})[:900])" $OUT/bench_$label.json
}
# Full mode (Wan VAE) on its fixture.
for dt in f32 bf16; do
  rm -rf /tmp/of_$dt
  $B/flashvsr upscale $FX/full-v1.1/input.y4m /tmp/of_$dt/ --weights $FX/full-v1.1 --head-dim 32 --mode full \
    --upstream-compat --noise $FX/full-v1.1/noise.npy --device cuda --dtype $dt -y --quiet
  echo -n "flashvsr full $dt: "; python3 scripts/cuda/compare_frames.py /tmp/of_$dt $FX/full-v1.1/output 2>&1 | tee -a $OUT/fixture.txt
done
# Warm the JIT of each binary, then measure.
for bin in flashvsr flashvsr-tap flashvsr-im2col flashvsr-cudnn; do
  bench warm_$bin $B/$bin --size 256x256 --frames 5 --dtype bf16 > /dev/null
done
for dt in ${BENCH_DTYPES:-bf16}; do
  for bin in ${TINY_BINS:-flashvsr flashvsr-im2col flashvsr-cudnn}; do
    bench tiny_${dt}_$bin $B/$bin --size 1408x768 --frames 41 --dtype $dt
  done
done
for bin in ${FULL_BINS:-flashvsr flashvsr-im2col flashvsr-cudnn}; do
  bench full_bf16_$bin $B/$bin --size 1408x768 --frames 25 --mode full --dtype bf16
done
