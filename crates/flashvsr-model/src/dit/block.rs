//! One DiT block (spec §5.3): modulated self-attention (LCSA), cross-attention, modulated FFN.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use flashvsr_kernels::dit_fused;

use super::attention::{CrossAttention, LcsaContext, SelfAttention};
use super::kv_cache::BlockKv;
use super::lcsa::{self, Draft};
use crate::config::DitConfig;
use crate::nn::linear::{linear_from, Linear, QuantizedWeights};
use crate::nn::norm::LayerNorm;

/// Cross-attention K/V of one block, computed once per prompt.
#[derive(Debug, Clone)]
pub struct CrossKv {
    /// `[1, L, dim]`.
    pub k: Tensor,
    pub v: Tensor,
    /// The same as `[heads, L, head_dim]` (the fused path's attention layout).
    pub k_heads: Tensor,
    pub v_heads: Tensor,
}

/// What one block reports when probes are requested.
#[derive(Debug, Clone)]
pub struct BlockProbes {
    pub draft: Draft,
    /// Self-attention output after `o`, before gate1, `[1, N, dim]`.
    pub self_attn_out: Tensor,
    /// Hidden state after the block, `[1, N, dim]`.
    pub out: Tensor,
}

#[derive(Debug, Clone)]
pub struct DitBlock {
    modulation: Tensor, // [1, 6, dim]
    norm: LayerNorm,    // norm1 == norm2: no parameters
    self_attn: SelfAttention,
    norm3: LayerNorm,
    cross_attn: CrossAttention,
    ffn0: Linear,
    ffn2: Linear,
    span: tracing::Span,
}

impl DitBlock {
    /// Bytes of the block's linear weights (attention and FFN) on the device.
    pub fn linear_weight_bytes(&self) -> usize {
        self.self_attn.weight_bytes()
            + self.cross_attn.weight_bytes()
            + self.ffn0.weight_bytes()
            + self.ffn2.weight_bytes()
    }

