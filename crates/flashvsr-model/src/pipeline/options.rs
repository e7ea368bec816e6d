//! The settings of one upscale: decoder mode, weight generation, LCSA knobs, colour fix,
//! frame contract, noise, tiling and the clip position of a segment's first frame.

use candle_core::Tensor;

pub use crate::color_fix::ColorFix;
pub use crate::dit::KvStorage;
use crate::lq_proj::LqProjVariant;

/// Which decoder turns latents into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Tiny conditional decoder.
    #[default]
    Tiny,
    /// Tiny decoder, decoding step by step. Numerically identical to `Tiny` (spec 1.1); this
    /// engine always streams, so the two differ only in name.
    TinyLong,
    /// The Wan2.1 VAE decoder.
    Full,
}

/// The FlashVSR weight generation; it decides the LQ projection's caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelVersion {
    V1,
    #[default]
    V1_1,
}

impl ModelVersion {
    pub(super) fn lq_proj_variant(self) -> LqProjVariant {
        match self {
            ModelVersion::V1 => LqProjVariant::Buffer,
            ModelVersion::V1_1 => LqProjVariant::Causal,
        }
    }
}

/// Spatial tiling of the input (in input pixels), for outputs too large for one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileOptions {
    pub size: usize,
    pub overlap: usize,
}

/// Settings of one upscale.
#[derive(Debug, Clone)]
pub struct UpscaleOptions {
    /// Upscale factor (≥ 1; the model is trained for 4).
    pub scale: f64,
    pub mode: Mode,
    /// LCSA sparsity: ≈ 60·sparse_ratio key blocks per query block (upstream 2.0).
    pub sparse_ratio: f64,
    /// KV cache length in segments (upstream 3.0).
    pub kv_ratio: f64,
    /// How the KV cache keeps keys and values between steps (dense: exact; fp8: half the
    /// bytes of bf16).
    pub kv_storage: KvStorage,
    /// Local attention window in blocks (upstream 11).
    pub local_range: usize,
    pub color_fix: ColorFix,
    /// Upstream's exact crop and 8n−3 frame count instead of the product contract.
    pub upstream_compat: bool,
    /// Seed of the initial noise (ignored when `noise` is given).
    pub seed: u64,
    /// The initial noise [1, 16, T, H/8, W/8] for exact reproduction of another run.
    pub noise: Option<Tensor>,
    pub tile: Option<TileOptions>,
    /// Index in the whole clip of the first frame pushed, when this session upscales a segment
    /// of a longer clip (a multiple of 8, see [`crate::segments`]): the session then draws the
    /// noise of the clip's matching latent frames. 0 for a whole clip.
    pub first_frame: usize,
    /// With tiles: keep each tile's KV cache in host memory between its steps, so that the
    /// device holds one tile's cache at a time (the memory plan decides).
    pub park_kv: bool,
    /// TCDecoder latents per call; `None`: as many as the CUDA element limit allows (2 or 1).
    pub decoder_latents_per_call: Option<usize>,
    /// TCDecoder: run its full-resolution tail in stripes of this many rows (of its input, half
    /// the model height) — the same values, activations bounded by the stripe.
    pub decoder_stripe_rows: Option<usize>,
}

impl Default for UpscaleOptions {
    fn default() -> Self {
        Self {
            scale: 4.0,
            mode: Mode::Tiny,
            sparse_ratio: 2.0,
            kv_ratio: 3.0,
            kv_storage: KvStorage::Dense,
            local_range: 11,
            color_fix: ColorFix::AdaIn,
            upstream_compat: false,
            seed: 0,
            noise: None,
            tile: None,
            first_frame: 0,
            park_kv: false,
            decoder_latents_per_call: None,
            decoder_stripe_rows: None,
        }
    }
}
