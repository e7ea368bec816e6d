//! One linear layer type for every projection in the DiT and the LQ projection: the weight is
//! a dense `Tensor` (f32/f16/bf16), a quantized `QMatMul` (GGUF k-quants) or FP8 (e4m3 with
//! per-output-channel scales, activations quantized per token: `flashvsr_kernels::fp8`).
//!
//! A candle-nn `VarBuilder` hands out dense tensors only, so quantized weights come from a
//! [`QuantizedWeights`] source next to it (the weight store that backs the `VarBuilder`):
//! [`linear_from`] takes the weight quantized when that source holds it quantized.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use flashvsr_kernels::fp8::{self, Fp8Rows};

/// The weight `[out, in]` of a [`Linear`].
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    Quantized(QMatMul),
    Fp8(Fp8Rows),
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
        Self::build(LinearWeight::Dense(weight), bias, in_features, out_features)
    }

    /// A weight kept quantized, shaped `[out, in]` as in PyTorch.
    pub fn from_qtensor(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.shape().dims2()?;
        let weight = LinearWeight::Quantized(QMatMul::from_qtensor(weight)?);
        Self::build(weight, bias, in_features, out_features)
    }

    /// A dense weight `[out, in]` converted to FP8 (e4m3, one scale per output channel); the
    /// dense tensor is dropped. Needs a device where [`fp8::supported`] holds.
    pub fn from_dense_fp8(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        if !fp8::supported(weight.device())? {
            candle_core::bail!(
                "FP8 linears need an Ada/Hopper GPU (sm_89+) or the CPU; this device is older (use --quantize-dit q8_0)"
            )
        }
        let q = fp8::quantize_rows(&weight)?;
        Self::build(LinearWeight::Fp8(q), bias, in_features, out_features)
    }

    /// An FP8 weight as it is (e.g. stacked with others).
    pub fn from_fp8(weight: Fp8Rows, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims()?;
        Self::build(LinearWeight::Fp8(weight), bias, in_features, out_features)
    }

    /// The FP8 weight, `None` unless the weight is kept in FP8.
    pub fn fp8_weight(&self) -> Option<&Fp8Rows> {
        match &self.weight {
            LinearWeight::Fp8(q) => Some(q),
            _ => None,
        }
    }

    /// Whether the weight is kept quantized (a `QMatMul` or FP8).
    pub fn is_quantized(&self) -> bool {
        !matches!(self.weight, LinearWeight::Dense(_))
    }

    /// The dense weight `[out, in]`, `None` when it is kept quantized.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Quantized(_) | LinearWeight::Fp8(_) => None,
        }
    }

    /// Bytes the weight holds on its device (the bias not counted).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            LinearWeight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            LinearWeight::Fp8(q) => q.bytes(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x·Wᵀ` without the bias (for fused kernels that add it on the way).
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        self.over_last_dim(x, |x2| self.times_weight(x2))
    }

    /// `x·Wᵀ` without the bias from activations already quantized to e4m3 per token (`xq`
    /// `[rows, in]`, e.g. by a fused kernel), output `[rows, out]` in `dtype` (the activations'
    /// dtype). Only for an FP8 weight ([`Linear::fp8_weight`]).
    pub fn forward_fp8_no_bias(&self, xq: &Fp8Rows, dtype: candle_core::DType) -> Result<Tensor> {
        let _enter = self.span.enter();
        match &self.weight {
            LinearWeight::Fp8(w) => fp8::linear_prequantized(xq, w, None, dtype),
            _ => candle_core::bail!("linear: pre-quantized FP8 activations need an FP8 weight"),
        }
    }

    /// `x2 [rows, in] · Wᵀ`, dense or quantized, in `x2`'s dtype.
    fn times_weight(&self, x2: &Tensor) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => {
                let w = if w.dtype() == x2.dtype() {
                    w.clone()
                } else {
                    w.to_dtype(x2.dtype())?
                };
                x2.matmul(&w.t()?)
            }
            LinearWeight::Quantized(q) if x2.device().is_cpu() => q.forward(x2),
            LinearWeight::Quantized(q) => quantized_on_gpu(q, x2),
            LinearWeight::Fp8(q) => fp8::linear(&x2.contiguous()?, q, None),
        }
    }

    /// Flattens `x` to `[rows, in]`, applies `f`, restores the leading dims.
    fn over_last_dim(
        &self,
        x: &Tensor,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
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
        let y = f(&x.reshape((rows, self.in_features))?)?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out_features;
        y.reshape(out_dims)
    }

    fn build(
        weight: LinearWeight,
        bias: Option<Tensor>,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self> {
        if let Some(b) = &bias {
            if b.elem_count() != out_features {
                candle_core::bail!(
                    "linear bias has {} elements, expected {out_features}",
                    b.elem_count()
                );
            }
        }
        let span = match weight {
            LinearWeight::Dense(_) => tracing::span!(tracing::Level::TRACE, "linear"),
            LinearWeight::Quantized(_) => tracing::span!(tracing::Level::TRACE, "qlinear"),
            LinearWeight::Fp8(_) => tracing::span!(tracing::Level::TRACE, "fp8linear"),
        };
        Ok(Self {
            weight,
            bias,
            in_features,
            out_features,
            span,
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        self.over_last_dim(x, |x2| {
            if let LinearWeight::Fp8(q) = &self.weight {
                // The bias goes in with the scales, in f32.
                return fp8::linear(&x2.contiguous()?, q, self.bias.as_ref());
            }
            let y = self.times_weight(x2)?;
            match &self.bias {
                Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
                None => Ok(y),
            }
        })
    }
}

/// How a quantized weight multiplies on a GPU (`FLASHVSR_QMATMUL`, read once): `dense`
/// (default) dequantizes the layer into a transient weight of the activations' dtype and runs
/// one cuBLAS GEMM — with thousands of tokens per call the dequantization is a small part of
/// the work, and the products are the dense model's; `candle` uses Candle's quantized matmul
/// kernels (f32 activations, quantized to 8 bits inside), kept for comparison.
fn candle_qmatmul() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("FLASHVSR_QMATMUL").is_ok_and(|v| v == "candle"))
}

