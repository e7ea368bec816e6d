//! Shared by the loader's integration tests: fixture paths and bitwise tensor comparison.
#![allow(dead_code)] // each test file uses a part

use candle_core::{DType, Tensor};

/// The reduced v1.1 model in the upstream file formats (`../shared/fixtures`).
pub const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/tiny-v1.1"
);
/// Like [`TINY`] with the Wan VAE for full mode.
pub const FULL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/full-v1.1"
);
/// GGUF files written by gguf-py and a byte writer, each with `<stem>.expected.{json,npz}`.
pub const GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/gguf");
/// Seed corpus of the fuzz targets.
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");

/// The fixture DiT (fp32 safetensors).
pub fn dit() -> String {
    format!("{TINY}/diffusion_pytorch_model_streaming_dmd.safetensors")
}

/// The f32 bit patterns of `t` (converted to f32 first), flattened: for exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}
