//! Shared helpers of the model's fixture tests: fixture paths, weights (through the project's
//! loader, as the CLI reads them), `.npy` arrays, PNG frames and tensor comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use flashvsr_loader::WeightStore;
use flashvsr_model::frames::{self, frames_to_tensor, RgbFrame};

/// `shared/fixtures/<set>`.
pub fn fixture_dir(set: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(set)
}

pub fn fixture(set: &str, file: &str) -> PathBuf {
    fixture_dir(set).join(file)
}

/// One weight file of a fixture set, opened by the loader.
pub fn store(set: &str, file: &str) -> Result<Arc<WeightStore>> {
    let path = fixture(set, file);
    let store = WeightStore::open(&[&path]).with_context(|| format!("{}", path.display()))?;
    Ok(Arc::new(store))
}

/// THE weight-loading helper of these tests: a fixture weight file (safetensors, torch
/// `.ckpt`/`.pth`, GGUF) as a var builder in `dtype` on `device`.
pub fn weights_on(
    set: &str,
    file: &str,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    Ok(store(set, file)?.var_builder(dtype, device))
}

/// [`weights_on`] in f32 on the CPU.
pub fn weights(set: &str, file: &str) -> Result<VarBuilder<'static>> {
    weights_on(set, file, DType::F32, &Device::Cpu)
}

/// The single tensor of a bare-tensor `torch.save` file (the prompt) in f32 on the CPU, as
/// `[1, numel / last_dim, last_dim]`.
pub fn pth_tensor(set: &str, file: &str, last_dim: usize) -> Result<Tensor> {
    let store = store(set, file)?;
    let names = store.names();
    let [name] = names.as_slice() else {
        anyhow::bail!("{file}: expected one tensor, found {names:?}")
    };
    let t = store.tensor(name, DType::F32, &Device::Cpu)?;
    let n = t.elem_count();
    Ok(t.reshape((1, n / last_dim, last_dim))?)
}

pub fn npy(set: &str, file: &str) -> Result<Tensor> {
    let path = fixture(set, file);
    Tensor::read_npy(&path).with_context(|| format!("reading {}", path.display()))
}

pub fn png(path: &Path) -> Result<RgbFrame> {
    let img = image::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(frames::from_rgb24(w as usize, h as usize, img.into_raw())?)
}

/// Frames `dir/frame_0000.png` … `frame_{count-1}` of a fixture set.
pub fn png_frames(set: &str, dir: &str, count: usize) -> Result<Vec<RgbFrame>> {
    (0..count).map(|i| png_frame(set, dir, i)).collect()
}

/// Frame `dir/frame_{index:04}.png` of a fixture set.
pub fn png_frame(set: &str, dir: &str, index: usize) -> Result<RgbFrame> {
    png(&fixture(set, &format!("{dir}/frame_{index:04}.png")))
}

/// The bicubic LQ frames `indices` (PNGs of `lq_upscaled/`) as `[1, 3, n, H, W]` in [-1, 1]
/// (upstream's `(u8 / 255.0) * 2.0 - 1.0`), in `dtype` on `device`.
pub fn lq_frames_on(
    set: &str,
    indices: impl IntoIterator<Item = usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let frames = indices
        .into_iter()
        .map(|i| png_frame(set, "lq_upscaled", i))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&RgbFrame> = frames.iter().collect();
    Ok(frames_to_tensor(&refs, device, dtype)?)
}

/// [`lq_frames_on`] in f32 on the CPU.
pub fn lq_frames(set: &str, indices: impl IntoIterator<Item = usize>) -> Result<Tensor> {
    lq_frames_on(set, indices, DType::F32, &Device::Cpu)
}

/// The first `frames` LQ frames of a set ([`lq_frames`] of `0..frames`).
pub fn lq_video(set: &str, frames: usize) -> Result<Tensor> {
    lq_frames(set, 0..frames)
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// Asserts max |a - b| <= abs_tol and relative error ||a-b|| / ||b|| <= rel_tol.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, abs_tol: f32, rel_tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let values = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap()
    };
    let (got, want) = (values(got), values(want));
    let mut max_abs = 0f32;
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want.iter()) {
        assert!(g.is_finite(), "{name}: non-finite output");
        let d = (g - w).abs();
        max_abs = max_abs.max(d);
        num += (d as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    let rel = (num / den.max(1e-30)).sqrt() as f32;
    eprintln!("{name}: max abs {max_abs:.3e}, rel {rel:.3e}");
    assert!(
        max_abs <= abs_tol,
        "{name}: max abs diff {max_abs} > {abs_tol}"
    );
    assert!(rel <= rel_tol, "{name}: relative error {rel} > {rel_tol}");
}

/// Boolean `.npy` (read by Candle as u8) as a Vec<bool>.
pub fn bools(t: &Tensor) -> Vec<bool> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::U8)
        .unwrap()
        .to_vec1::<u8>()
        .unwrap()
        .into_iter()
        .map(|v| v != 0)
        .collect()
}

/// PSNR over every byte of two clips (infinite when they are equal).
pub fn psnr(a: &[RgbFrame], b: &[RgbFrame]) -> f64 {
    let (mut se, mut n) = (0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.data.iter().zip(&y.data) {
            let d = *p as f64 - *q as f64;
            se += d * d;
            n += 1;
        }
    }
    let mse = se / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}
