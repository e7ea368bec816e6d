//! DiT input embeddings (spec §5.2): patchify, sinusoidal timestep, time MLP + projection,
//! text MLP.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::DitConfig;
use crate::nn::linear::{linear, Linear};

/// Patch embedding: Conv3d in→dim with kernel = stride = patch size, run as a linear layer
/// over flattened patches (input order c, pt, ph, pw, matching the conv weight layout).
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    proj: Linear,
    patch: (usize, usize, usize),
    in_channels: usize,
    span: tracing::Span,
}

impl PatchEmbedding {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        let (pt, ph, pw) = cfg.patch_size;
        let k = cfg.in_channels * pt * ph * pw;
        let w = vb
            .get((cfg.dim, cfg.in_channels, pt, ph, pw), "weight")?
            .reshape((cfg.dim, k))?;
        let b = vb.get(cfg.dim, "bias")?;
        Ok(Self {
            proj: Linear::from_dense(w, Some(b))?,
            patch: cfg.patch_size,
            in_channels: cfg.in_channels,
            span: tracing::span!(tracing::Level::TRACE, "patch-embedding"),
        })
    }

    /// `x`: `[1, C, F, H, W]` latents → (tokens `[1, f·h·w, dim]` in (f, h, w) order, grid).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, (usize, usize, usize))> {
        let _enter = self.span.enter();
        let (b, c, ff, hh, ww) = x.dims5()?;
        let (pt, ph, pw) = self.patch;
        if b != 1 || c != self.in_channels || ff % pt != 0 || hh % ph != 0 || ww % pw != 0 {
            candle_core::bail!(
                "patch embedding: latents must be [1, {}, F, H, W] divisible by {:?}, got {:?}",
                self.in_channels,
                self.patch,
                x.dims()
            );
        }
        let (f, h, w) = (ff / pt, hh / ph, ww / pw);
        let patches = x
            .reshape(vec![c, f, pt, h, ph, w, pw])?
            .permute(vec![1, 3, 5, 0, 2, 4, 6])?
            .contiguous()?
            .reshape((1, f * h * w, c * pt * ph * pw))?;
        Ok((self.proj.forward(&patches)?, (f, h, w)))
    }
}

/// Sinusoidal embedding of a timestep, `[1, freq_dim]`, **cos first**, computed in f64:
/// freqs_i = 10000^(−i/(freq_dim/2)).
pub fn sinusoidal_embedding(
    freq_dim: usize,
    t: f64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let half = freq_dim / 2;
    let args: Vec<f64> = (0..half)
        .map(|i| t * 10000f64.powf(-(i as f64) / half as f64))
        .collect();
    let v: Vec<f64> = args
        .iter()
        .map(|a| a.cos())
        .chain(args.iter().map(|a| a.sin()))
        .collect();
    Tensor::from_vec(v, (1, freq_dim), device)?.to_dtype(dtype)
}

/// `time_embedding` (Linear, SiLU, Linear) and `time_projection` (SiLU, Linear → 6·dim).
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    emb0: Linear,
    emb2: Linear,
    proj: Linear,
    dim: usize,
}

impl TimeEmbedding {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        Ok(Self {
            emb0: linear(cfg.freq_dim, cfg.dim, vb.pp("time_embedding.0"))?,
            emb2: linear(cfg.dim, cfg.dim, vb.pp("time_embedding.2"))?,
            proj: linear(cfg.dim, 6 * cfg.dim, vb.pp("time_projection.1"))?,
            dim: cfg.dim,
        })
    }

    /// (t `[1, dim]`, t_mod `[1, 6, dim]`) from the sinusoid `[1, freq_dim]`.
    pub fn forward(&self, t_freq: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = self
            .emb2
            .forward(&candle_nn::ops::silu(&self.emb0.forward(t_freq)?)?)?;
        let t_mod = self
            .proj
            .forward(&candle_nn::ops::silu(&t)?)?
            .reshape((1, 6, self.dim))?;
        Ok((t, t_mod))
    }
}

/// `text_embedding`: Linear, GELU(tanh), Linear.
#[derive(Debug, Clone)]
pub struct TextEmbedding {
    l0: Linear,
    l2: Linear,
}

impl TextEmbedding {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        Ok(Self {
            l0: linear(cfg.text_dim, cfg.dim, vb.pp("text_embedding.0"))?,
            l2: linear(cfg.dim, cfg.dim, vb.pp("text_embedding.2"))?,
        })
    }

    pub fn forward(&self, prompt: &Tensor) -> Result<Tensor> {
        self.l2.forward(&self.l0.forward(prompt)?.gelu()?)
    }
}
