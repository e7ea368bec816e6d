#!/usr/bin/env bash
# ON THE DEVICE MACHINE, from the repo root: the one-call check of the speed work when device time is short:
# attention kernel tests and bench, channels-last LQ checks, device parity (bf16), pipeline benches with the
# old paths selectable in the same binary, then (time permitting) upstream side by side at 768x1408.
# Build with: TESTS="flashvsr-kernels:cuda_block_sparse flashvsr-kernels:cuda_implicit_conv flashvsr-model:device_parity" \
#   EXAMPLES="flashvsr-kernels:bench_block_sparse flashvsr-model:bench_lq_proj" bash scripts/cuda/build-merged.sh
# then copy device/merged/{flashvsr,cuda_block_sparse,cuda_implicit_conv,device_parity,bench_block_sparse,bench_lq_proj}.xz,
# device/common/fixtures.tar.xz (tiny-v1.1 full-v1.1 draft-mask) and ../shared/reference (as reference/) into device/quick
# (about 64 MB: the carry limit) and run(command="LIMIT=560 bash scripts/cuda/run-quick-gpu.sh", carry=["device/quick"]).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; B=/tmp/flashvsr-bin; mkdir -p $B device/reference
for f in device/quick/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz); done; chmod +x $B/*
cp -r device/quick/reference/* device/reference/
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$SP/cu13/lib:${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache PYTHONUNBUFFERED=1
FX=/work/shared/fixtures; mkdir -p $FX; tar -xJf device/quick/fixtures.tar.xz -C $FX; export FLASHVSR_FIXTURES=$FX
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
(cd crates/flashvsr-kernels && timeout 100 $B/cuda_block_sparse --test-threads=1 --nocapture) > $OUT/bsa.log 2>&1
rc=$?; stamp "cuda_block_sparse rc=$rc"; grep -E "Hopper|test result|FAILED|panicked|Error" $OUT/bsa.log | tail -16
grep -q "test result: ok" $OUT/bsa.log && K=tma || K=wgmma; echo "attention kernel for the rest: $K"
(cd crates/flashvsr-kernels && timeout 60 $B/cuda_implicit_conv --test-threads=1 --nocapture channels_last) > $OUT/nhwc.log 2>&1
stamp "channels-last tap GEMMs rc=$?"; grep -E "channels-last|test result|panicked" $OUT/nhwc.log
for dt in bf16; do
  (cd crates/flashvsr-model && FLASHVSR_BSA_KERNEL=$K FLASHVSR_TEST_DEVICE=cuda FLASHVSR_TEST_DTYPE=$dt timeout 90 $B/device_parity --nocapture --test-threads=1 lq_projection) > $OUT/parity_$dt.log 2>&1
  stamp "parity $dt rc=$?"; grep -E "lq_feat|velocity|test result|panicked" $OUT/parity_$dt.log | head -6
done
$B/flashvsr bench --device cuda --dtype bf16 --size 256x256 --frames 5 --json > $OUT/warm.json 2>&1; stamp "warm rc=$?"
timeout 60 $B/bench_block_sparse > $OUT/bench_bsa.log 2>&1; stamp "bench_block_sparse rc=$?"; grep -vE "^\s*$" $OUT/bench_bsa.log | tail -14
for v in channels_last ncthw; do
  FLASHVSR_LQ_CONV=$v timeout 60 $B/bench_lq_proj 1408 768 6 > $OUT/lq_$v.log 2>&1; stamp "bench_lq_proj $v rc=$?"; tail -1 $OUT/lq_$v.log
done
bench() { local tag=$1; shift; env "$@" timeout 90 $B/flashvsr bench --device cuda --dtype bf16 --size 1408x768 --frames 41 --json > $OUT/bench_$tag.json 2> $OUT/bench_$tag.err
  stamp "bench $tag rc=$?"; python3 -c "
import json,sys; d=json.load(open(sys.argv[1])); s=d.get('stages_s',{}); n=d.get('output_frames',1)
print('fps', round(d.get('fps',0),2), {k: round(1e3*v/n,2) for k,v in s.items() if k!='load_weights'}, 'peak', d.get('peak_vram_bytes'), 'reserved', d.get('pool_reserved_high_bytes'), d.get('error',''))" $OUT/bench_$tag.json 2>&1 | head -c 600; echo; }
bench default FLASHVSR_BSA_KERNEL=$K
bench wgmma FLASHVSR_BSA_KERNEL=wgmma
bench lq_ncthw FLASHVSR_BSA_KERNEL=$K FLASHVSR_LQ_CONV=ncthw
T=$(( ${LIMIT:-380} - ($(date +%s) - t0) )); stamp "side by side with $T s left"
PY=/opt/torch/.venv/bin/python
[ $T -gt 200 ] && FLASHVSR_BSA_KERNEL=$K timeout $((T-5)) $PY device/reference/run_upstream.py --case tiny:101:768x1408 --dtype bf16 --warmup 1 --runs 1 --no-stage-run \
  --save-bundle /tmp/bundle --json $OUT/side_by_side.json --deadline-s $((T-130)) \
  --ours "$B/flashvsr upscale {input} {out}/ --weights {bundle} --noise {noise} --upstream-compat --device cuda --dtype bf16 --json -q -y" \
  --ours-timeout-s 110 > $OUT/side_by_side.log 2>&1
stamp "side by side rc=$?"; tail -25 $OUT/side_by_side.log
