//! Wan2.1 VAE decoder of the full mode (spec §6.1 and Correction 2).
//!
//! The latents are un-normalised with Wan's 16 mean/std constants, pass the 1×1×1 `conv2`,
//! then the causal 3-D decoder runs **one latent frame at a time**: each causal conv keeps the
//! last (up to) 2 frames of its input as a cache, with zeros in front of the first frames (so
//! the second latent still sees one zero frame), and each `upsample3d` skips its time conv on
//! the very first latent. Latent 0 gives 1 frame, every later latent 4 frames, 8× larger;
//! the output is clamped to [-1, 1]. The caches live in [`WanVaeState`], so a session can
//! decode latents as they come and get the same frames as one call over the whole video.
//!
//! All widths are read from the weights (`decoder.*` and `conv2.*` of `Wan2.1_VAE.pth`; the
//! encoder keys are ignored). It computes in the `VarBuilder`'s dtype, which the pipeline sets
//! to f32 (`Precision::vae`); norms and attention softmax run in f32 regardless.

use crate::nn::conv2d::Conv2d;
use crate::nn::conv3d::CausalConv3d;
use crate::nn::norm::ChannelRmsNorm;
use crate::precision::Tf32Scope;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Wan2.1 latent channel means (un-normalisation `z * std + mean`).
pub const LATENT_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// Wan2.1 latent channel standard deviations.
pub const LATENT_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// Frames a causal conv remembers (upstream `CACHE_T`).
const CACHE_FRAMES: usize = 2;
/// One causal conv cache slot. `Skipped` marks an `upsample3d` whose first latent went
/// around its time conv.
#[derive(Debug, Clone, Default)]
enum Slot {
    #[default]
    Empty,
    Skipped,
    Frames(Tensor),
}

/// Streaming state of one video: a cache slot per causal conv.
#[derive(Debug, Clone, Default)]
pub struct WanVaeState {
    slots: Vec<Slot>,
    latents_seen: usize,
}

impl WanVaeState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Latent frames decoded so far.
    pub fn latents_seen(&self) -> usize {
        self.latents_seen
    }
}

/// A causal conv bound to its cache slot.
#[derive(Debug, Clone)]
struct CachedConv {
    conv: CausalConv3d,
    slot: usize,
}

impl CachedConv {
    fn new(vb: &VarBuilder, slots: &mut usize) -> Result<Self> {
        let conv = CausalConv3d::load_zero_padded(vb)?;
        *slots += 1;
        Ok(Self {
            conv,
            slot: *slots - 1,
        })
    }

    fn forward(&self, x: &Tensor, state: &mut WanVaeState) -> Result<Tensor> {
        let cache = match &state.slots[self.slot] {
            Slot::Frames(t) => Some(t.clone()),
            _ => None,
        };
        let y = self.conv.forward(x, cache.as_ref())?;
        let next = CausalConv3d::next_cache(x, cache.as_ref(), CACHE_FRAMES)?;
        state.slots[self.slot] = Slot::Frames(next);
        Ok(y)
    }
}

/// RMS_norm → SiLU → conv → RMS_norm → SiLU → conv, plus a (1×1×1 conv) shortcut.
#[derive(Debug, Clone)]
struct ResidualBlock {
    norm1: ChannelRmsNorm,
    conv1: CachedConv,
    norm2: ChannelRmsNorm,
    conv2: CachedConv,
    shortcut: Option<CausalConv3d>,
    span: tracing::Span,
}

impl ResidualBlock {
    fn new(vb: &VarBuilder, slots: &mut usize) -> Result<Self> {
        let shortcut = if vb.contains_tensor("shortcut.weight") {
            Some(CausalConv3d::load_zero_padded(&vb.pp("shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: ChannelRmsNorm::new(&vb.pp("residual.0"))?,
            conv1: CachedConv::new(&vb.pp("residual.2"), slots)?,
            norm2: ChannelRmsNorm::new(&vb.pp("residual.3"))?,
            conv2: CachedConv::new(&vb.pp("residual.6"), slots)?,
            shortcut,
            span: tracing::span!(tracing::Level::TRACE, "vae-resblock"),
        })
    }

    fn forward(&self, x: &Tensor, state: &mut WanVaeState) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward(x)?.silu()?;
        let y = self.conv1.forward(&y, state)?;
        let y = self.norm2.forward(&y)?.silu()?;
        let y = self.conv2.forward(&y, state)?;
        y + h
    }
}

/// Single-head self-attention over the positions of each frame, with a residual.
#[derive(Debug, Clone)]
struct AttentionBlock {
    norm: ChannelRmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    span: tracing::Span,
}

impl AttentionBlock {
    fn new(vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: ChannelRmsNorm::new(&vb.pp("norm"))?,
            to_qkv: Conv2d::load(&vb.pp("to_qkv"))?,
            proj: Conv2d::load(&vb.pp("proj"))?,
            span: tracing::span!(tracing::Level::TRACE, "vae-attn"),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c, t, h, w) = x.dims5()?;
        let frames = x
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b * t, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames)?)?; // [N, 3C, h, w]
                                                                      // [N, 3C, hw] → [N, hw, 3C]
        let qkv = qkv.flatten_from(2)?.transpose(1, 2)?;
        let q = qkv.narrow(2, 0, c)?.contiguous()?;
        let k = qkv.narrow(2, c, c)?.contiguous()?;
        let v = qkv.narrow(2, 2 * c, c)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? / (c as f64).sqrt())?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let o = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * t, c, h, w))?;
        let o = self.proj.forward(&o)?;
        let o = o.reshape((b, t, c, h, w))?.permute((0, 2, 1, 3, 4))?;
        o + x
    }
}

