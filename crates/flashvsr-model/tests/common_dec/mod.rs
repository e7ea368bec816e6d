//! Shared helpers of the decoder/preprocessing/colour-fix fixture tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use flashvsr_model::preprocess::RgbFrame;
use std::path::{Path, PathBuf};

pub fn fixture(set: &str, file: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(set)
    .join(file)
}

pub fn npy(set: &str, file: &str) -> anyhow::Result<Tensor> {
    let path = fixture(set, file);
    Tensor::read_npy(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn png(path: &Path) -> anyhow::Result<RgbFrame> {
    let img = image::open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(RgbFrame::new(w as usize, h as usize, img.into_raw())?)
}

/// Frames `dir/frame_0000.png` … of a fixture set.
pub fn png_frames(set: &str, dir: &str, count: usize) -> anyhow::Result<Vec<RgbFrame>> {
    (0..count)
        .map(|i| png(&fixture(set, &format!("{dir}/frame_{i:04}.png"))))
        .collect()
}

/// The one place tests load weight files (the lead will switch this to the project's loader).
pub fn weights(set: &str, file: &str) -> anyhow::Result<candle_nn::VarBuilder<'static>> {
    let path = fixture(set, file);
    candle_nn::VarBuilder::from_pth(&path, DType::F32, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
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
