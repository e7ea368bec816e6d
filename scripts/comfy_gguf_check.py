#!/usr/bin/env python3
"""Read a GGUF written by `flashvsr convert` the way ComfyUI-GGUF's model loader reads one, and
check it against what was converted.

usage: comfy_gguf_check.py FILE.gguf OURS.npz SOURCE.npz FILE_TYPE

What ComfyUI-GGUF (city96/ComfyUI-GGUF: loader.py, dequant.py, ops.py) does with the file, and
so what this script requires:
* `general.architecture` is one STRING from its list of image-model architectures (`wan` among
  them); any other value is refused.
* The PyTorch shape is `comfy.gguf.orig_shape.<name>` when present (it must be an ARRAY of
  INT32), else the reversed ggml dims. A `model.diffusion_model.` prefix would be stripped; our
  files have none.
* F32 and F16 tensors become torch tensors of that shape; BF16 tensors of at most 1 dim are
  dequantized to F32; every other tensor stays a packed ggml tensor that only its ggml layers
  (Linear, Conv2d, Embedding, LayerNorm, GroupNorm) can use. Wan's modulations (plain 3-D
  parameters) and patch embedding (a 5-D float Conv3d) are no such layer: every tensor of
  neither 2 (Linear) nor 4 (Conv2d) dims must end up a torch tensor.
* Values come from gguf.quants.dequantize.

OURS.npz: float32 values of the file as our own reader gives them (compared bit for bit).
SOURCE.npz: float32 values that were converted: float tensors must equal them rounded to the
stored type, quantized ones lie within the type's known error.
FILE_TYPE: the expected `general.file_type` (gguf.LlamaFileType).
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, LlamaFileType
from gguf.quants import dequantize

IMAGE_ARCHITECTURES = {"flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv",
                       "hyvid", "wan", "lumina2", "qwen_image"}
PREFIX = "model.diffusion_model."
# Relative RMS error bounds on Gaussian-like weights (as in crates/flashvsr-loader/tests/roundtrip.rs).
BOUND = {T.Q8_0: 0.01, T.Q6_K: 0.03, T.Q5_K: 0.06, T.Q4_K: 0.12, T.Q4_0: 0.15}


def string_field(reader, key):
    field = reader.get_field(key)
    if field is None:
        return None
    assert field.types == [GGUFValueType.STRING], f"{key}: expected one string, got {field.types}"
    return str(bytes(field.parts[field.data[-1]]), encoding="utf-8")


def pytorch_shape(reader, tensor):
    field = reader.get_field(f"comfy.gguf.orig_shape.{tensor.name}")
    if field is None:
        return [int(d) for d in reversed(tensor.shape.tolist())]
    assert field.types == [GGUFValueType.ARRAY, GGUFValueType.INT32], (tensor.name, field.types)
    return [int(field.parts[i][0]) for i in field.data]


def round_to(values, ttype):
    """The source values rounded to a float storage type, as float32."""
    if ttype == T.F32:
        return values
    if ttype == T.F16:
        return values.astype(np.float16).astype(np.float32)
    if ttype == T.BF16:  # round to nearest even on the upper 16 bits
        u = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32)
    return None


def main():
    path, ours_npz, source_npz, file_type = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    reader = GGUFReader(path)
    ours, source = np.load(ours_npz), np.load(source_npz)

    arch = string_field(reader, "general.architecture")
    assert arch in IMAGE_ARCHITECTURES, f"Unexpected architecture type in GGUF file: {arch!r}"
    ft = reader.get_field("general.file_type")
    assert ft is not None and ft.types == [GGUFValueType.UINT32], "general.file_type: no UINT32"
    got_ft = int(ft.parts[ft.data[-1]][0])
    assert got_ft == file_type, f"general.file_type {LlamaFileType(got_ft)!r}, expected {LlamaFileType(file_type)!r}"

    names = [t.name for t in reader.tensors]
    assert not any(n.startswith(PREFIX) for n in names), "unexpected model prefix"
    assert sorted(names) == sorted(source.files), (sorted(names), sorted(source.files))
    bad = []
    for t in reader.tensors:
        shape = pytorch_shape(reader, t)
        want = source[t.name]
        if list(want.shape) != shape:
            bad.append(f"{t.name}: shape {shape}, converted from {list(want.shape)}")
            continue
        # What the loader hands to the model.
        torch_usable = t.tensor_type in (T.F32, T.F16)
        if t.tensor_type == T.BF16 and len(shape) <= 1:
            torch_usable = True  # upcast to F32 by the loader
        if not torch_usable and len(shape) not in (2, 4):
            bad.append(f"{t.name}: {len(shape)}-D {t.tensor_type.name} tensor: no ggml layer takes it")
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if not np.array_equal(got.view(np.uint32), ours[t.name].view(np.uint32)):
            bad.append(f"{t.name}: differs from our reader (max {np.abs(got - ours[t.name]).max()})")
        rounded = round_to(want, t.tensor_type)
        if rounded is not None:
            if not np.array_equal(got.view(np.uint32), rounded.view(np.uint32)):
                bad.append(f"{t.name}: {t.tensor_type.name} values differ from the source rounded")
        else:
            bound = BOUND[t.tensor_type]
            err = np.sqrt(np.mean((got - want) ** 2))
            rms = np.sqrt(np.mean(want ** 2))
            if not err <= bound * rms:
                bad.append(f"{t.name}: {t.tensor_type.name} relative RMS error {err / rms}")
    if bad:
        print("\n".join(bad))
        sys.exit(1)
    print(f"ok: {len(names)} tensors load as in ComfyUI-GGUF (arch {arch}, {path})")


if __name__ == "__main__":
    main()
