//! The four linears of a DiT attention (`q`, `k`, `v`, `o`) and its q/k RMS norms, shared by
//! self- and cross-attention.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use flashvsr_kernels::fp8::Fp8Rows;

use super::linear::{linear_from, Linear, QuantizedWeights};
use super::norm::RmsNorm;

/// `q`, `k`, `v`, `o` (`dim → dim`, with bias) and `norm_q`, `norm_k` over the full `dim`.
#[derive(Debug, Clone)]
pub struct AttentionProjection {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    /// `[q; k; v]` stacked, for one GEMM: weight `[3·dim, dim]` and bias `[3·dim]`; `q`, `k`,
    /// `v` are then views of it (no second copy). See [`AttentionProjection::with_fused_qkv`].
    qkv: Option<Linear>,
}

impl AttentionProjection {
    /// `quantized`: where the four weights may come from kept quantized (see [`linear_from`]).
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        eps: f64,
        quantized: Option<&dyn QuantizedWeights>,
    ) -> Result<Self> {
        Ok(Self {
            q: linear_from(dim, dim, vb.pp("q"), quantized)?,
            k: linear_from(dim, dim, vb.pp("k"), quantized)?,
            v: linear_from(dim, dim, vb.pp("v"), quantized)?,
            o: linear_from(dim, dim, vb.pp("o"), quantized)?,
            norm_q: RmsNorm::new(vb.pp("norm_q"), dim, eps)?,
            norm_k: RmsNorm::new(vb.pp("norm_k"), dim, eps)?,
            qkv: None,
        })
    }

    /// Stacks the `q`, `k`, `v` weights and biases into one `[3·dim, dim]` linear (for one GEMM
    /// instead of three) and rebuilds `q`, `k`, `v` as views of it. Dense weights only.
    pub fn with_fused_qkv(mut self) -> Result<Self> {
        let parts = [&self.q, &self.k, &self.v];
        let mut bs = Vec::new();
        for l in parts {
            match l.bias() {
                Some(b) => bs.push(b.clone()),
                None => candle_core::bail!("fused QKV: q/k/v must be linears with bias"),
            }
        }
        let b = Tensor::cat(&bs, 0)?;
        let dim = bs[0].elem_count();
        let dense: Option<Vec<Tensor>> = parts.iter().map(|l| l.dense_weight().cloned()).collect();
        let fp8: Option<Vec<Fp8Rows>> = parts.iter().map(|l| l.fp8_weight().cloned()).collect();
        let (qkv, views) = if let Some(ws) = dense {
            let w = Tensor::cat(&ws, 0)?;
            let view = |i: usize| -> Result<Linear> {
                Linear::from_dense(w.narrow(0, i * dim, dim)?, Some(b.narrow(0, i * dim, dim)?))
            };
            (
                Linear::from_dense(w.clone(), Some(b.clone()))?,
                [view(0)?, view(1)?, view(2)?],
            )
        } else if let Some(ws) = fp8 {
            // Per-output-channel scales: stacking the rows stacks the scales with them.
            let qs: Vec<Tensor> = ws.iter().map(|w| w.q.clone()).collect();
            let ss: Vec<Tensor> = ws.iter().map(|w| w.scale.clone()).collect();
            let w = Fp8Rows {
                q: Tensor::cat(&qs, 0)?,
                scale: Tensor::cat(&ss, 0)?,
            };
            let view = |i: usize| -> Result<Linear> {
                let part = Fp8Rows {
                    q: w.q.narrow(0, i * dim, dim)?,
                    scale: w.scale.narrow(0, i * dim, dim)?,
                };
                Linear::from_fp8(part, Some(b.narrow(0, i * dim, dim)?))
            };
            let views = [view(0)?, view(1)?, view(2)?];
            (Linear::from_fp8(w, Some(b.clone()))?, views)
        } else {
            candle_core::bail!("fused QKV: q/k/v must all be dense or all FP8")
        };
        let [q, k, v] = views;
        self.q = q;
        self.k = k;
        self.v = v;
        self.qkv = Some(qkv);
        Ok(self)
    }

    /// Whether q, k and v can be stacked into one GEMM ([`Self::with_fused_qkv`]): all dense or
    /// all FP8 (GGUF-quantized blocks do not stack).
    pub fn can_fuse_qkv(&self) -> bool {
        let parts = [&self.q, &self.k, &self.v];
        parts.iter().all(|l| l.dense_weight().is_some())
            || parts.iter().all(|l| l.fp8_weight().is_some())
    }

    /// The stacked QKV linear, when [`AttentionProjection::with_fused_qkv`] built it.
    pub fn qkv(&self) -> Option<&Linear> {
        self.qkv.as_ref()
    }

    /// `[q(x) k(x) v(x)]` without biases, `[N, 3·dim]`, and the stacked bias `[3·dim]`: one GEMM
    /// with the stacked weights, else (quantized weights) three GEMMs concatenated.
    pub fn qkv_no_bias(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some(l) = &self.qkv {
            let Some(b) = l.bias() else {
                candle_core::bail!("attention projection: QKV linear without bias")
            };
            return Ok((l.forward_no_bias(x)?, b.clone()));
        }
        let parts = [&self.q, &self.k, &self.v];
        let mut ys = Vec::with_capacity(3);
        let mut bs = Vec::with_capacity(3);
        for l in parts {
            let Some(b) = l.bias() else {
                candle_core::bail!("attention projection: q/k/v linear without bias")
            };
            ys.push(l.forward_no_bias(x)?);
            bs.push(b.clone());
        }
        Ok((Tensor::cat(&ys, 1)?, Tensor::cat(&bs, 0)?))
    }

    pub fn q_linear(&self) -> &Linear {
        &self.q
    }

    pub fn o_linear(&self) -> &Linear {
        &self.o
    }

    /// Bytes of the four weights on their device (a stacked QKV counted once).
    pub fn weight_bytes(&self) -> usize {
        let qkv = match &self.qkv {
            Some(l) => l.weight_bytes(),
            None => self.q.weight_bytes() + self.k.weight_bytes() + self.v.weight_bytes(),
        };
        qkv + self.o.weight_bytes()
    }

    pub fn norm_q(&self) -> &RmsNorm {
        &self.norm_q
    }

    pub fn norm_k(&self) -> &RmsNorm {
        &self.norm_k
    }

    /// `norm_q(q(x))`.
    pub fn query(&self, x: &Tensor) -> Result<Tensor> {
        self.norm_q.forward(&self.q.forward(x)?)
    }

    /// `norm_k(k(x))`.
    pub fn key(&self, x: &Tensor) -> Result<Tensor> {
        self.norm_k.forward(&self.k.forward(x)?)
    }

    /// `v(x)`.
    pub fn value(&self, x: &Tensor) -> Result<Tensor> {
        self.v.forward(x)
    }

    /// `o(x)`.
    pub fn output(&self, x: &Tensor) -> Result<Tensor> {
        self.o.forward(x)
    }
}
