//! Self-attention (LCSA + KV cache) and cross-attention of a DiT block (spec §5.3, §5.4).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::kv_cache::BlockKv;
use super::lcsa::{self, Draft, BLOCK_TOKENS};
use super::rope::RopeTables;
use crate::config::DitConfig;
use crate::nn::projection::AttentionProjection;

/// Everything LCSA needs that is the same for every block of one step.
#[derive(Debug, Clone)]
pub struct LcsaContext {
    /// Token grid (f, h, w) of this step.
    pub grid: (usize, usize, usize),
    /// RoPE tables in *window* order.
    pub rope: RopeTables,
    /// Windows per segment.
    pub nb: usize,
    /// Local mask `[nb, nb]` u8, on the model's device.
    pub local: Tensor,
    pub topk: i64,
    pub kv_len: usize,
}

#[derive(Debug, Clone)]
pub struct SelfAttention {
    proj: AttentionProjection,
    num_heads: usize,
    span: tracing::Span,
}

impl SelfAttention {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        Ok(Self {
            proj: AttentionProjection::new(vb, cfg.dim, cfg.eps)?,
            num_heads: cfg.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "self-attn"),
        })
    }

    /// `[N, dim]` in (f,h,w) order → `[heads, N, hd]` in window order.
    fn to_window_heads(&self, x: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
        let (n, dim) = x.dims2()?;
        let hd = dim / self.num_heads;
        lcsa::window_partition(x, grid)?
            .reshape((n, self.num_heads, hd))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// `x`: `[1, N, dim]` (modulated, (f,h,w) order). Updates `cache` (adds this step's
    /// segments, drops one oldest segment when it holds more than `kv_len`). Returns
    /// `[1, N, dim]` and, if `want_draft`, the draft read back to the host (the probes').
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &LcsaContext,
        cache: &mut BlockKv,
        want_draft: bool,
    ) -> Result<(Tensor, Option<Draft>)> {
        let _enter = self.span.enter();
        let (_, n, dim) = x.dims3()?;
        let hd = dim / self.num_heads;
        let x2 = x.squeeze(0)?;
        let q = self.proj.query(&x2)?;
        let k = self.proj.key(&x2)?;
        let v = self.proj.value(&x2)?;
        let q = ctx.rope.apply(&self.to_window_heads(&q, ctx.grid)?)?;
        let k = ctx.rope.apply(&self.to_window_heads(&k, ctx.grid)?)?;
        let v = self.to_window_heads(&v, ctx.grid)?;
        // Cached segments plus this step's (slot order; time order when the draft is probed).
        let seg_tokens = ctx.nb * BLOCK_TOKENS;
        let (k_all, v_all) = cache.append(&k, &v, seg_tokens, ctx.kv_len, want_draft)?;
        let nq = n / BLOCK_TOKENS;
        let nk = k_all.dim(1)? / BLOCK_TOKENS;
        let heads_means = |t: &Tensor, nw: usize| -> Result<Tensor> {
            t.reshape((self.num_heads, nw, BLOCK_TOKENS, hd))?
                .to_dtype(DType::F32)?
                .mean(2)?
                .transpose(0, 1)?
                .reshape((nw, dim))
        };
        let (q_mean, k_mean) = (heads_means(&q, nq)?, heads_means(&k_all, nk)?);
        let topk = ctx.topk.max(0) as usize;
        // The mask stays on the device; only the probes read the draft back.
        let (mask, draft) = if want_draft {
            let d = flashvsr_kernels::draft(&q_mean, &k_mean, &ctx.local, self.num_heads, topk)?;
            let host = Draft::read(&d)?;
            (d.mask, Some(host))
        } else {
            let mask = flashvsr_kernels::draft_block_mask(
                &q_mean,
                &k_mean,
                &ctx.local,
                self.num_heads,
                topk,
            )?;
            (mask, None)
        };
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let attn = flashvsr_kernels::block_sparse_attention(&q, &k_all, &v_all, &mask, scale)?;
        let attn = attn.transpose(0, 1)?.reshape((n, dim))?;
        let attn = lcsa::window_reverse(&attn, ctx.grid)?;
        let out = self.proj.output(&attn)?.unsqueeze(0)?;

        // Upstream drops exactly one oldest segment per step once over kv_len.
        cache.evict(ctx.kv_len);
        Ok((out, draft))
    }
}

/// Cross-attention over the cached text keys/values (dense, no mask, no gate).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    proj: AttentionProjection,
    num_heads: usize,
    span: tracing::Span,
}

impl CrossAttention {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        Ok(Self {
            proj: AttentionProjection::new(vb, cfg.dim, cfg.eps)?,
            num_heads: cfg.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "cross-attn"),
        })
    }

    /// The cached (K, V) for a text context `[1, L, dim]`: K = norm_k(k(ctx)), V = v(ctx).
    pub fn kv(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.proj.key(context)?, self.proj.value(context)?))
    }

    /// `x`: `[1, N, dim]`; `k`, `v`: `[1, L, dim]` from [`CrossAttention::kv`].
    pub fn forward(&self, x: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, n, dim) = x.dims3()?;
        let hd = dim / self.num_heads;
        let heads = |t: &Tensor| -> Result<Tensor> {
            let l = t.dim(1)?;
            t.squeeze(0)?
                .reshape((l, self.num_heads, hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        let q = heads(&self.proj.query(x)?)?;
        let (k, v) = (heads(k)?, heads(v)?);
        let dtype = q.dtype();
        let s = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * (1.0 / (hd as f64).sqrt()))?;
        let p = candle_nn::ops::softmax_last_dim(&s)?.to_dtype(dtype)?;
        let o = p.matmul(&v)?.transpose(0, 1)?.reshape((1, n, dim))?;
        self.proj.output(&o)
    }
}
