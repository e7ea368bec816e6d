#!/usr/bin/env python3
"""y4m helpers for the GPU scripts (numpy only; no ffmpeg there).

    y4m_tools.py make OUT.y4m WIDTH HEIGHT FRAMES     a moving textured clip, 4:4:4 full range
    y4m_tools.py compare A.y4m B.y4m [--joins 21,45]  per-frame PSNR of A against B (same layout)
    y4m_tools.py concat OUT.y4m SEG.y4m...            the segments' frames in order (same headers)
"""

import argparse
import json
import sys

import numpy as np


def make(path, w, h, n):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F24:1 Ip A1:1 C444 XCOLORRANGE=FULL\n".encode())
        for i in range(n):
            xs, ys = x + 2 * i, y + i
            luma = 128 + 80 * np.sin(xs * 0.07) * np.cos(ys * 0.05) + 30 * np.sin((xs + ys) * 0.013)
            u = 128 + 40 * np.sin(xs * 0.021 + i * 0.1)
            v = 128 + 40 * np.cos(ys * 0.017 - i * 0.1)
            f.write(b"FRAME\n")
            for plane in (luma, u, v):
                f.write(np.clip(plane, 0, 255).astype(np.uint8).tobytes())


def frames(path):
    """(header, frame iterator of raw bytes); the layout from the header's C tag."""
    f = open(path, "rb")
    header = f.readline().decode().split()
    tags = {t[0]: t[1:] for t in header[1:]}
    w, h = int(tags["W"]), int(tags["H"])
    chroma = tags.get("C", "420jpeg")
    if chroma.startswith("444"):
        size = 3 * w * h
    elif chroma.startswith("422"):
        size = w * h + 2 * ((w + 1) // 2) * h
    else:
        size = w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)
    if "p10" in chroma or "p12" in chroma or "p16" in chroma:
        size *= 2

    def it():
        while True:
            line = f.readline()
            if not line:
                return
            data = f.read(size)
            if len(data) < size:
                sys.exit(f"{path}: truncated frame")
            yield np.frombuffer(data, np.uint8)

    return header, it()


def compare(a, b, joins):
    ha, fa = frames(a)
    hb, fb = frames(b)
    if ha != hb:
        sys.exit(f"headers differ: {ha} vs {hb}")
    psnr = []
    for x, y in zip(fa, fb):
        mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
        psnr.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
    rest = sum(1 for _ in fa) + sum(1 for _ in fb)
    finite = [p for p in psnr if p != float("inf")]
    out = {
        "frames": len(psnr),
        "extra_frames": rest,
        "identical_frames": len(psnr) - len(finite),
        "min_psnr_db": min(finite) if finite else None,
        # None: bit-identical.
        "at_joins_db": {j: (None if psnr[j] == float("inf") else psnr[j]) for j in joins if j < len(psnr)},
    }
    print(json.dumps(out))


def concat(out, parts):
    first = None
    with open(out, "wb") as f:
        for part in parts:
            header, it = frames(part)
            if first is None:
                first = header
                f.write((" ".join(header) + "\n").encode())
            elif header != first:
                sys.exit(f"{part}: header {header} differs from {first}")
            for frame in it:
                f.write(b"FRAME\n")
                f.write(frame.tobytes())


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("width", type=int)
    m.add_argument("height", type=int)
    m.add_argument("frames", type=int)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--joins", default="")
    j = sub.add_parser("concat")
    j.add_argument("out")
    j.add_argument("parts", nargs="+")
    args = p.parse_args()
    if args.cmd == "make":
        make(args.out, args.width, args.height, args.frames)
    elif args.cmd == "concat":
        concat(args.out, args.parts)
    else:
        compare(args.a, args.b, [int(j) for j in args.joins.split(",") if j])


if __name__ == "__main__":
    main()
