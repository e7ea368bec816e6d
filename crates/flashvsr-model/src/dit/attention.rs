//! Self-attention (LCSA + KV cache) and cross-attention of a DiT block (spec §5.3, §5.4).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use flashvsr_kernels::dit_fused::{self, RopeGrid};
use flashvsr_kernels::{BlockSparseAttention, OutputLayout};

use super::block::CrossKv;
use super::kv_cache::BlockKv;
use super::lcsa::{self, Draft, BLOCK_TOKENS};
use super::rope::{RopePositions, RopeTables};
use crate::config::DitConfig;
use crate::nn::linear::QuantizedWeights;
use crate::nn::projection::AttentionProjection;

/// Everything LCSA needs that is the same for every block of one step.
#[derive(Debug, Clone)]
pub struct LcsaContext {
    /// Token grid (f, h, w) of this step.
    pub grid: (usize, usize, usize),
    /// RoPE tables in *window* order (the unfused path only).
    pub rope: Option<RopeTables>,
    /// Windows per segment.
    pub nb: usize,
    /// Local mask `[nb, nb]` u8, on the model's device.
    pub local: Tensor,
    pub topk: i64,
    pub kv_len: usize,
    /// What the fused CUDA path needs besides (see [`super::fused`]).
    pub fused: Option<FusedContext>,
}

/// The fused path's per-step context: tokens stay in window order through all blocks.
#[derive(Debug, Clone)]
pub struct FusedContext {
    /// Rotations by position (the model's, built once).
    pub rope: RopePositions,
    /// RoPE temporal position of the step's first latent frame.
    pub t_pos0: usize,
    /// All-ones block mask `[heads, N/128, L/128]` for the cross-attention over the `L` text
    /// tokens through the block-sparse kernel; `None` when `L` is not a multiple of 128.
    pub cross_mask: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct SelfAttention {
    proj: AttentionProjection,
    num_heads: usize,
    span: tracing::Span,
}

impl SelfAttention {
    /// Bytes of the q/k/v/o weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.proj.weight_bytes()
    }

