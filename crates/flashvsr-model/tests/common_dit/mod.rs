//! Shared helpers for the DiT / LQ-projection fixture tests.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(name)
}

pub fn fixture(set: &str, file: &str) -> PathBuf {
    fixture_dir(set).join(file)
}

/// THE weight-loading helper of these tests (safetensors and torch `.ckpt`/`.pth`), f32 on CPU.
/// To be switched to `flashvsr_loader::WeightStore` once it exists.
pub fn load_weights(set: &str, file: &str) -> Result<VarBuilder<'static>> {
    let path = fixture(set, file);
    let dev = Device::Cpu;
    let vb = if file.ends_with(".safetensors") {
        // SAFETY: the fixture files are read-only and not modified while mapped.
        unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev) }
    } else {
        VarBuilder::from_pth(&path, DType::F32, &dev)
    };
    vb.with_context(|| format!("loading {}", path.display()))
}

/// The single f32 tensor of a bare-tensor `torch.save` file (the prompt), as
/// `[1, numel / last_dim, last_dim]`. Candle's pickle reader expects a dict, so the raw storage
/// (`<archive>/data/0`, little-endian f32) is read directly.
pub fn load_pth_tensor(set: &str, file: &str, last_dim: usize) -> Result<Tensor> {
    use std::io::Read;
    let path = fixture(set, file);
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path)?)?;
    let name = zip
        .file_names()
        .find(|n| n.ends_with("/data/0"))
        .map(str::to_string)
        .with_context(|| format!("{}: no storage data/0", path.display()))?;
    let mut bytes = Vec::new();
    zip.by_name(&name)?.read_to_end(&mut bytes)?;
    let vals: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n = vals.len();
    Ok(Tensor::from_vec(
        vals,
        (1, n / last_dim, last_dim),
        &Device::Cpu,
    )?)
}

pub fn npy(set: &str, file: &str) -> Result<Tensor> {
    let path = fixture(set, file);
    Tensor::read_npy(&path).with_context(|| format!("reading {}", path.display()))
}

/// The LQ video (PNGs of `lq_upscaled/`) as `[1, 3, F, H, W]` f32 in [-1, 1], mapped exactly
/// as upstream: `(u8 / 255.0) * 2.0 - 1.0`.
pub fn lq_video(set: &str, frames: usize) -> Result<Tensor> {
    let mut all = Vec::new();
    let (mut h, mut w) = (0, 0);
    for i in 0..frames {
        let p = fixture_dir(set)
            .join("lq_upscaled")
            .join(format!("frame_{i:04}.png"));
        let img = image::open(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .to_rgb8();
        (w, h) = (img.width() as usize, img.height() as usize);
        let mut planes = vec![0f32; 3 * h * w];
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                planes[c * h * w + y as usize * w + x as usize] =
                    (px[c] as f32 / 255.0) * 2.0 - 1.0;
            }
        }
        all.push(Tensor::from_vec(planes, (3, 1, h, w), &Device::Cpu)?);
    }
    Ok(Tensor::cat(&all, 1)?.reshape((1, 3, frames, h, w))?)
}

/// Asserts max |a - b| <= abs_tol and relative error ||a-b|| / ||b|| <= rel_tol.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, abs_tol: f32, rel_tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let got = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = want
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
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
