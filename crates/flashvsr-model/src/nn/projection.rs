//! The four linears of a DiT attention (`q`, `k`, `v`, `o`) and its q/k RMS norms, shared by
//! self- and cross-attention.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

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
        let (mut ws, mut bs) = (Vec::new(), Vec::new());
        for l in parts {
            match (l.dense_weight(), l.bias()) {
                (Some(w), Some(b)) => {
                    ws.push(w.clone());
                    bs.push(b.clone());
                }
                _ => candle_core::bail!("fused QKV: q/k/v must be dense linears with bias"),
            }
        }
        let dim = ws[0].dim(0)?;
        let w = Tensor::cat(&ws, 0)?;
        let b = Tensor::cat(&bs, 0)?;
        let view = |i: usize| -> Result<Linear> {
            Linear::from_dense(w.narrow(0, i * dim, dim)?, Some(b.narrow(0, i * dim, dim)?))
        };
        self.q = view(0)?;
        self.k = view(1)?;
        self.v = view(2)?;
        self.qkv = Some(Linear::from_dense(w, Some(b))?);
        Ok(self)
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
