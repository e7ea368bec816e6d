//! Self-attention (LCSA + KV cache) and cross-attention of a DiT block (spec §5.3, §5.4).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kv_cache::BlockKv;
use super::lcsa::{self, BlockMask, Draft, WINDOW_TOKENS};
use super::rope::RopeTables;
use crate::config::DitConfig;
use crate::linear::{linear, Linear};

/// RMSNorm over the full model dim (not per head): normalised in f32, cast back, × weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    ones: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let ones = Tensor::ones(dim, DType::F32, weight.device())?;
        Ok(Self {
            weight,
            ones,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let y =
            candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &self.ones, self.eps)?;
        y.to_dtype(dtype)?
            .broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

/// Everything LCSA needs that is the same for every block of one step.
#[derive(Debug, Clone)]
pub struct LcsaContext {
    /// Token grid (f, h, w) of this step.
    pub grid: (usize, usize, usize),
    /// RoPE tables in *window* order.
    pub rope: RopeTables,
    /// Windows per segment.
    pub nb: usize,
    /// Local mask `[nb, nb]`.
    pub local: Vec<bool>,
    pub topk: i64,
    pub kv_len: usize,
}

#[derive(Debug, Clone)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    num_heads: usize,
    span: tracing::Span,
}

impl SelfAttention {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        let d = cfg.dim;
        Ok(Self {
            q: linear(d, d, vb.pp("q"))?,
            k: linear(d, d, vb.pp("k"))?,
            v: linear(d, d, vb.pp("v"))?,
            o: linear(d, d, vb.pp("o"))?,
            norm_q: RmsNorm::new(vb.pp("norm_q"), d, cfg.eps)?,
            norm_k: RmsNorm::new(vb.pp("norm_k"), d, cfg.eps)?,
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
    /// segments, drops one oldest segment when it holds more than `kv_len`). Returns `[1, N, dim]` and, if asked, the draft.
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
        let q = self.norm_q.forward(&self.q.forward(&x2)?)?;
        let k = self.norm_k.forward(&self.k.forward(&x2)?)?;
        let v = self.v.forward(&x2)?;
        let q = ctx.rope.apply(&self.to_window_heads(&q, ctx.grid)?)?;
        let k = ctx.rope.apply(&self.to_window_heads(&k, ctx.grid)?)?;
        let v = self.to_window_heads(&v, ctx.grid)?;
        // Cached segments plus this step's (slot order; time order when the draft is tapped).
        let seg_tokens = ctx.nb * WINDOW_TOKENS;
        let (k_all, v_all) = cache.append(&k, &v, seg_tokens, ctx.kv_len, want_draft)?;
        let nq = n / WINDOW_TOKENS;
        let nk = k_all.dim(1)? / WINDOW_TOKENS;
        let heads_means = |t: &Tensor, nw: usize| -> Result<Tensor> {
            t.reshape((self.num_heads, nw, WINDOW_TOKENS, hd))?
                .to_dtype(DType::F32)?
                .mean(2)?
                .transpose(0, 1)?
                .reshape((nw, dim))
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let (attn, draft) = if q.device().is_cuda() && !want_draft {
            // GPU: draft mask and attention stay on the device (no host round trip per block).
            let local: Vec<u8> = ctx.local.iter().map(|&b| b as u8).collect();
            let local = Tensor::from_vec(local, (ctx.nb, ctx.nb), q.device())?;
            let mask = flashvsr_kernels::draft_block_mask(
                &heads_means(&q, nq)?,
                &heads_means(&k_all, nk)?,
                &local,
                self.num_heads,
                ctx.topk.max(0) as usize,
            )?;
            (
                flashvsr_kernels::block_sparse_attention(&q, &k_all, &v_all, &mask, scale as f32)?,
                None,
            )
        } else {
            let draft = lcsa::draft_mask(
                &heads_means(&q, nq)?,
                &heads_means(&k_all, nk)?,
                self.num_heads,
                ctx.nb,
                &ctx.local,
                ctx.topk,
            )?;
            (
                block_sparse(&q, &k_all, &v_all, &draft.mask, scale)?,
                Some(draft),
            )
        };
        let attn = attn.transpose(0, 1)?.reshape((n, dim))?;
        let attn = lcsa::window_reverse(&attn, ctx.grid)?;
        let out = self.o.forward(&attn)?.unsqueeze(0)?;

        // Upstream drops exactly one oldest segment per step once over kv_len.
        cache.evict(ctx.kv_len);
        Ok((out, draft.filter(|_| want_draft)))
    }
}

/// Block-sparse attention with a host-side mask: our CUDA kernel on a GPU, the CPU path elsewhere.
fn block_sparse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    if q.device().is_cuda() {
        let m: Vec<u8> = mask.data.iter().map(|&b| b as u8).collect();
        let m = Tensor::from_vec(m, (mask.heads, mask.nq, mask.nk), q.device())?;
        return flashvsr_kernels::block_sparse_attention(q, k, v, &m, scale as f32);
    }
    lcsa::block_sparse_attention(q, k, v, mask, scale)
}

/// Cross-attention over the cached text keys/values (dense, no mask, no gate).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    num_heads: usize,
    span: tracing::Span,
}

impl CrossAttention {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        let d = cfg.dim;
        Ok(Self {
            q: linear(d, d, vb.pp("q"))?,
            k: linear(d, d, vb.pp("k"))?,
            v: linear(d, d, vb.pp("v"))?,
            o: linear(d, d, vb.pp("o"))?,
            norm_q: RmsNorm::new(vb.pp("norm_q"), d, cfg.eps)?,
            norm_k: RmsNorm::new(vb.pp("norm_k"), d, cfg.eps)?,
            num_heads: cfg.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "cross-attn"),
        })
    }

    /// The cached (K, V) for a text context `[1, L, dim]`: K = norm_k(k(ctx)), V = v(ctx).
    pub fn kv(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.norm_k.forward(&self.k.forward(context)?)?,
            self.v.forward(context)?,
        ))
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
        let q = heads(&self.norm_q.forward(&self.q.forward(x)?)?)?;
        let (k, v) = (heads(k)?, heads(v)?);
        let dtype = q.dtype();
        let s = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * (1.0 / (hd as f64).sqrt()))?;
        let p = candle_nn::ops::softmax_last_dim(&s)?.to_dtype(dtype)?;
        let o = p.matmul(&v)?.transpose(0, 1)?.reshape((1, n, dim))?;
        self.o.forward(&o)
    }
}
