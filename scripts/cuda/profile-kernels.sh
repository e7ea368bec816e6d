#!/usr/bin/env bash
# ON THE DEVICE MACHINE, from the repo root: where the GPU time goes, kernel by kernel (ncu), in
# one bench of the tiny pipeline at 768x1408, plus PyTorch/cuDNN conv ceilings at the decoder's
# shapes. Expects device/lead/flashvsr.xz (carry device/lead).
set -uo pipefail
OUT=${OUT:-/tmp/flashvsr-prof}; mkdir -p "$OUT"
B=/tmp/flashvsr-bin; mkdir -p $B
xz -dc device/lead/flashvsr.xz > $B/flashvsr; chmod +x $B/flashvsr
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export CUDA_CACHE_PATH=/tmp/flashvsr-nvcache
FR=${PROFILE_FRAMES:-29}
$B/flashvsr bench --device cuda --dtype bf16 --size 256x256 --frames 5 --json > /dev/null 2>&1
$B/flashvsr bench --device cuda --dtype bf16 --size 1408x768 --frames $FR --json > $OUT/bench.json 2> $OUT/bench.err
echo "bench rc=$?"; head -c 1500 $OUT/bench.json; echo
timeout ${NCU_TIMEOUT:-300} ncu --clock-control none --csv --page raw --metrics gpu__time_duration.sum \
  $B/flashvsr bench --device cuda --dtype bf16 --size 1408x768 --frames $FR --json > $OUT/ncu.csv 2> $OUT/ncu.err
echo "ncu rc=$? lines=$(wc -l < $OUT/ncu.csv)"; tail -3 $OUT/ncu.err
python3 scripts/cuda/ncu_summary.py $OUT/ncu.csv 45 | tee $OUT/ncu_summary.txt
python3 - <<'PY' | tee $OUT/torch_conv.txt
import torch, torch.nn.functional as F
torch.backends.cudnn.benchmark = True
def bench(cin, cout, h, w, n, dt=torch.bfloat16, k=3):
    x = torch.randn(n, cin, h, w, device="cuda", dtype=dt).to(memory_format=torch.channels_last)
    wt = torch.randn(cout, cin, k, k, device="cuda", dtype=dt).to(memory_format=torch.channels_last) * 0.02
    for _ in range(3): F.conv2d(x, wt, padding=k // 2)
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    ts = []
    for _ in range(10):
        s.record(); F.conv2d(x, wt, padding=k // 2); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); ms = ts[len(ts) // 2]
    fl = 2 * n * h * w * cin * cout * k * k
    print(f"cudnn NHWC bf16 {cin:4d}->{cout:4d} {h}x{w} n={n} k={k}: {ms:.3f} ms  {fl / ms / 1e9:.0f} TFLOP/s")
for n in (1, 4):
    bench(784, 512, 96, 176, n); bench(1024, 512, 96, 176, n); bench(512, 512, 96, 176, n)
    bench(512, 256, 192, 352, n); bench(256, 256, 192, 352, n)
    bench(256, 128, 384, 704, n); bench(128, 128, 384, 704, n)
    bench(128, 128, 768, 1408, n); bench(128, 3, 768, 1408, n)
PY
