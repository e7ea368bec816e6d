#!/usr/bin/env python3
"""Compares two folders of 8-bit frames (PNG) value by value: off by one, off by more, max
difference and PSNR. Used on the GPU machine to check `flashvsr upscale` against a fixture's
upstream output (scripts/cuda/run-pipeline-gpu.sh)."""
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def frames(folder):
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))


def main(ours, ref):
    a, b = frames(ours), frames(ref)
    if len(a) != len(b) or not a:
        print(f"frame counts differ: {len(a)} vs {len(b)}")
        return 1
    total = off1 = more = 0
    worst = 0
    se = 0.0
    for pa, pb in zip(a, b):
        x = np.asarray(Image.open(pa).convert("RGB"), dtype=np.int32)
        y = np.asarray(Image.open(pb).convert("RGB"), dtype=np.int32)
        if x.shape != y.shape:
            print(f"{pa.name}: shape {x.shape} vs {y.shape}")
            return 1
        d = np.abs(x - y)
        total += d.size
        off1 += int((d == 1).sum())
        more += int((d > 1).sum())
        worst = max(worst, int(d.max()))
        se += float((d.astype(np.float64) ** 2).sum())
    mse = se / total
    psnr = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
    print(f"{len(a)} frames, {total} values: off by 1 {off1} ({100*off1/total:.4f} %), "
          f"off by more {more} ({100*more/total:.4f} %), max diff {worst}, PSNR {psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
