//! The Wan2.1 DiT as modified by FlashVSR (spec §5): one-step flow velocity for a slice of
//! noise latents, with LCSA self-attention and a bounded per-block KV cache.
//!
//! # Use from a streaming session
//! ```ignore
//! let cfg = DitConfig::from_weights(&vb, None)?;          // head_dim 128 unless told
//! let dit = Dit::new(vb, &cfg)?;
//! let consts = dit.constants(&prompt)?;                   // once per prompt: t, t_mod, cross K/V
//! let mut cache = KvCache::new(&cfg);                     // once per video
//! let params = LcsaParams::default();                     // 2.0 / 3.0 / 11
//! // step 0: latents [0,6) at t_pos0 0; step s ≥ 1: latents [4+2s, 6+2s) at t_pos0 4+2s
//! let v = dit.step(&noise_slice, &lq_tokens, t_pos0, &consts, &mut cache, &params, None)?;
//! let x0 = (noise_slice - v)?;
//! ```
//! `noise_slice`: `[1, 16, f, H/8, W/8]` (f even; H, W multiples of 128); `lq_tokens`:
//! `[1, f·(H/16)·(W/16), dim]` from the LQ projection (or `None`-equivalent zeros).

pub mod attention;
pub mod block;
pub mod embeddings;
pub mod kv_cache;
pub mod lcsa;
pub mod rope;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use flashvsr_kernels::dit_fused;

pub use attention::{FusedContext, LcsaContext};
pub use block::{BlockProbes, CrossKv, DitBlock};
pub use kv_cache::{BlockKv, KvCache, KvStorage};
pub use lcsa::{BlockMask, LcsaParams};

use crate::config::DitConfig;
use crate::nn::linear::{linear, Linear, QuantizedWeights};
use crate::nn::norm::LayerNorm;
use embeddings::{sinusoidal_embedding, PatchEmbedding, TextEmbedding, TimeEmbedding};
use rope::{RopePositions, RopeTables};

/// A cached local mask: (block rows, block columns, local range) and the tensor.
type LocalMaskEntry = ((usize, usize, usize), Tensor);

/// Whether CUDA steps take the fused path: 0 = not decided yet, 1 = on, 2 = off.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Turns the fused CUDA path of the DiT step on or off for the whole process (default: on,
/// unless the environment sets `FLASHVSR_DIT_FUSED=0`). The unfused path is the
/// op-by-op computation every other device runs; the switch exists to compare the two.
pub fn set_fused_kernels(on: bool) {
    FUSED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether a step on `device` takes the fused path (CUDA only).
pub fn fused_kernels(device: &candle_core::Device) -> bool {
    if !device.is_cuda() {
        return false;
    }
    match FUSED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = !matches!(
                std::env::var("FLASHVSR_DIT_FUSED").as_deref(),
                Ok("0") | Ok("off") | Ok("false")
            );
            set_fused_kernels(on);
            on
        }
    }
}

/// The fixed timestep of the one-step model (σ = 1).
pub const TIMESTEP: f64 = 1000.0;

/// Per-prompt constants: computed once, reused by every step.
#[derive(Debug, Clone)]
pub struct DitConstants {
    /// Sinusoid of t = 1000, `[1, freq_dim]`.
    pub t_freq: Tensor,
    /// `[1, dim]`.
    pub t: Tensor,
    /// `[1, 6, dim]`.
    pub t_mod: Tensor,
    /// Text context `[1, L, dim]`.
    pub context: Tensor,
    /// Cross-attention K/V per block.
    pub cross: Vec<CrossKv>,
    /// Per block, `modulation + t_mod` in f32 `[6, dim]` (the fused path's).
    pub modulations: Vec<Tensor>,
}

/// Probes: the intermediates of one step that tests compare with upstream.
#[derive(Debug, Clone, Default)]
pub struct StepProbes {
    /// Patch-embedding output `[1, N, dim]` (before adding the LQ tokens).
    pub patch_tokens: Option<Tensor>,
    /// Per block: draft, self-attention output, block output.
    pub blocks: Vec<BlockProbes>,
}