fn quantized_on_gpu(q: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if candle_qmatmul() {
        return q
            .forward(&x.to_dtype(candle_core::DType::F32)?)?
            .to_dtype(x.dtype());
    }
    let w = match q {
        // Dequantized in f32 (the block scale times the quant, exact), rounded once.
        QMatMul::QTensor(t) => t.dequantize(x.device())?.to_dtype(x.dtype())?,
        QMatMul::Tensor(w) | QMatMul::TensorF16(w) => w.to_dtype(x.dtype())?,
    };
    x.matmul(&w.t()?)
}

/// Where quantized weights come from: the store behind a `VarBuilder`, which knows how each
/// tensor is stored (the loader's `WeightStore::qtensor`, wrapped by the caller).
pub trait QuantizedWeights {
    /// `name` (full path, as `VarBuilder::prefix` spells it) as a `QTensor` when it is stored in
    /// a quantized type; `None` when it is stored dense and should come from the `VarBuilder`.
    fn quantized(&self, name: &str, device: &Device) -> Result<Option<QTensor>>;

    /// Whether the dense weight `name` `[out, in]` is to be kept in FP8 instead (asked only
    /// when [`QuantizedWeights::quantized`] gave `None`).
    fn fp8(&self, _name: &str, _dims: (usize, usize)) -> bool {
        false
    }
}

/// Dense linear `prefix.weight` `[out, in]` + `prefix.bias` `[out]`.
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    linear_from(in_features, out_features, vb, None)
}

