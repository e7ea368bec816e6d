//! One DiT block (spec §5.3): modulated self-attention (LCSA), cross-attention, modulated FFN.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{CrossAttention, LcsaContext, SelfAttention};
use super::kv_cache::BlockKv;
use super::lcsa::Draft;
use crate::config::DitConfig;
use crate::nn::linear::{linear, Linear};
use crate::nn::norm::LayerNorm;

/// Cross-attention K/V of one block, computed once per prompt.
#[derive(Debug, Clone)]
pub struct CrossKv {
    pub k: Tensor,
    pub v: Tensor,
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
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        Ok(Self {
            modulation: vb.get((1, 6, cfg.dim), "modulation")?,
            norm: LayerNorm::no_affine(cfg.dim, cfg.eps, vb.device())?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), cfg)?,
            norm3: LayerNorm::affine(vb.pp("norm3"), cfg.dim, cfg.eps)?,
            cross_attn: CrossAttention::new(vb.pp("cross_attn"), cfg)?,
            ffn0: linear(cfg.dim, cfg.ffn_dim, vb.pp("ffn.0"))?,
            ffn2: linear(cfg.ffn_dim, cfg.dim, vb.pp("ffn.2"))?,
            span: tracing::span!(tracing::Level::TRACE, "dit-block"),
        })
    }

    pub fn cross_kv(&self, context: &Tensor) -> Result<CrossKv> {
        let (k, v) = self.cross_attn.kv(context)?;
        Ok(CrossKv { k, v })
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