    pub fn new(
        vb: VarBuilder,
        cfg: &DitConfig,
        quantized: Option<&dyn QuantizedWeights>,
    ) -> Result<Self> {
        let mut proj = AttentionProjection::new(vb.clone(), cfg.dim, cfg.eps, quantized)?;
        // One QKV GEMM on CUDA when the weights stack (dense or FP8); the CPU path keeps its
        // three separate weights as they are (GGUF-quantized ones run three GEMMs everywhere).
        if vb.device().is_cuda() && proj.can_fuse_qkv() {
            proj = proj.with_fused_qkv()?;
        }
        Ok(Self {
            proj,
            num_heads: cfg.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "self-attn"),
        })
    }

    /// The output projection's bias (the fused path adds it in the residual kernel).
    pub fn output_bias(&self) -> Option<&Tensor> {
        self.proj.o_linear().bias()
    }

    /// Fused CUDA path. `x`: `[N, dim]` modulated, in **window order**. Returns the output
    /// projection without its bias, `[N, dim]` in window order, and the draft if asked.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        ctx: &LcsaContext,
        fc: &FusedContext,
        cache: &mut BlockKv,
        want_draft: bool,
    ) -> Result<(Tensor, Option<Draft>)> {
        let _enter = self.span.enter();
        let (_, dim) = x.dims2()?;
        let hd = dim / self.num_heads;
        let (qkv, qkv_bias) = self.proj.qkv_no_bias(x)?;
        let (_, h, w) = ctx.grid;
        let grid = RopeGrid {
            cos: &fc.rope.cos,
            sin: &fc.rope.sin,
            grid_h: h,
            grid_w: w,
            t_pos0: fc.t_pos0,
            t_pairs: fc.rope.t_pairs,
            h_pairs: fc.rope.h_pairs,
        };
        let (nq_, nk_) = (self.proj.norm_q(), self.proj.norm_k());
        let (q, k, v) = dit_fused::qkv_rope(
            &qkv,
            &qkv_bias,
            nq_.weight(),
            nk_.weight(),
            &grid,
            self.num_heads,
            nq_.eps(),
        )?;
        let seg_tokens = ctx.nb * BLOCK_TOKENS;
        let (k_all, v_all) = cache.append(&k, &v, seg_tokens, ctx.kv_len, want_draft)?;
        let q_mean = dit_fused::window_means(&q)?;
        let k_mean = dit_fused::window_means(&k_all)?;
        let topk = ctx.topk.max(0) as usize;
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
        let attn = BlockSparseAttention::new(scale)
            .with_layout(OutputLayout::TokenMajor)
            .forward(&q, &k_all, &v_all, &mask)?;
        let out = self.proj.o_linear().forward_no_bias(&attn)?;
        Ok((out, draft))
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
        let Some(rope) = ctx.rope.as_ref() else {
            candle_core::bail!(
                "self-attention: the unfused path needs the window-order RoPE tables"
            )
        };
        let q = rope.apply(&self.to_window_heads(&q, ctx.grid)?)?;
        let k = rope.apply(&self.to_window_heads(&k, ctx.grid)?)?;
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
    /// Bytes of the q/k/v/o weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.proj.weight_bytes()
    }

    pub fn new(
        vb: VarBuilder,
        cfg: &DitConfig,
        quantized: Option<&dyn QuantizedWeights>,
    ) -> Result<Self> {
        Ok(Self {
            proj: AttentionProjection::new(vb, cfg.dim, cfg.eps, quantized)?,
            num_heads: cfg.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "cross-attn"),
        })
    }

    /// The cached (K, V) for a text context `[1, L, dim]`: K = norm_k(k(ctx)), V = v(ctx).
    pub fn kv(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.proj.key(context)?, self.proj.value(context)?))
    }

    /// `[1, L, dim]` → `[heads, L, head_dim]` contiguous.
    pub fn heads(&self, t: &Tensor) -> Result<Tensor> {
        let (_, l, dim) = t.dims3()?;
        t.squeeze(0)?
            .reshape((l, self.num_heads, dim / self.num_heads))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// The output projection's bias (the fused path adds it in the residual kernel).
    pub fn output_bias(&self) -> Option<&Tensor> {
        self.proj.o_linear().bias()
    }

    /// Fused CUDA path. `x`: `[N, dim]` (any token order). Returns the output projection
    /// without its bias, `[N, dim]`. With a `cross_mask` the attention is the block-sparse
    /// kernel over all text blocks (f32 scores and softmax, probabilities rounded to the dtype
    /// for P·V, as the dense path), else the dense path of [`CrossAttention::forward`].
    pub fn forward_fused(&self, x: &Tensor, cross: &CrossKv, fc: &FusedContext) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (n, dim) = x.dims2()?;
        let hd = dim / self.num_heads;
        let ql = self.proj.q_linear();
        let Some(q_bias) = ql.bias() else {
            candle_core::bail!("cross-attention: q linear without bias")
        };
        let norm_q = self.proj.norm_q();
        let q = dit_fused::rms_norm_heads(
            &ql.forward_no_bias(x)?,
            q_bias,
            norm_q.weight(),
            self.num_heads,
            norm_q.eps(),
        )?;
        let scale = 1.0 / (hd as f64).sqrt();
        let attn = match &fc.cross_mask {
            Some(mask) => BlockSparseAttention::new(scale as f32)
                .with_layout(OutputLayout::TokenMajor)
                .forward(&q, &cross.k_heads, &cross.v_heads, mask)?,
            None => {
                let dtype = q.dtype();
                let s = (q.matmul(&cross.k_heads.t()?)?.to_dtype(DType::F32)? * scale)?;
                let p = candle_nn::ops::softmax_last_dim(&s)?.to_dtype(dtype)?;
                p.matmul(&cross.v_heads)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((n, dim))?
            }
        };
        self.proj.o_linear().forward_no_bias(&attn)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused path's q/k/v (window-order tokens, RoPE by position tables: `dit_fused`'s
    /// reference arithmetic, which the CUDA kernel is tested against) equal the unfused path's
    /// (bias, RmsNorm, window partition, per-token RoPE tables) in f32.
    #[test]
    fn fused_qkv_layout_and_rope_match_the_unfused_path() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, hd) = (2, 32);
        let d = heads * hd;
        let grid = (4, 16, 8);
        let (t0, theta, max_pos) = (5, 10000.0, 64);
        let n = grid.0 * grid.1 * grid.2;
        let qkv = Tensor::randn(0f32, 1.0, (n, 3 * d), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 3 * d, &dev)?;
        let wq = Tensor::randn(0f32, 1.0, d, &dev)?;
        let wk = Tensor::randn(0f32, 1.0, d, &dev)?;
        let eps = 1e-6f32;

        // Unfused: (f, h, w) order in, window order out.
        let tables = RopeTables::new(hd, theta, grid, t0, max_pos, &dev)?;
        let tables = RopeTables {
            cos: lcsa::window_partition(&tables.cos, grid)?,
            sin: lcsa::window_partition(&tables.sin, grid)?,
        };
        let ones = Tensor::ones(d, DType::F32, &dev)?;
        let window_heads = |x: &Tensor| -> Result<Tensor> {
            lcsa::window_partition(x, grid)?
                .reshape((n, heads, hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        let part = |i: usize, w: Option<&Tensor>| -> Result<Tensor> {
            let x = qkv
                .narrow(1, i * d, d)?
                .broadcast_add(&bias.narrow(0, i * d, d)?)?;
            match w {
                Some(w) => candle_nn::ops::rms_norm(&x.contiguous()?, &ones, eps)?.broadcast_mul(w),
                None => Ok(x),
            }
        };
        let want_q = tables.apply(&window_heads(&part(0, Some(&wq))?)?)?;
        let want_k = tables.apply(&window_heads(&part(1, Some(&wk))?)?)?;
        let want_v = window_heads(&part(2, None)?)?;

        // Fused: window order in.
        let pos = RopePositions::new(hd, theta, max_pos, &dev)?;
        let rope = RopeGrid {
            cos: &pos.cos,
            sin: &pos.sin,
            grid_h: grid.1,
            grid_w: grid.2,
            t_pos0: t0,
            t_pairs: pos.t_pairs,
            h_pairs: pos.h_pairs,
        };
        let (q, k, v) = dit_fused::qkv_rope(
            &lcsa::window_partition(&qkv, grid)?,
            &bias,
            &wq,
            &wk,
            &rope,
            heads,
            eps,
        )?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let (eq, ek, ev) = (diff(&q, &want_q)?, diff(&k, &want_k)?, diff(&v, &want_v)?);
        assert!(eq < 1e-5 && ek < 1e-5 && ev == 0.0, "q {eq} k {ek} v {ev}");
        Ok(())
    }
}
