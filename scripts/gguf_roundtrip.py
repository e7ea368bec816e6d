#!/usr/bin/env python3
"""Check that a GGUF written by flashvsr-loader is read by PyPI `gguf` (GGUFReader) with the
same names, shapes and values as our own reader.

usage: gguf_roundtrip.py FILE.gguf EXPECTED.npz
EXPECTED.npz holds our dequantized float32 values keyed by tensor name, in the PyTorch shape.
Shapes: reversed ggml dims, or `comfy.gguf.orig_shape.<name>` (INT32 array) when present.
Values: gguf.quants.dequantize, compared bit for bit (float32).
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


def main():
    path, npz = sys.argv[1], sys.argv[2]
    reader = GGUFReader(path)
    expected = np.load(npz)
    orig = {}
    for field in reader.fields.values():
        if field.name.startswith("comfy.gguf.orig_shape."):
            assert field.types == [GGUFValueType.ARRAY, GGUFValueType.INT32], field.types
            orig[field.name[len("comfy.gguf.orig_shape."):]] = [int(field.parts[i][0]) for i in field.data]
    names = [t.name for t in reader.tensors]
    assert sorted(names) == sorted(expected.files), (sorted(names), sorted(expected.files))
    bad = 0
    for t in reader.tensors:
        shape = orig.get(t.name, [int(d) for d in reversed(t.shape.tolist())])
        want = expected[t.name]
        assert list(want.shape) == shape, (t.name, want.shape, shape)
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            diff = np.abs(got - want).max()
            print(f"{t.name}: values differ (max abs diff {diff})")
            bad += 1
    if bad:
        sys.exit(1)
    print(f"ok: {len(names)} tensors match ({path})")


if __name__ == "__main__":
    main()