/// Nearest ×2 up-sampling + 3×3 conv to half the channels, after (upsample3d) a time conv
/// that doubles the frames.
#[derive(Debug, Clone)]
struct Resample {
    time_conv: Option<CachedConv>,
    conv: Conv2d,
    span: tracing::Span,
}

impl Resample {
    fn new(vb: &VarBuilder, slots: &mut usize) -> Result<Self> {
        let time_conv = if vb.contains_tensor("time_conv.weight") {
            Some(CachedConv::new(&vb.pp("time_conv"), slots)?)
        } else {
            None
        };
        Ok(Self {
            time_conv,
            conv: Conv2d::load(&vb.pp("resample.1"))?,
            span: tracing::span!(tracing::Level::TRACE, "vae-resample"),
        })
    }

    fn forward(&self, x: &Tensor, state: &mut WanVaeState) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut x = x.clone();
        if let Some(tc) = &self.time_conv {
            if matches!(state.slots[tc.slot], Slot::Empty) {
                // The first latent frame skips the time conv (and starts no cache).
                state.slots[tc.slot] = Slot::Skipped;
            } else {
                let (b, c, t, h, w) = x.dims5()?;
                // Channel half s of frame i becomes frame 2i + s.
                x = tc
                    .forward(&x, state)?
                    .reshape((b, 2, c, t, h, w))?
                    .permute((0, 2, 3, 1, 4, 5))?
                    .reshape((b, c, 2 * t, h, w))?;
            }
        }
        let (b, c, t, h, w) = x.dims5()?;
        let frames = x
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b * t, c, h, w))?;
        let up = frames.upsample_nearest2d(2 * h, 2 * w)?;
        let y = self.conv.forward(&up)?;
        let (_, co, ho, wo) = y.dims4()?;
        y.reshape((b, t, co, ho, wo))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
}

#[derive(Debug, Clone)]
// A handful of layers per model: variant size does not matter.
#[allow(clippy::large_enum_variant)]
enum UpLayer {
    Res(ResidualBlock),
    Resample(Resample),
}

/// Dimensions read from the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanVaeConfig {
    /// Latent channels (16).
    pub z_dim: usize,
    /// Width of the first decoder stage (`decoder.conv1` outputs; 384 for base dim 96).
    pub top_dim: usize,
    /// Width of the head (base dim; 96 upstream).
    pub base_dim: usize,
    /// Number of `upsample3d` layers (2) — each multiplies later latents' frames by 2.
    pub temporal_upsamples: usize,
    /// Total spatial up-sampling factor (8).
    pub spatial_factor: usize,
}

/// The Wan2.1 VAE decoder (`conv2` + `decoder.*`).
#[derive(Debug, Clone)]
pub struct WanVaeDecoder {
    conv2: CausalConv3d,
    conv1: CachedConv,
    middle: (ResidualBlock, AttentionBlock, ResidualBlock),
    upsamples: Vec<UpLayer>,
    head_norm: ChannelRmsNorm,
    head_conv: CachedConv,
    slots: usize,
    config: WanVaeConfig,
    /// The dtype it computes in (the weights').
    dtype: DType,
    /// Convolutions and matmuls on TF32 tensor cores (CUDA) — see [`WanVaeDecoder::with_tf32`].
    tf32: bool,
    span: tracing::Span,
}