pub struct Dit {
    patch_embedding: PatchEmbedding,
    text_embedding: TextEmbedding,
    time_embedding: TimeEmbedding,
    blocks: Vec<DitBlock>,
    head_modulation: Tensor, // [1, 2, dim]
    head_norm: LayerNorm,
    head: Linear,
    cfg: DitConfig,
    /// RoPE rotations by position, on the model's device (fused path; CUDA only).
    rope_positions: Option<RopePositions>,
    /// The last local mask uploaded: (block rows, block columns, local range) and the tensor.
    local_masks: Mutex<Option<LocalMaskEntry>>,
    span: tracing::Span,
}

impl Dit {
    /// Bytes of the blocks' linear weights on the device (what `--quantize-dit` shrinks).
    pub fn block_linear_bytes(&self) -> usize {
        self.blocks.iter().map(DitBlock::linear_weight_bytes).sum()
    }

    /// `vb` at the root of the DiT weights (upstream key names).
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        Self::load(vb, cfg, None)
    }

    /// [`Dit::new`], with the blocks' linear weights (attention q/k/v/o, FFN) kept quantized
    /// where `quantized` holds them quantized; embeddings, head, norms and biases stay dense.
    pub fn load(
        vb: VarBuilder,
        cfg: &DitConfig,
        quantized: Option<&dyn QuantizedWeights>,
    ) -> Result<Self> {
        rope::RopeSplit::for_head_dim(cfg.head_dim())?;
        let blocks = (0..cfg.num_layers)
            .map(|i| DitBlock::new(vb.pp("blocks").pp(i), cfg, quantized))
            .collect::<Result<Vec<_>>>()?;
        let (pt, ph, pw) = cfg.patch_size;
        Ok(Self {
            patch_embedding: PatchEmbedding::new(vb.pp("patch_embedding"), cfg)?,
            text_embedding: TextEmbedding::new(vb.clone(), cfg)?,
            time_embedding: TimeEmbedding::new(vb.clone(), cfg)?,
            blocks,
            head_modulation: vb.get((1, 2, cfg.dim), "head.modulation")?,
            head_norm: LayerNorm::no_affine(cfg.dim, cfg.eps, vb.device())?,
            head: linear(cfg.dim, cfg.out_channels * pt * ph * pw, vb.pp("head.head"))?,
            cfg: *cfg,
            rope_positions: if vb.device().is_cuda() {
                Some(RopePositions::new(
                    cfg.head_dim(),
                    cfg.rope_theta,
                    cfg.rope_max_positions,
                    vb.device(),
                )?)
            } else {
                None
            },
            local_masks: Mutex::new(None),
            span: tracing::span!(tracing::Level::TRACE, "dit"),
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// t, t_mod, text context and per-block cross K/V for `prompt` `[1, L, text_dim]`.
    pub fn constants(&self, prompt: &Tensor) -> Result<DitConstants> {
        let dtype = self.head_modulation.dtype();
        let t_freq = sinusoidal_embedding(self.cfg.freq_dim, TIMESTEP, dtype, prompt.device())?;
        let (t, t_mod) = self.time_embedding.forward(&t_freq)?;
        let context = self.text_embedding.forward(&prompt.to_dtype(dtype)?)?;
        let cross = self
            .blocks
            .iter()
            .map(|b| b.cross_kv(&context))
            .collect::<Result<Vec<_>>>()?;
        let modulations = self
            .blocks
            .iter()
            .map(|b| b.modulation(&t_mod))
            .collect::<Result<Vec<_>>>()?;
        Ok(DitConstants {
            t_freq,
            t,
            t_mod,
            context,
            cross,
            modulations,
        })
    }

    /// One DiT step: velocity `[1, 16, f, H/8, W/8]` for `noise` of the same shape.
    /// `t_pos0`: RoPE temporal position of the slice's first latent frame.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        noise: &Tensor,
        lq_tokens: &Tensor,
        t_pos0: usize,
        consts: &DitConstants,
        cache: &mut KvCache,
        params: &LcsaParams,
        mut probes: Option<&mut StepProbes>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        if cache.blocks.len() != self.blocks.len() || consts.cross.len() != self.blocks.len() {
            candle_core::bail!("DiT step: cache/constants made for another model");
        }
        let (_, _, _, lat_h, lat_w) = noise.dims5()?;
        let (tokens, grid) = self
            .patch_embedding
            .forward(&noise.to_dtype(self.head_modulation.dtype())?)?;
        if let Some(t) = probes.as_deref_mut() {
            t.patch_tokens = Some(tokens.clone());
            t.blocks.clear();
        }
        if lq_tokens.dims() != tokens.dims() {
            candle_core::bail!(
                "DiT step: LQ tokens {:?} do not match the patch tokens {:?}",
                lq_tokens.dims(),
                tokens.dims()
            );
        }
        let mut x = (tokens + lq_tokens.to_dtype(self.head_modulation.dtype())?)?;

        if fused_kernels(noise.device()) {
            return self.step_fused(
                &x, grid, t_pos0, lat_h, lat_w, consts, cache, params, probes,
            );
        }
        let ctx = self.lcsa_context(grid, t_pos0, lat_h * 8, lat_w * 8, params, noise.device())?;
        for (i, block) in self.blocks.iter().enumerate() {
            let (y, bt) = block.forward(
                &x,
                &consts.t_mod,
                &consts.cross[i],
                &ctx,
                &mut cache.blocks[i],
                probes.is_some(),
            )?;
            x = y;
            if let (Some(t), Some(bt)) = (probes.as_deref_mut(), bt) {
                t.blocks.push(bt);
            }
        }

        // Head: (head.modulation + t) → shift, scale (note: t, not t_mod).
        let dt = self.head_modulation.dtype();
        let m = self
            .head_modulation
            .to_dtype(DType::F32)?
            .broadcast_add(&consts.t.to_dtype(DType::F32)?.unsqueeze(1)?)?;
        let (shift, scale) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?);
        let y = self
            .head_norm
            .forward(&x)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?;
        let y = self.head.forward(&y.to_dtype(dt)?)?;
        self.unpatchify(&y, grid)
    }

    /// The fused CUDA path of [`Dit::step`] from the input tokens `x` `[1, N, dim]` on: the
    /// tokens go to window order once, through every block, and back once after the head.
    #[allow(clippy::too_many_arguments)]
    fn step_fused(
        &self,
        x: &Tensor,
        grid: (usize, usize, usize),
        t_pos0: usize,
        lat_h: usize,
        lat_w: usize,
        consts: &DitConstants,
        cache: &mut KvCache,
        params: &LcsaParams,
        mut probes: Option<&mut StepProbes>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let Some(rope) = self.rope_positions.clone() else {
            candle_core::bail!("DiT step: the fused path needs a model loaded on CUDA")
        };
        if consts.modulations.len() != self.blocks.len() {
            candle_core::bail!("DiT step: constants made for another model");
        }
        let (f, h, w) = grid;
        let (fr, lw) = (t_pos0 + f, h.max(w));
        if fr > self.cfg.rope_max_positions || lw > self.cfg.rope_max_positions {
            candle_core::bail!(
                "RoPE: positions up to (t {}, h {}, w {}) exceed the {}-entry tables \
                 (video too long or frame too large)",
                fr.saturating_sub(1),
                h.saturating_sub(1),
                w.saturating_sub(1),
                self.cfg.rope_max_positions
            );
        }
        let mut ctx = self.lcsa_context_base(grid, lat_h * 8, lat_w * 8, params, dev)?;
        let n = f * h * w;
        let text = consts.cross.first().map(|c| c.k_heads.dim(1)).transpose()?;
        let cross_mask = match text {
            Some(l) if l > 0 && l % lcsa::BLOCK_TOKENS == 0 && n % lcsa::BLOCK_TOKENS == 0 => {
                Some(Tensor::ones(
                    (
                        self.cfg.num_heads,
                        n / lcsa::BLOCK_TOKENS,
                        l / lcsa::BLOCK_TOKENS,
                    ),
                    DType::U8,
                    dev,
                )?)
            }
            _ => None,
        };
        ctx.fused = Some(FusedContext {
            rope,
            t_pos0,
            cross_mask,
        });
        let mut x = lcsa::window_partition(&x.squeeze(0)?.to_dtype(DType::F32)?, grid)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let (y, bt) = block.forward_fused(
                &x,
                &consts.modulations[i],
                &consts.cross[i],
                &ctx,
                &mut cache.blocks[i],
                probes.is_some(),
            )?;
            x = y;
            if let (Some(t), Some(bt)) = (probes.as_deref_mut(), bt) {
                t.blocks.push(bt);
            }
        }
        // Head in window order (64 values per token instead of dim), then back to (f, h, w).
        let dt = self.head_modulation.dtype();
        let m = self
            .head_modulation
            .to_dtype(DType::F32)?
            .broadcast_add(&consts.t.to_dtype(DType::F32)?.unsqueeze(1)?)?
            .squeeze(0)?;
        let (shift, scale) = (m.get(0)?, m.get(1)?);
        let y = dit_fused::layer_norm_scaled(&x, &scale, &shift, 1.0, self.cfg.eps as f32, dt)?;
        let y = lcsa::window_reverse(&self.head.forward(&y)?, grid)?.unsqueeze(0)?;
        self.unpatchify(&y, grid)
    }

    /// The local mask of a `bh × bw` block grid on `device`, uploaded once per size.
    fn local_mask(
        &self,
        bh: usize,
        bw: usize,
        local_range: usize,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let key = (bh, bw, local_range);
        let mut cached = self
            .local_masks
            .lock()
            .map_err(|_| candle_core::Error::Msg("DiT: local mask cache poisoned".into()))?;
        if let Some((k, t)) = cached.as_ref() {
            if *k == key && t.device().same_device(device) {
                return Ok(t.clone());
            }
        }
        let nb = bh * bw;
        let t = lcsa::local_mask_tensor(&lcsa::local_mask(bh, bw, local_range), nb, device)?;
        *cached = Some((key, t.clone()));
        Ok(t)
    }

    /// Everything of [`LcsaContext`] but the RoPE tables and the fused part.
    fn lcsa_context_base(
        &self,
        grid: (usize, usize, usize),
        height: usize,
        width: usize,
        params: &LcsaParams,
        device: &candle_core::Device,
    ) -> Result<LcsaContext> {
        let (_, h, w) = grid;
        let (_, wh, ww) = lcsa::WINDOW;
        let (bh, bw) = (h / wh, w / ww);
        let nb = bh * bw;
        Ok(LcsaContext {
            grid,
            rope: None,
            nb,
            local: self.local_mask(bh, bw, params.local_range, device)?,
            topk: lcsa::topk_count(nb, params.sparse_ratio, height, width),
            kv_len: params.kv_len(),
            fused: None,
        })
    }

    fn lcsa_context(
        &self,
        grid: (usize, usize, usize),
        t_pos0: usize,
        height: usize,
        width: usize,
        params: &LcsaParams,
        device: &candle_core::Device,
    ) -> Result<LcsaContext> {
        let (_, h, w) = grid;
        let (_, wh, ww) = lcsa::WINDOW;
        let tables = RopeTables::new(
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            grid,
            t_pos0,
            self.cfg.rope_max_positions,
            device,
        )?;
        // Tables in window order, to match q/k after the window partition.
        let rope = RopeTables {
            cos: lcsa::window_partition(&tables.cos, grid)?,
            sin: lcsa::window_partition(&tables.sin, grid)?,
        };
        let (bh, bw) = (h / wh, w / ww);
        let nb = bh * bw;
        let local = lcsa::local_mask(bh, bw, params.local_range);
        Ok(LcsaContext {
            grid,
            rope: Some(rope),
            nb,
            local: lcsa::local_mask_tensor(&local, nb, device)?,
            topk: lcsa::topk_count(nb, params.sparse_ratio, height, width),
            kv_len: params.kv_len(),
            fused: None,
        })
    }

    /// `[1, N, pt·ph·pw·C]` (C fastest) → `[1, C, f·pt, h·ph, w·pw]`.
    fn unpatchify(&self, y: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
        let (f, h, w) = grid;
        let (pt, ph, pw) = self.cfg.patch_size;
        let c = self.cfg.out_channels;
        y.reshape(vec![f, h, w, pt, ph, pw, c])?
            .permute(vec![6, 0, 3, 1, 4, 2, 5])?
            .contiguous()?
            .reshape((1, c, f * pt, h * ph, w * pw))
    }
}
