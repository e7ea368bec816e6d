#!/usr/bin/env python3
"""Summarise an `ncu --csv --page raw --metrics gpu__time_duration.sum` log: time per kernel name,
plus the kernels in launch order split into runs, so stages (LQ, DiT step, decoder) can be told apart.
usage: ncu_summary.py ncu.csv [top]"""
import csv, sys, collections, re

rows = []
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
rd = csv.reader(lines)
header = next(rd)
ki = header.index("Kernel Name")
mi = header.index("gpu__time_duration.sum")
gi = header.index("Grid Size") if "Grid Size" in header else None
for r in rd:
    if len(r) <= mi:
        continue
    try:
        t = float(r[mi].replace(",", ""))
    except ValueError:
        continue  # units row
    rows.append((r[ki], t, r[gi] if gi is not None else ""))

def short(name):
    name = re.sub(r"\(.*", "", name)
    return name[:90]

top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
total = sum(t for _, t, _ in rows)
print(f"kernels: {len(rows)}, total {total/1e6:.1f} ms")
agg = collections.defaultdict(lambda: [0, 0.0])
for n, t, _ in rows:
    a = agg[short(n)]; a[0] += 1; a[1] += t
print(f"{'ms':>9} {'%':>5} {'count':>7} {'us/call':>8}  kernel")
for n, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f"{t/1e6:9.2f} {100*t/total:5.1f} {c:7d} {t/c/1e3:8.1f}  {n}")