impl WanVaeDecoder {
    /// Loads `conv2.*` and `decoder.*` from `vb` (the root of `Wan2.1_VAE.pth`), to compute in
    /// `vb`'s dtype.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let dtype = vb.dtype();
        let conv2 = CausalConv3d::load_zero_padded(&vb.pp("conv2"))?;
        let z_dim = conv2.out_channels();
        if z_dim != LATENT_MEAN.len() {
            candle_core::bail!(
                "conv2.weight: {z_dim} latent channels, Wan2.1 constants cover {}",
                LATENT_MEAN.len()
            )
        }
        let vb = vb.pp("decoder");
        let mut slots = 0;
        let conv1 = CachedConv::new(&vb.pp("conv1"), &mut slots)?;
        let middle = (
            ResidualBlock::new(&vb.pp("middle.0"), &mut slots)?,
            AttentionBlock::new(&vb.pp("middle.1"))?,
            ResidualBlock::new(&vb.pp("middle.2"), &mut slots)?,
        );
        let mut upsamples = Vec::new();
        let (mut temporal_upsamples, mut spatial_factor) = (0, 1);
        for i in 0.. {
            let vb = vb.pp("upsamples").pp(i);
            if vb.contains_tensor("residual.0.gamma") {
                upsamples.push(UpLayer::Res(ResidualBlock::new(&vb, &mut slots)?));
            } else if vb.contains_tensor("resample.1.weight") {
                let r = Resample::new(&vb, &mut slots)?;
                temporal_upsamples += r.time_conv.is_some() as usize;
                spatial_factor *= 2;
                upsamples.push(UpLayer::Resample(r));
            } else {
                break;
            }
        }
        if upsamples.is_empty() {
            candle_core::bail!("{}: no decoder.upsamples.* weights found", vb.prefix())
        }
        let head_norm = ChannelRmsNorm::new(&vb.pp("head.0"))?;
        let head_conv = CachedConv::new(&vb.pp("head.2"), &mut slots)?;
        let config = WanVaeConfig {
            z_dim,
            top_dim: conv1.conv.out_channels(),
            base_dim: head_norm.channels(),
            temporal_upsamples,
            spatial_factor,
        };
        Ok(Self {
            conv2,
            conv1,
            middle,
            upsamples,
            head_norm,
            head_conv,
            slots,
            config,
            dtype,
            tf32: false,
            span: tracing::span!(tracing::Level::TRACE, "wan-vae-decoder"),
        })
    }

    /// Lets the f32 decoder use TF32 tensor cores on CUDA (10-bit-mantissa products, f32
    /// accumulation and activations): about 2× faster convolutions. `Precision::vae_tf32`
    /// decides (on for bf16/f16 models on CUDA).
    pub fn with_tf32(mut self, on: bool) -> Self {
        self.tf32 = on;
        self
    }

    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// Output frames for `latents` more latent frames given `state` (1 for the first latent,
    /// `2^temporal_upsamples` = 4 for each later one).
    pub fn frames_for(&self, latents: usize, state: &WanVaeState) -> usize {
        let per = 1 << self.config.temporal_upsamples;
        (0..latents)
            .map(|k| if state.latents_seen + k == 0 { 1 } else { per })
            .sum()
    }

    /// `z * std + mean` (upstream computes `z / (1/std) + mean` with `1/std` in f32), then conv2.
    fn unnormalize(&self, z: &Tensor) -> Result<Tensor> {
        let dev = z.device();
        let inv_std: Vec<f32> = LATENT_STD.iter().map(|s| 1.0f32 / s).collect();
        let inv_std = Tensor::from_vec(inv_std, (1, 16, 1, 1, 1), dev)?.to_dtype(z.dtype())?;
        let mean =
            Tensor::from_vec(LATENT_MEAN.to_vec(), (1, 16, 1, 1, 1), dev)?.to_dtype(z.dtype())?;
        let z = z.broadcast_div(&inv_std)?.broadcast_add(&mean)?;
        self.conv2.forward(&z, None)
    }

    /// The causal decoder on one latent frame `[1, C, 1, h, w]` (after conv2).
    fn decode_frame(&self, x: &Tensor, state: &mut WanVaeState) -> Result<Tensor> {
        let x = self.conv1.forward(x, state)?;
        let x = self.middle.0.forward(&x, state)?;
        let x = self.middle.1.forward(&x)?;
        let mut x = self.middle.2.forward(&x, state)?;
        for layer in &self.upsamples {
            x = match layer {
                UpLayer::Res(r) => r.forward(&x, state)?,
                UpLayer::Resample(r) => r.forward(&x, state)?,
            };
        }
        let x = self.head_norm.forward(&x)?.silu()?;
        self.head_conv.forward(&x, state)
    }

    /// Decodes the next latent frames `[1, 16, T, h, w]` (DiT x0) of a video; returns the
    /// new frames `[1, 3, frames_for(T), 8h, 8w]` clamped to [-1, 1].
    pub fn decode(&self, latents: &Tensor, state: &mut WanVaeState) -> Result<Tensor> {
        let _enter = self.span.enter();
        let _tf32 = self.tf32.then(Tf32Scope::enter);
        let (b, c, t, _h, _w) = latents.dims5()?;
        if b != 1 || c != self.config.z_dim || t == 0 {
            candle_core::bail!(
                "Wan VAE: latents must be [1, {}, T>0, h, w], got {:?}",
                self.config.z_dim,
                latents.dims()
            )
        }
        if state.slots.len() != self.slots {
            state.slots = vec![Slot::Empty; self.slots];
        }
        let x = self.unnormalize(&latents.to_dtype(self.dtype)?)?;
        let mut out = Vec::with_capacity(t);
        for k in 0..t {
            out.push(self.decode_frame(&x.narrow(2, k, 1)?, state)?);
            state.latents_seen += 1;
        }
        Tensor::cat(&out, 2)?
            .clamp(-1f32, 1f32)?
            .to_dtype(latents.dtype())
    }
}