    /// `quantized`: where the linear weights may come from kept quantized.
    pub fn new(
        vb: VarBuilder,
        cfg: &DitConfig,
        quantized: Option<&dyn QuantizedWeights>,
    ) -> Result<Self> {
        Ok(Self {
            modulation: vb.get((1, 6, cfg.dim), "modulation")?,
            norm: LayerNorm::no_affine(cfg.dim, cfg.eps, vb.device())?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), cfg, quantized)?,
            norm3: LayerNorm::affine(vb.pp("norm3"), cfg.dim, cfg.eps)?,
            cross_attn: CrossAttention::new(vb.pp("cross_attn"), cfg, quantized)?,
            ffn0: linear_from(cfg.dim, cfg.ffn_dim, vb.pp("ffn.0"), quantized)?,
            ffn2: linear_from(cfg.ffn_dim, cfg.dim, vb.pp("ffn.2"), quantized)?,
            span: tracing::span!(tracing::Level::TRACE, "dit-block"),
        })
    }

    pub fn cross_kv(&self, context: &Tensor) -> Result<CrossKv> {
        let (k, v) = self.cross_attn.kv(context)?;
        let (k_heads, v_heads) = (self.cross_attn.heads(&k)?, self.cross_attn.heads(&v)?);
        Ok(CrossKv {
            k,
            v,
            k_heads,
            v_heads,
        })
    }

    /// `modulation + t_mod` in f32, `[6, dim]`: shift, scale, gate of the self-attention, then
    /// of the FFN. Per prompt (see `DitConstants::modulations`).
    pub fn modulation(&self, t_mod: &Tensor) -> Result<Tensor> {
        self.modulation
            .to_dtype(DType::F32)?
            .broadcast_add(&t_mod.to_dtype(DType::F32)?)?
            .squeeze(0)
    }

    /// The fused CUDA path of [`DitBlock::forward`]: `x` `[N, dim]` f32 in LCSA **window
    /// order** (every step but the self-attention is per token, so the order is kept from the
    /// first block to the last); `m` from [`DitBlock::modulation`]. The same arithmetic with
    /// one rounding per fused kernel; probes in (f, h, w) order like the unfused path.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        m: &Tensor,
        cross: &CrossKv,
        ctx: &LcsaContext,
        cache: &mut BlockKv,
        want_probes: bool,
    ) -> Result<(Tensor, Option<BlockProbes>)> {
        let _enter = self.span.enter();
        let Some(fc) = ctx.fused.as_ref() else {
            candle_core::bail!("DiT block: the fused path needs a fused context")
        };
        let dt = self.modulation.dtype();
        let chunk = |i: usize| m.get(i);
        let (shift1, scale1, gate1) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (shift2, scale2, gate2) = (chunk(3)?, chunk(4)?, chunk(5)?);
        let eps = self.norm.eps();
        let a = dit_fused::layer_norm_scaled(x, &scale1, &shift1, 1.0, eps, dt)?;
        let (sa, draft) = self
            .self_attn
            .forward_fused(&a, ctx, fc, cache, want_probes)?;
        let sa_bias = self.self_attn.output_bias();
        let x = dit_fused::gated_residual(x, &sa, sa_bias, Some(&gate1))?;
        let (w3, b3) = self.norm3.params();
        let c = dit_fused::layer_norm_scaled(&x, w3, b3, 0.0, self.norm3.eps(), dt)?;
        let c = self.cross_attn.forward_fused(&c, cross, fc)?;
        let x = dit_fused::gated_residual(&x, &c, self.cross_attn.output_bias(), None)?;
        let b = dit_fused::layer_norm_scaled(&x, &scale2, &shift2, 1.0, eps, dt)?;
        let Some(ffn0_bias) = self.ffn0.bias() else {
            candle_core::bail!("DiT block: ffn.0 without bias")
        };
        let h = self.ffn0.forward_no_bias(&b)?;
        let f = if self.ffn2.fp8_weight().is_some() {
            // The GELU output goes to e4m3 in the same kernel (the bytes and scales the FP8
            // linear would make of it).
            let hq = dit_fused::bias_gelu_fp8(&h, ffn0_bias)?;
            self.ffn2
                .forward_fp8_no_bias(&hq, h.dtype())?
                .reshape(x.shape())?
        } else {
            self.ffn2
                .forward_no_bias(&dit_fused::bias_gelu(&h, ffn0_bias)?)?
        };
        let x = dit_fused::gated_residual(&x, &f, self.ffn2.bias(), Some(&gate2))?;
        let probes = match draft {
            Some(draft) => {
                let sa = match sa_bias {
                    Some(b) => sa.broadcast_add(b)?,
                    None => sa,
                };
                Some(BlockProbes {
                    draft,
                    self_attn_out: lcsa::window_reverse(&sa, ctx.grid)?.unsqueeze(0)?,
                    out: lcsa::window_reverse(&x, ctx.grid)?.unsqueeze(0)?,
                })
            }
            None => None,
        };
        Ok((x, probes))
    }

    /// `x`: `[1, N, dim]`; `t_mod`: `[1, 6, dim]`.
    pub fn forward(
        &self,
        x: &Tensor,
        t_mod: &Tensor,
        cross: &CrossKv,
        ctx: &LcsaContext,
        cache: &mut BlockKv,
        want_probes: bool,
    ) -> Result<(Tensor, Option<BlockProbes>)> {
        let _enter = self.span.enter();
        // The residual stream and the modulation arithmetic stay in f32 (no-ops in f32): in bf16
        // they lose ~1e-2 over a block; the linears and attention run in the weights' dtype.
        let dt = self.modulation.dtype();
        let x = x.to_dtype(DType::F32)?;
        let m = self
            .modulation
            .to_dtype(DType::F32)?
            .broadcast_add(&t_mod.to_dtype(DType::F32)?)?;
        let chunk = |i: usize| m.narrow(1, i, 1);
        let (shift1, scale1, gate1) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (shift2, scale2, gate2) = (chunk(3)?, chunk(4)?, chunk(5)?);

        let a = self
            .norm
            .forward(&x)?
            .broadcast_mul(&(scale1 + 1.0)?)?
            .broadcast_add(&shift1)?;
        let (sa, draft) = self
            .self_attn
            .forward(&a.to_dtype(dt)?, ctx, cache, want_probes)?;
        let x = (x + sa.to_dtype(DType::F32)?.broadcast_mul(&gate1)?)?;
        let cross =
            self.cross_attn
                .forward(&self.norm3.forward(&x)?.to_dtype(dt)?, &cross.k, &cross.v)?;
        let x = (&x + cross.to_dtype(DType::F32)?)?;
        let b = self
            .norm
            .forward(&x)?
            .broadcast_mul(&(scale2 + 1.0)?)?
            .broadcast_add(&shift2)?;
        let ffn = self
            .ffn2
            .forward(&self.ffn0.forward(&b.to_dtype(dt)?)?.gelu()?)?;
        let x = (x + ffn.to_dtype(DType::F32)?.broadcast_mul(&gate2)?)?;
        let probes = draft.map(|draft| BlockProbes {
            draft,
            self_attn_out: sa,
            out: x.clone(),
        });
        Ok((x, probes))
    }
}
