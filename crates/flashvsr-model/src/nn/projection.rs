//! The four linears of a DiT attention (`q`, `k`, `v`, `o`) and its q/k RMS norms, shared by
//! self- and cross-attention.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{linear, Linear};
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
}

impl AttentionProjection {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp("q"))?,
            k: linear(dim, dim, vb.pp("k"))?,
            v: linear(dim, dim, vb.pp("v"))?,
            o: linear(dim, dim, vb.pp("o"))?,
            norm_q: RmsNorm::new(vb.pp("norm_q"), dim, eps)?,
            norm_k: RmsNorm::new(vb.pp("norm_k"), dim, eps)?,
        })
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