/// [`linear`], with the weight kept quantized when `quantized` holds it quantized (the bias
/// always comes dense from `vb`).
pub fn linear_from(
    in_features: usize,
    out_features: usize,
    vb: VarBuilder,
    quantized: Option<&dyn QuantizedWeights>,
) -> Result<Linear> {
    let b = vb.get(out_features, "bias")?;
    let name = format!("{}.weight", vb.prefix());
    if let Some(q) = quantized
        .map(|s| s.quantized(&name, vb.device()))
        .transpose()?
        .flatten()
    {
        if q.shape().dims() != [out_features, in_features] {
            candle_core::bail!(
                "{name}: quantized weight is {:?}, expected [{out_features}, {in_features}]",
                q.shape().dims()
            );
        }
        return Linear::from_qtensor(q, Some(b));
    }
    let w = vb.get((out_features, in_features), "weight")?;
    if quantized.is_some_and(|s| s.fp8(&name, (out_features, in_features))) {
        return Linear::from_dense_fp8(w, Some(b))
            .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")));
    }
    Linear::from_dense(w, Some(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::DType;
    use std::collections::HashMap;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn dense_and_quantized_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 32), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32), &dev)?;
        let dense = Linear::from_dense(w.clone(), Some(b.clone()))?;
        let q = QTensor::quantize(&w, GgmlDType::F32)?;
        let ql = Linear::from_qtensor(q, Some(b.clone()))?;
        let yd = dense.forward(&x)?;
        let yq = ql.forward(&x)?;
        assert_eq!(yd.dims(), &[2, 3, 8]);
        let want = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        let (d1, d2) = (max_abs_diff(&yd, &want)?, max_abs_diff(&yq, &want)?);
        assert!(d1 < 1e-5 && d2 < 1e-5, "{d1} {d2}");
        Ok(())
    }

    /// A weight store where some tensors are stored quantized.
    struct Store(HashMap<String, Tensor>, HashMap<String, GgmlDType>);

    impl QuantizedWeights for Store {
        fn quantized(&self, name: &str, _: &Device) -> Result<Option<QTensor>> {
            match self.1.get(name) {
                Some(&dtype) => Ok(Some(QTensor::quantize(&self.0[name], dtype)?)),
                None => Ok(None),
            }
        }
    }

    /// Asks for FP8 on every weight.
    struct AllFp8;

    impl QuantizedWeights for AllFp8 {
        fn quantized(&self, _: &str, _: &Device) -> Result<Option<QTensor>> {
            Ok(None)
        }
        fn fp8(&self, _: &str, _: (usize, usize)) -> bool {
            true
        }
    }

    #[test]
    fn fp8_linear_is_quantized_and_close() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.1, (16, 64), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 16, &dev)?;
        let tensors = HashMap::from([
            ("l.weight".to_string(), w.clone()),
            ("l.bias".to_string(), b.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let l = linear_from(64, 16, vb.pp("l"), Some(&AllFp8))?;
        assert!(l.is_quantized() && l.dense_weight().is_none());
        assert_eq!(l.weight_bytes(), 16 * 64 + 16 * 4);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &dev)?;
        let y = l.forward(&x)?;
        assert_eq!(y.dims(), &[2, 3, 16]);
        // The bias path and the no-bias path agree (the bias added after the scales).
        let nb = l.forward_no_bias(&x)?.broadcast_add(&b)?;
        assert!(max_abs_diff(&y, &nb)? < 1e-5);
        // Activations quantized beforehand: the same product.
        let xq = fp8::quantize_rows(&x.reshape((6, 64))?)?;
        let pre = l.forward_fp8_no_bias(&xq, DType::F32)?;
        let no_bias = l.forward_no_bias(&x)?.reshape((6, 16))?;
        assert_eq!(pre.to_vec2::<f32>()?, no_bias.to_vec2::<f32>()?);
        let dense = Linear::from_dense(w.clone(), None)?;
        assert!(dense.forward_fp8_no_bias(&xq, DType::F32).is_err());
        let want = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = max_abs_diff(&y, &want)?;
        assert!(err < 0.08 * scale, "{err} vs {scale}");
        Ok(())
    }

    #[test]
    fn linear_from_takes_the_quantized_weight_when_there_is_one() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 64), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let tensors = HashMap::from([
            ("l.weight".to_string(), w.clone()),
            ("l.bias".to_string(), b.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev);
        let dense = Store(tensors.clone(), HashMap::new());
        let l = linear_from(64, 8, vb.pp("l"), Some(&dense))?;
        assert!(!l.is_quantized());
        let q8 = Store(
            tensors,
            HashMap::from([("l.weight".into(), GgmlDType::Q8_0)]),
        );
        let l = linear_from(64, 8, vb.pp("l"), Some(&q8))?;
        assert!(l.is_quantized());
        let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
        let want = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        // Q8_0 (weights and, on the CPU, activations) keeps ~2.5 significant digits.
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let err = max_abs_diff(&l.forward(&x)?, &want)?;
        assert!(err < 0.02 * scale, "{err} vs {scale}");
        assert!(linear_from(32, 8, vb.pp("l"), Some(&q8)).is_err());
        Ok(())
    }
}
