//! One linear layer type for every projection in the DiT and the LQ projection: the weight is
//! either a dense `Tensor` (f32/f16/bf16) or a quantized `QMatMul` (GGUF k-quants).

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The weight `[out, in]` of a [`Linear`].
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    Quantized(QMatMul),
}

/// `y = x·Wᵀ + b` over the last dim of `x` (any rank ≥ 1).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    in_features: usize,
    out_features: usize,
    span: tracing::Span,
}

impl Linear {
    pub fn from_dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Self::check_bias(&bias, out_features)?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            in_features,
            out_features,
            span: tracing::span!(tracing::Level::TRACE, "linear"),
        })
    }

    /// A quantized weight; `in_features`/`out_features` as in the PyTorch shape `[out, in]`.
    pub fn from_qmatmul(
        weight: QMatMul,
        bias: Option<Tensor>,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self> {
        Self::check_bias(&bias, out_features)?;
        Ok(Self {
            weight: LinearWeight::Quantized(weight),
            bias,
            in_features,
            out_features,
            span: tracing::span!(tracing::Level::TRACE, "qlinear"),
        })
    }

    fn check_bias(bias: &Option<Tensor>, out: usize) -> Result<()> {
        if let Some(b) = bias {
            if b.elem_count() != out {
                candle_core::bail!(
                    "linear bias has {} elements, expected {out}",
                    b.elem_count()
                );
            }
        }
        Ok(())
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let last = x.dim(candle_core::D::Minus1)?;
        if last != self.in_features {
            candle_core::bail!(
                "linear: input last dim {last}, expected {} (weight [{}, {}])",
                self.in_features,
                self.out_features,
                self.in_features
            );
        }
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, self.in_features))?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => {
                let w = if w.dtype() == x2.dtype() {
                    w.clone()
                } else {
                    w.to_dtype(x2.dtype())?
                };
                x2.matmul(&w.t()?)?
            }
            LinearWeight::Quantized(q) => q.forward(&x2)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out_features;
        y.reshape(out_dims)
    }
}

/// Dense linear `prefix.weight` `[out, in]` + `prefix.bias` `[out]`.
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((out_features, in_features), "weight")?;
    let b = vb.get(out_features, "bias")?;
    Linear::from_dense(w, Some(b))
}

/// Dense linear without bias.
pub fn linear_no_bias(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((out_features, in_features), "weight")?;
    Linear::from_dense(w, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    #[test]
    fn dense_and_quantized_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 32), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32), &dev)?;
        let dense = Linear::from_dense(w.clone(), Some(b.clone()))?;
        let q = QTensor::quantize(&w, GgmlDType::F32)?;
        let ql = Linear::from_qmatmul(QMatMul::from_qtensor(q)?, Some(b.clone()), 32, 8)?;
        let yd = dense.forward(&x)?;
        let yq = ql.forward(&x)?;
        assert_eq!(yd.dims(), &[2, 3, 8]);
        let want = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        let d1 = (yd - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let d2 = (yq - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d1 < 1e-5 && d2 < 1e-5, "{d1} {d2}");
        Ok(())
    }
}
